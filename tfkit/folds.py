"""K-fold assignment, triple-stratified: groups isolated, labels balanced,
images and groups per fold balanced, for every target a competition uses.

Which function for which target (all return one fold per row, int64 in ``[0, K)``;
``groups`` (e.g. patient ids) are kept whole in one fold; same seed, same folds):

=================================  ==========================================================
one class per row (any dtype)      ``assign_folds(df, K, "label", group_col="patient_id")``
a numeric target (regression)      ``regression_folds(y, K, groups, n_bins=10)``; one or more
                                   target columns, each binned into quantiles (``assign_folds``
                                   bins a numeric label column the same way)
several labels per row             ``multilabel_folds(labels, K, groups)``; ``labels`` as
(multi-label, tags)                :class:`LabelLists` or anything :func:`as_label_lists` reads
a CSV, from the command line       ``tfkit folds`` (``--label-sep " "`` tags, ``--label-cols``
                                   0/1 columns, ``--target-cols`` regression) /
                                   :func:`folds_from_csv`
=================================  ==========================================================

Multi-label targets have one canonical form, :class:`LabelLists`: CSR rows of
positive class indices (``indptr``, ``indices``). :func:`as_label_lists` converts
a list with one sequence of label indices per row (``[[0, 3], [], [2]]``), a tuple
``(indptr, indices)``, a dense 0/1 matrix, or a SciPy sparse matrix.

All of them reduce the rows to sparse (group, class) counts and call the same
solver, :mod:`tfkit.stratify` (the algorithm and its objective are described
there): groups placed rarest-class and largest first into the fold that least
raises a chi-square like imbalance, by runs of interchangeable groups, then a
bounded local search. For multi-label targets this follows Sechidis, Tsoumakas &
Vlahavas's iterative stratification (2011, the algorithm behind
``iterative-stratification``'s ``MultilabelStratifiedKFold``: rarest labels first,
each placed where it is most wanted) with groups placed as units that carry their
label counts, which that package cannot do; on ``bench/bench_folds.py`` it matches
that package's per-label balance and spreads label pairs better. Memory is
O(images + groups + non-zero (group, class) counts): 10M images, 5,000 classes and
5M groups fit in well under 2 GB (``bench/bench_folds.py --scale``).

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"label": [0, 1] * 10, "patient": [i // 2 for i in range(20)]})
    >>> folds = assign_folds(df, 5, "label", group_col="patient", seed=0)
    >>> sorted(set(folds.tolist()))
    [0, 1, 2, 3, 4]
    >>> multilabel_folds([[0, 2], [1], [], [2], [0, 1]] * 4, 2, seed=0).shape
    (20,)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tfkit.stratify import group_counts, solve
from tfkit.utils import TfkitError, write_csv

__all__ = [
    "LabelLists",
    "as_label_lists",
    "assign_folds",
    "fold_label_counts",
    "fold_table",
    "folds_from_csv",
    "format_fold_table",
    "multilabel_folds",
    "quantile_bins",
    "regression_folds",
]

# A numeric label is binned when it has more distinct values than this (or any
# non-integer value); integer labels with fewer values are treated as classes.
MAX_INTEGER_CLASSES = 50
DEFAULT_BINS = 10


# --------------------------------------------------------------------------- targets


@dataclass
class _Strata:
    codes: np.ndarray  # int per row, 0..C-1
    names: list[str]  # one name per stratum
    kind: str  # "binary", "multiclass" or "numeric"


def quantile_bins(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Quantile bin of each value, numbered 0.. without gaps.

    Args:
        values: 1-D float array without NaN.
        n_bins: number of quantile bins (fewer when many values are equal: edges that
            coincide are merged).

    Returns:
        int64 bin per value.

    Example:
        >>> quantile_bins(np.arange(10.0), 5).tolist()
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    """
    if len(values) == 0 or values.min() == values.max():  # one value: one bin (qcut would give NaN)
        return np.zeros(len(values), dtype=np.int64)
    codes = np.asarray(pd.qcut(values, q=n_bins, labels=False, duplicates="drop"), dtype=np.int64)
    # qcut may leave a bin empty after dropping duplicate edges: renumber densely.
    used = np.bincount(codes) > 0
    return (np.cumsum(used) - 1)[codes]


