"""Tiny transformers models saved to local directories (no network), for the hf plugin's tests."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest

# Tiny tensors: intra-op threads only add synchronisation on a machine shared with other jobs.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

VOCAB = 12
TINY: dict[str, dict] = {
    "llama": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=256),
    "gpt_neox": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     rotary_pct=0.5, max_position_embeddings=256),
    "gpt2": dict(n_embd=16, n_layer=2, n_head=2, n_positions=256),
    "mistral": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, max_position_embeddings=256),
    "qwen2": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=256),
}
"""Width 16, 2 blocks, 2 heads: every family the tests build, by transformers `model_type`."""
FAMILIES = ("llama", "gpt_neox", "gpt2")


def save_tiny(model_type: str, directory: Path, seed: int = 0, vocab_size: int = VOCAB, std: float = 0.3) -> Path:
    """A randomly initialised tiny model saved with `save_pretrained`. Weights drawn larger than the
    usual init so every path's influence on the output is far above float rounding."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, bos_token_id=None, eos_token_id=None,
                                  **TINY[model_type])
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, std)
            elif "bias" in name:
                weight.normal_(0.0, 0.1)
    model.save_pretrained(str(directory))
    return directory


SENTENCES = (
    "Mary moved to the bathroom. John went to the hallway. Where is Mary? bathroom",
    "Daniel travelled to the office. Sandra journeyed to the garden. Where is Daniel? office",
    "The kitchen is north of the bedroom. What is north of the bedroom? kitchen",
    "def main(argv):\n    return len(argv) + 1  # a comment about the arguments\n",
    "Files of text are read, encoded by the model's tokenizer and cut into windows.",
)
"""What the tiny tokenizer is trained on: bAbI facts and a little code and prose."""


def save_tokenizer(directory: Path, vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer (GPT-2's scheme: leading spaces belong to words) trained offline on
    `SENTENCES`, saved with `save_pretrained` into `directory`; EOS and BOS `<|endoftext|>`, no pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(list(SENTENCES) * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.save_pretrained(str(directory))
    return tokenizer


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with its own tokenizer in one directory; its embedding has 8 rows more than the
    tokenizer has tokens (as Pythia's is padded), which the model's tokenizer must leave alone."""
    directory = tmp_path_factory.mktemp("hf_text") / "gpt2"
    directory.mkdir()
    tokenizer = save_tokenizer(directory)
    save_tiny("gpt2", directory, vocab_size=len(tokenizer) + 8)
    return directory


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model_type -> a saved tiny model of that family (made once per session)."""
    root = tmp_path_factory.mktemp("hf_models")
    return {model_type: save_tiny(model_type, root / model_type) for model_type in TINY}


@pytest.fixture
def kit() -> types.SimpleNamespace:
    """The helpers above (a conftest is not importable by name under --import-mode=importlib)."""
    return types.SimpleNamespace(VOCAB=VOCAB, TINY=TINY, save_tiny=save_tiny, save_tokenizer=save_tokenizer)
