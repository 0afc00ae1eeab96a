"""Hugging Face transformers causal LMs as `ttt` backbones (backbone `hf`)."""

__version__ = "0.1.0"
