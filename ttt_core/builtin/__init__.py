"""Components every install has, registered through the same hook as third-party plugins."""

from __future__ import annotations

from ttt_core.builtin.configs import (
    AdamWConfig,
    IdentityWriterConfig,
    LlamaConfig,
    MemoryTokensConfig,
    NoMemoryConfig,
    SingleConfig,
)
from ttt_core.builtin.lm_config import LMTextConfig
from ttt_core.builtin.task_config import ARConfig
from ttt_core.hookspecs import hookimpl
from ttt_core.registry import ProviderRegistry


def memory_tokens_needs(config: MemoryTokensConfig) -> dict[str, tuple[str, ...]]:
    """With `pack_pairs` the context pass runs two examples per row through the backbone
    (`length_buckets` needs nothing of it: each group is a plain padded batch)."""
    return {"backbone": ("packed_rows",)} if config.pack_pairs else {}


@hookimpl
def ttt_register_components(registry: ProviderRegistry) -> None:
    registry.add(
        "backbone",
        "llama",
        config=LlamaConfig,
        factory="ttt_core.builtin.llama:build_llama",
        provides=("packed_rows", "layer_blocks", "weight_deltas", "fixed_suffix"),
        description="LLaMA-style decoder: RMSNorm, RoPE, SwiGLU, causal attention",
    )
    registry.add(
        "inner_learner",
        "memory_tokens",
        config=MemoryTokensConfig,
        factory="ttt_core.builtin.memory_tokens:MemoryTokens",
        aliases=("prompt_tuning",),
        provides=("packing",),
        needs=memory_tokens_needs,
        description="M memory token embeddings adapted on the context's LM loss (baseline TTT)",
    )
    registry.add(
        "inner_learner",
        "none",
        config=NoMemoryConfig,
        factory="ttt_core.builtin.no_memory:NoMemory",
        description="no fast weights: the plain backbone (e.g. language modelling with TTT layers inside it)",
    )
    registry.add(
        "memory_writer",
        "identity",
        config=IdentityWriterConfig,
        factory="ttt_core.builtin.writers:IdentityWriter",
        description="the memory is the fast state itself",
    )
    registry.add(
        "recurrence",
        "single",
        config=SingleConfig,
        factory="ttt_core.builtin.single:SingleSegment",
        description="adapt on the whole context, then read the query",
    )
    registry.add(
        "task",
        "associative_retrieval",
        config=ARConfig,
        factory="ttt_core.builtin.associative_retrieval:AssociativeRetrieval",
        aliases=("ar",),
        provides=("export",),
        description="noisy associative retrieval: N key-value pairs in noisy segments",
    )
    registry.add(
        "task",
        "lm_text",
        config=LMTextConfig,
        factory="ttt_core.builtin.lm_text:LMText",
        provides=("takes_tokenizer",),
        description="byte-level language modelling over local text files (default: the Python stdlib sources)",
    )
    registry.add(
        "outer_optimizer",
        "adamw",
        config=AdamWConfig,
        factory="ttt_core.builtin.adamw:AdamW",
        description="AdamW, warmup + constant/cosine schedule, per-group learning rates",
    )
