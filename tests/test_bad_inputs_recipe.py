"""Malformed recipes and plugin setups, each through the real CLI (`ttt validate`): a non-zero exit,
one line per problem naming the recipe, the expected message, and never a traceback.

Each row: (what is wrong, the input, a substring of the expected message). The input is recipe text
appended to a valid recipe (str), a whole file (bytes), or for the plugin rows the plugin's source
and the environment.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import ttt_core.plugins
from ttt_core.cli import main
from ttt_core.plugins import create_host

TASK = """
[task]
name = "associative_retrieval"
"""
MODEL = """
[backbone]
name = "llama"
layers = 1
dim = 16
heads = 2
[memory.learner]
name = "memory_tokens"
tokens = 2
"""
VALID = TASK + MODEL
BAD_BYTES = VALID.replace("[task]", '[task]\n# caf\xe9').encode("latin-1")

RECIPES = [
    ("non-UTF-8 file", BAD_BYTES, "not UTF-8 text (byte 0xe9 on line 3); save the recipe as UTF-8"),
    ("invalid TOML", b"[train]\nsteps = = 3\n", "invalid TOML: Invalid value (at line 2, column 9)"),
    ("extends a missing file", 'extends = ["gone.toml"]\n', "extends 'gone.toml': file not found"),
    ("extends is not a list", "extends = 3\n", "'extends' must be a list of file paths"),
    ("misspelled table", "[trian]\nsteps = 3\n", "unknown table 'trian' (did you mean 'train'?)"),
    ("misspelled memory slot", '[memory.lerner]\nname = "x"\n', "[memory] unknown slot 'lerner' (did you mean 'learner'?)"),
    ("misspelled option", "[inner]\nstep = 3\n", "[inner] unknown option 'step' (did you mean 'steps'?)"),
    ("float where an integer goes", "[train]\nsteps = 2.5\n", "[train] option 'steps': expected an integer, got float 2.5"),
    ("nan learning rate", "[optimizer]\nlr = nan\n", "[optimizer] option 'lr' must be a finite number; got nan"),
    ("infinite inner rate", "[inner]\nlr = inf\n", "[inner] option 'lr' must be a finite number; got inf"),
    ("1e400 overflows to inf", "[optimizer]\nweight_decay = 1e400\n",
     "[optimizer] option 'weight_decay' must be a finite number; got inf"),
    ("nan in a bounded option", "[optimizer]\nmin_lr_ratio = nan\n", "option 'min_lr_ratio' must be a finite number; got nan"),
    ("infinite collective timeout", "[distributed]\ntimeout_s = inf\n", "[distributed] option 'timeout_s' must be a finite number"),
    ("seed beyond torch's range", "[train]\nseed = 18446744073709551616\n",
     "[train] option 'seed' must be in [0, 18446744073709551615]; got 18446744073709551616"),
    ("negative seed", "[train]\nseed = -1\n", "[train] option 'seed' must be in [0, 18446744073709551615]; got -1"),
    ("three betas", "[optimizer]\nbetas = [0.9, 0.99, 0.999]\n", "[optimizer] option 'betas': expected an array of 2 values, got 3"),
    ("beta of 1", "[optimizer]\nbetas = [0.9, 1.0]\n", "[optimizer] option 'betas': beta2 must be in [0, 1); got 1.0"),
    ("betas as a string", '[optimizer]\nbetas = "0.9, 0.99"\n', "option 'betas': expected an array, got string"),
    ("beta not a number", '[optimizer]\nbetas = ["a", 0.99]\n', "option 'betas.0': expected a number, got string \"a\""),
    ("missing task.path", '[task]\nname = "ar"\npath = "nowhere.jsonl"\n', "[task] ARConfig: path 'nowhere.jsonl': no such dataset file or directory"),
    ("missing lm_text path", '[task]\nname = "lm_text"\npaths = ["no/such/dir"]\n',
     "[task] option 'paths': no/such/dir: no such file or directory"),
    ("unparsable dataset name", '[task]\nname = "ar"\ndataset = "N2-K4"\n', "cannot parse dataset name 'N2-K4'"),
    ("unknown component", '[memory.writer]\nname = "neural_memroy"\n', "[memory.writer] unknown memory writer 'neural_memroy'"),
    ("missing requirement", 'requires = ["ttt-plugin-nonexistent>=0.1"]\n', "requires ttt-plugin-nonexistent>=0.1, which is not installed"),
    ("curriculum without stages", "[curriculum]\ncarry_set = true\n", "[curriculum] applies to [[stages]] only"),
    ("stage name with a slash", '[[stages]]\nname = "../x"\nsteps = 1\n', "[stages] stage 1: 'name' must be a string of letters"),
    ("stage that sets train.steps", '[[stages]]\nname = "a"\nsteps = 1\nset = { "train.steps" = 5 }\n',
     "stage 'a': cannot set 'train.steps' (use the stage's 'steps')"),
]


def validate(path, capsys) -> tuple[int, list[str]]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err.splitlines()


@pytest.mark.parametrize(("problem", "text", "message"), RECIPES, ids=[row[0] for row in RECIPES])
def test_bad_recipe(tmp_path, capsys, problem, text, message):
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text.startswith("[task]"):  # a task table of its own
        path.write_text(MODEL + text)
    elif not text.startswith("["):  # top-level keys go before the first table
        path.write_text(text + VALID)
    else:
        path.write_text(VALID + text)
    code, lines = validate(path, capsys)
    assert code != 0, problem
    assert lines and all(line.startswith(f"{path}: ") for line in lines), lines
    assert any(message in line for line in lines), (message, lines)


def test_every_bad_option_of_a_table_is_reported(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(VALID + "[train]\nsteps = 0\nbatch_size = -1\nseed = -1\n[inner]\nlr = nan\neps = 0.0\n")
    code, lines = validate(path, capsys)
    assert code != 0 and lines == [
        f"{path}: [train] option 'steps' must be > 0; got 0",
        f"{path}: [train] option 'batch_size' must be > 0; got -1",
        f"{path}: [train] option 'seed' must be in [0, 18446744073709551615]; got -1",
        f"{path}: [inner] option 'lr' must be a finite number; got nan",
        f"{path}: [inner] option 'eps' must be > 0; got 0.0",
    ]


def test_byte_order_mark_is_accepted(tmp_path, capsys):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"ok {path}\n"


def test_a_directory_given_as_recipe(tmp_path, capsys):
    code, lines = validate(tmp_path, capsys)
    assert code != 0 and lines == [f"{tmp_path}: is a directory, not a recipe file"]


GOOD = (Path(__file__).parent / "data" / "writer_plugin.py.txt").read_text()  # "{name}": the writer

PLUGINS = [
    ("plugin that calls sys.exit at import", "import sys\nsys.exit('no GPU here')\n", {},
     "(plugins that failed to load: ttt-bad-{n}: SystemExit: no GPU here)"),
    ("plugin that raises BaseException in its hook", GOOD + "    raise BaseException('odd')\n", {},
     "ttt-bad-{n}: BaseException: odd"),
    ("hook without @hookimpl", GOOD.replace("@hookimpl\n", ""), {},
     "ttt-bad-{n}: ttt_register_components: not marked as a hook; decorate it with @hookimpl"),
    ("plugin left out by TTT_PLUGINS", GOOD, {"TTT_PLUGINS": "other"},
     "installed plugins that TTT_PLUGINS or TTT_DISABLE_PLUGIN_AUTOLOAD leave out: "),
    ("plugin left out by TTT_DISABLE_PLUGIN_AUTOLOAD", GOOD, {"TTT_DISABLE_PLUGIN_AUTOLOAD": "1"},
     "installed plugins that TTT_PLUGINS or TTT_DISABLE_PLUGIN_AUTOLOAD leave out: "),
    ("misspelled name in TTT_PLUGINS", GOOD, {"TTT_PLUGINS": "bad_{n}x"},
     "ttt: warning: TTT_PLUGINS names 'bad_{n}x', which matches no installed plugin; installed: "),
]


@pytest.mark.parametrize(("problem", "source", "env", "message"), PLUGINS, ids=[row[0] for row in PLUGINS])
def test_bad_plugin(make_dist, tmp_path, capsys, monkeypatch, problem, source, env, message):
    n = PLUGINS.index(next(row for row in PLUGINS if row[0] == problem))
    writer = f"writer{n}"
    make_dist(f"ttt-bad-{n}", {f"bad_{n}": f"bad_plugin_{n}"}, {f"bad_plugin_{n}": source.replace("{name}", writer)})
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(n=n))
    monkeypatch.setattr(ttt_core.plugins, "default_host", create_host)
    path = tmp_path / "needs_plugin.toml"
    path.write_text(VALID + textwrap.dedent(f'[memory.writer]\nname = "{writer}"\n'))
    code, lines = validate(path, capsys)
    assert code != 0, problem
    assert lines and all(line.startswith((f"{path}: ", "ttt: warning: ")) for line in lines), lines
    assert any(message.format(n=n) in line for line in lines), (message, lines)


RECURRENCES = """
import attrs
from ttt_core import hookimpl

