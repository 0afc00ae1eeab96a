"""Reading and writing BABILong samples in the published shapes.

Published records have three text fields: `input` (the context: facts within noise), `question` and
`target` (the answer). They come as

- parquet, one file per (length, task) of the Hugging Face dataset `RMT-team/babilong`:
  `{length}/{qa}-00000-of-00001.parquet` (configs are lengths, splits are tasks), or the older
  `{qa}/{length}-00000-of-00001.parquet`, or the converter's `{length}/{qa}/0000.parquet`;
- JSON: a list of records (`.json`) or one record per line (`.jsonl`), e.g. `{qa}/{length}.json`;
- a `datasets` dataset saved with `save_to_disk` (a `DatasetDict` whose splits are the tasks, or
  one `Dataset`), read with `datasets.load_from_disk` when `datasets` is installed.

Parquet needs pyarrow (the `parquet` extra of ttt-core).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

FIELDS: tuple[str, ...] = ("input", "question", "target")
FORMATS: tuple[str, ...] = (".jsonl", ".json", ".parquet")


def _pyarrow(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: parquet needs pyarrow (pip install 'ttt-core[parquet]'); or use .jsonl") from None
    return pa, pq


def _checked(records: Iterable[dict], path: Path) -> list[dict[str, str]]:
    out = []
    for n, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{n}: expected a record with fields {', '.join(FIELDS)}")
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise ValueError(f"{path}:{n}: missing field {missing[0]!r}")
        out.append({f: str(record[f]) for f in FIELDS})
    if not out:
        raise ValueError(f"{path}: no records")
    return out


def read_records(path: str | Path) -> list[dict[str, str]]:
    """The records of one `.json`, `.jsonl` or `.parquet` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        _, pq = _pyarrow(path)
        return _checked(pq.read_table(path).to_pylist(), path)
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: unknown format {suffix!r}; use .json, .jsonl or .parquet")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return _checked(json.loads(text), path)
    return _checked((json.loads(line) for line in text.splitlines() if line.strip()), path)


def write_records(records: Iterable[dict[str, str]], path: str | Path) -> Path:
    """Write `.jsonl`, `.json` (a list) or `.parquet` records."""
    path = Path(path)
    records = list(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pa, pq = _pyarrow(path)
        pq.write_table(pa.Table.from_pylist(records), path)
    elif suffix == ".json":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        raise ValueError(f"{path}: unknown format {suffix!r}; use .json, .jsonl or .parquet")
    return path


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets`' `save_to_disk`."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def load_saved_dataset(path: Path, task: str) -> list[dict[str, str]]:
    """The records of `task` from a `save_to_disk` directory (a DatasetDict's split `task`, or a Dataset)."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{path}: reading a saved Hugging Face dataset needs the `datasets` package") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if task not in loaded:
            raise ValueError(f"{path}: no split {task!r}; it has {', '.join(loaded)}")
        loaded = loaded[task]
    return _checked(loaded.to_list(), path)


def published_files(root: Path, task: str, length: str) -> list[Path]:
    """The files of (task, length) under `root` in any of the published layouts (see the module doc)."""
    patterns = (
        f"{length}/{task}-*.parquet", f"{task}/{length}-*.parquet", f"{length}/{task}/*.parquet",
        f"{task}/{length}/*.parquet", f"{task}/{length}.json", f"{task}/{length}.jsonl",
        f"{length}/{task}.json", f"{length}/{task}.jsonl", f"{task}_{length}.json", f"{task}_{length}.jsonl",
    )
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return found
    return []


def split_files(root: Path) -> dict[str, Path]:
    """`{train,val,test}.{jsonl,json,parquet}` (`validation` also names val) under `root`."""
    found = {}
    for split, stems in (("train", ("train",)), ("val", ("val", "validation")), ("test", ("test",))):
        for stem in stems:
            for ext in FORMATS:
                if (root / f"{stem}{ext}").is_file() and split not in found:
                    found[split] = root / f"{stem}{ext}"
    return found


def load_records(path: str | Path, task: str, length: str, default_split: str) -> dict[str, list[dict[str, str]]]:
    """Records per split from `path`: a file or published layout is `default_split`; a directory of
    `train/val/test` files gives those splits; a saved dataset gives `task`'s split."""
    path = Path(path)
    if path.is_file():
        return {default_split: read_records(path)}
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or directory")
    if is_saved_dataset(path):
        return {default_split: load_saved_dataset(path, task)}
    by_split = split_files(path)
    if by_split:
        return {split: read_records(file) for split, file in by_split.items()}
    files = published_files(path, task, length)
    if not files:
        raise ValueError(f"{path}: no {task} data of length {length} (e.g. {length}/{task}-00000-of-00001.parquet, "
                         f"{task}/{length}.json) and no train/val/test files")
    return {default_split: [r for f in files for r in read_records(f)]}
