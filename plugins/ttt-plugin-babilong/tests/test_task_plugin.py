"""Registration (torch-free), episodes and segments, the recipes, and a few training steps."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from ttt_core.errors import RecipeError, TTTError
from ttt_core.plugins import create_host
from ttt_core.recipe import load_recipe
from ttt_core.recipe.reading import load_raw
from ttt_core.train.trainer import Trainer

from ttt_plugin_babilong import plugin
from ttt_plugin_babilong.babilong_config import BabilongConfig, BabilongMixConfig, parse_length
from ttt_plugin_babilong.task import Babilong, BabilongMix, segment_ids
from ttt_plugin_babilong.tokenizer import count_tokens

RECIPES = Path(__file__).parents[3] / "recipes"
# the recipes live in the source tree; a plugin installed alone (tests/test_plugin_install.py) has none
needs_recipes = pytest.mark.skipif(not RECIPES.is_dir(), reason="recipes live in the source tree")
RECIPE_NAMES = [p.stem for p in sorted(RECIPES.glob("babilong_*.toml"))] if RECIPES.is_dir() else []


@pytest.fixture(scope="module")
def host():
    return create_host(extra_plugins=(("babilong", plugin),))


def test_plugin_module_imports_no_torch() -> None:
    code = "import sys, ttt_plugin_babilong.plugin; print([m for m in ('torch', 'ttt_plugin_babilong.task') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tasks_are_registered_and_build(host) -> None:
    registry = host.registry["task"]
    for qa in ("qa1", "qa2", "qa3", "qa4", "qa5", "qa6", "qa7", "qa8"):
        component = registry.get(f"babilong_{qa}")
        assert set(component.provides) == {"export", "takes_tokenizer"}
        task = component.build(BabilongConfig(val_samples=4, test_samples=4))
        assert task.qa == qa and task.split_size("test") == 4


def test_the_mix_takes_its_tasks_in_turn_and_one_task_of_it_is_that_task(host) -> None:
    config = dict(val_samples=6, test_samples=6, size=30)
    mix = host.registry["task"].get("babilong_mix").build(BabilongMixConfig(tasks=["qa1", "qa3", "qa5"], **config))
    parts = {qa: Babilong(BabilongConfig(**config), qa) for qa in ("qa1", "qa3", "qa5")}
    for split in ("train", "val", "test"):
        assert [mix.sample(split, i) for i in range(6)] == [
            parts[qa].sample(split, i) for i in range(2) for qa in ("qa1", "qa3", "qa5")]
    assert set(mix.labels) == set(parts["qa1"].labels) | set(parts["qa5"].labels)
    alone = BabilongMix(BabilongMixConfig(tasks=["qa3"], **config))
    episode, expected = alone.batch("test", range(6)), parts["qa3"].batch("test", range(6))
    assert torch.equal(episode.context.ids, expected.context.ids) and torch.equal(episode.target.ids, expected.target.ids)
    for tasks, message in (([], "names no bAbI task"), (["qa1", "qa9"], "one of"), (["qa2", "qa2"], "twice")):
        with pytest.raises(ValueError, match=message):
            BabilongMixConfig(tasks=tasks)
    with pytest.raises(ValueError, match="per task"):
        BabilongMixConfig(source="loaded", path=str(Path(__file__)))


def test_lengths_and_option_errors() -> None:
    assert [parse_length(x) for x in ("0k", "1k", "4K", "1500", 7)] == [0, 1024, 4096, 1500, 7]
    assert BabilongConfig(length="2k").length_name == "2k" and BabilongConfig(length="100").length_name == "100"
    for options, message in (
        ({"length": "1.5k"}, "option 'length'"),
        ({"source": "loaded"}, "no 'path'"),
        ({"segment_tokens": 8, "segment_sentences": 2}, "exclude each other"),
        ({"min_facts": 5, "max_facts": 3}, "'min_facts' (5) > 'max_facts' (3)"),
        ({"noise_paths": ["/nonexistent/book.txt"]}, "no such file"),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            BabilongConfig(**options)


def test_segments_pack_whole_sentences_up_to_the_budget() -> None:
    sentences = [[1] * 3, [2] * 4, [3] * 2, [4] * 9, [5]]
    assert segment_ids(sentences, None, None) == [[1] * 3 + [2] * 4 + [3] * 2 + [4] * 9 + [5]]
    assert segment_ids(sentences, None, 2) == [[1] * 3 + [2] * 4, [3] * 2 + [4] * 9, [5]]
    assert segment_ids(sentences, 7, None) == [[1] * 3 + [2] * 4, [3] * 2, [4] * 7, [4] * 2 + [5]]


def test_episodes_hold_the_context_question_and_answer() -> None:
    task = Babilong(BabilongConfig(length="200", segment_tokens=64, size=10), "qa1")
    episode = task.batch("train", range(4))
    assert episode.context.ids.shape == (4, 200) and bool(episode.context.mask.all())
    joined = torch.cat([s.ids for s in episode.segments], dim=1)[torch.cat([s.mask for s in episode.segments], dim=1)]
    assert torch.equal(joined, episode.context.ids.flatten())  # segments cut the context, row by row
    assert all(s.ids.shape[1] <= 64 for s in episode.segments)
    sample = task.sample("train", 2)
    assert task.tokenizer.decode(episode.query.ids[2][episode.query.mask[2]]).lower() == sample.question.lower()
    assert task.tokenizer.decode(episode.target.ids[2][episode.target.mask[2]]) == f"{sample.answer} [EOS]"
    assert task.sample("train", 12) == task.sample("train", 2)  # the train stream cycles over `size`
    assert count_tokens(sample.context) == 200


class SpacedWords:
    """A tokenizer like GPT-2's in the one way that matters here: a word's token includes the space
    before it (" kitchen" is not "kitchen"); ids numbered as first seen, 0 pad, 1 EOS, no BOS."""

    pad_id, eos_id, bos_id = 0, 1, None

    def __init__(self) -> None:
        self.tokens: list[str] = ["<pad>", "<eos>"]
        self.vocab_size = 4096

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in re.findall(r" ?\w+| ?[^\w\s]", text):
            if token not in self.tokens:
                self.tokens.append(token)
            ids.append(self.tokens.index(token))
        return ids

    def decode(self, ids) -> str:
        return "".join(self.tokens[i] for i in ids)


def test_a_given_tokenizer_sees_the_running_text() -> None:
    """On a model's tokenizer (`takes_tokenizer`) the context's ids are those of its text, question
    and answer follow it after a space, the answer ends with the tokenizer's EOS, and exact match
    scores the answer's tokens."""
    tokenizer = SpacedWords()
    task = plugin.FACTORIES["qa1"](BabilongConfig(val_samples=2, segment_sentences=2), tokenizer=tokenizer)
    assert task.tokenizer is tokenizer
    sample, episode = task.sample("val", 0), task.batch("val", range(1))
    assert episode.context.ids[0].tolist() == tokenizer.encode(sample.context)
    assert episode.segments[1].ids[0].tolist() == tokenizer.encode(" " + " ".join(sample.sentences[2:4]))
    assert episode.query.ids[0].tolist() == tokenizer.encode(" " + sample.question)
    assert episode.target.ids[0].tolist() == [tokenizer.tokens.index(" " + sample.answer), 1]
    logits = torch.nn.functional.one_hot(episode.target.ids, tokenizer.vocab_size).float()
    assert task.metrics(logits, episode)["exact_match"].tolist() == [True]
    logits[0, 1] = logits[0, 1].roll(1)  # a wrong EOS: the answer's tokens are still right
    assert task.metrics(logits, episode)["exact_match"].tolist() == [True]
    logits[0, 0] = logits[0, 0].roll(1)
    assert task.metrics(logits, episode)["exact_match"].tolist() == [False]
    tokenizer.eos_id = None
    with pytest.raises(TTTError, match=r"^\[task\] babilong_qa1: the model's tokenizer has no EOS token, which ends every answer$"):
        Babilong(BabilongConfig(), "qa1", tokenizer)


