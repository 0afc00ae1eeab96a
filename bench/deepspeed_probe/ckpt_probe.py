"""Save on 2 ranks at step 4, resume to step 8, compare with an uninterrupted run; consolidate.

  DS_ACCELERATOR=cpu python ckpt_probe.py [--stages 0,1,2] [--bf16] [--order 2]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from consolidate import consolidate

p = argparse.ArgumentParser()
p.add_argument("--stages", default="0,1,2")
p.add_argument("--order", default="2")
p.add_argument("--bf16", action="store_true")
args = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
env = dict(os.environ, DS_ACCELERATOR="cpu")


def train(n, *a):
    out = tempfile.mktemp(suffix=".json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "train.py",
           "--model", "memtok", "--order", args.order, "--clip", "0.05", "--out", out, *a]
    cmd += ["--bf16"] if args.bf16 else []
    r = subprocess.run(cmd, cwd=here, env=env, capture_output=True, text=True)
    if r.returncode:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines()
                 if ln.startswith("[rank0]: ") and ("Error:" in ln or "Exception:" in ln)]
        return {"error": lines[-1] if lines else r.stderr[-500:]}
    return json.load(open(out))


for stage in args.stages.split(","):
    ck = tempfile.mkdtemp(prefix=f"ck_s{stage}_")
    full = train(2, "--stage", stage, "--steps", "8")
    first = train(2, "--stage", stage, "--steps", "4", "--save-dir", ck, "--save-at", "4")
    resumed = train(2, "--stage", stage, "--steps", "8", "--resume", ck)
    d = max(abs(resumed["losses"][k] - full["losses"][k]) for k in resumed["losses"])
    print(f"stage {stage}: resumed steps {sorted(resumed['losses'])} max|dloss| vs uninterrupted = {d:.2e}; "
          f"final param_sum diff {abs(resumed['param_sum'] - full['param_sum']):.2e}")
    route, sd = consolidate(ck)
    s = sum(v.double().sum().item() for v in sd.values())
    print(f"stage {stage}: consolidated via {route}: {len(sd)} tensors, dtypes {sorted({str(v.dtype) for v in sd.values()})}, "
          f"sum diff vs engine params at save {abs(s - first['param_sum']):.2e}")
    if stage != "0":
        try:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa
        except Exception as e:  # pragma: no cover
            print("import failed", e)
    one = train(1, "--stage", stage, "--steps", "8", "--resume", ck)
    print(f"stage {stage}: resume the 2-rank checkpoint on 1 rank -> "
          + (one["error"] if "error" in one else f"ok, losses {[round(v, 6) for v in one['losses'].values()]}"))
    shutil.rmtree(ck)
