"""Our layers and model against golden outputs of the official implementation (float64, 1e-9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttt_plugin_layers.check_reference import TOLERANCE, check_file, main
from ttt_plugin_layers.convert import from_reference_state_dict, to_reference_state_dict

DATA = Path(__file__).parent / "data"
LAYER_FILES = sorted(DATA.glob("ttt_*.pt"))
MODEL_FILES = sorted(DATA.glob("model_*.pt"))


def test_all_twelve_fixtures_present() -> None:
    kinds = {(p.stem.split("_")[1], p.stem.split("_")[2]) for p in LAYER_FILES + MODEL_FILES}
    assert kinds == {(k, b) for k in ("linear", "mlp") for b in ("transformer", "mamba")}
    assert len(LAYER_FILES) == 8 and len(MODEL_FILES) == 4


@pytest.mark.parametrize("path", LAYER_FILES + MODEL_FILES, ids=lambda p: p.stem)
def test_matches_reference(path: Path) -> None:
    result = check_file(path)
    assert result.ok(TOLERANCE), result.errors
    assert set(result.errors) == ({"logits"} if path.stem.startswith("model") else {"output", "grad"})


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(DATA / "ttt_linear_transformer_T40.pt")]
    assert main(files) == 0
    assert main([*files, "--tol", "0"]) == 1  # float64 rounding is > 0, so a zero tolerance fails
    out = capsys.readouterr().out
    assert "ok" in out and "FAIL" in out


def test_cli_runs_as_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "ttt_plugin_layers.check_reference",
                           str(DATA / "ttt_mlp_mamba_T40.pt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1/1 within 1e-09" in proc.stdout


@pytest.mark.parametrize("path", [LAYER_FILES[0], LAYER_FILES[-1], MODEL_FILES[0]], ids=lambda p: p.stem)
def test_state_dict_conversion_round_trips(path: Path) -> None:
    sd = torch.load(path, weights_only=False)["state_dict"]
    back = to_reference_state_dict(from_reference_state_dict(sd))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_unknown_reference_parameter_is_named() -> None:
    with pytest.raises(KeyError, match="model.layers.0.attn.weight"):
        from_reference_state_dict({"model.embed_tokens.weight": torch.zeros(1), "model.layers.0.attn.weight": torch.zeros(1)})
