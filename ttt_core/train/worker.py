"""One rank of a DeepSpeed run: ``python -m ttt_core.train.worker RECIPE --out RUN_DIR [--set KEY=VALUE]``.

`ttt run --nproc N` starts N of these on one node; on several nodes start them with `torchrun` or the
`deepspeed` launcher (README). The code is `ttt_core.train.distributed.worker_main`; this module only
runs it, so that it is not imported twice (once as ``__main__``).
"""

import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from ttt_core.train.distributed import worker_main

if __name__ == "__main__":
    code = record(worker_main)()
    # Every file is written and the process group is gone; leave without running C++ static
    # destructors: a gloo/DeepSpeed thread still joinable there aborts the finished rank now and then
    # ("terminate called without an active exception", SIGABRT after a complete run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
