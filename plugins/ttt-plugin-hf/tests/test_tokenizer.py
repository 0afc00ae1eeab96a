"""The model's own tokenizer for text tasks (`[backbone] tokenizer`): lm_text and babilong_qa1 train
through `hf` on a tiny GPT-2's tokenizer, their ids are that tokenizer's, the retrieval task keeps
its characters, and a directory without a tokenizer or a task that cannot take one is one line."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers import AutoTokenizer
from ttt_core.build import build
from ttt_core.errors import RecipeError, TTTError
from ttt_core.objective import step_loss
from ttt_core.recipe import load_recipe
from ttt_core.tokenizer import ByteTokenizer, CharTokenizer

from ttt_plugin_hf.backbone import HFBackbone
from ttt_plugin_hf.config import HFConfig
from ttt_plugin_hf.tokenizer import ModelTokenizer, model_tokenizer

HAS_BABILONG = importlib.util.find_spec("ttt_plugin_babilong") is not None

TAIL = """
[optimizer]
name = "adamw"
lr = 1e-2
[train]
steps = 2
batch_size = 2
eval_every = 2
checkpoint_every = 2
[eval]
samples = 2
val_samples = 2
batch_size = 2
"""
NO_MEMORY = '[memory.learner]\nname = "none"\n[inner]\nsteps = 0\nlearn_lr = "none"\n'
MEMORY_TOKENS = ('[memory.learner]\nname = "memory_tokens"\ntokens = 2\n[memory.writer]\nname = "identity"\n'
                 '[inner]\nsteps = 1\ngrad_mode = "second"\n')


@pytest.fixture
def corpus(tmp_path):
    for i in range(5):
        (tmp_path / "corpus" / f"f{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"f{i}.txt").write_text(
            f"File {i}: Mary moved to the bathroom. John went to the hallway. Where is Mary? bathroom\n" * 2)
    return tmp_path / "corpus"


def lm_recipe(tmp_path, corpus, model_dir, tokenizer: str | None = None) -> str:
    option = "" if tokenizer is None else f'tokenizer = "{tokenizer}"\n'
    text = (f'[task]\nname = "lm_text"\npaths = ["{corpus}"]\nglob = "*.txt"\nseq_len = 12\nval_fraction = 0.2\n'
            f'test_fraction = 0.2\nval_samples = 2\ntest_samples = 2\n'
            f'[backbone]\nname = "hf"\npath = "{model_dir}"\n{option}{NO_MEMORY}{TAIL}')
    (tmp_path / "lm.toml").write_text(text)
    return str(tmp_path / "lm.toml")


def train(recipe_path: str, steps: int = 2):
    """Build the recipe and take `steps` outer steps; the losses are finite and the backbone moves."""
    built = build(load_recipe(recipe_path))
    backbone = built.model.backbone
    assert isinstance(backbone, HFBackbone)
    before = backbone.model.get_input_embeddings().weight.detach().clone()
    for step in range(steps):
        loss, _ = step_loss(built.model, built.task.train_batch(step, 2))
        assert math.isfinite(loss.item())
        loss.backward()
        built.optimizer.step(step)
        built.model.zero_grad(set_to_none=True)
    assert not torch.equal(before, backbone.model.get_input_embeddings().weight)
    return built


def test_lm_text_trains_on_the_models_tokenizer(tmp_path, corpus, text_model_dir):
    """The default ("auto") picks the directory's tokenizer: a split is the files' ids as the
    tokenizer encodes them, the padded embedding is not resized, and a run reports bits per token."""
    from ttt_core.run import run_command

    from ttt_plugin_hf.export import main

    built = train(lm_recipe(tmp_path, corpus, text_model_dir))
    task, own = built.task, AutoTokenizer.from_pretrained(str(text_model_dir))
    assert isinstance(task.tokenizer, ModelTokenizer)
    assert torch.equal(task.data["train"].long(), torch.tensor(
        [i for path in task.files["train"] for i in own.encode(path.read_text(), add_special_tokens=False)]))
    assert task.train_batch(0, 2).query.ids.tolist() == [[own.eos_token_id]] * 2  # its BOS is its EOS
    assert built.model.backbone.vocab_size == len(own) + 8 == task.tokenizer.vocab_size
    metrics = task.metrics(torch.zeros(1, 12, task.tokenizer.vocab_size), task.batch("val", range(1)))
    assert torch.allclose(metrics["bits_per_byte"] * task.bytes_per_token, metrics["bits_per_token"])

    assert run_command(lm_recipe(tmp_path, corpus, text_model_dir), out=str(tmp_path / "run"), overrides=[],
                       quiet=True) == 0
    assert main([str(tmp_path / "run")]) == 0  # the exported model carries its tokenizer
    exported = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "hf"))
    assert exported.encode(" Where is Mary?") == own.encode(" Where is Mary?")


@pytest.mark.skipif(not HAS_BABILONG, reason="babilong_qa1 is ttt-plugin-babilong's")
def test_babilong_trains_on_the_models_tokenizer(tmp_path, text_model_dir):
    """Context, question and answer are the tokenizer's ids of the running text; the answer ends with
    its EOS, and exact match scores the answer's tokens."""
    (tmp_path / "b.toml").write_text(
        f'[task]\nname = "babilong_qa1"\nval_samples = 2\ntest_samples = 2\n'
        f'[backbone]\nname = "hf"\npath = "{text_model_dir}"\ntokenizer = "model"\n{MEMORY_TOKENS}{TAIL}')
    task = train(str(tmp_path / "b.toml")).task
    own = AutoTokenizer.from_pretrained(str(text_model_dir))
    encode = lambda text: own.encode(text, add_special_tokens=False)  # noqa: E731
    sample, episode = task.sample("val", 0), task.batch("val", range(1))
    assert episode.context.ids[0].tolist() == encode(sample.context)
    assert episode.query.ids[0].tolist() == encode(" " + sample.question)
    assert episode.target.ids[0].tolist() == encode(" " + sample.answer) + [own.eos_token_id]
    perfect = torch.nn.functional.one_hot(episode.target.ids, task.tokenizer.vocab_size).float()
    assert task.metrics(perfect, episode)["exact_match"].tolist() == [True]
    perfect[0, 0] = perfect[0, 0].roll(1)
    assert task.metrics(perfect, episode)["exact_match"].tolist() == [False]
    assert "Where is" in task.describe("val", 0)


