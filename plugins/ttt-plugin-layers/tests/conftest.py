from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tests use tiny tensors, where intra-op threads only add synchronisation; on a machine whose
# cores are shared with other jobs they make the suite several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

DATA = Path(__file__).parent / "data"
LAYER_FILES = sorted(DATA.glob("ttt_*.pt"))
MODEL_FILES = sorted(DATA.glob("model_*.pt"))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(params=MODEL_FILES, ids=lambda p: p.stem)
def model_case(request: pytest.FixtureRequest) -> dict:
    return load(request.param)


@pytest.fixture(params=LAYER_FILES, ids=lambda p: p.stem)
def layer_case(request: pytest.FixtureRequest) -> dict:
    return load(request.param)
