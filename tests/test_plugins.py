import subprocess
import sys
from pathlib import Path

from ttt_core.cli import main
from ttt_core.plugins import create_host

GOOD = (Path(__file__).parent / "data" / "writer_plugin.py.txt").read_text().replace("{name}", "goodwriter")
"""A plugin that registers one memory writer (a source file for `make_dist`)."""


def plugin(host, name):
    return next(p for p in host.plugins if p.name == name)


def test_discovery_through_entry_points(make_dist):
    make_dist("ttt-good", {"good": "good_plugin"}, {"good_plugin": GOOD}, version="1.2.3")
    host = create_host()
    component = host.registry["memory_writer"].get("goodwriter")
    assert (component.provider.distribution, component.provider.version) == ("ttt-good", "1.2.3")
    assert plugin(host, "good").components == [("memory_writer", "goodwriter")]
    # built-ins register through the same hook
    assert plugin(host, "builtin").components[0] == ("backbone", "llama")


def test_broken_import_is_isolated(make_dist, capsys, monkeypatch):
    make_dist("ttt-broken", {"broken": "broken_plugin"}, {"broken_plugin": "raise ImportError('needs libfoo')"})
    make_dist("ttt-good", {"good": "good_plugin"}, {"good_plugin": GOOD})
    host = create_host()
    assert plugin(host, "broken").error == "ImportError: needs libfoo"
    assert "goodwriter" in host.registry["memory_writer"]  # unrelated plugins still load

    import ttt_core.plugins

    monkeypatch.setattr(ttt_core.plugins, "default_host", lambda: host)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "broken: ttt-broken 0.1.0 (broken_plugin)\n  ERROR: ImportError: needs libfoo" in out
    assert main(["list", "memory_writer"]) == 0
    out = capsys.readouterr().out
    assert "goodwriter" in out and "plugins that failed to load (see `ttt plugins`): ttt-broken" in out


def test_misspelled_hook_is_reported(make_dist):
    source = GOOD.replace("def ttt_register_components", "def ttt_register_component")
    make_dist("ttt-typo", {"typo": "typo_plugin"}, {"typo_plugin": source})
    host = create_host()
    error = plugin(host, "typo").error
    assert error.startswith("PluginValidationError") and "ttt_register_component" in error
    assert "goodwriter" not in host.registry["memory_writer"]


def test_hook_that_raises_registers_nothing(make_dist):
    source = GOOD + "\n    raise RuntimeError('half way')\n"
    make_dist("ttt-half", {"half": "half_plugin"}, {"half_plugin": source})
    host = create_host()
    assert plugin(host, "half").error == "RuntimeError: half way"
    assert "goodwriter" not in host.registry["memory_writer"]


def test_duplicate_across_plugins_names_both(make_dist):
    make_dist("ttt-good", {"good": "good_plugin"}, {"good_plugin": GOOD})
    make_dist("ttt-twin", {"twin": "twin_plugin"}, {"twin_plugin": GOOD.replace("json:dumps", "json:loads")})
    host = create_host()
    errors = [p.error for p in host.plugins if p.error]
    assert len(errors) == 1
    assert "memory_writer 'goodwriter' is registered twice: by ttt-" in errors[0]


