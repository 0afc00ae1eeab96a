from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """Install a fake distribution on sys.path: a real .dist-info with entry points, plus modules.

    Discovery then goes through importlib.metadata exactly as for a pip-installed plugin.
    """
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def make(name: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "0.1.0") -> Path:
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[ttt]\n{lines}")
        for module, source in modules.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
        return root

    return make


@pytest.fixture
def write(tmp_path):
    """Write a text file under tmp_path and return its path."""

    def write_file(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write_file


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors: one thread avoids oversubscription slowdowns on small shared CI machines."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def assert_same_gradients():
    """Check that every parameter of `got` holds the gradient of the same-named parameter of
    `expected` (two models built from one recipe and seed), to `tol` relative to its largest entry."""

    def check(expected, got, tol: float) -> None:
        named = dict(got.named_parameters())
        for name, param in expected.named_parameters():
            grad = named[name].grad
            assert grad is not None, name
            error = (grad - param.grad).abs().max() / param.grad.abs().max().clamp_min(1e-30)
            assert error < tol, (name, float(error))

    return check
