"""LoRA adapters as test-time-trained memory for `ttt` (inner learner `lora`)."""

__version__ = "0.1.0"
