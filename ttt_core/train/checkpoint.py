"""Every checkpoint format a run directory holds, written atomically and read without running code.

A run directory holds either `checkpoints/last.pt` (one process: step, model, optimizer, RNG, recipe;
with `train.keep_last = N > 1` also the N newest as `checkpoints/stepS.pt`, hard links where the file
system allows) or a DeepSpeed checkpoint under `checkpoints/deepspeed/`: one directory per tag written by every
rank (`engine.save_checkpoint`), and the marker `last.json` naming the last complete tag, written by
rank 0 once every rank has saved. `load_model_state` reads both (`ttt eval`, `train.init_from`);
Either kind may hold `checkpoints/best.pt`: the weights (no optimizer) at the best validation
headline metric so far (`train.keep_best`). `consolidate` turns a DeepSpeed tag into a plain state dict on CPU, without processes.

Loading never runs code: every `torch.load` here is `weights_only=True` (a pickle naming any other
callable is refused). DeepSpeed's own files hold three of its classes: they are allowed by name
(`_deepspeed_globals`), only while reading those files.

Writes go to a temporary `.NAME.tmp` beside the target, fsynced, then renamed over it: a kill leaves
the previous file intact and at worst a stale `.tmp`, which the next write replaces.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ttt_core.errors import TTTError, first_line

PLAIN = Path("checkpoints") / "last.pt"
BEST = Path("checkpoints") / "best.pt"
CHOICES = ("last", "best")
"""What `train.init_checkpoint` and `ttt eval --checkpoint` may name instead of a file."""
DEEPSPEED = Path("checkpoints") / "deepspeed"
MARKER = "last.json"
DEEPSPEED_MODEL_STATES = "mp_rank_00_model_states.pt"


# --- writing --------------------------------------------------------------------------------------


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def _writing(path: Path, mode: str) -> Iterator[Any]:
    """A handle on the temporary file beside `path`, renamed over `path` once flushed to disk; an
    OSError (read-only or full disk) becomes one line and leaves no temporary file behind."""
    tmp = _tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # a kill before this line leaves the previous file intact
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TTTError(f"{path}: cannot write ({describe_os_error(exc)})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied or read-only file system"
    return exc.strerror or type(exc).__name__


def save_atomic(obj: Any, path: Path) -> None:
    with _writing(Path(path), "wb") as handle:
        torch.save(obj, handle)


def write_text_atomic(path: Path, text: str) -> None:
    """Readers (other ranks, a resumed run) see the old file or the new one, never a partial one."""
    with _writing(Path(path), "w") as handle:
        handle.write(text)


def _step_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("step*.pt"):
        digits = path.stem.removeprefix("step")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def keep_step_copy(last: Path, step: int, keep: int) -> None:
    """After `last` (a plain checkpoint) was written at `step`: keep it also as `stepS.pt` when
    `keep` > 1, and remove the step files beyond the `keep` newest (all of them when `keep` is 1)."""
    last = Path(last)
    if keep > 1:
        copy = last.with_name(f"step{step}.pt")
        tmp = _tmp_path(copy)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.link(last, tmp)  # no second copy of the bytes where the file system allows
            except OSError:
                shutil.copyfile(last, tmp)
            os.replace(tmp, copy)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TTTError(f"{copy}: cannot write ({describe_os_error(exc)})") from None
    files = _step_files(last.parent)
    for _, old in files[: max(0, len(files) - keep)] if keep > 1 else files:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


# --- reading --------------------------------------------------------------------------------------


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file as saved by `torch.save`, read with `weights_only=True`."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TTTError(f"{path}: checkpoint not found") from None
    except IsADirectoryError:
        raise TTTError(f"{path}: is a directory, not a checkpoint file") from None
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of a corrupt file vary
        refused = _forbidden_global(exc)
        if refused:
            raise TTTError(f"{path}: refused: loading this checkpoint would call {refused}, which is not plain data") from None
        raise TTTError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {first_line(exc)})") from None


def _forbidden_global(exc: Exception) -> str | None:
    """The callable torch's weights-only unpickler refused to load (None: the file is just corrupt)."""
    if "Weights only load failed" not in str(exc):
        return None
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def checkpoint_dir(run_dir: Path) -> Path:
    """Where a DeepSpeed run keeps its tags and marker."""
    return Path(run_dir) / DEEPSPEED


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The last complete checkpoint of a DeepSpeed checkpoint directory, or None."""
    path = Path(directory) / MARKER
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TTTError(f"{path}: unreadable checkpoint marker ({exc})") from None
    if not isinstance(marker, dict) or not {"tag", "step", "world_size", "zero_stage"} <= set(marker):
        raise TTTError(f"{path}: not a checkpoint marker (expected tag, step, world_size, zero_stage)")
    return marker


def write_marker(directory: Path, tag: str, step: int, world_size: int, zero_stage: int) -> None:
    marker = {"tag": tag, "step": step, "world_size": world_size, "zero_stage": zero_stage}
    write_text_atomic(Path(directory) / MARKER, json.dumps(marker) + "\n")


def has_checkpoint(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / PLAIN).exists() or (checkpoint_dir(run_dir) / MARKER).exists()


def load_model_state(source: str | Path, which: str = "last") -> tuple[Path, dict[str, Any]]:
    """(path, {"model": plain state dict, "step": ...}) from a checkpoint file, a run directory (its
    `which` checkpoint: "last" or "best"), or a DeepSpeed checkpoint (its directory or one tag in it),
    consolidated on CPU without processes."""
    path = Path(source)
    if path.is_dir() and which == "best":
        best = path / BEST
        if not best.exists():
            raise TTTError(f"{path}: no best checkpoint ({BEST} is missing: the run has not validated yet, or "
                           "ran with train.keep_best = false); name 'last' instead")
        return best, _with_model(best, load_checkpoint(best))
    if path.is_dir():
        plain = path / PLAIN
        if plain.exists():
            return plain, _with_model(plain, load_checkpoint(plain))
        for directory, tag in ((checkpoint_dir(path), None), (path, None), (path.parent, path.name)):
            if (directory / MARKER).exists() or (tag and (path / DEEPSPEED_MODEL_STATES).exists()):
                return consolidate(directory, tag)
        raise TTTError(f"{path}: no checkpoint here (neither checkpoints/last.pt nor a DeepSpeed checkpoint)")
    return path, _with_model(path, load_checkpoint(path))


def _with_model(path: Path, state: Any) -> dict[str, Any]:
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise TTTError(f"{path}: not a ttt checkpoint (it holds no 'model' state dict)")
    return state


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path, what: str) -> None:
    """`model.load_state_dict(state["model"])`, or one line saying why the checkpoint does not fit."""
    weights = _with_model(path, state)["model"]
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise TTTError(f"{path}: {what} does not fit this recipe's model: {first_line(exc)}") from None


# --- DeepSpeed checkpoints ------------------------------------------------------------------------


def _deepspeed_globals() -> list[Any]:
    """The classes DeepSpeed 0.19 pickles into its ZeRO optimizer-state files besides tensors and
    builtins (its model-states file needs none): the ZeRO stage, the loss scaler, fragment addresses."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no accelerator probing at import
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:  # a ZeRO-0 checkpoint reads without DeepSpeed; ZeRO 1/2 then say they need it
        return []
    return [ZeroStageEnum, LossScaler, fragment_address]


