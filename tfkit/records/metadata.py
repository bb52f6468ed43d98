"""Metadata columns stored beside each image (``meta/<col>``): their kind, statistics and values.

A column is numeric when every non-missing value is a number (stored as float, NaN
when missing), else categorical (stored as the index into its sorted vocabulary, -1
when missing or unknown). A test split takes the train records' specs so indices match.

Example:
    >>> import pandas as pd
    >>> spec = metadata_spec(pd.DataFrame({"site": ["leg", "", "head"]}), ["site"], None)
    >>> spec
    {'site': {'kind': 'categorical', 'vocab': ['head', 'leg']}}
    >>> MetadataEncoder(spec).value("site", "leg"), MetadataEncoder(spec).value("site", "arm")
    (1, -1)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tfkit.records.table import MISSING
from tfkit.records.targets import is_number


def metadata_spec(frame: Any, cols: Sequence[str], train_spec: Mapping[str, Any] | None) -> dict[str, dict]:
    """Each metadata column's kind with its mean/std (numeric) or vocabulary (categorical).

    Args:
        frame: the rows the statistics are taken over.
        cols: metadata columns.
        train_spec: the train records' specs (test split), taken as they are.

    Returns:
        ``{col: {"kind": "numeric", "mean", "std"} | {"kind": "categorical", "vocab"}}``.
    """
    import numpy as np

    spec: dict[str, dict] = {}
    for col in cols:
        if train_spec is not None and col in train_spec:
            spec[col] = dict(train_spec[col])
            continue
        vals = [v.strip() for v in frame[col].tolist() if v.strip() not in MISSING]
        if vals and all(is_number(v) for v in vals):
            arr = np.array([float(v) for v in vals], np.float64)
            spec[col] = {"kind": "numeric", "mean": float(arr.mean()), "std": float(arr.std())}
        else:
            spec[col] = {"kind": "categorical", "vocab": sorted(set(vals))}
    return spec


def feature_types(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The manifest's ``features`` entries of the metadata columns."""
    return {f"meta/{c}": "float32" if s["kind"] == "numeric" else "int64" for c, s in spec.items()}


class MetadataEncoder:
    """Turns a metadata cell's text into the value stored (float, or vocabulary index)."""

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        self.spec = spec
        self.vocab = {c: {v: k for k, v in enumerate(s["vocab"])} for c, s in spec.items() if s["kind"] != "numeric"}

    def value(self, col: str, text: str) -> float | int:
        """The stored value of ``text`` in column ``col``."""
        t = text.strip()
        if self.spec[col]["kind"] == "numeric":
            return float(t) if t not in MISSING and is_number(t) else float("nan")
        return self.vocab[col].get(t, -1)