def _strata(labels: pd.Series, n_bins: int = DEFAULT_BINS) -> _Strata:
    """Turn labels into stratum codes: classes, or quantile bins of a numeric target."""
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise TfkitError(f"label missing at row {row}: every row needs a label to stratify folds")
    values = labels.to_numpy()
    if pd.api.types.is_bool_dtype(labels):
        values = values.astype(int)
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    # Integer labels through a lookup table, others hashed (factorize); classes in sorted order.
    if values.dtype.kind in "iu":
        codes, uniq = _int_codes(values)
    else:
        codes, uniq = pd.factorize(values if numeric else labels.astype(str).to_numpy(), sort=True)
    if numeric and n_bins > 0:
        non_integer = bool(np.any(np.asarray(uniq, dtype=float) % 1 != 0))
        if (non_integer and len(uniq) > n_bins) or len(uniq) > MAX_INTEGER_CLASSES:
            codes = quantile_bins(values.astype(float), n_bins)
            return _Strata(codes, [f"q{i}" for i in range(int(codes.max()) + 1)], "numeric")
    names = [str(u.item() if hasattr(u, "item") else u) for u in uniq]
    return _Strata(codes.astype(np.int64), names, "binary" if len(uniq) == 2 else "multiclass")


@dataclass(frozen=True)
class LabelLists:
    """Multi-label targets: the positive class indices of each row, as CSR.

    Row ``i`` holds ``indices[indptr[i]:indptr[i+1]]`` (no repeats; a row may be
    empty). Build one with :func:`as_label_lists`.

    Attributes:
        indptr: int64 ``[rows + 1]``, ``indptr[0] == 0``, non-decreasing.
        indices: int64 ``[entries]`` class indices in ``[0, n_classes)``.
        n_classes: number of classes.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_classes: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def rows(self) -> np.ndarray:
        """Row index of each entry."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), np.diff(self.indptr))