def test_env_switches(make_dist, monkeypatch):
    make_dist("ttt-good", {"good": "good_plugin"}, {"good_plugin": GOOD})
    monkeypatch.setenv("TTT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "goodwriter" not in create_host().registry["memory_writer"]
    assert "identity" in create_host().registry["memory_writer"]  # built-ins stay
    monkeypatch.delenv("TTT_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("TTT_PLUGINS", "")
    assert "goodwriter" not in create_host().registry["memory_writer"]
    monkeypatch.setenv("TTT_PLUGINS", "other,good")
    assert "goodwriter" in create_host().registry["memory_writer"]
    monkeypatch.setenv("TTT_PLUGINS", "ttt-good")  # distribution names work too
    assert "goodwriter" in create_host().registry["memory_writer"]


def test_recipe_needing_broken_plugin_names_it(make_dist, write):
    make_dist("ttt-plugin-rmt", {"rmt": "rmt_plugin"}, {"rmt_plugin": "import no_such_dependency_xyz"})
    from ttt_core.errors import RecipeError
    from ttt_core.recipe import load_recipe
    import pytest

    host = create_host()
    recipe = write("r.toml", RECIPE + '[recurrence]\nname = "rmt4"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, registry=host.registry, broken=host.broken())
    assert info.value.lines == [
        f"{recipe}: [recurrence] recurrence 'rmt4' comes from ttt-plugin-rmt, which failed to load: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    ]


RECIPE = """
[task]
name = "associative_retrieval"
[backbone]
name = "llama"
[memory.learner]
name = "memory_tokens"
"""


def test_import_and_validate_do_not_import_heavy_packages(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    code = (
        "import sys, ttt_core\n"
        "from ttt_core.cli import main\n"
        f"assert main(['validate', {str(recipe)!r}]) == 0\n"
        "heavy = [m for m in ('deepspeed', 'triton', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_plugin_that_exits_at_import_is_isolated(make_dist, capsys, monkeypatch):
    make_dist("ttt-exits", {"exits": "exits_plugin"}, {"exits_plugin": "import sys\nsys.exit('no GPU here')"})
    make_dist("ttt-raises", {"raises": "raises_plugin"}, {"raises_plugin": "raise BaseException('odd')"})
    make_dist("ttt-good", {"good": "good_plugin"}, {"good_plugin": GOOD})
    host = create_host()
    assert plugin(host, "exits").error == "SystemExit: no GPU here"
    assert plugin(host, "raises").error == "BaseException: odd"
    assert "goodwriter" in host.registry["memory_writer"]

    import ttt_core.plugins

    monkeypatch.setattr(ttt_core.plugins, "default_host", lambda: host)
    assert main(["plugins"]) == 0
    assert "exits: ttt-exits 0.1.0 (exits_plugin)\n  ERROR: SystemExit: no GPU here" in capsys.readouterr().out


def test_hook_that_exits_registers_nothing(make_dist):
    source = GOOD + "\n    raise SystemExit(3)\n"
    make_dist("ttt-exit-hook", {"exit_hook": "exit_hook_plugin"}, {"exit_hook_plugin": source})
    host = create_host()
    assert plugin(host, "exit_hook").error == "SystemExit: 3"
    assert "goodwriter" not in host.registry["memory_writer"]


def test_keyboard_interrupt_in_a_plugin_is_not_swallowed(make_dist):
    import pytest

    make_dist("ttt-ctrlc", {"ctrlc": "ctrlc_plugin"}, {"ctrlc_plugin": "raise KeyboardInterrupt"})
    with pytest.raises(KeyboardInterrupt):
        create_host()


def test_hook_without_hookimpl_is_reported(make_dist):
    source = GOOD.replace("@hookimpl\n", "")
    make_dist("ttt-unmarked", {"unmarked": "unmarked_plugin"}, {"unmarked_plugin": source})
    misspelled = GOOD.replace("def ttt_register_components", "def ttt_register_component").replace("@hookimpl\n", "")
    make_dist("ttt-misspelled", {"misspelled": "misspelled_plugin"}, {"misspelled_plugin": misspelled})
    make_dist("ttt-helper", {"helper": "helper_plugin"},
              {"helper_plugin": GOOD.replace("goodwriter", "helperwriter") + "\ndef ttt_helper():\n    pass\n"})
    host = create_host()
    error = plugin(host, "unmarked").error
    assert error.startswith("ttt_register_components: not marked as a hook; decorate it with @hookimpl")
    assert plugin(host, "misspelled").error.startswith("ttt_register_component: not marked as a hook")
    assert plugin(host, "helper").error is None  # a helper named ttt_* is not a hook
    assert "goodwriter" not in host.registry["memory_writer"] and "helperwriter" in host.registry["memory_writer"]


def test_disabled_plugin_says_how_to_enable_it(make_dist, write, monkeypatch):
    import pytest

    from ttt_core.errors import RecipeError
    from ttt_core.recipe import load_recipe

    make_dist("ttt-plugin-rmt", {"rmt": "rmt_plugin"}, {"rmt_plugin": GOOD})
    recipe = write("r.toml", RECIPE + '[recurrence]\nname = "rmt4"\n')
    monkeypatch.setenv("TTT_PLUGINS", "other")
    host = create_host()
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, registry=host.registry, broken=host.broken())
    assert info.value.lines == [
        f"{recipe}: [recurrence] recurrence 'rmt4' comes from ttt-plugin-rmt, which is installed but disabled: "
        "TTT_PLUGINS='other' does not name it (add 'rmt' to TTT_PLUGINS, or unset it)"
    ]
    monkeypatch.delenv("TTT_PLUGINS")
    monkeypatch.setenv("TTT_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = create_host()
    with pytest.raises(RecipeError, match="installed but disabled: TTT_DISABLE_PLUGIN_AUTOLOAD is set"):
        load_recipe(recipe, registry=host.registry, broken=host.broken())
    assert "rmt" in [p.name for p in host.disabled] and not host.broken()


def test_unknown_name_in_ttt_plugins_is_reported(make_dist, monkeypatch, capsys):
    make_dist("ttt-good", {"good": "good_plugin"}, {"good_plugin": GOOD})
    monkeypatch.setenv("TTT_PLUGINS", "good,godo")
    host = create_host()
    assert "goodwriter" in host.registry["memory_writer"] and host.unknown_selected == ["godo"]
    err = capsys.readouterr().err
    assert "ttt: warning: TTT_PLUGINS names 'godo', which matches no installed plugin; installed: " in err
    assert "good (ttt-good)" in err
    monkeypatch.setenv("TTT_PLUGINS", "good,ttt-good")
    create_host()
    assert capsys.readouterr().err == ""
