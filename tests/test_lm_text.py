"""The byte-level LM task: determinism, disjoint splits, shapes, config errors, a tiny run that learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ttt_core.builtin.lm_config import LMTextConfig
from ttt_core.builtin.lm_text import LMText
from ttt_core.cli import main
from ttt_core.recipe import load_recipe
from ttt_core.tokenizer import ByteTokenizer
from ttt_core.train.trainer import Trainer

RECIPES = Path(__file__).parents[1] / "recipes"
TINY = str(RECIPES / "tiny" / "transformer_lm_tiny.toml")


@pytest.fixture
def corpus(tmp_path) -> Path:
    """10 small files of distinct text in a directory tree."""
    for i in range(10):
        path = tmp_path / "corpus" / f"d{i % 3}" / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {i}: " + "".join(chr(97 + (i + j) % 26) for j in range(200)) + "\n")
    (tmp_path / "corpus" / "skip.md").write_text("not matched by the glob\n")
    return tmp_path / "corpus"


def config(corpus: Path, **options) -> LMTextConfig:
    return LMTextConfig(**{"paths": [str(corpus)], "glob": "**/*.txt", "seq_len": 32, "val_fraction": 0.2,
                           "test_fraction": 0.2, "val_samples": 8, "test_samples": 8, **options})


def test_splits_are_disjoint_and_deterministic(corpus):
    splits = config(corpus).split_files()
    files = [set(splits[s]) for s in ("train", "val", "test")]
    assert sum(map(len, files)) == 10 and set.union(*files) == set(config(corpus).files())
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert [len(f) for f in files] == [6, 2, 2]
    assert config(corpus).split_files() == splits
    assert config(corpus, seed=1).split_files() != splits  # the seed reshuffles the split
    assert all(p.suffix == ".txt" for p in config(corpus).files())


def test_batches_are_deterministic_and_indexed_by_sample(corpus):
    a, b = LMText(config(corpus)), LMText(config(corpus))
    assert torch.equal(a.train_batch(3, 4).target.ids, b.train_batch(3, 4).target.ids)
    # sample numbers, not steps, fix the windows: a resumed run or another rank sees the same data
    assert torch.equal(a.train_batch(1, 2).target.ids, a.train_batch(0, 4).target.ids[2:])
    assert not torch.equal(a.train_batch(0, 4).target.ids, a.train_batch(1, 4).target.ids)
    val = torch.cat([e.target.ids for e in a.eval_batches("val", None, 3)])
    assert val.shape == (8, 32) and torch.equal(val, torch.cat([e.target.ids for e in b.eval_batches("val", 8, 8)]))


def test_episode_shapes_and_text(corpus):
    task = LMText(config(corpus))
    episode = task.train_batch(0, 5)
    assert episode.context.ids.shape == (5, 0) and len(episode.segments) == 1
    assert episode.query.ids.tolist() == [[task.tokenizer.bos_id]] * 5
    assert episode.target.ids.shape == (5, 32) and episode.target.mask.all()
    window = task.tokenizer.decode(episode.target.ids[0])
    path, offset = task.source("train", 0)
    text = "".join(p.read_text() for p in task.files["train"])
    assert window in text and path in task.files["train"] and offset >= 0
    assert "at byte" in task.describe("test", 1)


def test_metrics_are_bits_per_byte_and_accuracy(corpus):
    task = LMText(config(corpus))
    episode = task.train_batch(0, 2)
    logits = torch.zeros(2, 32, task.tokenizer.vocab_size)
    metrics = task.metrics(logits, episode)
    assert torch.allclose(metrics["bits_per_byte"], torch.full((2,), torch.log2(torch.tensor(260.0)).item()))
    perfect = torch.nn.functional.one_hot(episode.target.ids, 260).float() * 50
    assert task.metrics(perfect, episode)["accuracy"].tolist() == [1.0, 1.0]
    assert task.headline == "bits_per_byte" and not task.higher_is_better


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode("héllo\n", bos=True)
    assert ids[0] == tok.bos_id and len(ids) == 1 + len("héllo\n".encode())
    assert tok.decode(ids) == "héllo\n" and tok.decode(ids, skip_special=False) == "[BOS]héllo\n"
    assert max(tok.encode(bytes(range(256)))) == tok.vocab_size - 1


def test_default_corpus_is_the_stdlib():
    files = LMTextConfig(glob="json/*.py", seq_len=64, val_fraction=0.2, test_fraction=0.2).files()
    assert [p.name for p in files][:2] == ["__init__.py", "decoder.py"] and all(p.parent.name == "json" for p in files)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"paths": ["/no/such/dir"]}, "option 'paths': /no/such/dir: no such file or directory"),
        ({"glob": "*.nothing"}, "option 'paths': no files match '*.nothing' under"),
        ({"seq_len": 100_000}, "option 'seq_len' (100000) is too large: the val split has only"),
        ({"val_fraction": 0.0}, "option 'val_fraction' must be > 0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leaves no training files"),
    ],
)
def test_config_errors(corpus, options, message):
    with pytest.raises(ValueError) as info:
        config(corpus, **options)
    assert message in str(info.value)


def test_bad_recipe_is_one_line(tmp_path, capsys):
    assert main(["validate", TINY, "--set", "task.paths=['/no/where']", "--set", "task.seq_len=0"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"{TINY}: [task] option 'seq_len' must be > 0; got 0"]
    assert main(["validate", TINY, "--set", "task.paths=['/no/where']"]) == 1
    assert capsys.readouterr().err.strip() == f"{TINY}: [task] option 'paths': /no/where: no such file or directory"
    assert main(["validate", TINY, "--set", "task.paths=/no/where"]) == 1  # a string is not split into letters
    assert capsys.readouterr().err.strip() == f"{TINY}: [task] option 'paths': expected an array, got string \"/no/where\""


def test_tiny_lm_learns_and_reports_bits_per_byte(tmp_path, capsys):
    recipe = load_recipe(TINY, ["train.steps=40", "train.eval_every=20", "optimizer.lr=1e-2"])
    report = Trainer(recipe, tmp_path / "run", quiet=True).run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    first, last = sum(r["loss"] for r in train[:5]) / 5, sum(r["loss"] for r in train[-5:]) / 5
    assert last < first - 1.0, (first, last)
    val = [r for r in records if r["split"] == "val"]
    assert val[-1]["bits_per_byte"] < val[0]["bits_per_byte"]
    assert report["headline"] == "bits_per_byte" and set(report["test"]) == {"loss", "bits_per_byte", "accuracy", "samples"}
    assert "test bits per byte" in (tmp_path / "run" / "report.md").read_text()
    pytest.importorskip("matplotlib")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