def _dense_to_csr(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if matrix.dtype.kind == "f" and not np.isfinite(matrix).all():
        row, col = np.argwhere(~np.isfinite(matrix))[0]
        raise TfkitError(f"multi-label matrix: row {row}, column {col} is not 0 or 1 ({matrix[row, col]})")
    bad = (matrix != 0) & (matrix != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise TfkitError(f"multi-label matrix: row {row}, column {col} is not 0 or 1 ({matrix[row, col]})")
    rows, cols = np.nonzero(matrix)
    indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
    return indptr, cols


def _lists_to_csr(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    parts = [np.asarray(r) for r in rows]
    lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=len(parts))
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    filled = [p.reshape(-1) for p in parts if p.size]
    indices = np.concatenate(filled) if filled else np.zeros(0, dtype=np.int64)
    if indices.dtype.kind not in "iu" or any(p.ndim > 1 for p in parts):
        for i, p in enumerate(parts):
            whole = p.dtype.kind in "iu" or (p.dtype.kind == "f" and np.isfinite(p).all() and (p % 1 == 0).all())
            if p.size and (p.ndim > 1 or not whole):
                raise TfkitError(f"multi-label row {i}: labels must be integer class indices, got {rows[i]!r}")
    return indptr, indices.astype(np.int64)


def as_label_lists(labels: Any, n_classes: int | None = None) -> LabelLists:
    """Read multi-label targets into :class:`LabelLists` (CSR rows of positive class indices).

    Args:
        labels: one of
            - a :class:`LabelLists` (returned as is, after the checks);
            - a ``tuple`` ``(indptr, indices)``: CSR, row ``i`` holds
              ``indices[indptr[i]:indptr[i+1]]`` (a *list* of two arrays is two rows);
            - a 2-D array of 0/1 (or bool), one column per class;
            - a SciPy sparse matrix of 0/1 (anything with ``tocsr()``);
            - a list (or other sequence) with one sequence of class indices per row,
              e.g. ``[[0, 3], [], [2]]`` (what ``tfkit.records`` keeps per image).
        n_classes: number of classes; default: the largest index + 1 (the matrix
            width for a matrix).

    Returns:
        The :class:`LabelLists`, indices as int64.

    Raises:
        TfkitError: a negative or too large index, a label repeated in a row, a
            matrix value other than 0/1, a non-integer label; the message names the row.

    Example:
        >>> ll = as_label_lists([[0, 3], [], [2]])
        >>> ll.indptr.tolist(), ll.indices.tolist(), ll.n_classes
        ([0, 2, 2, 3], [0, 3, 2], 4)
        >>> as_label_lists(np.array([[1, 0], [1, 1]])).indices.tolist()
        [0, 0, 1]
    """
    width = None
    if isinstance(labels, LabelLists):
        indptr, indices, width = labels.indptr, labels.indices, labels.n_classes
    elif isinstance(labels, tuple) and len(labels) == 2:
        indptr, indices = (np.asarray(a) for a in labels)
        if indptr.ndim != 1 or len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != len(indices) \
                or np.any(np.diff(indptr) < 0):
            raise TfkitError("multi-label (indptr, indices): indptr must start at 0, never decrease "
                             "and end at len(indices); pass a list for one sequence per row")
    elif hasattr(labels, "tocsr"):
        csr = labels.tocsr()
        indptr, indices, width = np.asarray(csr.indptr), np.asarray(csr.indices), csr.shape[1]
        if len(csr.data) and not np.all(csr.data == 1):
            i = int(np.flatnonzero(csr.data != 1)[0])
            row = int(np.searchsorted(indptr, i, side="right") - 1)
            raise TfkitError(f"multi-label matrix: row {row}, column {indices[i]} is not 0 or 1 ({csr.data[i]})")
    elif isinstance(labels, np.ndarray) and labels.ndim == 2:
        indptr, indices = _dense_to_csr(labels)
        width = labels.shape[1]
    else:
        indptr, indices = _lists_to_csr(labels)
    return _checked_lists(indptr.astype(np.int64), indices.astype(np.int64), n_classes or width)


def _checked_lists(indptr: np.ndarray, indices: np.ndarray, n_classes: int | None) -> LabelLists:
    """Refuse negative, out-of-range and repeated labels, naming the first bad row."""
    ll = LabelLists(indptr, indices, 0)
    n_classes = int(n_classes) if n_classes else (int(indices.max()) + 1 if len(indices) else 1)
    bad = (indices < 0) | (indices >= n_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(indptr, i, side="right") - 1)
        raise TfkitError(f"multi-label row {row}: class index {indices[i]} is outside 0..{n_classes - 1}")
    key = np.sort(ll.rows() * n_classes + indices)
    repeated = np.flatnonzero(key[1:] == key[:-1])
    if len(repeated):
        row, label = divmod(int(key[repeated[0]]), n_classes)
        raise TfkitError(f"multi-label row {row}: label {label} is listed twice")
    return LabelLists(indptr, indices, n_classes)


def _regression_strata(targets: Any, n_bins: int) -> tuple[LabelLists, np.ndarray]:
    """Each target column binned into quantiles (one label per column per row), and the first column."""
    y = np.asarray(targets, dtype=np.float64) if not isinstance(targets, pd.DataFrame) else targets.to_numpy(float)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] == 0:
        raise TfkitError(f"regression targets must be one value or one row of values per image, got shape {y.shape}")
    if not np.isfinite(y).all():
        row, col = np.argwhere(~np.isfinite(y))[0]
        raise TfkitError(f"regression target missing or not finite at row {row}, column {col} ({y[row, col]})")
    if n_bins < 1:
        raise TfkitError(f"n_bins must be at least 1 for a regression target, got {n_bins}")
    codes, offset = np.empty(y.shape, dtype=np.int64), 0
    for j in range(y.shape[1]):
        codes[:, j] = quantile_bins(y[:, j], n_bins) + offset
        offset = int(codes[:, j].max()) + 1
    indptr = np.arange(0, y.size + 1, y.shape[1], dtype=np.int64)
    return LabelLists(indptr, codes.ravel(), offset), y[:, 0]


# --------------------------------------------------------------------------- groups and the solver


def _codes(values: np.ndarray) -> np.ndarray:
    """Dense codes 0..G-1 in sorted order of the values (text unless numeric)."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return _int_codes(values)[0]
    codes, _ = pd.factorize(pd.Series(values).astype(str).to_numpy(), sort=True)
    return codes.astype(np.int64)


def _int_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of integers in sorted order, and the sorted distinct values.

    Ids are usually a compact range: a lookup table over that range is O(n) and
    several times faster than hashing (``pd.factorize``) or sorting (``np.unique``).
    """
    if values.dtype == np.uint64:  # may not fit int64
        uniq, codes = np.unique(values, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), uniq
    values = values.astype(np.int64, copy=False)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64), values
    low, high = int(values.min()), int(values.max())
    if high - low > 4 * len(values) + 1024:  # sparse ids: sort instead
        uniq, codes = np.unique(values, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), uniq
    present = np.zeros(high - low + 1, dtype=bool)
    present[values - low] = True
    table = np.cumsum(present, dtype=np.int64) - 1
    return table[values - low], np.flatnonzero(present) + low


