"""Multi-process training through DeepSpeed: the launcher, one rank's worker, and the engine's step.

`ttt run --nproc N RECIPE` (`launch`) checks what can be checked without processes (the DeepSpeed
config for N ranks, also through DeepSpeed's own parser; the run directory; a checkpoint's world size),
then starts N ranks on this node through `torch.distributed.run` (standalone, no restarts). Each rank
runs `python -m ttt_core.train.worker RECIPE --out RUN_DIR` (`worker_main`); several nodes start
that same module with the `deepspeed` launcher or `torchrun` (README).

One optimizer step reads the global batch of `[train] batch_size` samples that one process would
read (`task.train_batch(step, batch_size)`); micro-step m of rank r takes its micro-batch number
`m * world + r`, so every layout with the same world x micro-batch x accumulation sees the same data.
The inner loop runs inside the engine's forward (`autograd.grad` only: ZeRO's gradient hooks fire on
`.grad` accumulation, which only the outer `engine.backward` does). Rank 0 alone shows progress and
writes metrics and reports; metrics are averaged over ranks.

Checkpoints: `engine.save_checkpoint` on every rank under one tag (`checkpoints/deepspeed/step{N}`), our
own state (step, RNG of every rank, data position, recipe and its hash) in `client_state["ttt"]`; once
every rank has returned, rank 0 atomically writes the marker `last.json` naming the tag, then deletes
older tags. A run killed at any point resumes from the last marked tag. `consolidate` turns a
checkpoint into a plain state dict without processes (`ttt eval`, `train.init_from`).

Faults: a rank that dies or raises ends its process; the launcher stops the others within seconds. A
rank that hangs is bounded by `[distributed] timeout_s` (DeepSpeed's own groups included).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch

from ttt_core import deepspeed_config
from ttt_core.errors import TTTError
from ttt_core.recipe import Recipe, dumps_toml
from ttt_core.train.checkpoint import load_checkpoint, write_text_atomic
from ttt_core.train.trainer import Trainer, check_run_dir, evaluate_totals, pick_device, step_loss

MARKER = "last.json"
WORKER = "ttt_core.train.worker"
# DeepSpeed's pydantic config classes -> the [deepspeed] key they validate, for error messages
BLOCKS = {
    "DeepSpeedZeroConfig": "zero_optimization",
    "DeepSpeedBF16Config": "bf16",
    "DeepSpeedFP16Config": "fp16",
    "DeepSpeedActivationCheckpointingConfig": "activation_checkpointing",
    "DeepSpeedFlopsProfilerConfig": "flops_profiler",
    "DeepSpeedCommsConfig": "comms_logger",
}


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "deepspeed"


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The last complete checkpoint of a DeepSpeed checkpoint directory, or None."""
    path = Path(directory) / MARKER
    return json.loads(path.read_text()) if path.exists() else None


# --- before any process group --------------------------------------------------------------------


def _use_cpu_accelerator(recipe: Recipe) -> bool:
    """DeepSpeed picks its accelerator when first imported: tell it before that."""
    cpu = pick_device(recipe.train.device).type == "cpu"
    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    return cpu


def _import_deepspeed(recipe: Recipe):
    _use_cpu_accelerator(recipe)
    try:
        import deepspeed
    except ImportError as exc:
        raise TTTError(
            f"{recipe.source}: [distributed] backend = \"deepspeed\" needs DeepSpeed ({exc}): "
            "pip install 'ttt-core[deepspeed]'"
        ) from None
    if os.environ.get("TTT_DEBUG", "") in ("", "0"):
        deepspeed.utils.logger.setLevel(logging.WARNING)
    return deepspeed


