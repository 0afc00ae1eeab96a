"""`ttt_lm` as a language model through ttt-core: the core's `lm_text` task, inner learner `none`
(the TTT layers are the only test-time training), trained by the core's trainer (skipped without ttt-core)."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("ttt_core.builtin.lm_text", reason="needs a ttt-core with the lm_text task")

from ttt_core.plugins import create_host  # noqa: E402
from ttt_core.recipe import build_recipe, load_raw  # noqa: E402
from ttt_core.train.trainer import Trainer  # noqa: E402

from ttt_plugin_layers import plugin  # noqa: E402

RECIPE = """
[task]
name = "lm_text"
glob = "json/*.py"        # the stdlib's json package: every Python has it
seq_len = 64
val_fraction = 0.2
test_fraction = 0.2
val_samples = 8
test_samples = 8

[backbone]
name = "ttt_lm"
layers = 2
dim = 32
heads = 2
mini_batch_size = 8
inner = "{inner}"

[memory.learner]
name = "none"

[inner]
steps = 0
learn_lr = "none"

[optimizer]
lr = 1e-2

[train]
steps = 30
batch_size = 8
eval_every = 30
log_every = 1

[eval]
samples = 8
val_samples = 8
batch_size = 8
"""


@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_ttt_lm_learns_bytes(tmp_path, inner: str) -> None:
    path = tmp_path / "lm.toml"
    path.write_text(textwrap.dedent(RECIPE.format(inner=inner)))
    registry = create_host(extra_plugins=(("layers", plugin),)).registry
    recipe = build_recipe(load_raw(path), str(path), registry)
    report = Trainer(recipe, tmp_path / "run", quiet=True).run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    assert report["headline"] == "bits_per_byte" and 0 < report["test"]["bits_per_byte"] < 8.1
