"""Config of the `hf` backbone. No torch and no transformers here: `ttt validate` checks a local
model directory (it exists, has a config.json, of a supported family) without loading anything."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
from ttt_core.config import one_of

from ttt_plugin_hf.families import unsupported

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt",
)
"""Files of which one is in a directory a tokenizer was saved to (`save_pretrained`)."""


def has_tokenizer(directory: Path) -> bool:
    """Whether a saved model directory holds a tokenizer too (one of `TOKENIZER_FILES`)."""
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def local_directory(path: str) -> Path | None:
    """The local directory `path` names, or None when it is a hub id. A path that exists is local;
    so is one that cannot be a hub id (absolute, ``~``, ``./``, ``../``, several ``/``), existing
    or not, so that a mistyped directory is said to be missing rather than looked up on the hub."""
    local = Path(path).expanduser()
    if local.exists() or not _HUB_ID.match(path):
        return local
    return None


def model_type_of(directory: Path) -> str:
    """The ``model_type`` of a saved transformers model directory (its config.json)."""
    if not directory.is_dir():
        raise ValueError(f"option 'path': {directory}: no such directory")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ValueError(f"option 'path': {directory} has no config.json: not a saved transformers model")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"option 'path': {config_file} is not a JSON object ({exc})") from None
    return model_type


@attrs.define
class HFConfig:
    """A transformers causal LM, from `path` (a local directory or a hub id, `from_pretrained`) or
    from an inline `config` table (``model_type`` plus that config class's fields, `from_config`:
    random initial weights). The task's vocabulary size always wins: an inline ``vocab_size`` is
    replaced by it, a pretrained model's embedding and output rows are resized to it
    (`resize_token_embeddings`: rows kept by id, new ones drawn as the model's own init draws them).
    A text task may instead run on the model's own tokenizer (`tokenizer`), whose vocabulary the
    model's rows already cover."""

    path: str | None = None
    """A saved model directory (relative to where `ttt` runs) or a hub id (downloaded or cached)."""
    config: dict[str, Any] | None = None
    """Inline config: ``model_type`` (one of the supported families) and its config class's fields."""
    freeze: str = attrs.field(default="none", validator=one_of("none", "all", "embeddings"))
    """What the outer loop leaves alone: nothing, the whole backbone (memory and learner train; with
    the lora learner that is "all but LoRA"), or the embeddings (token and position embeddings, and
    the output head when it is tied to them)."""
    attention: str = attrs.field(default="auto", validator=one_of("auto", "eager", "sdpa"))
    """auto: fused SDPA, and transformers' eager attention while the inner loop keeps the graph
    (second order: SDPA's CPU and GPU kernels have no double backward); eager or sdpa: always that."""
    dropout: bool = False
    """Keep the model's dropout probabilities (GPT-2 trains with 0.1). Off by default: every
    ``*dropout`` / ``*pdrop`` field is set to 0 so the inner loop sees a deterministic model."""
    tokenizer: str = attrs.field(default="auto", validator=one_of("auto", "model", "task"))
    """Which tokenizer a text task (one that takes one: lm_text, babilong_qa*) runs on. model: the
    model's own (``AutoTokenizer`` from `path`, which must hold one); task: the task's own (the
    embedding resized to its vocabulary); auto: the model's when `path` has a tokenizer and the task
    takes one, else the task's. The retrieval task always keeps its character tokenizer."""

    def __attrs_post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of option 'path' (a saved model or hub id) and option 'config' (an inline config table)")
        if self.config is not None:
            if self.tokenizer == "model":
                raise ValueError("option 'tokenizer' = 'model' needs a saved model in option 'path': an inline config has no tokenizer")
            model_type = self.config.get("model_type")
            if not isinstance(model_type, str):
                raise ValueError("option 'config' needs a 'model_type' string (e.g. \"gpt_neox\")")
            problem = unsupported(model_type)
            if problem:
                raise ValueError(f"option 'config': {problem}")
            return
        directory = local_directory(self.path)
        if directory is not None:
            problem = unsupported(model_type_of(directory))
            if problem:
                raise ValueError(f"option 'path': {directory}: {problem}")
            if self.tokenizer == "model" and not has_tokenizer(directory):
                raise ValueError(f"option 'tokenizer' = 'model': {directory} has no tokenizer (no {' or '.join(TOKENIZER_FILES[:2])}); "
                                 "save the model's tokenizer there, or use tokenizer = 'task'")
