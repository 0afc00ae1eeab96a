"""RMT4: RMT + test-time training. The memory is written by gradient descent, segment by segment.

The context is cut into segments (the task's own, or fixed-size chunks). On each one the inner loop
adapts the learner's state (``model.adapt``: K steps on the learner's inner loss, any learner and
writer from the registry), and the adapted state is carried to the next segment as its starting
point. The query is then read from the final state with no adaptation (``model.read``), so the outer
loop teaches the model to read what the inner loops wrote.

Optional truncation ``k2``: the state entering segment s (the query segment is the last of S) is
detached when ``s < S - k2``, so the outer gradient reaches only the k2 most recent states.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ttt_core.episode import Episode, answer_logits_inputs, gather_answer_logits
from ttt_core.interfaces import Recurrence
from ttt_core.model import MetaModel, ReadOutput
from ttt_plugin_rmt.rmt_config import RMT4Config
from ttt_plugin_rmt.segmenting import context_segments, detach_state, is_truncated, keep_where_empty


class RMT4(nn.Module, Recurrence):
    def __init__(self, config: RMT4Config, **_: object) -> None:
        super().__init__()
        self.config = config

    def forward(self, model: MetaModel, episode: Episode) -> ReadOutput:
        k2 = self.config.k2
        segments = context_segments(episode, self.config.segmenting, self.config.chunk_size)
        total = len(segments) + 1  # the query segment is the last
        state = model.init_state(episode.batch_size)
        per_segment: list[dict[str, Tensor]] = []
        for s, segment in enumerate(segments):
            if is_truncated(s, total, k2):
                state = detach_state(state)
            adapted, stats = model.adapt(state, segment)
            state = {k: keep_where_empty(segment, adapted[k], state[k]) for k in state}
            per_segment.append(stats)
        ids, mask, positions = answer_logits_inputs(episode)
        logits = model.read(state, ids, mask, context=segments[-1] if segments else None)
        return ReadOutput(logits=gather_answer_logits(logits, positions), stats=merge_stats(per_segment))


def merge_stats(per_segment: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Inner statistics over segments: the mean of each (per-step curves stay per step), the last
    segment's memory norm, and the per-segment final inner loss (how well each segment was written)."""
    if not per_segment:
        return {}
    merged = {k: torch.stack([stats[k] for stats in per_segment]).mean(0) for k in per_segment[0] if k != "memory_norm"}
    if "memory_norm" in per_segment[-1]:
        merged["memory_norm"] = per_segment[-1]["memory_norm"]
    if "inner_loss" in per_segment[0]:
        merged["segment_inner_loss"] = torch.stack([stats["inner_loss"][-1] for stats in per_segment])
    return merged