@attrs.define
class Cfg:
    pass

@hookimpl
def ttt_register_components(registry):
    registry.add("recurrence", "slotless", config=Cfg, factory="json:dumps", slots=())
    registry.add("recurrence", "picky", config=Cfg, factory="json:dumps",
                 needs={"backbone": ("export",)})
"""

COMPONENTS = [
    ("a table for a slot the recurrence does not use", '[recurrence]\nname = "slotless"\n',
     "[memory.learner] recurrence 'slotless' does not use a memory learner: remove this table"),
    ("a capability the backbone lacks", '[recurrence]\nname = "picky"\n',
     "[recurrence] picky needs a backbone with 'export'; backbone 'llama' does not provide it"),
]


@pytest.mark.parametrize(("problem", "text", "message"), COMPONENTS, ids=[row[0] for row in COMPONENTS])
def test_slots_and_capabilities(make_dist, tmp_path, capsys, monkeypatch, problem, text, message):
    make_dist("ttt-recurrences", {"recurrences": "recurrences_plugin"}, {"recurrences_plugin": RECURRENCES})
    monkeypatch.setattr(ttt_core.plugins, "default_host", create_host)
    path = tmp_path / "bad.toml"
    path.write_text(VALID + text)
    code, lines = validate(path, capsys)
    assert code != 0, problem
    assert lines == [f"{path}: {message}"]