def _group_codes(df: pd.DataFrame, group_col: str | None) -> np.ndarray:
    if group_col is None:
        return np.arange(len(df), dtype=np.int64)
    if group_col not in df.columns:
        raise TfkitError(f"no group column {group_col!r} (columns: {', '.join(map(str, df.columns))})")
    groups = df[group_col]
    if groups.isna().any():
        row = int(np.flatnonzero(groups.isna().to_numpy())[0])
        raise TfkitError(f"group ({group_col!r}) missing at row {row}: every row needs a group")
    return _codes(groups.to_numpy())


def _array_groups(groups: Any, n_rows: int) -> np.ndarray:
    if groups is None:
        return np.arange(n_rows, dtype=np.int64)
    values = np.asarray(groups)
    if values.shape != (n_rows,):
        raise TfkitError(f"groups: expected one per row ({n_rows}), got shape {values.shape}")
    missing = pd.isna(values)
    if missing.any():
        raise TfkitError(f"group missing at row {int(np.flatnonzero(missing)[0])}: every row needs a group")
    return _codes(values)


def _solve_rows(
    groups: np.ndarray,
    labels: LabelLists | np.ndarray,
    n_classes: int,
    n_folds: int,
    seed: int,
    refine: bool,
    what: str = "groups",
    row_values: np.ndarray | None = None,
) -> np.ndarray:
    """Folds per row: rows' labels summed per group, the solver, groups back to rows.

    Args:
        groups: group code per row (0..G-1).
        labels: :class:`LabelLists`, or one class code per row (single-label: no
            CSR pointers are built, which saves 8 bytes per row).
        n_classes: number of classes.
        n_folds, seed, refine: as in :func:`assign_folds`.
        what: how the groups are named in the ``n_folds`` error.
        row_values: a regression target, orders the dealing of interchangeable groups.
    """
    n_folds = int(n_folds)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_folds < 2:
        raise TfkitError(f"n_folds must be at least 2, got {n_folds}")
    if n_folds > n_groups:
        raise TfkitError(f"n_folds={n_folds} is more than the {n_groups} {what}: every fold needs one")
    if isinstance(labels, LabelLists):
        entry_groups, entry_classes = np.repeat(groups, np.diff(labels.indptr)), labels.indices
    else:
        entry_groups, entry_classes = groups, labels
    gc = group_counts(entry_groups, entry_classes, groups, n_groups, n_classes, row_values)
    del entry_groups, entry_classes
    return solve(gc, n_folds, seed, refine)[groups]


# --------------------------------------------------------------------------- public


def assign_folds(
    df: pd.DataFrame,
    n_folds: int,
    label_col: str,
    group_col: str | None = None,
    seed: int = 42,
    n_bins: int = DEFAULT_BINS,
    refine: bool = True,
) -> np.ndarray:
    """Assign each row of ``df`` to one of ``n_folds`` folds, triple-stratified.

    Every group lands in exactly one fold; class counts, images and groups per
    fold are balanced (see :mod:`tfkit.stratify` for the objective).

    Args:
        df: one row per image.
        n_folds: number of folds K (2 <= K <= number of groups).
        label_col: label column: classes (any dtype) or a numeric target, which
            is binned into ``n_bins`` quantiles when it has non-integer values or
            more than 50 distinct values.
        group_col: group column (e.g. ``patient_id``); ``None``: each row is its own group.
        seed: same seed, same folds; ties between equally good choices are broken
            by a generator seeded with it.
        n_bins: quantile bins for a numeric target; 0 never bins (an integer-coded
            label with more than 50 classes then stays classes).
        refine: run the local search (moves and swaps) after the greedy pass.

    Returns:
        int64 array of length ``len(df)`` with values in ``[0, n_folds)``.

    Raises:
        TfkitError: missing column, missing label or group, or a bad ``n_folds``.

    Example:
        >>> df = pd.DataFrame({"label": ["cat", "dog", "dog"] * 4})
        >>> assign_folds(df, 4, "label", seed=1).shape
        (12,)
    """
    if label_col not in df.columns:
        raise TfkitError(f"no label column {label_col!r} (columns: {', '.join(map(str, df.columns))})")
    groups = _group_codes(df, group_col)
    strata = _strata(df[label_col], n_bins)
    what = f"groups in {group_col!r}" if group_col else "rows"
    # A binned numeric target also orders the dealing within a bin, so fold means agree.
    values = df[label_col].to_numpy(dtype=float) if strata.kind == "numeric" else None
    return _solve_rows(groups, strata.codes, len(strata.names), n_folds, seed, refine, what, values)


