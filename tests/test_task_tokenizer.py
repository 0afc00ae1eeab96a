"""A backbone's own tokenizer for text tasks: the builder hands what a backbone's registration
supplies (`tokenizer=`) to a task that takes one (`takes_tokenizer`), and lm_text runs on it."""

from __future__ import annotations

import re

import pytest
import torch

from ttt_core.build import build_model, build_task
from ttt_core.builtin import ttt_register_components as builtins
from ttt_core.builtin.lm_config import LMTextConfig
from ttt_core.builtin.lm_text import LMText
from ttt_core.errors import RegistryError, TTTError
from ttt_core.interfaces import TextTokenizer
from ttt_core.recipe import build_recipe, tomllib
from ttt_core.registry import Provider, ProviderRegistry, Registry
from ttt_core.tokenizer import ByteTokenizer

WORD = re.compile(r"\w+|\s+|[^\w\s]")


class Words:
    """A word tokenizer over a fixed text's words (ids from 2; 0 pad, 1 EOS, no BOS): a stand-in
    for a pretrained model's tokenizer, with tokens longer than a byte."""

    pad_id, eos_id, bos_id = 0, 1, None

    def __init__(self, text: str) -> None:
        self.tokens = ["<pad>", "<eos>", *sorted(set(WORD.findall(text)))]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.vocab_size = len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.ids[t] for t in WORD.findall(text)]

    def decode(self, ids) -> str:
        return "".join(self.tokens[i] for i in ids)


def line(i: int) -> str:
    return f"file {i}: the cat sat on the mat, and the dog sat on the log.\n" * 3


@pytest.fixture
def corpus(tmp_path):
    for i in range(5):
        (tmp_path / f"f{i}.txt").write_text(line(i))
    return tmp_path


def words() -> Words:
    return Words("".join(line(i) for i in range(5)))


def config(corpus, **options) -> LMTextConfig:
    return LMTextConfig(**{"paths": [str(corpus)], "glob": "*.txt", "seq_len": 8, "val_fraction": 0.2,
                           "test_fraction": 0.2, "val_samples": 2, "test_samples": 2, **options})


def test_lm_text_on_a_given_tokenizer(corpus):
    tokenizer = words()
    assert isinstance(tokenizer, TextTokenizer)
    task = LMText(config(corpus), tokenizer)
    assert task.tokenizer is tokenizer and task.data["train"].dtype == torch.int16
    expected = [i for path in task.files["train"] for i in tokenizer.encode(path.read_text())]
    assert task.data["train"].tolist() == expected
    episode = task.train_batch(0, 2)
    assert episode.query.ids.tolist() == [[tokenizer.eos_id]] * 2  # no BOS: windows start at EOS
    assert episode.target.ids.shape == (2, 8)
    n_bytes = sum(p.stat().st_size for files in task.files.values() for p in files)
    assert task.bytes_per_token == n_bytes / sum(len(d) for d in task.data.values())
    metrics = task.metrics(torch.zeros(2, 8, tokenizer.vocab_size), episode)
    bits = torch.log2(torch.tensor(float(tokenizer.vocab_size)))
    assert torch.allclose(metrics["bits_per_token"], bits.expand(2))
    assert torch.allclose(metrics["bits_per_byte"], bits / task.bytes_per_token)
    assert "at token" in task.describe("val", 0) and "tokens" in task.summary()


def test_lm_text_refuses_a_tokenizer_it_cannot_use(corpus):
    tokenizer = words()
    tokenizer.eos_id = None
    with pytest.raises(TTTError, match=r"^\[task\] lm_text: the model's tokenizer has neither a BOS nor an EOS token"):
        LMText(config(corpus), tokenizer)
    with pytest.raises(TTTError, match=r"^\[task\] lm_text: option 'seq_len' \(150\) is too large: the (val|test) split has "
                                       r"only \d+ tokens of the model's tokenizer$"):
        LMText(config(corpus, seq_len=150), words())  # 150 < the 180 bytes of a file, > its 99 tokens


def supply_words(config) -> Words:
    return words()


def registry(task_factory=None) -> Registry:
    """The built-ins, a llama that supplies the word tokenizer, and a text task that ignores it."""
    reg = Registry()
    builtins(ProviderRegistry(registry=reg, provider=Provider("builtin", "ttt-core", "0")))
    view = ProviderRegistry(registry=reg, provider=Provider("t", "t", "0"))
    llama = reg["backbone"].get("llama")
    view.add("backbone", "worded", config=llama.config, factory=llama.factory, tokenizer=supply_words)
    view.add("task", "deaf", config=LMTextConfig, factory=lambda config, **_: LMText(config),
             provides=("takes_tokenizer",))
    return reg


def recipe(corpus, task: str = "lm_text", backbone: str = "worded"):
    return build_recipe(tomllib.loads(
        f'[task]\nname = "{task}"\npaths = ["{corpus}"]\nglob = "*.txt"\nseq_len = 8\nval_fraction = 0.2\n'
        f'test_fraction = 0.2\n[backbone]\nname = "{backbone}"\nlayers = 1\ndim = 8\nheads = 2\n'
        '[memory.learner]\nname = "none"\n[optimizer]\nname = "adamw"\n'), "x.toml", registry())


def test_the_builder_hands_the_backbones_tokenizer_to_a_task_that_takes_one(corpus):
    reg = registry()
    worded = recipe(corpus)
    task = build_task(worded, reg)
    assert isinstance(task.tokenizer, Words)
    assert build_model(worded, task, reg).backbone.vocab_size == words().vocab_size
    assert isinstance(build_task(recipe(corpus, backbone="llama"), reg).tokenizer, ByteTokenizer)
    with pytest.raises(TTTError) as info:
        build_task(recipe(corpus, task="deaf"), reg)
    assert str(info.value) == ("[task] task 'deaf' declares 'takes_tokenizer' but did not use the tokenizer "
                               "[backbone] backbone 'worded' gave it")


def test_only_a_backbone_supplies_a_tokenizer():
    view = ProviderRegistry(registry=Registry(), provider=Provider("t", "t", "0"))
    with pytest.raises(RegistryError, match="^task 'x' from t 0 \\(plugin 't'\\): only a backbone supplies a tokenizer$"):
        view.add("task", "x", config=LMTextConfig, factory=LMText, tokenizer=supply_words)
