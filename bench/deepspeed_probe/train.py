"""Train the tiny inner-loop model under a DeepSpeed engine; print/record the global mean loss per step.

Run (from this folder):
  DS_ACCELERATOR=cpu python -m torch.distributed.run --nproc_per_node 2 train.py --stage 2 --micro 4
  DS_ACCELERATOR=cpu python -m torch.distributed.run --nproc_per_node 1 train.py --stage 2 --micro 8
Micro-step m of rank r of optimizer step s reads rows [(m*world + r)*micro, +micro) of the global
batch of step s, so world x micro x gas layouts with the same product see the same data.
"""
import argparse
import datetime
import json
import os
import sys

import faulthandler
import signal

import torch

from common import Stamp, build, ds_config, global_batch

p = argparse.ArgumentParser()
p.add_argument("--stage", type=int, default=0)
p.add_argument("--order", type=int, default=1, choices=[1, 2])
p.add_argument("--micro", type=int, default=4)
p.add_argument("--gas", type=int, default=1)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--clip", type=float, default=0.0)
p.add_argument("--bf16", action="store_true")
p.add_argument("--z3-persist", type=int, default=None, help="stage3_param_persistence_threshold (0: partition every param)")
p.add_argument("--model", default="fastw", choices=["fastw", "param", "memtok", "functional"])
p.add_argument("--scalar-0d", action="store_true", help="0-dim log_lr parameter (fails in _broadcast_model)")
p.add_argument("--autocast", action="store_true", help='"torch_autocast": bf16 autocast, fp32 params')
p.add_argument("--lr", type=float, default=1e-2)
p.add_argument("--out", default=None, help="rank 0 writes {losses, param_sum} here")
p.add_argument("--save-dir", default=None)
p.add_argument("--save-at", type=int, default=-1, help="save after this many optimizer steps")
p.add_argument("--resume", default=None, help="checkpoint dir to resume from (tag from 'latest')")
p.add_argument("--timeout", type=float, default=600.0, help="process-group timeout, seconds")
p.add_argument("--patch-group-timeout", action="store_true",
               help="also give DeepSpeed's own new_group()s the --timeout (they ignore init_distributed's)")
p.add_argument("--no-shm", action="store_true",
               help="mark the shm comm op incompatible so init_distributed does not JIT-build it")
p.add_argument("--fault", default=None,
               help="'raise:R:S' rank R raises at step S; 'kill:R:S' SIGKILLs itself; 'hang:R:S' sleeps")
args = p.parse_args()

faulthandler.register(signal.SIGUSR1)   # kill -USR1 <pid> prints every thread's stack
Stamp.log("start; importing deepspeed")
import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402

Stamp.log("imported deepspeed", deepspeed.__version__, "triton imported:", "triton" in sys.modules)
if args.no_shm:
    # the op (csrc/cpu/comm/shm*.cpp) only serves inference_all_reduce; training uses gloo collectives
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
if args.patch_group_timeout:
    # DeepSpeed creates its data-parallel groups with dist.new_group(ranks) and no timeout, so torch
    # gives them _get_default_timeout(backend): 30 min (gloo) / 10 min (nccl), whatever was passed to
    # init_distributed. These two module globals are what that function reads.
    import torch.distributed.distributed_c10d as c10d
    c10d.default_pg_timeout = datetime.timedelta(seconds=args.timeout)
    if c10d.default_pg_nccl_timeout is not None:
        c10d.default_pg_nccl_timeout = datetime.timedelta(seconds=args.timeout)
deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=args.timeout))
rank, world = dist.get_rank(), dist.get_world_size()
Stamp.log("process group up, world", world)

torch.manual_seed(0)
model = build(args.model, args.order == 2, lr_shape=() if args.scalar_0d else (1,))
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))   # 3-step warmup
cfg = ds_config(args.stage, args.micro, args.gas, world, args.clip, args.bf16)
if args.autocast:
    cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
if args.z3_persist is not None:
    cfg["zero_optimization"].update(stage3_param_persistence_threshold=args.z3_persist,
                                    stage3_model_persistence_threshold=args.z3_persist)
engine, opt_ds, _, sched_ds = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=cfg)
Stamp.log("engine up:", type(engine.optimizer).__name__, "dtype", next(engine.module.parameters()).dtype)

start = 0
if args.resume:
    path, client = engine.load_checkpoint(args.resume)
    start = client["step"]
    torch.set_rng_state(client["torch_rng"])
    Stamp.log("resumed from", path, "at step", start)

losses = {}
for step in range(start, args.steps):
    if args.fault:
        kind, frank, fstep = args.fault.split(":")
        if rank == int(frank) and step == int(fstep):
            Stamp.log("FAULT", kind)
            if kind == "raise":
                raise RuntimeError("injected fault")
            if kind == "kill":
                os.kill(os.getpid(), 9)
            if kind == "hang":
                import time
                time.sleep(3600)
    batch = global_batch(step, world * args.micro * args.gas)
    acc = torch.zeros(())
    for m in range(args.gas):
        lo = (m * world + rank) * args.micro
        ctx, query, target = (t[lo:lo + args.micro] for t in batch)
        dt = next(engine.module.parameters()).dtype
        loss = engine(ctx.to(dt), query.to(dt), target.to(dt))
        engine.backward(loss)
        engine.step()
        acc += loss.detach().float()
    dist.all_reduce(acc)                      # SUM, then average over ranks and micro-steps
    losses[step] = acc.item() / (world * args.gas)
    if rank == 0:
        Stamp.log(f"step {step} loss {losses[step]:.8f} lr {sched.get_last_lr()[0]:.5f}")
    if args.save_dir and step + 1 == args.save_at:
        engine.save_checkpoint(args.save_dir, tag=f"step{step + 1}",
                               client_state={"step": step + 1, "torch_rng": torch.get_rng_state()})
        Stamp.log("saved", args.save_dir, f"step{step + 1}")

with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=args.stage == 3):
    psum = sum(p.detach().double().sum().item() for p in engine.module.parameters())
if rank == 0 and args.out:
    with open(args.out, "w") as f:
        json.dump({"losses": losses, "param_sum": psum}, f)
Stamp.log("done; param_sum", f"{psum:.10f}")
dist.barrier()
dist.destroy_process_group()