def resolve_config(recipe: Recipe, world_size: int) -> dict[str, Any]:
    """The config for `deepspeed.initialize` on `world_size` ranks, checked by our rules (see
    `ttt_core.deepspeed_config`) and by DeepSpeed's own parser; TTTError lists every problem."""
    prefix = f"{recipe.source}: [deepspeed]"
    clip_norm = getattr(recipe["optimizer"].config, "clip_norm", None)
    try:
        config = deepspeed_config.resolve(recipe.deepspeed or {}, recipe.train.batch_size, clip_norm, world_size)
    except ValueError as exc:
        raise TTTError(*(f"{prefix} {line}" for line in str(exc).splitlines())) from None
    _import_deepspeed(recipe)
    import deepspeed.comm
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = config
    if not deepspeed.comm.is_initialized():  # DeepSpeed then assumes one rank: give it a batch for one
        parsed = dict(config, train_batch_size=config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"])
    try:
        DeepSpeedConfig(parsed)
    except Exception as exc:  # noqa: BLE001 - pydantic ValidationError, DeepSpeedConfigError, ValueError, ...
        errors = getattr(exc, "errors", None)
        if callable(errors):
            block = BLOCKS.get(getattr(exc, "title", ""), getattr(exc, "title", "?"))
            lines = [f"{block}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()]
        else:
            lines = [f"DeepSpeed rejects the config: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"]
        raise TTTError(*(f"{prefix} {line}" for line in lines)) from None
    return config


def check_resume_world(recipe: Recipe, run_dir: Path, world_size: int) -> None:
    marker = read_marker(checkpoint_dir(run_dir))
    if marker and marker["world_size"] != world_size and marker["zero_stage"] > 0:
        raise TTTError(
            f"{run_dir}: the checkpoint at step {marker['step']} was saved by {marker['world_size']} ranks with ZeRO "
            f"stage {marker['zero_stage']}, whose optimizer state DeepSpeed cannot re-partition; resume it with "
            f"--nproc {marker['world_size']}"
        )


# --- the launcher ---------------------------------------------------------------------------------


def launch(recipe: Recipe, run_dir: Path, recipe_arg: str, overrides: list[str], nproc: int, quiet: bool) -> int:
    """`ttt run --nproc N`: check, then run N ranks of `worker_main` on this node."""
    if nproc < 1:
        raise TTTError(f"--nproc must be >= 1; got {nproc}")
    resolve_config(recipe, nproc)
    check_run_dir(recipe, run_dir, (checkpoint_dir(run_dir) / MARKER).exists())
    check_resume_world(recipe, run_dir, nproc)

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the ranks import the same ttt_core as this process (a source checkout may shadow an install)
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    if nproc > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun would set, without its banner
    worker_args = [recipe_arg, "--out", str(run_dir), *(a for o in overrides for a in ("--set", o))]
    if quiet:
        worker_args.append("--quiet")
    argv = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
            "-m", WORKER, *worker_args]
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        raise TTTError(*failure_lines(exc, run_dir, nproc)) from None
    return 0


def failure_lines(exc, run_dir: Path, nproc: int) -> list[str]:
    """What failed first (not the ranks the launcher then stopped), and where the run can resume from."""
    failures = sorted(exc.failures.items())
    causes = [(r, f) for r, f in failures if not (f.exitcode < 0 and f.signal_name() == "SIGTERM")] or failures
    lines = []
    for rank, failure in causes:
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
        generic = message.startswith(("Signal ", "To enable traceback"))  # torch's text when there is no error file
        detail = message.strip().splitlines()[0] if message.strip() and not generic else ""
        for ours in ("TTTError: ", "RecipeError: ", "PluginError: ", "RegistryError: "):  # already user-facing
            detail = detail.removeprefix(ours)
        lines.append(f"{run_dir}: rank {rank} {how}{': ' + detail if detail else ''}")
    if len(causes) < nproc:
        lines[-1] += "; the other ranks were stopped"
    marker = read_marker(checkpoint_dir(run_dir))
    if marker:
        lines.append(
            f"{run_dir}: last complete checkpoint: step {marker['step']} ({checkpoint_dir(run_dir) / marker['tag']}); "
            f"resume with: ttt run {run_dir} --nproc {nproc}"
        )
    else:
        lines.append(f"{run_dir}: no checkpoint was completed")
    return lines


# --- one rank -------------------------------------------------------------------------------------


def init_process_group(recipe: Recipe, device: torch.device) -> None:
    deepspeed = _import_deepspeed(recipe)
    import torch.distributed.distributed_c10d as c10d

    timeout = datetime.timedelta(seconds=recipe.distributed.timeout_s)
    # DeepSpeed makes its data-parallel groups with new_group() and no timeout, which then get these
    # defaults (30 min gloo / 10 min nccl) whatever init_distributed was given: a hung rank would block
    # the others that long
    c10d.default_pg_timeout = timeout
    if getattr(c10d, "default_pg_nccl_timeout", None) is not None:
        c10d.default_pg_nccl_timeout = timeout
    if device.type == "cpu":
        # the shared-memory op only serves inference all-reduce; marking it unusable skips its JIT build
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout, verbose=False)


