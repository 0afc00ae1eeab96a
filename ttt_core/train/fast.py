"""`[train] compile = "auto"` and `precision = "auto"`: the fastest setting this machine runs well.

`compile` auto compiles the training step when it pays: one process (the DeepSpeed engine steps
eagerly), a compiler inductor can use (a C++ compiler for the CPU, Triton for CUDA), and a run long
enough (`COMPILE_MIN_STEPS`) for the minutes of a cold compile to be won back; inductor caches what it
builds, so a second run of the same model compiles in seconds. Compiled and eager compute the same
gradients up to float rounding (`tests/test_functional_step.py`).

`precision` auto picks bfloat16 autocast where the hardware has bfloat16 arithmetic (a CUDA device
that supports it; a CPU with AVX512-BF16 or AMX), else float32. bf16 changes results beyond rounding,
so the core default stays "fp32"; a recipe opts in to "auto" where its results were reproduced so.
"""

from __future__ import annotations

import attrs
import torch

from ttt_core.config import TrainConfig
from ttt_core.train.functional import cpp_compiler

COMPILE_MIN_STEPS = 500
"""Below this many steps a cold compile (minutes on a CPU) costs more than it saves."""


def compiler_found(device: torch.device) -> tuple[bool, str]:
    """(whether inductor can build kernels for `device`, what it found or misses)."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "no Triton for CUDA kernels"
        return True, "Triton found"
    if device.type != "cpu":
        return False, f"no inductor backend chosen for {device.type}"
    try:
        found = cpp_compiler()
    except ImportError:
        return False, "this torch has no inductor"
    return (True, f"{found} found") if found else (False, "no C++ compiler (apt install g++)")


def bf16_native(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes in bfloat16 natively, what it has)."""
    if device.type == "cuda":
        return (torch.cuda.is_bf16_supported(including_emulation=False),
                torch.cuda.get_device_name(device))
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return True, "CPU with AMX"
        if torch.cpu._is_avx512_bf16_supported():
            return True, "CPU with AVX512-BF16"
        return False, "CPU without AVX512-BF16 or AMX"
    return False, device.type


def choose_fast_settings(train: TrainConfig, device: torch.device, single_process: bool) -> tuple[TrainConfig, str | None]:
    """`train` with "auto" replaced by what this machine and run get, and a one-line note of the
    choice (None when nothing was "auto")."""
    parts, changes = [], {}
    if train.compile == "auto":
        ok, found = compiler_found(device)
        if not single_process:
            ok, why = False, "several processes step eagerly"
        elif not ok:
            why = found
        elif train.steps < COMPILE_MIN_STEPS:
            ok, why = False, f"{train.steps} steps < {COMPILE_MIN_STEPS}: a cold compile would not pay"
        else:
            why = f"{found}; the first step compiles, cached for later runs"
        changes["compile"] = ok
        parts.append(f"compile {'on' if ok else 'off'} ({why})")
    if train.precision == "auto":
        ok, has = bf16_native(device)
        changes["precision"] = "bf16" if ok else "fp32"
        parts.append(f"precision {changes['precision']} ({has})")
    if not parts:
        return train, None
    opt_out = " --set train.compile=false" * (changes.get("compile") is True) + \
        " --set \"train.precision='fp32'\"" * (changes.get("precision") == "bf16")
    note = "auto settings: " + ", ".join(parts) + (f"; opt out:{opt_out}" if opt_out else "")
    return attrs.evolve(train, **changes), note
