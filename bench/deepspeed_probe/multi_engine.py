"""Several engines (ZeRO 0/1/2 x first/second order) one after another in ONE launch, to amortise the
process start-up in tests. Rank 0 prints the max |loss difference| against plain torch per engine.

  DS_ACCELERATOR=cpu python -m torch.distributed.run --standalone --nproc_per_node 2 multi_engine.py
"""
import time

import deepspeed
import torch
import torch.distributed as dist

from common import build, ds_config, global_batch

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False   # no JIT build (see NOTES.md)
deepspeed.init_distributed(dist_backend="gloo")
rank, world = dist.get_rank(), dist.get_world_size()
B, STEPS, CLIP = 4, 5, 0.05


def reference(order):
    torch.manual_seed(0)
    model = build("memtok", order == 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    out = []
    for step in range(STEPS):
        loss = model(*global_batch(step, B * world))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step(); opt.zero_grad()
        out.append(loss.item())
    return out


for order in (1, 2):
    ref = reference(order)
    for stage in (0, 1, 2):
        t = time.time()
        torch.manual_seed(0)
        model = build("memtok", order == 2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                          config=ds_config(stage, B, 1, world, CLIP))
        worst = 0.0
        for step in range(STEPS):
            ctx, q, tgt = (x[rank * B:(rank + 1) * B] for x in global_batch(step, B * world))
            loss = engine(ctx, q, tgt)
            engine.backward(loss)
            engine.step()
            avg = loss.detach().clone()
            dist.all_reduce(avg)
            worst = max(worst, abs(avg.item() / world - ref[step]))
        if rank == 0:
            print(f"order {order} stage {stage}: max|dloss| vs plain torch {worst:.1e} "
                  f"(engine init + {STEPS} steps {time.time() - t:.1f}s)", flush=True)
        engine.destroy() if hasattr(engine, "destroy") else None
        del engine, opt, model
dist.barrier()
dist.destroy_process_group()