def check_parameters(model: torch.nn.Module) -> None:
    zero_dim = [name for name, p in model.named_parameters() if p.dim() == 0]
    if zero_dim:
        raise TTTError(
            f"parameters {', '.join(zero_dim)} are 0-dimensional, which deepspeed.initialize cannot broadcast; "
            "give them shape (1,)"
        )


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss whose gradient is zero for every parameter: a micro-batch that contributes nothing."""
    return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.zeros(()))


class DeepSpeedTrainer(Trainer):
    """The trainer's loop with the model inside a DeepSpeed engine: one rank of a data-parallel run."""

    def __init__(self, recipe: Recipe, run_dir: Path, config: dict[str, Any], *, rank: int, world: int, quiet: bool = False) -> None:
        import deepspeed

        super().__init__(recipe, run_dir, quiet=quiet, rank=rank)
        self.rank, self.world, self.config = rank, world, config
        self.micro, self.gas = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
        self.checkpoint_dir = checkpoint_dir(self.run_dir)
        check_parameters(self.model)
        if not self.has_checkpoint() and recipe.train.init_from:
            self.initialise_from(recipe.train.init_from)  # before the engine copies the weights
        self.scheduler = self.optimizer.lr_scheduler()
        self.engine, *_ = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer.optimizer, lr_scheduler=self.scheduler, config=config
        )

    # --- checkpoints ------------------------------------------------------------------------------

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / MARKER).exists()

    def checkpoint_location(self) -> Path:
        return self.checkpoint_dir

    def save(self) -> None:
        import torch.distributed as dist

        rng = [None] * self.world
        dist.all_gather_object(rng, rng_state())
        resolved = self.recipe.resolved()
        tag = f"step{self.step}"
        ours = {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "elapsed": self.elapsed,
            "samples_seen": self.step * self.recipe.train.batch_size,  # the data position
            "rng": rng,
            "recipe": resolved,
            "recipe_sha256": hashlib.sha256(dumps_toml(resolved).encode()).hexdigest(),
            "world_size": self.world,
        }
        self.engine.save_checkpoint(str(self.checkpoint_dir), tag=tag, client_state={"ttt": ours}, save_latest=False)
        dist.barrier()  # every rank's files are written: only now is the tag complete
        if self.is_main:
            marker = {"tag": tag, "step": self.step, "world_size": self.world,
                      "zero_stage": self.engine.zero_optimization_stage()}
            write_text_atomic(self.checkpoint_dir / MARKER, json.dumps(marker) + "\n")
            for old in self.checkpoint_dir.glob("step*"):
                if old.name != tag and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        if not self.has_checkpoint():
            return False  # init_from, if any, was loaded before the engine was built
        marker = read_marker(self.checkpoint_dir)
        check_resume_world(self.recipe, self.run_dir, self.world)
        path, client = self.engine.load_checkpoint(str(self.checkpoint_dir), tag=marker["tag"])
        if path is None:
            raise TTTError(f"{self.checkpoint_dir / marker['tag']}: DeepSpeed could not load this checkpoint")
        ours = client["ttt"]
        self.step, self.bad_steps, self.elapsed = ours["step"], ours["bad_steps"], ours["elapsed"]
        set_rng_state(ours["rng"][self.rank] if ours["world_size"] == self.world else ours["rng"][0])
        self.metrics.truncate_after(self.step)
        return True

    # --- the step ---------------------------------------------------------------------------------

    def _all_finite(self, loss: torch.Tensor, out) -> bool:
        import torch.distributed as dist

        inner = out.stats.get("inner_loss")
        finite = bool(torch.isfinite(loss)) and (inner is None or bool(torch.isfinite(inner).all()))
        flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
        dist.all_reduce(flag)
        return flag.item() == 0.0

    def train_step(self) -> dict[str, Any] | None:
        """One optimizer step of `gas` micro-batches per rank; None if it was skipped.

        A non-finite loss on any rank skips the step on every rank, as in one process (no update; the
        schedule moves on). With gradient accumulation, a non-finite micro-batch after the first one
        drops itself and the rest of the step; the micro-batches already accumulated still update.
        """
        import torch.distributed as dist

        train = self.recipe.train
        per_step = train.batch_size // self.micro
        episodes = [
            self.task.train_batch(self.step * per_step + m * self.world + self.rank, self.micro).to(self.device)
            for m in range(self.gas)
        ]
        # DeepSpeed averages the micro-batch losses over ranks and accumulation steps: dividing each by
        # its share of the global target-token count makes that the mean over the global batch
        tokens = torch.stack([e.target.mask.sum() for e in episodes]).sum().double().reshape(1).to(self.device)
        dist.all_reduce(tokens)
        denominator = tokens.item() / (self.world * self.gas)
        sums: dict[str, torch.Tensor] = {}
        shapes: dict[str, bool] = {}
        lr = self.optimizer.optimizer.param_groups[0]["lr"]
        skipped, grad_norm = self.engine.skipped_steps, None
        for m, episode in enumerate(episodes):
            loss, out = step_loss(self.model, episode, denominator, forward=self.engine,
                                  precision=self.recipe.train.precision)
            if not self._all_finite(loss, out):
                if m == 0:  # nothing accumulated yet: skip the step as one process does
                    self._advance_schedule()
                    return None
                # later micro-batches drop out; those already accumulated still make the update
                for _ in range(m, self.gas):
                    self.engine.backward(zero_loss(self.model))
                    self.engine.step()
                return None
            self.engine.backward(loss)
            metrics = self.task.metrics(out.logits.detach(), episode)
            values = {"loss": loss.detach(), **{k: v.float().mean() for k, v in metrics.items()}}
            values.update({k: v.detach() for k, v in out.stats.items() if k != "outer_term"})
            for name, value in values.items():
                shapes[name] = value.dim() == 0
                sums[name] = sums.get(name, 0) + value.float().reshape(-1)
            if m == self.gas - 1:
                grad_norm = self._grad_norm_before_step()
            self.engine.step()
        if self.engine.skipped_steps != skipped:  # ZeRO 1/2 found a non-finite gradient and skipped
            self._advance_schedule()
            return None
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None and not math.isfinite(grad_norm):
            return None  # ZeRO 0: the gradients were dropped before the step, which changed nothing
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        names = list(sums)
        flat = torch.cat([sums[name] for name in names]).to(self.device)
        dist.all_reduce(flat)  # one collective for every metric: the mean over ranks and micro-batches
        parts = (flat / (self.world * self.gas)).cpu().split([sums[name].numel() for name in names])
        record = {name: float(part) if shapes[name] else part.tolist() for name, part in zip(names, parts)}
        stats = {"lr": lr, "grad_norm": grad_norm}
        return {"loss": record.pop("loss"), **{k: record.pop(k) for k in metrics}, **stats, **record}

    def _grad_norm_before_step(self) -> float | None:
        """ZeRO 0 with a torch optimizer reports no gradient norm: compute it from the averaged
        gradients (and drop a non-finite gradient so that the step changes nothing)."""
        if hasattr(self.engine.optimizer, "_global_grad_norm"):
            return None
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))) if grads else 0.0
        if not torch.isfinite(torch.tensor(norm)):
            for p in self.model.parameters():
                p.grad = None  # the torch optimizer skips parameters without a gradient
        return norm

    def _advance_schedule(self) -> None:
        """A skipped step still counts, as in one process: keep the schedule in step with it."""
        if self.scheduler is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
                self.scheduler.step()

    def evaluate(self, split: str, samples: int) -> dict[str, float]:
        """Every rank evaluates its share of the batches; the sums are combined."""
        import torch.distributed as dist

        shard = evaluate_totals(self.model, self.task, split, samples, self.recipe.eval.batch_size, self.device,
                                shard=(self.rank, self.world), precision=self.recipe.train.precision)
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, shard)
        totals: dict[str, float] = {}
        for part, _ in gathered:
            for name, value in part.items():
                totals[name] = totals.get(name, 0.0) + value
        count = sum(n for _, n in gathered)
        return {name: total / count for name, total in totals.items()} | {"samples": count}


