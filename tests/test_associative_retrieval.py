import math
import re
import string
import sys

import cattrs
import pytest
import torch

from ttt_core.builtin.associative_retrieval import (
    ARSample,
    AssociativeRetrieval,
    collate,
    exact_match,
    read_dataset,
    sample,
    write_dataset,
)
from ttt_core.builtin.task_config import ARConfig, parse_dataset_name
from ttt_core.episode import Episode, Segment, answer_logits_inputs, answer_loss, gather_answer_logits
from ttt_core.tokenizer import CharTokenizer

ALNUM = set(string.ascii_letters + string.digits)
TOK = CharTokenizer()


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_fixed_ids_and_round_trip():
    assert TOK.vocab_size == 70
    assert TOK.tokens[:4] == ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id, TOK.unk_id) == (0, 1, 2, 3)
    assert TOK.encode("aA0!?:|") == [4, 30, 56, 66, 67, 68, 69]
    text = "?!ab9Z:xY!|"
    assert TOK.decode(TOK.encode(text)) == text
    assert TOK.decode(torch.tensor(TOK.encode("ab", bos=True, eos=True))) == "[BOS]ab[EOS]"
    assert TOK.decode(TOK.encode("ab", bos=True) + [0, 0], skip_special=True) == "ab"
    assert TOK.encode("a#") == [4, TOK.unk_id]


# ---------------------------------------------------------------------------------------------
# Names and config errors


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("N2-K4V4-S2_16-32_1M", (2, 4, 4, 2, 16, 32, 1_000_000)),
        ("N1-K4V4-S1_16-32", (1, 4, 4, 1, 16, 32, 1_000_000)),
        ("N16-K2V8-S4_0-100_100K", (16, 2, 8, 4, 0, 100, 100_000)),
        ("n3-k5v6-s1_40-64_1234", (3, 5, 6, 1, 40, 64, 1234)),
        ("N2-K4V4-S2_16-32_5k", (2, 4, 4, 2, 16, 32, 5000)),
    ],
)
def test_dataset_names_parse(name, fields):
    c = ARConfig(dataset=name)
    assert (c.pairs, c.key_len, c.value_len, c.segments, c.segment_min, c.segment_max, c.size) == fields


def test_canonical_name_and_explicit_fields():
    assert ARConfig(dataset="N2-K4V4-S2_16-32_1000000").name == "N2-K4V4-S2_16-32_1M"
    c = ARConfig(pairs=3, segments=3, size=100_000)
    assert c.name == "N3-K4V4-S3_16-32_100K" and c.dataset is None
    assert ARConfig(dataset="N2-K4V4-S2_16-32", pairs=2, size=7).name == "N2-K4V4-S2_16-32_7"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dataset": "N2-K4V4_16-32"},
            "ARConfig: cannot parse dataset name 'N2-K4V4_16-32'; expected "
            "N{pairs}-K{key_len}V{value_len}-S{segments}_{segment_min}-{segment_max}[_{size}], e.g. N2-K4V4-S2_16-32_1M",
        ),
        (
            {"dataset": "N2-K4V4-S2_16-32_1G"},
            "ARConfig: cannot parse dataset name 'N2-K4V4-S2_16-32_1G'; expected "
            "N{pairs}-K{key_len}V{value_len}-S{segments}_{segment_min}-{segment_max}[_{size}], e.g. N2-K4V4-S2_16-32_1M",
        ),
        (
            {"dataset": "N2-K4V4-S2_16-32_1M", "pairs": 3},
            "ARConfig: dataset 'N2-K4V4-S2_16-32_1M' means pairs=2 but pairs=3 was given",
        ),
        (
            {"dataset": "N100-K1V4-S50_16-32"},
            "ARConfig: 100 unique keys cannot be made from key_len=1 (62**1 = 62 possible keys)",
        ),
        ({"dataset": "N1-K4V4-S1_32-16"}, "ARConfig: segment_min=32 > segment_max=16"),
        (
            {"dataset": "N3-K4V4-S1_16-32"},
            "ARConfig: segment_max=32 is too short: with 3 pairs in 1 segments some segment always holds "
            "3 pairs of 11 characters (33)",
        ),
        (
            {"dataset": "N1-K8V8-S1_0-16"},
            "ARConfig: segment_max=16 is too short: with 1 pairs in 1 segments some segment always holds "
            "1 pairs of 19 characters (19)",
        ),
        ({"dataset": "N0-K4V4-S1_16-32"}, "ARConfig: pairs must be at least 1, got 0"),
        ({"val_samples": -1}, "ARConfig: val_samples must not be negative, got -1"),
    ],
)
def test_config_errors_are_one_line(kwargs, message):
    with pytest.raises(ValueError) as err:
        ARConfig(**kwargs)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_config_type_error():
    with pytest.raises(TypeError, match="ARConfig: pairs must be an integer, got '2'"):
        ARConfig(pairs="2")


