"""Shared settings for the babilong tests (ttt-core and this plugin only)."""

from __future__ import annotations

import os

# Tiny tensors: intra-op threads only add synchronisation on a machine shared with other jobs.
os.environ.setdefault("OMP_NUM_THREADS", "1")
