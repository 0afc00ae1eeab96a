"""The published shapes: JSON and JSON-lines records, parquet splits, a saved `datasets` dataset."""

from __future__ import annotations

import importlib.util
import json

import pytest

from ttt_plugin_babilong.babilong_config import BabilongConfig
from ttt_plugin_babilong.loaders import load_records, read_records, write_records
from ttt_plugin_babilong.task import Babilong, BabilongSample

RECORDS = [
    {"input": "The law was old. Mary went to the kitchen. Nobody cared. John went to the office.",
     "question": "Where is Mary?", "target": "kitchen"},
    {"input": "Daniel travelled to the garden. It rained all day.", "question": "Where is Daniel?", "target": "garden"},
]
needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow (the parquet extra) is absent")
needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets is absent")


def loaded_task(path, **options) -> Babilong:
    return Babilong(BabilongConfig(source="loaded", path=str(path), **options), "qa1")


def test_a_json_list_in_the_published_layout_is_the_test_split(tmp_path) -> None:
    (tmp_path / "qa1").mkdir()
    (tmp_path / "qa1" / "1k.json").write_text(json.dumps(RECORDS))
    task = loaded_task(tmp_path, length="1k")
    assert task.split_size("test") == 2 and task.split_size("val") == 500  # val stays generated
    sample = task.sample("test", 0)
    assert sample.facts == ("Mary went to the kitchen.", "John went to the office.")
    assert sample.question == "Where is Mary?" and sample.answer == "kitchen"
    assert "F0 : Mary went to the kitchen." in task.describe("test", 0)
    episode = task.batch("test", range(2))
    assert task.tokenizer.decode(episode.target.ids[1], skip_special=True) == "garden"


def test_json_lines_and_split_files(tmp_path) -> None:
    write_records(RECORDS, tmp_path / "train.jsonl")
    write_records(RECORDS[:1], tmp_path / "validation.json")
    task = loaded_task(tmp_path)
    assert task.split_size("train") == 2 and task.split_size("val") == 1 and task.split_size("test") == 1000
    assert read_records(tmp_path / "validation.json") == RECORDS[:1]


def test_bad_records_are_reported_with_their_line(tmp_path) -> None:
    path = tmp_path / "qa1_0k.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"input": "x", "target": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"qa1_0k.jsonl:2: missing field 'question'"):
        load_records(tmp_path, "qa1", "0k", "test")
    with pytest.raises(ValueError, match="no qa2 data of length 0k"):
        load_records(tmp_path, "qa2", "0k", "test")


@needs_pyarrow
@pytest.mark.parametrize("layout", ["{length}/{qa}-00000-of-00001.parquet", "{qa}/{length}-00000-of-00001.parquet", "{length}/{qa}/0000.parquet"])
def test_parquet_in_the_published_layouts(tmp_path, layout: str) -> None:
    write_records(RECORDS, tmp_path / layout.format(length="4k", qa="qa1"))
    task = loaded_task(tmp_path, length="4k")
    assert [task.sample("test", i).to_record() for i in range(2)] == [
        {**r, "input": BabilongSample.from_record(r).context} for r in RECORDS
    ]


@needs_datasets
def test_a_saved_datasets_dataset_dict(tmp_path) -> None:
    import datasets

    datasets.DatasetDict({"qa1": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "saved"))
    task = loaded_task(tmp_path / "saved", length="0k")
    assert task.split_size("test") == 2 and task.sample("test", 1).answer == "garden"


def test_export_writes_the_published_shape(tmp_path) -> None:
    task = Babilong(BabilongConfig(length="300", size=5, val_samples=2, test_samples=3), "qa2")
    paths = task.export(tmp_path, "jsonl", train_samples=4)
    assert [p.name for p in paths] == ["train.jsonl", "val.jsonl", "test.jsonl"]
    records = read_records(tmp_path / "test.jsonl")
    assert len(records) == 3 and records[0] == task.sample("test", 0).to_record()
    reloaded = loaded_task(tmp_path)
    assert all(reloaded.sample("test", i).facts == task.sample("test", i).facts for i in range(3))
