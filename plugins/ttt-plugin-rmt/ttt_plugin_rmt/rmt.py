"""RMT (Recurrent Memory Transformer, Bulatov et al. 2022): memory carried by the forward pass alone.

Each context segment is read as ``[memory; segment; memory]``: the first M positions let the
segment read the memory, the last M positions (after the segment's real tokens, before its padding)
write it: the last block's outputs there become the memory of the next segment. The query is read as
``[memory; query; answer]``. There is no inner loop: rmt uses neither a memory learner nor a writer
(it registers with ``slots=()``) nor the ``[inner]`` table, and the initial memory is this module's
own parameter (in the optimiser's "memory" group).

Truncated BPTT (``k2``) really cuts the graph: the memory entering segment s (the query segment is
the last of S) is detached when ``s < S - k2``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ttt_core.episode import Episode, Segment, answer_logits_inputs, gather_answer_logits
from ttt_core.interfaces import Recurrence
from ttt_core.model import MetaModel, ReadOutput, prefixed_logits
from ttt_plugin_rmt.rmt_config import RMTConfig
from ttt_plugin_rmt.segmenting import context_segments, is_truncated, keep_where_empty


class RMT(nn.Module, Recurrence):
    def __init__(self, config: RMTConfig, *, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.memory = nn.Parameter(torch.randn(config.memory_tokens, backbone.dim) * config.init_std)

    def memory_parameters(self) -> list[nn.Parameter]:
        return [self.memory]

    def initial_memory(self, batch_size: int) -> Tensor:
        return self.memory.unsqueeze(0).expand(batch_size, -1, -1)

    def write(self, backbone: nn.Module, memory: Tensor, segment: Segment) -> Tensor:
        """Run ``[memory; segment; memory]`` and return the last block's outputs at the write positions.

        The write tokens sit right after each row's real tokens (padding goes after them), so RoPE
        positions, and therefore the result, do not depend on how much padding a row has.
        """
        b, m, d = memory.shape
        tokens = backbone.embed(segment.ids)
        lengths = segment.lengths
        width = 2 * m + tokens.shape[1]
        write_at = (m + lengths)[:, None] + torch.arange(m, device=lengths.device)  # [B, M]
        index = write_at[..., None].expand(-1, -1, d)
        embeds = torch.cat([memory, tokens, memory.new_zeros(b, m, d)], dim=1).scatter(1, index, memory)
        mask = torch.arange(width, device=lengths.device)[None, :] < (2 * m + lengths)[:, None]
        hidden = backbone(embeds, mask, return_hidden=True).hidden_states[-1]
        return hidden.gather(1, index)

    def read(self, backbone: nn.Module, memory: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Logits of ``ids`` (position t predicts ids[t + 1]) with the memory at the read positions."""
        return prefixed_logits(backbone, memory, backbone.embed(ids), mask)[:, memory.shape[1] :]

    def forward(self, model: MetaModel, episode: Episode) -> ReadOutput:
        backbone, k2 = model.backbone, self.config.k2
        segments = context_segments(episode, self.config.segmenting, self.config.chunk_size)
        total = len(segments) + 1  # the query segment is the last
        memory = self.initial_memory(episode.batch_size)
        for s, segment in enumerate(segments):
            if is_truncated(s, total, k2):
                memory = memory.detach()
            memory = keep_where_empty(segment, self.write(backbone, memory, segment), memory)
        ids, mask, positions = answer_logits_inputs(episode)
        logits = self.read(backbone, memory, ids, mask)
        norm = memory.detach().flatten(1).norm(dim=1).mean()
        return ReadOutput(logits=gather_answer_logits(logits, positions), stats={"memory_norm": norm})
