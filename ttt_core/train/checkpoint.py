"""Atomic checkpoints: written to a temporary file, fsynced, then renamed over the old one."""

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


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TTTError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of a corrupt file vary
        raise TTTError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {exc})") from None
