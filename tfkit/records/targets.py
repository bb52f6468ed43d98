"""What each row is labelled with: the class list and every row's class index.

Example:
    >>> sort_classes(["10", "2", "1"])
    ['1', '2', '10']
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterable

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


@dataclasses.dataclass(frozen=True)
class Targets:
    """The labels of every CSV row, as the records store them.

    Attributes:
        task: the manifest's task (``"binary"``, ``"multiclass"``, or None without classes).
        classes: class names; a row's label is an index into them.
        values: per CSV row, the class index (-1: unknown).
        errors: CSV row -> why its label cannot be used (the row is bad).
        label_col: the label column, or None when the CSV has none (test split).
    """

    task: str | None
    classes: list[str]
    values: list[Any]
    errors: dict[int, str]
    label_col: str | None

    def of(self, rows: Iterable[int]) -> list[Any]:
        """The labels of these CSV rows."""
        return [self.values[i] for i in rows]


def resolve_targets(spec: BuildSpec, frame: Any, train_manifest: dict | None) -> Targets:
    """Classes (from the train records, or sorted from the labels) and each row's class index.

    Raises:
        TfkitError: a train split with fewer than two classes.
    """
    has_labels = spec.label_col is not None and spec.label_col in frame.columns
    texts = [v.strip() for v in frame[spec.label_col].tolist()] if has_labels else [""] * len(frame)
    if train_manifest:
        classes = list(train_manifest["classes"])
    elif spec.train:
        classes = sort_classes(canon_label(v) for v in texts if v not in MISSING)
    else:
        classes = []
        if has_labels and any(v not in MISSING for v in texts):
            crc32c_backend()  # the preloading thread may be silencing stderr while TF's library loads
            print(f"tfkit: note: labels in {spec.csv.name} are stored as -1: pass --classes-from "
                  "to store them as class indices", file=sys.stderr)
    if spec.train and len(classes) < 2:
        raise TfkitError(f"CSV {spec.csv} column {spec.label_col!r} has {len(classes)} distinct label(s); need at least 2")
    index = {c: k for k, c in enumerate(classes)}
    values, errors = [], {}
    for i, text in enumerate(texts):
        value, error = _class_index(spec, text, index, classes)
        values.append(value)
        if error:
            errors[i] = error
    task = ("binary" if len(classes) == 2 else "multiclass") if classes else None
    return Targets(task, classes, values, errors, spec.label_col if has_labels else None)


def _class_index(spec: BuildSpec, text: str, index: dict[str, int], classes: list[str]) -> tuple[int, str | None]:
    if spec.train and text in MISSING:
        return -1, f"missing label in column {spec.label_col!r}"
    if text in MISSING or not index:
        return -1, None
    k = index.get(canon_label(text), index.get(text, -2))
    if k == -2:
        more = " ..." if len(classes) > 20 else ""
        return -1, f"unknown class {text!r} in column {spec.label_col!r}; known classes: {', '.join(classes[:20])}{more}"
    return k, None