def rng_state() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- reading a checkpoint without processes -------------------------------------------------------


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
    states = tag_dir / "mp_rank_00_model_states.pt"
    if not states.exists():
        raise TTTError(f"{tag_dir}: not a DeepSpeed checkpoint (no {states.name})")
    saved = load_checkpoint(states)
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):  # ZeRO 1/2: the fp32 master weights
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(sys.stderr):  # it prints progress; `ttt eval` prints JSON
            model = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag)
    else:  # ZeRO 0: the module's own state dict
        model = saved["module"]
    ours = saved.get("ttt", {})
    return tag_dir, {"model": dict(model), "step": ours.get("step"), "recipe": ours.get("recipe")}


# --- entry point of one rank ----------------------------------------------------------------------


def exit_rank(code: int) -> NoReturn:
    """End a finished rank without running C++ static destructors: a gloo/DeepSpeed thread still
    joinable there aborts the rank now and then ("terminate called without an active exception",
    SIGABRT after a complete run). Call it once every file is written and the process group is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def worker_main(argv: list[str] | None = None) -> int:
    from ttt_core.train.launch import resolve_run, summary

    parser = argparse.ArgumentParser(
        prog=f"python -m {WORKER}",
        description="One rank of a DeepSpeed run (started by `ttt run --nproc N`, torchrun or the deepspeed launcher).",
    )
    parser.add_argument("recipe", help="a recipe .toml, or a run directory to resume")
    parser.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher; LOCAL_RANK is used
    args = parser.parse_args(argv)
    # torch deprecation notices from inside DeepSpeed's ZeRO collectives, once per rank: not actionable here
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        recipe, run_dir = resolve_run(args.recipe, args.out, args.overrides)
        if recipe.distributed.backend != "deepspeed":
            raise TTTError(f"{recipe.source}: [distributed] backend is '{recipe.distributed.backend}', not 'deepspeed'")
        device = pick_device(recipe.train.device)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        config = resolve_config(recipe, world)  # every config problem before the process group starts
        init_process_group(recipe, device)
        report = DeepSpeedTrainer(recipe, run_dir, config, rank=rank, world=world, quiet=args.quiet).run()
        if rank == 0:
            print(summary(run_dir, report))
        import torch.distributed as dist

        dist.destroy_process_group()
        return 0
    except TTTError as exc:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(exc)  # the launcher's failure report shows the message
        print("\n".join(f"[rank {rank}] {line}" for line in exc.lines), file=sys.stderr)
        return 2

