"""`DeepSpeedStep`: the trainer's step backend with the model inside a DeepSpeed engine, one rank of a
data-parallel run.

One optimizer step reads the global batch of `[train] batch_size` samples that one process would
read (`task.train_batch(step, batch_size)`); micro-step m of rank r takes its micro-batch number
`m * world + r`, so every layout with the same world x micro-batch x accumulation sees the same data.
The inner loop runs inside the engine's forward (`autograd.grad` only: ZeRO's gradient hooks fire on
`.grad` accumulation, which only the outer `engine.backward` does). Rank 0 alone shows progress and
writes metrics and reports; metrics are averaged over ranks.

Checkpoints: `engine.save_checkpoint` on every rank under one tag (`checkpoints/deepspeed/step{N}`), our
own state (step, RNG of every rank, data position, recipe and its hash) in `client_state["ttt"]`; once
every rank has returned, rank 0 atomically writes the marker naming the tag, then deletes the tags
beyond the `train.keep_last` newest (`ttt_core.train.checkpoint` owns the format). `checkpoints/best.pt`
holds rank 0's module weights (ZeRO 0-2 keep them whole on every rank), in the module's dtype. A run killed at any point resumes from the last marked tag.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ttt_core.distributed.launch import check_resume_world, import_deepspeed
from ttt_core.errors import TTTError, first_line
from ttt_core.objective import evaluate_totals, is_finite, mean_of_totals, step_loss
from ttt_core.recipe import Recipe, dumps_toml
from ttt_core.train.backends import Progress, StepContext, eval_progress, save_best
from ttt_core.train.checkpoint import checkpoint_dir, deepspeed_weights_only, read_marker, write_marker


def init_process_group(recipe: Recipe, device: torch.device) -> None:
    deepspeed = import_deepspeed(recipe)
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


def rng_state() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class DeepSpeedStep:
    """The step, evaluation and checkpoints of one rank: the engine is made once the weights are final."""

    def __init__(self, config: dict[str, Any], world: int) -> None:
        self.config, self.world = config, world
        self.micro, self.gas = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
        self.engine = None

    def bind(self, context: StepContext) -> None:
        self.context = context
        self.rank = context.rank
        self.checkpoint_dir = checkpoint_dir(context.run_dir)
        check_parameters(context.model)

    def start(self) -> None:
        """`deepspeed.initialize` copies the weights (ZeRO's fp32 partitions): after `train.init_from`."""
        if self.engine is not None:
            return
        import deepspeed

        optimizer = self.context.optimizer
        self.scheduler = optimizer.lr_scheduler()
        self.engine, *_ = deepspeed.initialize(
            model=self.context.model, optimizer=optimizer.optimizer, lr_scheduler=self.scheduler, config=self.config
        )

    # --- checkpoints ------------------------------------------------------------------------------

    def has_checkpoint(self) -> bool:
        return read_marker(self.checkpoint_dir) is not None

    def last_checkpoint(self) -> tuple[Path, int] | None:
        marker = read_marker(self.checkpoint_dir)
        return (self.checkpoint_dir / marker["tag"], marker["step"]) if marker else None

    def save(self, progress: Progress) -> None:
        import torch.distributed as dist

        c = self.context
        rng: list[Any] = [None] * self.world
        dist.all_gather_object(rng, rng_state())
        resolved = c.recipe.resolved()
        tag = f"step{progress.step}"
        ours = {
            "step": progress.step,
            "bad_steps": progress.bad_steps,
            "elapsed": progress.elapsed,
            "samples_seen": progress.step * c.recipe.train.batch_size,  # the data position
            "rng": rng,
            "recipe": resolved,
            "recipe_sha256": hashlib.sha256(dumps_toml(resolved).encode()).hexdigest(),
            "world_size": self.world,
            **progress.extra(),
        }
        self.engine.save_checkpoint(str(self.checkpoint_dir), tag=tag, client_state={"ttt": ours}, save_latest=False)
        dist.barrier()  # every rank's files are written: only now is the tag complete
        if c.is_main:
            write_marker(self.checkpoint_dir, tag, progress.step, self.world, self.engine.zero_optimization_stage())
            tags = sorted((int(d.name[4:]), d) for d in self.checkpoint_dir.glob("step*")
                          if d.is_dir() and d.name[4:].isdigit() and d.name != tag)
            for _, old in tags[: max(0, len(tags) - (c.recipe.train.keep_last - 1))]:
                shutil.rmtree(old, ignore_errors=True)

    def save_best(self, progress: Progress) -> None:
        if self.context.is_main:
            save_best(self.context, progress)

    def load(self) -> Progress:
        marker = read_marker(self.checkpoint_dir)
        check_resume_world(self.context.recipe, self.context.run_dir, self.world)
        tag_dir = self.checkpoint_dir / marker["tag"]
        try:
            with deepspeed_weights_only():
                path, client = self.engine.load_checkpoint(str(self.checkpoint_dir), tag=marker["tag"])
        except TTTError:
            raise
        except Exception as exc:  # noqa: BLE001 - unpickling, shape and key errors of a foreign checkpoint vary
            raise TTTError(f"{tag_dir}: DeepSpeed could not load this checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
        if path is None:
            raise TTTError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
        ours = (client or {}).get("ttt")
        if not isinstance(ours, dict):
            raise TTTError(f"{tag_dir}: not a checkpoint of a ttt run (no 'ttt' client state)")
        set_rng_state(ours["rng"][self.rank] if ours["world_size"] == self.world else ours["rng"][0])
        return Progress.from_state(ours)

    # --- the step ---------------------------------------------------------------------------------

    def _all_finite(self, loss: torch.Tensor, out) -> bool:
        import torch.distributed as dist

        flag = torch.tensor([0.0 if is_finite(loss, out) else 1.0], device=self.context.device)
        dist.all_reduce(flag)
        return flag.item() == 0.0

    def train_step(self, step: int) -> dict[str, Any] | None:
        """One optimizer step of `gas` micro-batches per rank; None if it was skipped.

        A non-finite loss on any rank skips the step on every rank, as in one process (no update; the
        schedule moves on). With gradient accumulation, a non-finite micro-batch after the first one
        drops itself and the rest of the step; the micro-batches already accumulated still update.
        """
        import torch.distributed as dist

        c = self.context
        model, device = c.model, c.device
        per_step = c.recipe.train.batch_size // self.micro
        episodes = [
            c.task.train_batch(step * per_step + m * self.world + self.rank, self.micro).to(device)
            for m in range(self.gas)
        ]
        # DeepSpeed averages the micro-batch losses over ranks and accumulation steps: dividing each by
        # its share of the global target-token count makes that the mean over the global batch
        tokens = torch.stack([e.target.mask.sum() for e in episodes]).sum().double().reshape(1).to(device)
        dist.all_reduce(tokens)
        denominator = tokens.item() / (self.world * self.gas)
        sums: dict[str, torch.Tensor] = {}
        shapes: dict[str, bool] = {}
        lr = c.optimizer.optimizer.param_groups[0]["lr"]
        skipped, grad_norm = self.engine.skipped_steps, None
        for m, episode in enumerate(episodes):
            loss, out = step_loss(model, episode, denominator, forward=self.engine, precision=c.recipe.train.precision)
            if not self._all_finite(loss, out):
                if m == 0:  # nothing accumulated yet: skip the step as one process does
                    self._advance_schedule()
                    return None
                # later micro-batches drop out; those already accumulated still make the update
                for _ in range(m, self.gas):
                    self.engine.backward(zero_loss(model))
                    self.engine.step()
                return None
            self.engine.backward(loss)
            metrics = c.task.metrics(out.logits.detach(), episode)
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
        flat = torch.cat([sums[name] for name in names]).to(device)
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
        model = self.context.model
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))) if grads else 0.0
        if not torch.isfinite(torch.tensor(norm)):
            for p in model.parameters():
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

        c = self.context
        shard = evaluate_totals(c.model, c.task, split, samples, c.recipe.eval.batch_size, c.device,
                                shard=(self.rank, self.world), precision=c.recipe.train.precision,
                                progress=eval_progress(c, split, samples) if c.is_main else None)
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, shard)
        totals: dict[str, float] = {}
        for part, _ in gathered:
            for name, value in part.items():
                totals[name] = totals.get(name, 0.0) + value
        return mean_of_totals(totals, sum(n for _, n in gathered))