def test_the_retrieval_task_keeps_its_characters(tmp_path, text_model_dir):
    """"auto" with a task that takes no tokenizer: the characters, the embedding resized to them."""
    (tmp_path / "ar.toml").write_text(
        f'[task]\nname = "associative_retrieval"\ndataset = "N1-K4V4-S1_16-32_1M"\n'
        f'[backbone]\nname = "hf"\npath = "{text_model_dir}"\n{MEMORY_TOKENS}{TAIL}')
    built = build(load_recipe(tmp_path / "ar.toml"))
    assert isinstance(built.task.tokenizer, CharTokenizer) and built.model.backbone.vocab_size == 70


def test_task_tokenizer_or_no_tokenizer_in_the_directory(tmp_path, corpus, text_model_dir, tiny_dirs):
    """tokenizer = "task", or "auto" on a directory without one: lm_text's bytes."""
    for model_dir, option in ((text_model_dir, "task"), (tiny_dirs["gpt2"], None)):
        built = build(load_recipe(lm_recipe(tmp_path, corpus, model_dir, option)))
        assert isinstance(built.task.tokenizer, ByteTokenizer) and built.model.backbone.vocab_size == 260


def test_a_missing_tokenizer_or_a_task_without_text_is_one_line(tmp_path, corpus, text_model_dir, tiny_dirs):
    def one_line(path: str) -> str:
        with pytest.raises(RecipeError) as info:
            load_recipe(path)
        assert len(info.value.lines) == 1, info.value.lines
        return info.value.lines[0]

    recipe = lm_recipe(tmp_path, corpus, tiny_dirs["gpt2"], "model")
    assert one_line(recipe) == (
        f"{recipe}: [backbone] option 'tokenizer' = 'model': {tiny_dirs['gpt2']} has no tokenizer (no tokenizer.json "
        "or tokenizer_config.json); save the model's tokenizer there, or use tokenizer = 'task'")
    (tmp_path / "ar.toml").write_text(
        f'[task]\nname = "associative_retrieval"\n[backbone]\nname = "hf"\npath = "{text_model_dir}"\n'
        f'tokenizer = "model"\n{MEMORY_TOKENS}{TAIL}')
    assert one_line(str(tmp_path / "ar.toml")) == (
        f"{tmp_path / 'ar.toml'}: [backbone] hf needs a task with 'takes_tokenizer'; "
        "task 'associative_retrieval' does not provide it")
    with pytest.raises(ValueError, match="^option 'tokenizer' = 'model' needs a saved model in option 'path': an inline"):
        HFConfig(config={"model_type": "gpt2"}, tokenizer="model")
    # a directory that claims a tokenizer it cannot load: one line when the task is built
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((tiny_dirs["gpt2"] / name).read_bytes())
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(TTTError) as info:
        model_tokenizer(HFConfig(path=str(broken)))
    assert len(info.value.lines) == 1 and info.value.lines[0].startswith(
        f"[backbone] hf: cannot load the tokenizer of '{broken}': ")
