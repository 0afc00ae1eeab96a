"""Reference without DeepSpeed: one process, the whole global batch, torch AdamW + clip_grad_norm_.

  python plain.py --model fastw --order 2 --batch 8 --clip 0.05 --out ref.json
"""
import argparse
import json

import torch

from common import build, global_batch

p = argparse.ArgumentParser()
p.add_argument("--model", default="fastw", choices=["fastw", "param", "memtok", "functional"])
p.add_argument("--order", type=int, default=1, choices=[1, 2])
p.add_argument("--batch", type=int, default=8)
p.add_argument("--chunks", type=int, default=1, help="split the batch into this many micro-batches, mean of their losses")
p.add_argument("--steps", type=int, default=6)
p.add_argument("--clip", type=float, default=0.0)
p.add_argument("--lr", type=float, default=1e-2)
p.add_argument("--out", default=None)
args = p.parse_args()

torch.manual_seed(0)
model = build(args.model, args.order == 2)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
losses = {}
for step in range(args.steps):
    batch, n = global_batch(step, args.batch), args.batch // args.chunks
    loss = 0.0
    for c in range(args.chunks):
        part = model(*(t[c * n:(c + 1) * n] for t in batch)) / args.chunks
        part.backward()
        loss = loss + part.detach()
    if args.clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    opt.step(); sched.step(); opt.zero_grad()
    losses[step] = loss.item()
    print(f"step {step} loss {losses[step]:.8f}" + (f" grad_norm {norm:.4f}" if args.clip > 0 else ""))
psum = sum(p.detach().double().sum().item() for p in model.parameters())
print(f"param_sum {psum:.10f}")
if args.out:
    json.dump({"losses": losses, "param_sum": psum}, open(args.out, "w"))
