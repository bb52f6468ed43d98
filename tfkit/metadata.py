"""Metadata (tabular) inputs encoded with statistics of a fold's training rows only.

The records store metadata raw: numeric columns as float (NaN when missing),
categorical ones as an index into the manifest's vocabulary (-1 when missing).
The manifest's own mean/std are computed over every row of the CSV, validation
folds included, so using them would let a statistic of the validation fold
reach its training. Instead each fold model gets its own encoding, fitted on
its training folds (:func:`fit_encoding`):

* numeric: standardised with the training rows' mean and std; a missing value
  becomes 0 (the training mean) **and** sets an indicator input, so the model
  can tell "missing" from "average";
* categorical, ``model.meta_categorical: onehot`` (the default): one-hot over
  the categories present in the training rows; a category seen only in
  validation or test rows is all zeros, like a missing one;
* categorical, ``embedding``: a learned embedding per column (entity embeddings,
  Guo & Berkhahn 2016), one row per category present in the training rows
  plus row 0 for "missing or never seen in training", of width
  :func:`embedding_size` (the fast.ai rule of thumb ``min(50, (n + 1) // 2)``).
  Worth it for columns with many categories (hospital, camera model, store id),
  where one-hot would make a wide, sparse first layer.

The encoding lives inside the model as a :class:`MetadataEncoder` layer (saved
in the fold's ``.keras`` file, so prediction applies exactly the fold's own
statistics) and is written beside it as ``fold{k}/metadata.json`` with the
missing-value counts. :func:`encode` is the NumPy reference of the layer.

Example:
    >>> import pandas as pd
    >>> manifest = {"metadata": {"age": {"kind": "numeric"}, "site": {"kind": "categorical", "vocab": ["a", "b"]}}}
    >>> rows = pd.DataFrame({"age": [20.0, 40.0, float("nan")], "site": [0, 0, -1]})
    >>> enc = fit_encoding(rows, ["age", "site"], manifest)
    >>> enc["columns"][0]["mean"], enc["columns"][0]["missing"], enc["columns"][1]["vocab"]
    (30.0, 1, ['a'])
    >>> encode(rows, enc).tolist()
    [[-1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import numpy as np
from keras import ops

from tfkit.utils import TfkitError

__all__ = ["fit_encoding", "encode", "encoded_width", "embedding_size", "check_categorical", "CATEGORICAL",
           "MetadataEncoder", "describe"]

# How a categorical metadata column enters the model (``model.meta_categorical``).
CATEGORICAL = ("onehot", "embedding")


def check_categorical(mode: str) -> None:
    """One-line error for an unknown ``model.meta_categorical``.

    Example:
        >>> check_categorical("embedding")
        >>> check_categorical("hash")
        Traceback (most recent call last):
        ...
        tfkit.utils.TfkitError: model.meta_categorical: expected one of onehot, embedding, got 'hash'
    """
    if mode not in CATEGORICAL:
        raise TfkitError(f"model.meta_categorical: expected one of {', '.join(CATEGORICAL)}, got {mode!r}")


def embedding_size(n_categories: int) -> int:
    """Width of a categorical column's embedding: ``min(50, (n + 1) // 2)``.

    Args:
        n_categories: rows of the embedding table (the training rows' categories
            plus the "missing or unseen" row).

    Returns:
        The embedding width (at least 1).

    Example:
        >>> [embedding_size(n) for n in (1, 2, 3, 10, 99, 100, 1000)]
        [1, 1, 2, 5, 50, 50, 50]
    """
    return max(1, min(50, (int(n_categories) + 1) // 2))


def _raw_values(values: Any, spec: Mapping[str, Any]) -> np.ndarray:
    """Column values as raw floats: numbers as they are; categories given as strings mapped to vocab indices."""
    values = list(values) if not isinstance(values, np.ndarray) else values
    if spec["kind"] == "categorical" and any(isinstance(v, str) or v is None for v in values):
        index = {v: i for i, v in enumerate(spec.get("vocab") or [])}
        return np.array([index.get(v, -1) if v is not None else -1 for v in values], dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def fit_encoding(rows: Any, names: Sequence[str], manifest: Mapping[str, Any], categorical: str = "onehot") -> dict:
    """Fit the metadata encoding on a fold's training rows.

    Args:
        rows: the training rows' metadata, one column per name: numeric as
            float (NaN missing), categorical as the manifest vocabulary index
            (-1 missing) or as the category string (None missing), e.g.
            ``tfkit.data.read_index(records, train_folds, extra=True)``.
        names: the columns fed to the model (``cfg.data.metadata``), in input order.
        manifest: the records' manifest (column kinds and vocabularies).
        categorical: ``onehot`` or ``embedding`` (see the module docstring).

    Returns:
        ``{"columns": [...], "n_rows": N}``; a numeric column holds ``mean``,
        ``std`` and ``missing`` (count); a categorical one ``vocab`` (the
        categories present, manifest order), ``index`` (their manifest indices),
        ``missing`` and ``encoding`` (plus ``embed_dim`` for an embedding).
    """
    from tfkit.manifest import Manifest

    check_categorical(categorical)
    columns = []
    n = len(rows)
    for name, spec in Manifest.from_dict(manifest).metadata_columns(names):
        values = _raw_values(rows[name], spec)
        if spec["kind"] == "numeric":
            known = values[np.isfinite(values)]
            mean = float(known.mean()) if known.size else 0.0
            std = float(known.std()) if known.size else 1.0
            columns.append({"name": name, "kind": "numeric", "mean": mean, "std": std if std > np.finfo(np.float32).tiny else 1.0,  # the layer divides in float32
                            "missing": int(n - known.size)})
        else:
            vocab = list(spec.get("vocab") or [])
            idx = values.astype(np.int64)
            seen = sorted(int(i) for i in np.unique(idx) if 0 <= i < len(vocab))
            column = {"name": name, "kind": "categorical", "vocab": [vocab[i] for i in seen], "index": seen,
                      "vocab_size": len(vocab), "missing": int(np.sum((idx < 0) | (idx >= len(vocab)))),
                      "encoding": categorical}
            if categorical == "embedding":
                column["embed_dim"] = embedding_size(len(seen) + 1)
            columns.append(column)
    return {"columns": columns, "n_rows": int(n)}


def _embedded(column: Mapping[str, Any]) -> bool:
    return column["kind"] == "categorical" and column.get("encoding") == "embedding"


def _width(column: Mapping[str, Any]) -> int:
    if column["kind"] == "numeric":
        return 2  # value, missing flag
    return int(column["embed_dim"]) if _embedded(column) else len(column["vocab"])


def encoded_width(encoding: Mapping[str, Any]) -> int:
    """Width of the encoded vector: 2 per numeric column (value, missing flag), the fitted
    vocabulary per one-hot column, ``embed_dim`` per embedded column."""
    return sum(_width(c) for c in encoding["columns"])


def encode(rows: Any, encoding: Mapping[str, Any]) -> np.ndarray:
    """NumPy reference of :class:`MetadataEncoder`'s fixed part: raw rows -> float32 ``[N, W]``.

    Numeric and one-hot columns are encoded as the layer encodes them; an
    embedded column gives its lookup row (0: missing or never seen in the
    training rows, ``1 + k``: the k-th fitted category), which the layer's
    learned table then maps to ``embed_dim`` numbers.
    """
    parts = []
    for c in encoding["columns"]:
        values = _raw_values(rows[c["name"]], {"kind": c["kind"], "vocab": _full_vocab(c)})
        if c["kind"] == "numeric":
            missing = ~np.isfinite(values)
            parts += [np.where(missing, 0.0, (values - c["mean"]) / c["std"]), missing.astype(np.float64)]
        elif _embedded(c):
            idx = values.astype(np.int64)
            parts.append(sum((idx == i) * (k + 1) for k, i in enumerate(c["index"])) + np.zeros(len(idx)))
        else:
            idx = values.astype(np.int64)
            parts += [(idx == i).astype(np.float64) for i in c["index"]]
    return np.stack(parts, axis=1).astype(np.float32) if parts else np.zeros((len(rows), 0), np.float32)


def _full_vocab(column: Mapping[str, Any]) -> list:
    """A vocabulary in which each fitted category sits at its manifest index (for string inputs)."""
    if column["kind"] != "categorical":
        return []
    vocab: list = [None] * int(column.get("vocab_size", max(column["index"], default=-1) + 1))
    for i, v in zip(column["index"], column["vocab"]):
        vocab[i] = v
    return vocab


def describe(encoding: Mapping[str, Any]) -> str:
    """One line for the training log: the missing-value counts of the fold's training rows.

    Example:
        >>> describe({"n_rows": 40, "columns": [{"name": "age", "kind": "numeric", "missing": 3}]})
        'metadata fitted on 40 training rows; missing: age 3 (indicator input)'
    """
    counts = [f"{c['name']} {c['missing']}" + (" (indicator input)" if c["kind"] == "numeric" else "")
              for c in encoding["columns"] if c["missing"]]
    return f"metadata fitted on {encoding['n_rows']} training rows; missing: {', '.join(counts) or 'none'}"


@keras.saving.register_keras_serializable(package="tfkit")
class MetadataEncoder(keras.layers.Layer):
    """Encode raw metadata ``[B, n_columns]`` with a fold's fitted statistics (see the module docstring).

    The layer owns the learned embedding tables of ``embedding`` columns (one
    ``keras.layers.Embedding`` each, saved with the model).

    Args:
        encoding: the dict of :func:`fit_encoding` (serialised with the model).

    Example:
        >>> enc = {"n_rows": 2, "columns": [{"name": "age", "kind": "numeric", "mean": 30.0, "std": 10.0, "missing": 0}]}
        >>> MetadataEncoder(enc)(np.array([[40.0], [np.nan]], "float32")).numpy().tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        >>> site = {"name": "site", "kind": "categorical", "vocab": ["a", "c"], "index": [0, 2], "missing": 0,
        ...         "encoding": "embedding", "embed_dim": 2}
        >>> tuple(MetadataEncoder({"n_rows": 2, "columns": [site]})(np.array([[2.0], [1.0]], "float32")).shape)
        (2, 2)
    """

    def __init__(self, encoding: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoding = {"columns": [dict(c) for c in encoding["columns"]], "n_rows": int(encoding.get("n_rows", 0))}
        # Created here, not in build(), so a loaded model finds them before its weights are restored.
        embedded = [c for c in self.encoding["columns"] if _embedded(c)]
        self.embeddings = [keras.layers.Embedding(len(c["index"]) + 1, int(c["embed_dim"]), name=f"embed_{c['name']}")
                           for c in embedded]
        self._table = {c["name"]: t for c, t in zip(embedded, self.embeddings)}

    def build(self, input_shape: Any) -> None:
        for table in self.embeddings:
            table.build((None,))
        super().build(input_shape)

    def call(self, raw: Any) -> Any:
        raw = ops.cast(raw, "float32")
        parts = []
        for j, c in enumerate(self.encoding["columns"]):
            v = raw[:, j]
            if c["kind"] == "numeric":
                missing = ops.logical_not(ops.isfinite(v))
                z = (ops.where(missing, c["mean"], v) - c["mean"]) / c["std"]
                parts += [z[:, None], ops.cast(missing, "float32")[:, None]]
            elif _embedded(c):
                # row 0 = missing or unseen in training; row 1 + k = the k-th fitted category
                row = sum(ops.cast(ops.equal(v, float(i)), "int32") * (k + 1) for k, i in enumerate(c["index"]))
                parts.append(self._table[c["name"]](ops.zeros_like(v, "int32") + row))
            else:
                parts += [ops.cast(ops.equal(v, float(i)), "float32")[:, None] for i in c["index"]]
        if not parts:
            return ops.zeros((ops.shape(raw)[0], 0), "float32")
        return ops.concatenate([ops.cast(p, "float32") for p in parts], axis=1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], encoded_width(self.encoding))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "encoding": self.encoding}
