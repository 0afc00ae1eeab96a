"""Each first-party plugin installs and passes its own tests with nothing but ttt-core beside it.

For every directory in `plugins/`: a fresh virtualenv, `pip install` (not editable) of ttt-core and
that one plugin from copies of their sources (so nothing of the checkout, such as the root
conftest, other plugins or recipes, is importable), torch pinned by `constraints.txt`, then the
plugin's own tests run there. Catches a plugin that needs another plugin, an undeclared dependency,
or tests that lean on the repository.

Marked `install` (a few minutes on a busy machine; pip needs torch in its cache or a local index):
skip with `-m "not install"` or `TTT_SKIP_INSTALL_TESTS=1`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())
CORE_FILES = ("pyproject.toml", "README.md", "ttt_core")
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache")

pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(os.environ.get("TTT_SKIP_INSTALL_TESTS", "") not in ("", "0"), reason="TTT_SKIP_INSTALL_TESTS"),
]


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{output[-6000:]}"
    return output


def copy_sources(plugin: Path, where: Path) -> tuple[Path, Path]:
    core = where / "ttt-core"
    core.mkdir()
    for name in CORE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, core / name, ignore=IGNORE)
        else:
            shutil.copy2(source, core / name)
    return core, Path(shutil.copytree(plugin, where / plugin.name, ignore=IGNORE))


@pytest.mark.parametrize("plugin", PLUGINS, ids=[p.name for p in PLUGINS])
def test_plugin_installs_and_passes_its_tests_alone(plugin: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    core, copy = copy_sources(plugin, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", TTT_DEBUG="1")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = str(bin_dir / "python")
    run([python, "-m", "pip", "install", "-q", "--no-compile", "-c", str(ROOT / "constraints.txt"),
         str(core), str(copy), "pytest"], tmp_path, env)

    where = run([python, "-c", "import ttt_core, torch; print(ttt_core.__file__); print(torch.__version__)"], tmp_path, env)
    assert str(venv) in where.splitlines()[0], where  # the installed copy, not the checkout
    listing = run([str(bin_dir / "ttt"), "plugins"], tmp_path, env)
    assert "ERROR" not in listing, listing
    # the plugin's own tests from its copied directory: its pyproject's pytest settings, no root conftest
    output = run([str(bin_dir / "pytest"), "-q", "-p", "no:cacheprovider"], copy, env)
    assert " passed" in output.splitlines()[-1], output[-2000:]
    print(f"{plugin.name}: installed and tested alone in {time.perf_counter() - started:.0f} s")
