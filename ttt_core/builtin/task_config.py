"""Config of the associative-retrieval task (torch-free so that recipes validate fast)."""

from __future__ import annotations

import attrs


@attrs.define
class ARConfig:
    dataset: str | None = None
