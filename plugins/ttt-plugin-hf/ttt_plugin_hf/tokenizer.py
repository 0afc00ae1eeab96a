"""The model's own tokenizer for text tasks: ``AutoTokenizer`` from the backbone's directory behind
the core's `ttt_core.interfaces.TextTokenizer` contract.

The builder asks for it (the registration's ``tokenizer``) before it builds a task that takes one
(`takes_tokenizer`: lm_text, babilong_qa*), and builds the backbone with its ``vocab_size``: the
larger of the tokenizer's length and the model's embedding rows, so a model whose embedding is
padded past its tokenizer (Pythia's 50304 rows for 50277 tokens) is not resized, and one with
tokens added past its rows grows to hold them.
"""

from __future__ import annotations

from typing import Any

from ttt_core.errors import TTTError, first_line

from ttt_plugin_hf.config import HFConfig, has_tokenizer, local_directory

LABEL = "[backbone] hf"


class ModelTokenizer:
    """A transformers tokenizer as a `TextTokenizer`: ``encode`` adds no special tokens (the task adds
    the ones it wants); ``pad_id`` is its pad token, else its EOS, else 0 (padded positions are masked)."""

    def __init__(self, hf_tokenizer: Any, model_vocab: int = 0) -> None:
        self.hf = hf_tokenizer
        self.vocab_size: int = max(len(hf_tokenizer), model_vocab)
        self.eos_id: int | None = hf_tokenizer.eos_token_id
        self.bos_id: int | None = hf_tokenizer.bos_token_id
        pad = hf_tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else self.eos_id if self.eos_id is not None else 0

    def encode(self, text: str) -> list[int]:
        # verbose=False: a whole file is longer than the model's context, which is no error here
        return self.hf.encode(text, add_special_tokens=False, verbose=False)

    def decode(self, ids: Any, skip_special: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def save_pretrained(self, directory: str) -> None:
        """Next to an exported model, so that it loads with its tokenizer."""
        self.hf.save_pretrained(directory)

    def __repr__(self) -> str:
        return f"ModelTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"


def model_tokenizer(config: HFConfig) -> ModelTokenizer | None:
    """The tokenizer `config`'s model brings, for a task that takes one; None for the task's own
    (tokenizer = "task", an inline config, or "auto" with a directory that holds no tokenizer)."""
    if config.tokenizer == "task" or config.path is None:
        return None
    directory = local_directory(config.path)
    if directory is not None and not has_tokenizer(directory):
        if config.tokenizer == "model":  # validation says so first; kept for configs built in code
            raise TTTError(f"{LABEL}: option 'tokenizer' = 'model': {directory} has no tokenizer")
        return None
    source = config.path if directory is None else str(directory)
    from transformers import AutoConfig, AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(source)
        model_vocab = getattr(AutoConfig.from_pretrained(source), "vocab_size", 0) or 0
    except (OSError, ValueError, KeyError) as exc:
        if config.tokenizer == "auto" and directory is None:
            return None  # a hub model without a tokenizer: the task's own
        raise TTTError(f"{LABEL}: cannot load the tokenizer of '{config.path}': {first_line(exc)}") from None
    return ModelTokenizer(hf_tokenizer, model_vocab)
