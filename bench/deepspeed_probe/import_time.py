"""How long `import deepspeed` takes on top of `import torch`, and what it pulls in.

  python import_time.py            (DS_ACCELERATOR set or not; run a few times, first run is cold)
"""
import os
import sys
import time

t0 = time.perf_counter()
import torch  # noqa: E402,F401
t1 = time.perf_counter()
before = set(sys.modules)
import deepspeed  # noqa: E402, F401  (its import time is what this measures)
t2 = time.perf_counter()
new = set(sys.modules) - before
heavy = sorted(m for m in ("triton", "transformers", "torch._dynamo", "torch._inductor", "pydantic", "numpy",
                           "deepspeed.ops.triton_ops", "deepspeed.runtime.engine", "deepspeed.runtime.zero")
               if m in sys.modules)
print(f"DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', '(unset)')} import torch {t1 - t0:.2f}s, "
      f"import deepspeed {t2 - t1:.2f}s ({len(new)} new modules); loaded: {', '.join(heavy)}")