def test_config_structures_with_cattrs_and_round_trips():
    conv = cattrs.Converter(forbid_extra_keys=True)
    c = conv.structure({"dataset": "N2-K4V4-S2_16-32_1M", "test_samples": 10}, ARConfig)
    assert (c.pairs, c.segments, c.test_samples) == (2, 2, 10)
    assert conv.structure(conv.unstructure(c), ARConfig) == c


def test_parse_dataset_name_omits_missing_size():
    assert "size" not in parse_dataset_name("N1-K4V4-S1_16-32")


# ---------------------------------------------------------------------------------------------
# The generator's format


def check_format(s: ARSample, c: ARConfig) -> None:
    assert len(s.segments) == c.segments
    keys = [k for k, _ in s.pairs]
    assert len(s.pairs) == c.pairs and len(set(keys)) == c.pairs
    assert all(len(k) == c.key_len and len(v) == c.value_len and set(k + v) <= ALNUM for k, v in s.pairs)
    found = []
    for segment in s.segments:
        assert segment.endswith("|") and segment.count("|") == 1
        body = segment[:-1]
        in_segment = re.findall(rf"!([A-Za-z0-9]{{{c.key_len}}}):([A-Za-z0-9]{{{c.value_len}}})!", body)
        noise = re.sub(rf"![A-Za-z0-9]{{{c.key_len}}}:[A-Za-z0-9]{{{c.value_len}}}!", "", body)
        assert set(noise) <= ALNUM  # everything but intact pairs is noise
        pairs_len = len(in_segment) * c.pair_len
        if pairs_len <= c.segment_max:
            assert c.segment_min <= len(body) <= c.segment_max
        else:  # over-long: the pairs alone, no noise
            assert noise == "" and len(body) == pairs_len
        found += in_segment
    assert found == s.pairs  # every pair written exactly once, in context order
    assert s.query == f"?!{s.key}:" and s.key in keys
    assert s.target == dict(s.pairs)[s.key] + "!|"
    assert s.context == "".join(s.segments)


@pytest.mark.parametrize(
    "name",
    ["N1-K4V4-S1_16-32", "N2-K4V4-S2_16-32", "N5-K2V3-S3_8-40", "N3-K1V1-S1_0-20", "N4-K4V4-S2_16-22"],
)
def test_generator_format(name):
    c = ARConfig(dataset=name)
    for i in range(300):
        check_format(sample(c, "train", i), c)
    for i in range(50):
        check_format(sample(c, "test", i, seed=3), c)


def test_over_long_segment_is_pairs_only():
    c = ARConfig(dataset="N3-K4V4-S2_16-22")  # ceil(3/2) = 2 pairs fit in 22, all 3 do not
    crowded = next(s for s in (sample(c, "train", i) for i in range(500)) if any(len(x) == 34 for x in s.segments))
    full = next(x for x in crowded.segments if len(x) == 34)
    assert len(re.findall(r"![A-Za-z0-9]{4}:[A-Za-z0-9]{4}!", full)) == 3  # 3 * 11 chars + '|', no noise
    check_format(crowded, c)


def test_pairs_land_in_every_segment_and_keys_vary():
    c = ARConfig(dataset="N2-K4V4-S2_16-32")
    counts = [0, 0, 0]
    for i in range(400):
        s = sample(c, "train", i)
        counts[sum("!" in seg for seg in s.segments)] += 1
    assert counts[0] == 0 and counts[1] > 100 and counts[2] > 100  # both layouts occur (p = 1/2 each)
    assert len({sample(c, "train", i).key for i in range(100)}) == 100


def test_segment_lengths_cover_the_range():
    c = ARConfig(dataset="N1-K4V4-S2_16-32")
    lengths = {len(seg) - 1 for i in range(400) for seg in sample(c, "train", i).segments}
    assert lengths == set(range(16, 33))


