"""Inject a fault into rank 1 at step 3 and time how long the other rank / the launcher take to exit.

  DS_ACCELERATOR=cpu python fault_probe.py --kind raise|kill|hang [--launcher torchrun|manual]
      [--timeout 30] [--stage 2]
launcher=torchrun: python -m torch.distributed.run --nproc_per_node 2 (max restarts 0, the default).
launcher=manual: two plain processes with RANK/WORLD_SIZE/MASTER_ADDR set, no supervising agent, to
see what the surviving rank does on its own.
"""
import argparse
import os
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--kind", default="raise", choices=["raise", "kill", "hang"])
p.add_argument("--launcher", default="torchrun", choices=["torchrun", "manual"])
p.add_argument("--timeout", type=float, default=600.0, help="process-group timeout passed to train.py")
p.add_argument("--stage", default="2")
p.add_argument("--limit", type=float, default=240.0, help="give up after this many seconds")
p.add_argument("--patch", action="store_true", help="train.py --patch-group-timeout")
p.add_argument("--extra", default="", help="extra torchrun flags, e.g. '--monitor-interval 1'")
args = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
train = ["train.py", "--stage", args.stage, "--steps", "1000", "--micro", "2", "--timeout", str(args.timeout),
         "--fault", f"{args.kind}:1:3"] + (["--patch-group-timeout"] if args.patch else [])
env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
t_fault = [None]
lines = []


def pump(proc, name):
    for ln in proc.stdout:
        now = time.time()
        if "FAULT" in ln and t_fault[0] is None:
            t_fault[0] = now
        lines.append((now, name, ln.rstrip()))


if args.launcher == "torchrun":
    procs = {"torchrun": subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args.extra.split(), *train],
        cwd=here, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)}
else:
    procs = {}
    for r in range(2):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
        procs[f"rank{r}"] = subprocess.Popen([sys.executable, *train], cwd=here, env=e,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
threads = [threading.Thread(target=pump, args=(pr, n), daemon=True) for n, pr in procs.items()]
for t in threads:
    t.start()
deadline = time.time() + args.limit
exits = {}
while time.time() < deadline and len(exits) < len(procs):
    for n, pr in procs.items():
        if n not in exits and pr.poll() is not None:
            exits[n] = (time.time(), pr.returncode)
    time.sleep(0.05)
for n, pr in procs.items():
    if n not in exits:
        # SIGTERM, not SIGKILL: torchrun forwards SIGTERM to its workers; a SIGKILLed torchrun
        # leaves its workers running as orphans.
        t_term = time.time()
        pr.terminate()
        try:
            pr.wait(60)
            how = f"SIGTERM by the probe at the limit; exited {time.time() - t_term:.1f}s later"
        except subprocess.TimeoutExpired:
            pr.kill()
            how = "did not exit 60s after SIGTERM; SIGKILLed by the probe"
        exits[n] = (None, f"still running at the {args.limit:.0f}s limit ({how})")
for t in threads:
    t.join(timeout=2)
tf = t_fault[0]
print(f"kind={args.kind} launcher={args.launcher} pg_timeout={args.timeout}s patch={args.patch} stage={args.stage} {args.extra}")
for n, (t, rc) in exits.items():
    print(f"  {n}: exit code {rc}, " + (f"{t - tf:.1f}s after the fault" if t and tf else "no exit"))
interesting = ("Error", "Exception", "SIGTERM", "Signal", "signal", "failed", "timed out", "Timeout", "Connection")
for t, n, ln in lines:
    if tf and any(w in ln for w in interesting) and "File " not in ln:
        print(f"  +{t - tf:6.1f}s {n}: {ln[:230]}")
