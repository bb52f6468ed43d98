"""What each row is labelled with: class names or target names, and every row's value.

Three tasks (:attr:`tfkit.records.spec.BuildSpec.task`):

* ``single``: one class per image; stored as ``label`` (int64 class index, -1 unknown).
* ``multilabel``: a set of classes per image, from tags in one column (``label_sep``)
  or one 0/1 column per class (``label_cols``); stored as ``label`` (int64 list of the
  positive class indices, ascending).
* ``regression``: one or more numbers per image (``target_cols``; several columns make
  a distribution target); stored as ``target`` (float list, NaN when unknown).

Example:
    >>> sort_classes(["10", "2", "1"])
    ['1', '2', '10']
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Callable, Iterable

from tfkit.records.checksum import crc32c_backend
from tfkit.records.spec import BuildSpec
from tfkit.records.table import MISSING
from tfkit.utils import TfkitError


def is_number(s: str) -> bool:
    """Whether ``s`` parses as a float."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def canon_label(s: str) -> str:
    """A label's class name: ``"1"``, ``"1.0"`` and ``" 1"`` name the same class when labels are numeric."""
    s = s.strip()
    if is_number(s):
        f = float(s)
        if f.is_integer():
            return str(int(f))
    return s


def sort_classes(names: Iterable[str]) -> list[str]:
    """Sort class names: numerically when every name is a number, else as strings.

    Example:
        >>> sort_classes(["10", "2", "1"])
        ['1', '2', '10']
    """
    names = sorted(set(names))
    if names and all(is_number(n) for n in names):
        return sorted(names, key=float)
    return names


def split_tags(text: str, sep: str) -> list[str]:
    """The class names in one cell of tags (empty pieces dropped, numbers canonical).

    Example:
        >>> split_tags(" haze  primary 1.0", " ")
        ['haze', 'primary', '1']
    """
    return [canon_label(t) for t in text.split(sep) if t.strip()]


@dataclasses.dataclass(frozen=True)
class Targets:
    """The labels of every CSV row, as the records store them.

    Attributes:
        kind: ``"single"``, ``"multilabel"`` or ``"regression"``.
        task: the manifest's task: ``"binary"``/``"multiclass"`` (single; None without
            classes), ``"multilabel"`` or ``"regression"``.
        classes: class names (single, multilabel); a label is an index into them.
        names: target names (regression).
        values: per CSV row: class index (-1 unknown), tuple of class indices, or tuple of floats.
        errors: CSV row -> why its label cannot be used (the row is bad).
        columns: the label columns present in the CSV (empty: no labels, test split).
    """

    kind: str
    task: str | None
    classes: list[str]
    names: list[str]
    values: list[Any]
    errors: dict[int, str]
    columns: tuple[str, ...]

    @property
    def label_col(self) -> str | None:
        """The single label column (single-label and tag builds), or None."""
        return self.columns[0] if len(self.columns) == 1 and self.kind != "regression" else None

    def of(self, rows: Iterable[int]) -> list[Any]:
        """The labels of these CSV rows."""
        return [self.values[i] for i in rows]


def resolve_targets(spec: BuildSpec, frame: Any, train_manifest: dict | None) -> Targets:
    """Class or target names (from the train records, or from the labels) and each row's value.

    Args:
        spec: the build (its task and label columns).
        frame: the CSV.
        train_manifest: the ``--classes-from`` manifest, or None.

    Returns:
        :class:`Targets`; rows whose label is unusable are in ``errors``.

    Raises:
        TfkitError: a train split with fewer than two classes, or label columns that do
            not match the train records'.
    """
    present = tuple(c for c in spec.label_columns if c in frame.columns)
    has_labels = bool(present) and len(present) == len(spec.label_columns)
    cells = [[v.strip() for v in frame[c].tolist()] for c in spec.label_columns] if has_labels else []
    resolve = {"single": _single, "multilabel": _multilabel, "regression": _regression}[spec.task]
    return resolve(spec, cells, len(frame), train_manifest)


def _collect(n_rows: int, read: Callable[[int], tuple[Any, str | None]]) -> tuple[list[Any], dict[int, str]]:
    values, errors = [], {}
    for i in range(n_rows):
        value, error = read(i)
        values.append(value)
        if error:
            errors[i] = error
    return values, errors


def _unknown(text: str, col: str, classes: list[str]) -> str:
    more = " ..." if len(classes) > 20 else ""
    return f"unknown class {text!r} in column {col!r}; known classes: {', '.join(classes[:20])}{more}"


def _need_two(spec: BuildSpec, classes: list[str]) -> None:
    if spec.train and len(classes) < 2:
        what = f"column {spec.label_col!r}" if not spec.label_cols else "--label-cols"
        raise TfkitError(f"CSV {spec.csv} {what} has {len(classes)} distinct label(s); need at least 2")