# ---------------------------------------------------------------------------------------------
# Determinism, splits, streams


def test_determinism_and_disjoint_splits():
    c = ARConfig(dataset="N2-K4V4-S2_16-32")
    assert sample(c, "train", 17, seed=5) == sample(c, "train", 17, seed=5)
    assert sample(c, "train", 17, seed=5) != sample(c, "train", 17, seed=6)
    contexts = {split: {sample(c, split, i).context for i in range(300)} for split in ("train", "val", "test")}
    assert all(len(v) == 300 for v in contexts.values())
    assert not contexts["train"] & contexts["val"] and not contexts["train"] & contexts["test"]
    assert not contexts["val"] & contexts["test"]
    with pytest.raises(ValueError, match="unknown split 'dev'; expected one of train, val, test"):
        sample(c, "dev", 0)


def test_task_stream_resumes_and_cycles():
    task = AssociativeRetrieval(ARConfig(dataset="N2-K4V4-S2_16-32_10", val_samples=5, test_samples=3))
    again = AssociativeRetrieval(ARConfig(dataset="N2-K4V4-S2_16-32_10", val_samples=5, test_samples=3))
    assert torch.equal(task.train_batch(7, 4).context.ids, again.train_batch(7, 4).context.ids)
    assert task.sample("train", 13) == task.sample("train", 3)  # size 10: the stream cycles
    assert task.sample("val", 2) == sample(task.config, "val", 2, seed=0)
    with pytest.raises(IndexError, match="val index 5 out of range"):
        task.sample("val", 5)
    sizes = [e.batch_size for e in task.eval_batches("test", None, 2)]
    assert sizes == [2, 1]
    seeded = AssociativeRetrieval(ARConfig(dataset="N2-K4V4-S2_16-32_10", seed=1))
    assert seeded.sample("test", 0) != task.sample("test", 0)


# ---------------------------------------------------------------------------------------------
# Collation, loss, metric


def test_collate_shapes_and_masks():
    c = ARConfig(dataset="N2-K4V4-S2_16-32")
    samples = [sample(c, "train", i) for i in range(6)]
    e = collate(samples, TOK)
    assert isinstance(e, Episode) and e.batch_size == 6 and e.num_segments == 2
    assert e.query.ids.shape == (6, 7) and e.target.ids.shape == (6, 6)
    assert e.query.mask.all() and e.target.mask.all()
    for part, texts in [(e.context, [s.context for s in samples])] + [
        (e.segments[j], [s.segments[j] for s in samples]) for j in range(2)
    ]:
        assert part.ids.dtype == torch.long and part.mask.dtype == torch.bool
        assert part.ids.shape == (6, max(map(len, texts)))
        assert part.lengths.tolist() == [len(t) for t in texts]
        assert (part.ids[~part.mask] == TOK.pad_id).all()
        assert [TOK.decode(row[m]) for row, m in zip(part.ids, part.mask)] == texts
    assert e.to("cpu").context.ids is not None
    with pytest.raises(ValueError, match="equal segment counts, got \\[1, 2\\]"):
        collate([samples[0], sample(ARConfig(), "train", 0)], TOK)


def ragged_episode():
    """Queries and targets of different lengths, to exercise padding in the helpers."""
    query = Segment.from_lists([TOK.encode("?!ab:"), TOK.encode("?!abcd:")])
    target = Segment.from_lists([TOK.encode("xyz!|"), TOK.encode("q!|")])
    return Episode((query,), query, query, target)


@pytest.mark.parametrize("make", [ragged_episode, lambda: collate([sample(ARConfig(), "val", i) for i in range(3)], TOK)])
def test_answer_logits_inputs_teacher_forcing(make):
    e = make()
    ids, mask, positions = answer_logits_inputs(e)
    for b in range(e.batch_size):
        q = TOK.decode(e.query.ids[b][e.query.mask[b]])
        t = TOK.decode(e.target.ids[b][e.target.mask[b]])
        assert TOK.decode(ids[b][mask[b]]) == q + t[:-1]
        assert (ids[b][~mask[b]] == 0).all() and mask[b].sum() == len(q) + len(t) - 1
        for j in range(len(t)):  # the input up to positions[b, j] ends right before target char j
            assert TOK.decode(ids[b, : positions[b, j] + 1]) == (q + t)[: len(q) + j]


