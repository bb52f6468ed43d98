"""What a build is asked to do: :class:`BuildSpec`, validated once, before any file is read.

Example:
    >>> BuildSpec(csv="train.csv", images="images", shard_size=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tfkit.utils.TfkitError: --shard-size must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from tfkit.records.images import VERIFY_MODES
from tfkit.utils import TfkitError

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """The options of one :func:`~tfkit.records.builder.build_records` call, checked on creation.

    Arguments are those of :func:`~tfkit.records.builder.build_records` (see there);
    paths become :class:`~pathlib.Path` and column lists tuples. Only checks that need
    no file contents run here (the CSV's columns are checked when it is read).

    Raises:
        TfkitError: one line naming the option at fault.
    """

    csv: Path
    images: Path
    out: Path = Path("records")
    id_col: str = "id"
    path_col: str | None = None
    label_col: str | None = "label"
    group_col: str | None = None
    meta_cols: tuple[str, ...] = ()
    n_folds: int = 5
    seed: int = 42
    size: int | None = None
    quality: int = 95
    workers: int = 0
    split: str = "train"
    shard_size: int = 2048
    skip_bad: bool = False
    overwrite: bool = False
    classes_from: Path | None = None
    verify: str = "decode"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("csv", "images", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.classes_from is not None:
            object.__setattr__(self, "classes_from", Path(self.classes_from))
        object.__setattr__(self, "meta_cols", tuple(self.meta_cols or ()))
        self._check_options()
        self._check_paths()

    def _check_options(self) -> None:
        if self.split not in SPLITS:
            raise TfkitError(f"--split must be train or test, got {self.split!r}")
        if self.size is not None and self.size < 1:
            raise TfkitError(f"--size must be a positive integer, got {self.size}")
        if not 1 <= int(self.quality) <= 100:
            raise TfkitError(f"--quality must be in 1..100, got {self.quality}")
        if self.shard_size < 1:
            raise TfkitError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.verify not in VERIFY_MODES:
            raise TfkitError(f"--verify must be one of {', '.join(VERIFY_MODES)}, got {self.verify!r}")
        if self.split == "train" and not self.label_col:
            raise TfkitError("--label-col is required for the train split")
        if self.split == "train" and self.n_folds < 2:
            raise TfkitError(f"--folds must be >= 2, got {self.n_folds}")

    def _check_paths(self) -> None:
        if not self.csv.is_file():
            raise TfkitError(f"CSV {self.csv} not found")
        if not self.images.is_dir():
            raise TfkitError(f"images folder {self.images} not found")
        if self.out.is_dir() and any(self.out.iterdir()) and not self.overwrite:
            raise TfkitError(f"output folder {self.out} is not empty (pass --overwrite to replace its contents)")

    @property
    def train(self) -> bool:
        """Whether this is a train split (labels required, folds assigned)."""
        return self.split == "train"

    def required_columns(self) -> list[str]:
        """The CSV columns this build cannot do without, in the order errors name them."""
        labels: Sequence[str] = [self.label_col] if self.train and self.label_col else []
        extra = [c for c in (self.path_col, self.group_col) if c]
        return list(dict.fromkeys([self.id_col, *labels, *extra, *self.meta_cols]))

    def n_workers(self, n_rows: int) -> int:
        """Worker processes for ``n_rows`` images: ``workers`` (0: all cores), at most one per row."""
        n = int(self.workers) if self.workers and self.workers > 0 else (os.cpu_count() or 1)
        return max(1, min(n, n_rows))