def test_rows_with_fewer_segments_get_empty_ones() -> None:
    task = Babilong(BabilongConfig(segment_sentences=2, min_facts=2, max_facts=6), "qa1")
    samples = [task.sample("train", i) for i in range(8)]
    episode = task.collate(samples)
    assert episode.num_segments == max((len(s.sentences) + 1) // 2 for s in samples)
    counts = episode.segments[-1].mask.any(dim=1)
    assert not bool(counts.all()) and bool(counts.any())


def skip_without_its_plugins(path: Path) -> None:
    """Skip a recipe whose `requires` (merged through `extends`) names a plugin not installed here."""
    for text in load_raw(path).get("requires", []):
        try:
            metadata.version(Requirement(text).name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{path.name} requires {text}, which is not installed")


TINY_RECIPES = ["babilong_qa1_tiny", "babilong_rmt4_qa1_tiny", "babilong_prmt4_qa1_tiny", "babilong_ttt_linear_qa1_tiny"]


@needs_recipes
@pytest.mark.parametrize("name", RECIPE_NAMES + [f"tiny/{name}" for name in TINY_RECIPES])
def test_recipes_validate(name: str) -> None:
    path = RECIPES / f"{name}.toml"
    skip_without_its_plugins(path)
    host = create_host()
    recipe = load_recipe(path, registry=host.registry)
    assert recipe["task"].name.startswith(("babilong_qa", "babilong_mix"))


@needs_recipes
def test_a_bad_option_is_a_one_line_error(host) -> None:
    recipe = str(RECIPES / "tiny" / "babilong_qa1_tiny.toml")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, ["task.segment_token=3"], registry=host.registry)
    assert str(info.value) == f"{recipe}: [task] unknown option 'segment_token' (did you mean 'segment_tokens'?)"


@needs_recipes
@pytest.mark.parametrize("name", TINY_RECIPES)
def test_tiny_recipe_trains(tmp_path, name: str) -> None:
    path = RECIPES / "tiny" / f"{name}.toml"
    skip_without_its_plugins(path)
    torch.set_num_threads(1)
    overrides = ["train.steps=3", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=3",
                 "train.batch_size=4", "eval.samples=4", "eval.val_samples=4", "eval.batch_size=4"]
    recipe = load_recipe(path, overrides, registry=create_host().registry)
    report = Trainer(recipe, tmp_path, quiet=True).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    assert 0.0 <= report["test"]["exact_match"] <= 1.0