def multilabel_folds(
    labels: Any,
    n_folds: int,
    groups: Any = None,
    seed: int = 42,
    n_classes: int | None = None,
    refine: bool = True,
) -> np.ndarray:
    """Multi-label iterative stratification with groups isolated.

    Each label's positives, images and groups per fold are balanced; a group
    moves as a unit carrying its per-label counts. Rows without any label count
    as images only.

    Args:
        labels: per-row positive labels in any form :func:`as_label_lists` reads
            (a list of index sequences, a tuple ``(indptr, indices)``, a 0/1
            matrix, :class:`LabelLists`).
        n_folds: number of folds K (2 <= K <= number of groups).
        groups: one group per row (ids of any type), or ``None`` (each row its own group).
        seed: same seed, same folds.
        n_classes: number of labels (default: the largest index + 1, or the matrix width).
        refine: run the local search after the greedy pass.

    Returns:
        int64 fold per row.

    Raises:
        TfkitError: bad labels (naming the row), a missing group, a bad ``n_folds``.

    Example:
        >>> folds = multilabel_folds([[0], [0, 1], [1], [], [0, 1], [1]], 2, groups=list("aabbcc"), seed=0)
        >>> bool(folds[0] == folds[1] and folds[2] == folds[3])
        True
    """
    ll = as_label_lists(labels, n_classes)
    return _solve_rows(_array_groups(groups, ll.n_rows), ll, ll.n_classes, n_folds, seed, refine)


def regression_folds(
    targets: Any,
    n_folds: int,
    groups: Any = None,
    n_bins: int = DEFAULT_BINS,
    seed: int = 42,
    refine: bool = True,
) -> np.ndarray:
    """Folds for a regression target: quantile bins stratified, groups isolated.

    Each target column is cut into ``n_bins`` quantile bins and every bin of every
    column is balanced across folds (several columns, e.g. a vote histogram, are
    stratified together as multi-label bins), with images and groups per fold.

    Args:
        targets: ``[rows]`` or ``[rows, targets]`` numbers (array, list or DataFrame).
        n_folds: number of folds K (2 <= K <= number of groups).
        groups: one group per row, or ``None`` (each row its own group).
        n_bins: quantile bins per target column (fewer when values repeat).
        seed: same seed, same folds.
        refine: run the local search after the greedy pass.

    Returns:
        int64 fold per row.

    Raises:
        TfkitError: a missing or non-finite target (naming the row), a missing
            group, ``n_bins`` < 1 or a bad ``n_folds``.

    Example:
        >>> y = np.linspace(1.0, 100.0, 50)
        >>> np.bincount(regression_folds(y, 5, n_bins=5, seed=0)).tolist()
        [10, 10, 10, 10, 10]
    """
    ll, first = _regression_strata(targets, n_bins)
    groups = _array_groups(groups, ll.n_rows)
    return _solve_rows(groups, ll, ll.n_classes, n_folds, seed, refine, row_values=first)


def fold_label_counts(labels: Any, folds: np.ndarray, n_folds: int | None = None) -> np.ndarray:
    """Positives of each label in each fold: the multi-label balance table.

    Args:
        labels: per-row labels in any form :func:`as_label_lists` reads.
        folds: fold per row.
        n_folds: number of folds (default: the largest fold + 1).

    Returns:
        int64 ``[n_folds, n_classes]`` counts.

    Example:
        >>> fold_label_counts([[0], [0, 1], [1]], np.array([0, 1, 1])).tolist()
        [[1, 0], [1, 2]]
    """
    ll = as_label_lists(labels)
    folds = np.asarray(folds, dtype=np.int64)
    if len(folds) != ll.n_rows:
        raise TfkitError(f"{len(folds)} folds for {ll.n_rows} rows")
    n_folds = int(n_folds or folds.max() + 1)
    flat = folds[ll.rows()] * ll.n_classes + ll.indices
    return np.bincount(flat, minlength=n_folds * ll.n_classes).reshape(n_folds, ll.n_classes)


