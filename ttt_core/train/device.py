"""`[train] device`: the torch device a run trains on, or one line saying why it cannot."""

from __future__ import annotations

import torch

from ttt_core.errors import TTTError, first_line


def pick_device(name: str) -> torch.device:
    """"auto": CUDA when available, else the CPU; any other name must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise TTTError(f"[train] device = '{name}': not a torch device ({first_line(exc)})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TTTError(f"[train] device = '{name}' but CUDA is not available on this machine; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TTTError(f"[train] device = '{name}' but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise TTTError(f"[train] device = '{name}' but MPS is not available on this machine; use 'auto' or 'cpu'")
    return device