def _single(spec: BuildSpec, cells: list[list[str]], n_rows: int, train: dict | None) -> Targets:
    texts = cells[0] if cells else [""] * n_rows
    if train:
        classes = list(train["classes"])
    elif spec.train:
        classes = sort_classes(canon_label(v) for v in texts if v not in MISSING)
    else:
        classes = []
        if cells and any(v not in MISSING for v in texts):
            crc32c_backend()  # the preloading thread may be silencing stderr while TF's library loads
            print(f"tfkit: note: labels in {spec.csv.name} are stored as -1: pass --classes-from "
                  "to store them as class indices", file=sys.stderr)
    _need_two(spec, classes)
    index = {c: k for k, c in enumerate(classes)}

    def read(i: int) -> tuple[int, str | None]:
        text = texts[i]
        if spec.train and text in MISSING:
            return -1, f"missing label in column {spec.label_col!r}"
        if text in MISSING or not index:
            return -1, None
        k = index.get(canon_label(text), index.get(text, -2))
        return (k, None) if k != -2 else (-1, _unknown(text, spec.label_col, classes))

    values, errors = _collect(n_rows, read)
    task = ("binary" if len(classes) == 2 else "multiclass") if classes else None
    return Targets("single", task, classes, [], values, errors, (spec.label_col,) if cells else ())


def _multilabel(spec: BuildSpec, cells: list[list[str]], n_rows: int, train: dict | None) -> Targets:
    if cells and not spec.train and not train and spec.label_sep is not None:
        raise TfkitError(f"tags in {spec.csv.name}: a test split takes its classes from the train records; "
                         "pass --classes-from")
    if spec.label_cols:
        classes, read = _label_columns(spec, cells, train)
    else:
        classes, read = _tag_column(spec, cells, n_rows, train)
    _need_two(spec, classes)
    values, errors = _collect(n_rows, read) if cells else ([()] * n_rows, {})
    return Targets("multilabel", "multilabel", classes, [], values, errors, spec.label_columns if cells else ())


def _tag_column(spec: BuildSpec, cells: list[list[str]], n_rows: int,
                train: dict | None) -> tuple[list[str], Callable[[int], tuple[Any, str | None]]]:
    texts = cells[0] if cells else [""] * n_rows
    sep, col = spec.label_sep, spec.label_col
    if train:
        classes = list(train["classes"])
    else:
        classes = sort_classes(t for v in texts if v not in MISSING for t in split_tags(v, sep))
    index = {c: k for k, c in enumerate(classes)}

    def read(i: int) -> tuple[tuple[int, ...], str | None]:
        tags = split_tags(texts[i], sep) if texts[i] not in MISSING else []
        if not tags:
            return (), (f"empty tag string in column {col!r}" if spec.train else None)
        unknown = [t for t in tags if t not in index]
        if unknown:
            return (), _unknown(unknown[0], col, classes)
        return tuple(sorted({index[t] for t in tags})), None

    return classes, read


def _label_columns(spec: BuildSpec, cells: list[list[str]],
                   train: dict | None) -> tuple[list[str], Callable[[int], tuple[Any, str | None]]]:
    classes = list(train["classes"]) if train else list(spec.label_cols)
    unknown = [c for c in spec.label_cols if c not in classes]
    if unknown:
        raise TfkitError(f"--label-cols {unknown[0]!r} is not a class of the train records "
                         f"({', '.join(classes[:20])})")
    index = [classes.index(c) for c in spec.label_cols]

    def read(i: int) -> tuple[tuple[int, ...], str | None]:
        positive = []
        for col, k, texts in zip(spec.label_cols, index, cells):
            flag = canon_label(texts[i])
            if flag not in ("0", "1"):
                got = "a missing value" if texts[i] in MISSING else repr(texts[i])
                return (), f"column {col!r} must be 0 or 1, got {got}"
            if flag == "1":
                positive.append(k)
        return tuple(sorted(positive)), None

    return classes, read


def _regression(spec: BuildSpec, cells: list[list[str]], n_rows: int, train: dict | None) -> Targets:
    names = list(spec.target_cols)
    if train and list(train.get("targets") or []) != names:
        raise TfkitError(f"--target-cols {','.join(names)} differ from the train records' targets "
                         f"({','.join(train.get('targets') or [])})")
    unknown = tuple(math.nan for _ in names)

    def read(i: int) -> tuple[tuple[float, ...], str | None]:
        values = []
        for col, texts in zip(names, cells):
            text = texts[i]
            if text in MISSING:
                return unknown, f"missing target in column {col!r}"
            value = float(text) if is_number(text) else math.nan
            if not math.isfinite(value):
                return unknown, f"target {text!r} in column {col!r} is not a finite number"
            values.append(value)
        return tuple(values), None

    values, errors = _collect(n_rows, read) if cells else ([unknown] * n_rows, {})
    if not spec.train:  # a test split's targets are stored when given, never required
        errors = {i: e for i, e in errors.items() if not e.startswith("missing")}
    return Targets("regression", "regression", [], names, values, errors, spec.target_cols if cells else ())
