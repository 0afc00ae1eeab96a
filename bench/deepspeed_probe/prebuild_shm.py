"""Build (or find in the cache) DeepSpeed's CPU shared-memory comm op once, e.g. in a CI set-up step.

  DS_ACCELERATOR=cpu [TORCH_EXTENSIONS_DIR=...] python prebuild_shm.py
The op lands in $TORCH_EXTENSIONS_DIR/deepspeed_shm_comm (default ~/.cache/torch_extensions/py311_cpu/).
Training on CPU never calls it (only inference_all_reduce does), but TorchBackend.__init__ builds it
on the first deepspeed.init_distributed of every process when the op is 'compatible'.
"""
import time

t = time.time()
from deepspeed.accelerator import get_accelerator  # noqa: E402

builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
builder.load()
print(f"{builder.absolute_name()} ready in {time.time() - t:.1f}s")
