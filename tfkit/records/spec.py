"""What a build is asked to do: :class:`BuildSpec`, validated once, before any image is read.

The task follows from the label options: one class per image (``label_col``), several
(``label_sep``: tags in one column; ``label_cols``: one 0/1 column per class) or numbers
(``target_cols``). ``channels`` makes each image a stack of one grey file per channel.

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
from typing import Any, Mapping, Sequence

from tfkit.records.images import VERIFY_MODES
from tfkit.utils import TfkitError

SPLITS = ("train", "test")
TASKS = ("single", "multilabel", "regression")


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
    label_sep: str | None = None
    label_cols: tuple[str, ...] = ()
    target_cols: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    exclude: Path | None = None
    ordinal: bool = False

    def __post_init__(self) -> None:
        for name in ("csv", "images", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        for name in ("classes_from", "exclude"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        for name in ("meta_cols", "label_cols", "target_cols", "channels"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        self._check_options()
        self._check_targets()
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
        if self.split == "train" and not self.label_col and self.task == "single":
            raise TfkitError("--label-col is required for the train split")
        if self.split == "train" and self.n_folds < 2:
            raise TfkitError(f"--folds must be >= 2, got {self.n_folds}")
        if self.ordinal and self.task != "single":
            raise TfkitError(f"--ordinal declares ordered classes of a single-label column; this build is {self.task}")

    def _check_targets(self) -> None:
        given = [f for f, v in (("--label-sep", self.label_sep is not None), ("--label-cols", self.label_cols),
                                ("--target-cols", self.target_cols)) if v]
        if len(given) > 1:
            raise TfkitError(f"{' and '.join(given)} cannot be combined: give one way of reading the labels")
        if self.label_sep is not None and (self.label_sep == "" or not self.label_col):
            raise TfkitError("--label-sep needs a non-empty separator and a --label-col holding the tags")
        if len(self.label_cols) == 1:
            raise TfkitError(f"--label-cols needs at least two 0/1 columns, got {self.label_cols[0]!r} "
                             "(a single 0/1 column is a binary label: use --label-col)")
        for flag, names in (("--label-cols", self.label_cols), ("--target-cols", self.target_cols),
                            ("--channels", self.channels), ("--meta", self.meta_cols)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup or any(not n.strip() for n in names):
                raise TfkitError(f"{flag}: names must be unique and non-empty, got {', '.join(map(repr, names))}")
        if any(os.sep in c or "/" in c for c in self.channels):
            raise TfkitError(f"--channels: a channel name is part of a file name, got {', '.join(self.channels)}")
        if self.channels and self.path_col:
            raise TfkitError("--channels finds <id>_<channel>.<ext> in --images; it cannot be combined with --path-col")

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

    @property
    def task(self) -> str:
        """``"single"`` (one class per image), ``"multilabel"`` or ``"regression"``."""
        if self.label_sep is not None or self.label_cols:
            return "multilabel"
        return "regression" if self.target_cols else "single"

    @property
    def label_columns(self) -> tuple[str, ...]:
        """The CSV columns the labels are read from."""
        if self.label_cols or self.target_cols:
            return self.label_cols or self.target_cols
        return (self.label_col,) if self.label_col else ()

    def required_columns(self) -> list[str]:
        """The CSV columns this build cannot do without, in the order errors name them."""
        labels: Sequence[str] = self.label_columns if self.train else ()
        extra = [c for c in (self.path_col, self.group_col) if c]
        return list(dict.fromkeys([self.id_col, *labels, *extra, *self.meta_cols]))

    def with_train_manifest(self, manifest: Mapping[str, Any] | None) -> "BuildSpec":
        """This spec completed from the train records of ``--classes-from``.

        A test split takes the train records' way of reading labels and their channels
        when it does not give them, so its records match the train records.

        Raises:
            TfkitError: this build asks for another task or other channels than the train records.
        """
        if manifest is None:
            return self
        cols = manifest.get("columns") or {}
        train_task = {"multilabel": "multilabel", "regression": "regression"}.get(manifest.get("task"), "single")
        changes: dict[str, Any] = {}
        if self.task == "single" and train_task != "single":
            changes = {"label_sep": cols.get("label_sep"), "label_cols": tuple(cols.get("label_cols") or ()),
                       "target_cols": tuple(manifest.get("targets") or ())}
            if cols.get("label_sep") is not None:
                changes["label_col"] = cols.get("label")
        elif self.task != train_task:
            raise TfkitError(f"--classes-from {self.classes_from}: the train records are {train_task}, "
                             f"this build is {self.task}")
        names = tuple((manifest.get("image") or {}).get("channel_names") or ())
        if not self.channels and names:
            changes["channels"] = names
        elif self.channels and self.channels != names:
            raise TfkitError(f"--channels {','.join(self.channels)} differ from the train records' channels "
                             f"({','.join(names) or 'one RGB image'})")
        return dataclasses.replace(self, **changes) if changes else self

    def n_workers(self, n_rows: int) -> int:
        """Worker processes for ``n_rows`` images: ``workers`` (0: all cores), at most one per row."""
        n = int(self.workers) if self.workers and self.workers > 0 else (os.cpu_count() or 1)
        return max(1, min(n, n_rows))