def perfect_logits(e, offset=0):
    ids, _mask, positions = answer_logits_inputs(e)
    logits = torch.zeros(e.batch_size, ids.shape[1] + offset, TOK.vocab_size)
    for b in range(e.batch_size):
        for j in range(e.target.ids.shape[1]):
            logits[b, positions[b, j] + offset, e.target.ids[b, j]] = 30.0
    return logits, positions


def test_loss_and_exact_match():
    e = collate([sample(ARConfig(), "test", i) for i in range(4)], TOK)
    logits, positions = perfect_logits(e, offset=8)  # as if 8 memory tokens were prepended
    assert answer_loss(gather_answer_logits(logits, positions, offset=8), e.target) < 1e-6
    pred = gather_answer_logits(logits, positions, offset=8).argmax(-1)
    assert exact_match(pred, e, value_len=4).tolist() == [True] * 4
    pred[1, 3] = (pred[1, 3] + 1) % TOK.vocab_size  # last value character wrong
    pred[2, 4] = 0  # the '!' after the value is not part of the metric
    assert exact_match(pred, e, value_len=4).tolist() == [True, False, True, True]
    uniform = torch.zeros_like(logits)
    assert answer_loss(gather_answer_logits(uniform, positions, offset=8), e.target).item() == pytest.approx(math.log(TOK.vocab_size), rel=1e-5)


def test_answer_loss_ignores_padded_target():
    e = ragged_episode()
    logits, positions = perfect_logits(e)
    logits[1, positions[1, 4], 5] = 100.0  # garbage where row 1's target is padding
    assert answer_loss(gather_answer_logits(logits, positions), e.target) < 1e-6


# ---------------------------------------------------------------------------------------------
# Local datasets


def test_jsonl_round_trip_and_loading_by_path(tmp_path):
    config = ARConfig(dataset="N2-K4V4-S2_16-32_20", val_samples=4, test_samples=6)
    task = AssociativeRetrieval(config)
    files = task.export(tmp_path / "ds", train_samples=8)
    assert [f.name for f in files] == ["train.jsonl", "val.jsonl", "test.jsonl"]
    assert read_dataset(files[1]) == [task.sample("val", i) for i in range(4)]
    loaded = AssociativeRetrieval(ARConfig(dataset="N2-K4V4-S2_16-32_20", path=str(tmp_path / "ds")))
    assert loaded.split_size("train") == 8 and loaded.split_size("test") == 6
    assert loaded.sample("train", 9) == task.sample("train", 1)
    assert torch.equal(loaded.batch("test", range(6)).context.ids, task.batch("test", range(6)).context.ids)
    single = AssociativeRetrieval(ARConfig(dataset="N2-K4V4-S2_16-32_20", path=str(files[0])))
    assert single.split_size("train") == 8 and single.split_size("val") == 500  # val generated


def test_bad_dataset_files(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "ab!cd:ef!|", "query": "?!cd:", "target": "ef!|"}\n{"context": "x|", "query": "?"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'target'"):
        read_dataset(path)
    path.write_text('{"context": "ab!cd:ef!", "query": "?!cd:", "target": "ef!|"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: context does not end with the segment terminator"):
        read_dataset(path)
    with pytest.raises(ValueError, match=r"unknown dataset format '.csv'; use .jsonl or .parquet"):
        write_dataset([], tmp_path / "x.csv")
    write_dataset([sample(ARConfig(), "train", 0)], tmp_path / "n1.jsonl")
    with pytest.raises(ValueError, match=r"train sample 0 has 1 segments .* config says segments=2, value_len=4"):
        AssociativeRetrieval(ARConfig(dataset="N2-K4V4-S2_16-32", path=str(tmp_path / "n1.jsonl")))


def test_parquet_needs_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ValueError, match=r"x.parquet: parquet needs pyarrow \(pip install pyarrow\); or use a .jsonl file"):
        write_dataset([sample(ARConfig(), "train", 0)], tmp_path / "x.parquet")


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    samples = [sample(ARConfig(dataset="N2-K4V4-S2_16-32"), "test", i) for i in range(5)]
    assert read_dataset(write_dataset(samples, tmp_path / "t.parquet")) == samples
