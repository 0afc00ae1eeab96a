from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
