"""Repository-wide test settings (not copied into a plugin's isolated install test)."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: a worker's torch using every core would oversubscribe
    torch.set_num_threads(1)