def fold_table(
    df: pd.DataFrame, folds: np.ndarray, label_col: str, group_col: str | None = None, n_bins: int = DEFAULT_BINS
) -> pd.DataFrame:
    """Per-fold balance: images, groups, count per class (or target bin) and a share.

    Args:
        df: the rows that were assigned.
        folds: one fold per row (from :func:`assign_folds`).
        label_col: label column.
        group_col: group column, or ``None`` (each row its own group).
        n_bins: quantile bins for a numeric target, 0 never bins (as in :func:`assign_folds`).

    Returns:
        DataFrame indexed by fold with columns ``images``, ``groups``, one
        ``n[<class>]`` column per class or bin, then ``pos_rate`` (binary: share of
        the larger sorted label, e.g. 1), ``max_share_dev`` (multiclass: largest
        absolute gap between a class's share in the fold and overall) or
        ``mean``/``std`` of the target (numeric).

    Example:
        >>> df = pd.DataFrame({"label": [0, 1] * 10})
        >>> fold_table(df, assign_folds(df, 2, "label"), "label")["images"].tolist()
        [10, 10]
    """
    folds = np.asarray(folds)
    if len(folds) != len(df):
        raise TfkitError(f"{len(folds)} folds for {len(df)} rows")
    strata = _strata(df[label_col], n_bins)
    groups = _group_codes(df, group_col)
    n_folds = int(folds.max()) + 1
    counts = np.zeros((n_folds, len(strata.names)), dtype=np.int64)
    np.add.at(counts, (folds, strata.codes), 1)
    images = counts.sum(axis=1)
    n_groups = np.array([len(np.unique(groups[folds == k])) for k in range(n_folds)])
    columns: dict[str, np.ndarray] = {"images": images, "groups": n_groups}
    columns.update({f"n[{name}]": counts[:, c] for c, name in enumerate(strata.names)})
    with np.errstate(invalid="ignore", divide="ignore"):
        if strata.kind == "binary":
            columns["pos_rate"] = counts[:, 1] / images
        elif strata.kind == "multiclass":
            overall = counts.sum(axis=0) / counts.sum()
            columns["max_share_dev"] = np.abs(counts / images[:, None] - overall).max(axis=1)
        else:
            target = df[label_col].astype(float).to_numpy()
            columns["mean"] = np.array([target[folds == k].mean() for k in range(n_folds)])
            columns["std"] = np.array([target[folds == k].std() for k in range(n_folds)])
    return pd.DataFrame(columns, index=pd.RangeIndex(n_folds, name="fold"))


def format_fold_table(table: pd.DataFrame) -> str:
    """Render :func:`fold_table` as text with a ``total`` line (counts summed).

    Args:
        table: output of :func:`fold_table`.

    Returns:
        The table as a printable string.

    Example:
        >>> df = pd.DataFrame({"label": [0, 1] * 10})
        >>> print(format_fold_table(fold_table(df, assign_folds(df, 2, "label"), "label")))
               images  groups  n[0]  n[1] pos_rate
        fold
        0          10      10     5     5   0.5000
        1          10      10     5     5   0.5000
        total      20      20    10    10
    """
    counts = [c for c in table.columns if c in ("images", "groups") or c.startswith("n[")]
    total = table[counts].sum()
    shown = table.copy()
    shown.index = shown.index.astype(str)
    shown.loc["total"] = total
    for c in table.columns:
        if c in ("pos_rate", "max_share_dev", "mean", "std") or c.startswith(("mean[", "std[")):
            shown[c] = shown[c].astype(float).map(lambda v: "" if np.isnan(v) else f"{v:.4f}")
    for c in counts:
        shown[c] = shown[c].astype("int64")
    return shown.to_string()


