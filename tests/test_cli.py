import subprocess
import sys

from ttt_core.cli import main


def run_cli(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "ttt_core.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_bad_recipe_exits_2_without_traceback(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[train\n")
    result = run_cli("show", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"{path}: invalid TOML:")
    assert "Traceback" not in result.stderr
    debug = run_cli("show", str(path), env={"TTT_DEBUG": "1"})
    assert "Traceback" in debug.stderr and "RecipeError" in debug.stderr


def test_validate_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('[task]\nname = "ar"\n[backbone]\nname = "llama"\n[memory.learner]\nname = "memory_tokens"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\nname = "ar"\n')
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"ok {good}" in captured.out and f"{bad}: [backbone] missing" in captured.err


def test_list_shows_options_and_unknown_kind(capsys):
    assert main(["list", "inner_learner"]) == 0
    out = capsys.readouterr().out
    assert "memory_tokens (aliases: prompt_tuning)  [ttt-core" in out and "tokens: int = 8" in out
    assert main(["list", "writer"]) == 2
    assert "unknown kind 'writer'" in capsys.readouterr().err


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "eval", "plot", "data", "validate", "show", "plugins", "list", "recipes", "cp"):
        assert command in result.stdout
