"""Atomic checkpoints: written to a temporary file, fsynced, then renamed over the old one.

A run directory holds either `checkpoints/last.pt` (one process) or a DeepSpeed checkpoint under
`checkpoints/deepspeed/` (see `ttt_core.train.distributed`); `load_model_state` reads both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ttt_core.errors import TTTError


def save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)  # a kill before this line leaves the previous checkpoint intact


def write_text_atomic(path: Path, text: str) -> None:
    """Readers (other ranks, a resumed run) see the old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TTTError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of a corrupt file vary
        raise TTTError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def load_model_state(source: str | Path) -> tuple[Path, dict[str, Any]]:
    """(path, {"model": plain state dict, "step": ...}) from a checkpoint file, a run directory, or a
    DeepSpeed checkpoint (its directory or one tag in it), consolidated on CPU without processes."""
    path = Path(source)
    if path.is_dir():
        plain = path / "checkpoints" / "last.pt"
        if plain.exists():
            return plain, load_checkpoint(plain)
        from ttt_core.train.distributed import MARKER, consolidate

        for directory, tag in ((path / "checkpoints" / "deepspeed", None), (path, None), (path.parent, path.name)):
            if (directory / MARKER).exists() or (tag and (path / "mp_rank_00_model_states.pt").exists()):
                return consolidate(directory, tag)
        raise TTTError(f"{path}: no checkpoint here (neither checkpoints/last.pt nor a DeepSpeed checkpoint)")
    return path, load_checkpoint(path)