def folds_from_csv(
    csv: str | os.PathLike,
    out: str | os.PathLike,
    id_col: str = "id",
    label_col: str = "label",
    group_col: str | None = None,
    n_folds: int = 5,
    seed: int = 42,
    n_bins: int = DEFAULT_BINS,
    label_sep: str | None = None,
    label_cols: list[str] | None = None,
    target_cols: list[str] | None = None,
) -> pd.DataFrame:
    """Read a CSV, assign triple-stratified folds, write ``<id_col>,fold`` and print the balance table.

    The target is one of: ``label_col`` (one class per row, or a numeric target
    that gets binned); ``label_col`` holding tags split by ``label_sep``
    (multi-label, e.g. Planet's ``"clear primary road"``); ``label_cols``, one 0/1
    column per label (multi-label, e.g. RANZCR); ``target_cols``, one or more
    numeric columns (regression, each binned into ``n_bins`` quantiles).

    Args:
        csv: input CSV, one row per image.
        out: output CSV (written atomically) with columns ``id_col`` and ``fold``.
        id_col: id column (must be unique).
        label_col: label column (classes, a numeric target, or tags with ``label_sep``).
        group_col: group column, or ``None`` (each row its own group).
        n_folds: number of folds.
        seed: random seed (same seed, same folds).
        n_bins: quantile bins for a numeric target; 0 never bins (single label only).
        label_sep: split ``label_col`` into tags on this separator (multi-label).
        label_cols: 0/1 columns, one per label (multi-label).
        target_cols: numeric target columns (regression).

    Returns:
        The written DataFrame (``id_col``, ``fold``) in the CSV's row order.

    Raises:
        TfkitError: unreadable CSV, missing column, duplicate id, missing label,
            group or target, a value that is not 0/1 or not a number, a row without
            tags, or a bad ``n_folds``; the message names the line.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> pd.DataFrame({"id": [f"i{k}" for k in range(12)], "target": [0, 1, 2] * 4,
        ...               "patient_id": [k // 2 for k in range(12)]}).to_csv(d / "train.csv", index=False)
        >>> folds = folds_from_csv(d / "train.csv", d / "folds.csv", label_col="target", group_col="patient_id",
        ...                        n_folds=3)  # doctest: +ELLIPSIS
        3 folds of 12 images, 6 groups (label 'target', group 'patient_id', seed 42) -> ...folds.csv
        ...
        >>> folds.groupby("fold").size().tolist()
        [4, 4, 4]
    """
    from tfkit.preflight import check_out_file

    csv = Path(csv)
    if sum(x is not None for x in (label_sep, label_cols, target_cols)) > 1:
        raise TfkitError("give one of --label-sep, --label-cols and --target-cols")
    target = list(label_cols or target_cols or [label_col])
    check_out_file(out, "--out")  # before the folds are computed
    df = _read_rows(csv, id_col, target, group_col)
    n_groups = df[group_col].nunique() if group_col else len(df)
    if n_folds < 2 or n_folds > n_groups:
        what = f"groups in {group_col!r}" if group_col else "rows"
        raise TfkitError(f"--folds must be between 2 and the {n_groups} {what} of {csv}, got {n_folds}")
    if n_bins < 0:
        raise TfkitError(f"--bins must be 0 (never bin) or a positive number of quantile bins, got {n_bins}")
    if target_cols and n_bins < 1:
        raise TfkitError(f"--bins must be at least 1 with --target-cols (regression targets are binned), got {n_bins}")
    groups = df[group_col].to_numpy() if group_col else None
    if label_sep is not None or label_cols:
        labels, names = _tags(df, csv, label_col, label_sep) if label_cols is None else _indicators(df, csv, target)
        folds = multilabel_folds(labels, n_folds, groups=groups, seed=seed, n_classes=len(names))
        table = _counts_table(fold_label_counts(labels, folds, n_folds), names, folds, groups, n_folds)
    elif target_cols:
        y = _numbers(df, csv, target_cols)
        folds = regression_folds(y, n_folds, groups=groups, n_bins=n_bins, seed=seed)
        table = _counts_table(np.zeros((n_folds, 0), dtype=np.int64), [], folds, groups, n_folds)
        for j, col in enumerate(target_cols):
            table[f"mean[{col}]"] = [y[folds == k, j].mean() for k in range(n_folds)]
    else:
        folds = assign_folds(df, n_folds, label_col, group_col=group_col, seed=seed, n_bins=n_bins)
        table = fold_table(df, folds, label_col, group_col, n_bins=n_bins)
    result = pd.DataFrame({id_col: df[id_col].to_numpy(), "fold": folds})
    write_csv(out, result)
    what = f"labels {', '.join(target)}" if len(target) > 1 else f"label {target[0]!r}"
    print(f"{n_folds} folds of {len(df)} images, {n_groups} groups ({what}"
          f"{f', group {group_col!r}' if group_col else ''}, seed {seed}) -> {out}")
    print(format_fold_table(table))
    return result


