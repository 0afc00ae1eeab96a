"""Compare our layers and model with golden outputs of the official implementation.

    python -m ttt_plugin_layers.check_reference FILE.pt [FILE.pt ...] [--tol 1e-9]

Layer fixtures (`ttt_{linear|mlp}_{backbone}_T{L}.pt`) give weights, inputs, outputs and the
gradients of `sum(output * cotangent)`; model fixtures (`model_*.pt`) give weights, token ids and
logits. Everything runs in float64. Prints the max abs error per file and exits with status 1 when
any exceeds the tolerance.

Model logits in the fixtures are stored in float32 (the reference casts its logits with `.float()`),
so a stored value only pins the true one to within half a float32 ulp: for float32-stored tensors
the error reported is the excess over that storage rounding, `max(0, |ours - ref| - ulp(ref)/2)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from torch import Tensor

from ttt_plugin_layers.convert import (
    config_from_reference,
    from_reference_state_dict,
    load_reference_model,
    to_reference_state_dict,
)

TOLERANCE = 1e-9


@attrs.frozen
class Result:
    path: str
    errors: dict[str, float]  # "output"/"logits", "grad" (max over parameters): checked
    info: dict[str, float] = attrs.field(factory=dict)  # reported, not checked

    def ok(self, tol: float) -> bool:
        return all(e <= tol for e in self.errors.values())


def max_error(ours: Tensor, ref: Tensor) -> float:
    """Max abs error, discounting the rounding of references stored in lower precision."""
    ours = ours.detach().to(torch.float64)
    diff = (ours - ref.to(torch.float64)).abs()
    if ref.dtype != torch.float64:
        half_ulp = torch.finfo(ref.dtype).eps * ref.to(torch.float64).abs().clamp_min(
            torch.finfo(ref.dtype).tiny) / 2
        diff = (diff - half_ulp).clamp_min(0.0)
    return float(diff.max())


def check_layer(case: dict) -> dict[str, float]:
    from ttt_plugin_layers.layer import TTTLayer

    config = attrs.evolve(config_from_reference(case["config"], layer_only=True), inner=case["kind"], kernel="torch")
    layer = TTTLayer(config).to(torch.float64)
    layer.load_state_dict(from_reference_state_dict(case["state_dict"]))
    out = layer(case["hidden_states"].to(torch.float64))
    (out * case["output_cotangent"]).sum().backward()
    grads = to_reference_state_dict({n: p.grad for n, p in layer.named_parameters()})
    missing = set(case["grads"]) ^ set(grads)
    if missing:
        raise KeyError(f"gradient names differ from the reference: {sorted(missing)}")
    per_param = {n: max_error(grads[n], g) for n, g in case["grads"].items()}
    return {"output": max_error(out, case["output"]), "grad": max(per_param.values())}


def check_model(case: dict) -> tuple[dict[str, float], dict[str, float]]:
    model = load_reference_model(case["config"], case["state_dict"], dtype=torch.float64)
    for block in model.blocks:
        block.ttt.config = attrs.evolve(block.ttt.config, kernel="torch")
    with torch.no_grad():
        logits = model(case["input_ids"])
    ref = case["logits"]
    info = {f"logits rounded to {ref.dtype}": float((logits.to(ref.dtype) - ref).abs().max())}
    return {"logits": max_error(logits, ref)}, info


def check_file(path: str | Path) -> Result:
    case = torch.load(path, map_location="cpu", weights_only=True)  # fixtures are tensors and plain data
    if "logits" in case:
        return Result(str(path), *check_model(case))
    return Result(str(path), check_layer(case))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ttt_plugin_layers.check_reference", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="fixture files in the golden format")
    parser.add_argument("--tol", type=float, default=TOLERANCE, help="max abs error allowed (float64)")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        res = check_file(path)
        status = "ok" if res.ok(args.tol) else "FAIL"
        failed += status != "ok"
        errs = "  ".join(f"{k} {v:.3e}" for k, v in {**res.errors, **res.info}.items())
        print(f"{status:4}  {Path(path).name:32}  {errs}")
    print(f"{len(args.files) - failed}/{len(args.files)} within {args.tol:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
