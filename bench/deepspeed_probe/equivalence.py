"""2 ranks x micro b == 1 rank x 2b == 1 rank x b x gas 2 == plain torch (no DeepSpeed), per ZeRO stage.

  DS_ACCELERATOR=cpu python equivalence.py [--precision fp32|bf16|autocast] [--models fastw,memtok] [--stages 0,1,2]
Prints the max |loss difference| over the steps against the plain-torch reference, and the
difference of the sum of all parameters at the end.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

p = argparse.ArgumentParser()
p.add_argument("--models", default="fastw,memtok")
p.add_argument("--orders", default="1,2")
p.add_argument("--stages", default="0,1,2")
p.add_argument("--b", type=int, default=4)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--clip", type=float, default=0.05)
p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "autocast"],
               help='bf16: "bf16": {"enabled": true} (module cast to bf16); autocast: "torch_autocast" bf16')
args = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
env = dict(os.environ, DS_ACCELERATOR="cpu")


def run(cmd):
    out = tempfile.mktemp(suffix=".json")
    t = time.time()
    r = subprocess.run(cmd + ["--out", out], cwd=here, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"FAILED: {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    res = json.load(open(out))
    res["wall"] = time.time() - t
    return res


def torchrun(n, *a):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "train.py", *a]


worst = 0.0
for model in args.models.split(","):
    for order in args.orders.split(","):
        common = ["--model", model, "--order", order, "--steps", str(args.steps), "--clip", str(args.clip)]
        # a model whose inner step is not per-example (model=param) depends on the micro-batch: compare it
        # with a reference that uses the same micro-batches (--chunks 2)
        ref = run([sys.executable, "plain.py", "--batch", str(2 * args.b)] + common
                  + (["--chunks", "2"] if model == "param" else []))
        for stage in args.stages.split(","):
            ds = common + ["--stage", stage] + {"fp32": [], "bf16": ["--bf16"], "autocast": ["--autocast"]}[args.precision]
            layouts = {
                f"2x{args.b}": torchrun(2, "--micro", str(args.b), *ds),
                f"1x{2 * args.b}": torchrun(1, "--micro", str(2 * args.b), *ds),
                f"1x{args.b}xgas2": torchrun(1, "--micro", str(args.b), "--gas", "2", *ds),
            }
            if model == "param":   # not per-example: 1 x 2b sees different micro-batches by construction
                layouts.pop(f"1x{2 * args.b}")
            for name, cmd in layouts.items():
                res = run(cmd)
                dl = max(abs(res["losses"][k] - ref["losses"][k]) for k in ref["losses"])
                dp = abs(res["param_sum"] - ref["param_sum"])
                worst = max(worst, dl)
                print(f"model={model:6} order={order} stage={stage} {name:10} max|dloss|={dl:.2e} "
                      f"|dparam_sum|={dp:.2e} last_loss={res['losses'][str(args.steps - 1)]:.6f} "
                      f"(wall {res['wall']:.1f}s)", flush=True)
print(f"worst max|dloss| vs plain torch: {worst:.2e}")