@contextlib.contextmanager
def deepspeed_weights_only() -> Iterator[None]:
    """Every `torch.load` in this block (DeepSpeed's own reader included, which asks for
    `weights_only=False`) reads with `weights_only=True`, allowing `_deepspeed_globals()` only.
    Used while consolidating or resuming a DeepSpeed checkpoint, in one thread."""
    real = torch.load

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real(*args, **kwargs)

    torch.load = safe_load
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            yield
    finally:
        torch.load = real


def consolidate(directory: Path, tag: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A DeepSpeed checkpoint (its directory and a tag, default: the last complete one) as
    (tag directory, {"model": plain fp32 state dict, "step": ...}), on CPU, without processes."""
    directory = Path(directory)
    if tag is None:
        marker = read_marker(directory)
        if marker is None:
            raise TTTError(f"{directory}: no complete DeepSpeed checkpoint ({MARKER} is missing)")
        tag = marker["tag"]
    tag_dir = directory / tag
    states = tag_dir / DEEPSPEED_MODEL_STATES
    if not states.exists():
        raise TTTError(f"{tag_dir}: not a DeepSpeed checkpoint (no {states.name})")
    with deepspeed_weights_only():
        saved = load_checkpoint(states)
        if not isinstance(saved, dict) or "module" not in saved:
            raise TTTError(f"{states}: not a DeepSpeed model-states file (no 'module')")
        if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):  # ZeRO 1/2: the fp32 master weights
            try:
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            except ImportError as exc:
                raise TTTError(f"{tag_dir}: reading a ZeRO checkpoint needs DeepSpeed ({exc}): "
                               "pip install 'ttt-core[deepspeed]'") from None

            try:
                with contextlib.redirect_stdout(sys.stderr):  # it prints progress; `ttt eval` prints JSON
                    model = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag)
            except Exception as exc:  # noqa: BLE001 - its readers raise ValueError, UnpicklingError, ...
                raise TTTError(
                    f"{tag_dir}: cannot consolidate this DeepSpeed checkpoint ({type(exc).__name__}: {first_line(exc)})"
                ) from None
        else:  # ZeRO 0: the module's own state dict
            model = saved["module"]
    ours = saved.get("ttt", {})
    return tag_dir, {"model": dict(model), "step": ours.get("step"), "recipe": ours.get("recipe")}
