"""Config of the byte-level language-modelling task `lm_text`: torch-free, so that recipes validate fast.

The corpus is a list of local text files, split by file into train / val / test. Listing the files
and reading their sizes (no contents) happens here, so `ttt validate` already reports a missing
path, an empty glob or a `seq_len` that does not fit a split.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import attrs

from ttt_core.config import in_range, non_negative, positive

SPLITS: tuple[str, ...] = ("train", "val", "test")
# directories under the stdlib that hold installed packages, not the standard library
_NOT_STDLIB = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@attrs.define
class LMTextConfig:
    """Byte-level next-byte prediction over windows of `seq_len` bytes of local text files.

    `paths`: files and directories (relative to where `ttt` runs); directories contribute the files
    matching `glob`. Empty (the default): the Python standard library's own sources, which every
    machine with Python has (`sysconfig.get_paths()["stdlib"]`, installed packages left out).
    Files are sorted, then shuffled by `seed` and split by file: the first `val_fraction` of them
    is val, the next `test_fraction` test, the rest train, so the three never share a file.
    """

    paths: list[str] = attrs.field(factory=list)
    glob: str = "**/*.py"
    seq_len: int = attrs.field(default=256, validator=positive)
    val_fraction: float = attrs.field(default=0.05, validator=in_range(0.0, 1.0))
    test_fraction: float = attrs.field(default=0.05, validator=in_range(0.0, 1.0))
    seed: int = 0
    """Data seed: fixes the split, the training stream and the val/test windows."""
    val_samples: int = attrs.field(default=500, validator=non_negative)
    test_samples: int = attrs.field(default=2000, validator=non_negative)

    def __attrs_post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if getattr(self, name) <= 0:
                raise ValueError(f"option '{name}' must be > 0: the {name[:-9]} split needs files of its own")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"option 'val_fraction' + 'test_fraction' = {self.val_fraction + self.test_fraction} leaves no training files"
            )
        sizes = self.split_sizes()
        for split, size in sizes.items():
            if size <= self.seq_len:
                raise ValueError(
                    f"option 'seq_len' ({self.seq_len}) is too large: the {split} split has only {size} bytes "
                    f"({len(self.split_files()[split])} files)"
                )

    def files(self) -> list[Path]:
        """Every corpus file, sorted and without duplicates."""
        roots = [Path(p) for p in self.paths] or [stdlib_dir()]
        found: set[Path] = set()
        for root in roots:
            if root.is_file():
                found.add(root)
            elif root.is_dir():
                matches = [p for p in root.glob(self.glob) if p.is_file()]
                if not self.paths:  # the stdlib: leave installed packages out
                    matches = [p for p in matches if not _NOT_STDLIB & set(p.relative_to(root).parts)]
                if not matches:
                    raise ValueError(f"option 'paths': no files match '{self.glob}' under {root}")
                found.update(matches)
            else:
                raise ValueError(f"option 'paths': {root}: no such file or directory")
        return sorted(found)

    def split_files(self) -> dict[str, list[Path]]:
        """The files of each split (disjoint; deterministic from the file list and `seed`)."""
        files = self.files()
        if len(files) < 3:
            raise ValueError(f"option 'paths': {len(files)} file(s) found; splitting by file needs at least 3")
        order = list(files)
        random.Random(f"ttt/lm_text/split/{self.seed}").shuffle(order)
        n_val = max(1, round(self.val_fraction * len(order)))
        n_test = max(1, round(self.test_fraction * len(order)))
        if n_val + n_test >= len(order):
            raise ValueError(f"option 'paths': {len(order)} files leave none for training after val and test")
        return {
            "val": sorted(order[:n_val]),
            "test": sorted(order[n_val : n_val + n_test]),
            "train": sorted(order[n_val + n_test :]),
        }

    def split_sizes(self) -> dict[str, int]:
        return {split: sum(p.stat().st_size for p in files) for split, files in self.split_files().items()}
