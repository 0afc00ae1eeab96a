"""Single segment: adapt on the context (whole, or segment by segment), then read the answer."""

from __future__ import annotations

from torch import nn

from ttt_core.builtin.configs import SingleConfig
from ttt_core.episode import Episode, answer_logits_inputs, gather_answer_logits
from ttt_core.interfaces import Recurrence
from ttt_core.model import MetaModel, ReadOutput


class SingleSegment(nn.Module, Recurrence):
    def __init__(self, config: SingleConfig, **_: object) -> None:
        super().__init__()
        self.split = config.split

    def forward(self, model: MetaModel, episode: Episode) -> ReadOutput:
        state = model.init_state(episode.batch_size)
        segments = episode.segments if self.split == "segments" else (episode.context,)
        stats = {}
        for segment in segments:
            state, stats = model.adapt(state, segment)
        ids, mask, positions = answer_logits_inputs(episode)
        logits = model.read(state, ids, mask, context=segments[-1])
        return ReadOutput(logits=gather_answer_logits(logits, positions), stats=stats)
