"""Config of the `prmt4` recurrence. No torch here: recipes validate without building a model."""

from __future__ import annotations

import attrs

from ttt_core.config import non_negative, one_of, positive


@attrs.define
class PRMT4Config:
    """Layer-wise RMT + TTT: every layer owns memory tokens, adapted by reconstruction segment by segment."""

    memory_tokens: int = attrs.field(default=8, validator=positive)
    """Memory tokens per layer (PRMT4 owns them; the recipe's [memory.learner] is not used)."""
    global_tokens: int = attrs.field(default=64, validator=positive)
    """Learned tokens per layer that stand in for the segment's positions in the reconstruction pass:
    as many as the longest context segment (a longer segment is an error)."""
    stability: float = attrs.field(default=0.01, validator=positive)
    """Initial per-layer weight of ||mem - previous mem||^2 in the inner loss (learned, kept positive)."""
    reconstruct_from: str = attrs.field(default="global", validator=one_of("global", "shifted", "shifted_output"))
    """What stands for the segment in the reconstruction pass `layer([m; X])`. global: X = the global
    tokens (the deck's PRMT4; the write into memory is keyed by position only). shifted: X = global
    tokens + the layer's input one position back, so position i predicts the layer's output at i
    from what came before it: the write is keyed by content, as a language-model loss is.
    shifted_output: the layer's output one position back instead, which has already attended to
    the positions before it (at the value of a pair, the key as well as the ':')."""
    token_lr: bool = False
    """Weigh each position's reconstruction error by a learned gate of that position's target,
    sigmoid(w_l . norm(h_l,i) + b_l) (starting near 1): a per-token inner learning rate, as TTT
    layers' eta(x), so the outer loop can learn which positions are worth writing into memory."""
    keep_memory_norm: bool = False
    """Rescale every memory token to its norm before each inner step. A layer sees its memory only
    through RMSNorm, so a token's scale carries nothing, but each write grows it (the gradient is
    orthogonal to the token and scales as 1 / its norm), which leaves every later segment's write
    weaker than the first (`bench/prmt4_memory_steps.py` measures it on a run). Keeping the norm
    gives every segment the same step size (results: PRMT4.md)."""
    lm_inner_weight: float = attrs.field(default=0.0, validator=non_negative)
    """Add this weight times the segment's next-token loss to the top layer's inner loss (the head on
    `layer([m; h])`, the real segment, not the stand-in). The reconstruction write is keyed by
    position (or the previous token) and its target is a hidden state; this one is keyed by the
    lower layers' features of each position and its target is the next character, the signal that
    lets the baseline's memory bind a value to its key. The head reads the layer's own output, not
    the model's last hidden state, so that cell (l, s) never needs layer l + 1 (the diagonal rule);
    for the top layer the two are the same."""
    lm_inner_layers: int = attrs.field(default=1, validator=positive)
    """How many layers, from the top, get the `lm_inner_weight` term: each such layer's own output
    `layer([m; h])` through the shared head (final norm + LM head) predicts the segment's next token.
    1 is the top layer alone; more make the lower layers' writes content-keyed too (at a pair's `:`
    they must predict the value, which rewards features at `:` that carry the key), still needing
    only (l-1, s) and (l, s-1)."""
    init_std: float = attrs.field(default=0.02, validator=positive)
    """Standard deviation of the initial memory and global tokens."""
    schedule: str = attrs.field(default="diagonal", validator=one_of("diagonal", "sequential"))
    """diagonal: all (layer, segment) cells with the same layer + segment in one batched call;
    sequential: one cell at a time (the reference order). Both compute the same thing."""
