"""Recurrent memory schemes for `ttt`: RMT, RMT4 and PRMT4 (with diagonal batching)."""

__version__ = "0.1.0"