def _read_rows(csv: Path, id_col: str, target: list[str], group_col: str | None) -> pd.DataFrame:
    """The CSV with ids checked (present, unique) and no missing target or group; errors name the line."""
    if not csv.is_file():
        raise TfkitError(f"CSV {csv} not found")
    try:
        # Ids and groups stay text: "007" and "7" are different ids.
        keep_text = {c: str for c in (id_col, group_col) if c}
        df = pd.read_csv(csv, dtype=keep_text, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TfkitError(f"CSV {csv} could not be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    cols = ", ".join(map(str, df.columns))
    roles = [("id", id_col)] + [("label", c) for c in target] + [("group", group_col)]
    for role, col in roles:
        if col is not None and col not in df.columns:
            raise TfkitError(f"CSV {csv} has no {role} column {col!r} (columns: {cols})")
    if len(df) == 0:
        raise TfkitError(f"CSV {csv} has no rows")
    # Line numbers as a spreadsheet shows them: the header is line 1.
    ids = df[id_col]
    if ids.isna().any():
        raise TfkitError(f"CSV {csv} line {int(np.flatnonzero(ids.isna().to_numpy())[0]) + 2}: id ({id_col!r}) missing")
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((ids == ids.iloc[i]).to_numpy())[0])
        raise TfkitError(f"CSV {csv} line {i + 2}: duplicate id {ids.iloc[i]!r} (first at line {first + 2})")
    for role, col in roles[1:]:
        if col is None:
            continue
        missing = df[col].isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise TfkitError(f"CSV {csv} line {i + 2}: {role} ({col!r}) missing for id {ids.iloc[i]!r}")
    return df


def _tags(df: pd.DataFrame, csv: Path, col: str, sep: str) -> tuple[LabelLists, list[str]]:
    """Tags split on ``sep`` (blank pieces dropped), classes in sorted order."""
    rows = [[t for t in (p.strip() for p in str(v).split(sep)) if t] for v in df[col].tolist()]
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise TfkitError(f"CSV {csv} line {empty[0] + 2}: no tags in {col!r} (split on {sep!r})")
    names = sorted({t for r in rows for t in r})
    index = {t: i for i, t in enumerate(names)}
    return as_label_lists([sorted({index[t] for t in r}) for r in rows], len(names)), names


def _indicators(df: pd.DataFrame, csv: Path, cols: list[str]) -> tuple[np.ndarray, list[str]]:
    """0/1 label columns as a matrix (true/false accepted)."""
    values = df[cols].to_numpy()  # True/False compare equal to 1/0
    for j, col in enumerate(cols):
        bad = ~pd.Series(values[:, j]).isin([0, 1]).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TfkitError(f"CSV {csv} line {i + 2}: {col!r} must be 0 or 1, got {df[col].iloc[i]}")
    return values.astype(np.uint8), list(cols)


def _numbers(df: pd.DataFrame, csv: Path, cols: list[str]) -> np.ndarray:
    """Numeric target columns; a value that is not a number names its line."""
    out = np.empty((len(df), len(cols)))
    for j, col in enumerate(cols):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TfkitError(f"CSV {csv} line {i + 2}: target {col!r} is not a number ({df[col].iloc[i]!r})")
        out[:, j] = values
    return out


def _counts_table(
    counts: np.ndarray, names: list[str], folds: np.ndarray, groups: np.ndarray | None, n_folds: int
) -> pd.DataFrame:
    """Images, groups and ``n[<label>]`` per fold (the multi-label and regression balance table)."""
    n_groups = np.bincount(folds, minlength=n_folds) if groups is None else \
        pd.Series(groups).groupby(folds).nunique().reindex(range(n_folds), fill_value=0).to_numpy()
    columns = {"images": np.bincount(folds, minlength=n_folds), "groups": n_groups}
    columns.update({f"n[{name}]": counts[:, j] for j, name in enumerate(names)})
    return pd.DataFrame(columns, index=pd.RangeIndex(n_folds, name="fold"))
