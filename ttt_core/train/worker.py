"""One rank of a DeepSpeed run: ``python -m ttt_core.train.worker RECIPE --out RUN_DIR [--set KEY=VALUE]``.

`ttt run --nproc N` starts N of these on one node; on several nodes start them with `torchrun` or the
`deepspeed` launcher (README). The code is `ttt_core.train.distributed.worker_main`; this module only
runs it, so that it is not imported twice (once as ``__main__``).
"""

from torch.distributed.elastic.multiprocessing.errors import record

from ttt_core.train.distributed import exit_rank, worker_main

if __name__ == "__main__":
    exit_rank(record(worker_main)())
