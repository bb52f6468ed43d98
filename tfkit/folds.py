"""Triple-stratified K-fold assignment: groups isolated, classes balanced,
group sizes and images per fold balanced.

Each group (e.g. a patient) is described by its per-class image counts. The
groups are placed one at a time, heaviest first (weighted by class rarity,
seeded tie-breaking), each into the fold that least increases a chi-square
like imbalance objective

    sum_k [ sum_c (n_kc - T_c)^2 / T_c
            + a * (n_k - N/K)^2 / (N/K)
            + b * (g_k - G/K)^2 / (G/K) ]

(``n_kc`` images of class ``c`` in fold ``k``, ``T_c`` its ideal share,
``n_k`` images and ``g_k`` groups of fold ``k``). A local search then moves
single groups and swaps pairs of groups between folds while the objective
decreases (swaps are searched over distinct group profiles, at most 512 per
fold, a seeded sample beyond that). Class balance dominates (``a`` = 0.6,
``b`` = 0.2, ``a + b < 1``): with one image per group every class count per
fold lands on the floor or ceiling of its ideal (a property test checks it).

A numeric target with many distinct values (or any non-integer values) is
binned into quantiles first, so each fold covers the target's range alike.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"label": [0, 1] * 10, "patient": [i // 2 for i in range(20)]})
    >>> folds = assign_folds(df, 5, "label", group_col="patient", seed=0)
    >>> sorted(set(folds.tolist()))
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tfkit.utils import TfkitError, write_csv

__all__ = ["assign_folds", "fold_table", "folds_from_csv", "format_fold_table"]

# Weights of the image-count and group-count terms relative to the class terms.
# Their sum stays below 1 so a one-image difference in a class count always
# outweighs a one-image difference in fold size: classes first.
IMAGE_WEIGHT = 0.6
GROUP_WEIGHT = 0.2
# A numeric label is binned when it has more distinct values than this (or any
# non-integer value); integer labels with fewer values are treated as classes.
MAX_INTEGER_CLASSES = 50
DEFAULT_BINS = 10


@dataclass
class _Strata:
    codes: np.ndarray  # int per row, 0..C-1
    names: list[str]  # one name per stratum
    kind: str  # "binary", "multiclass" or "numeric"


def _strata(labels: pd.Series, n_bins: int = DEFAULT_BINS) -> _Strata:
    """Turn labels into stratum codes: classes, or quantile bins of a numeric target."""
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise TfkitError(f"label missing at row {row}: every row needs a label to stratify folds")
    values = labels.to_numpy()
    if pd.api.types.is_bool_dtype(labels):
        values = values.astype(int)
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    if numeric and n_bins > 0:
        uniq = np.unique(values)
        non_integer = bool(np.any(np.asarray(uniq, dtype=float) % 1 != 0))
        if (non_integer and len(uniq) > n_bins) or len(uniq) > MAX_INTEGER_CLASSES:
            codes = pd.qcut(values.astype(float), q=n_bins, labels=False, duplicates="drop")
            codes = np.asarray(codes, dtype=np.int64)
            # qcut may leave a bin empty after dropping duplicate edges: renumber densely.
            used, codes = np.unique(codes, return_inverse=True)
            return _Strata(codes.astype(np.int64), [f"q{i}" for i in range(len(used))], "numeric")
    uniq, codes = np.unique(values.astype(str) if not numeric else values, return_inverse=True)
    names = [str(u.item() if hasattr(u, "item") else u) for u in uniq]
    return _Strata(codes.astype(np.int64), names, "binary" if len(uniq) == 2 else "multiclass")


def _group_codes(df: pd.DataFrame, group_col: str | None) -> np.ndarray:
    if group_col is None:
        return np.arange(len(df), dtype=np.int64)
    if group_col not in df.columns:
        raise TfkitError(f"no group column {group_col!r} (columns: {', '.join(map(str, df.columns))})")
    groups = df[group_col]
    if groups.isna().any():
        row = int(np.flatnonzero(groups.isna().to_numpy())[0])
        raise TfkitError(f"group ({group_col!r}) missing at row {row}: every row needs a group")
    _, codes = np.unique(groups.astype(str).to_numpy(), return_inverse=True)
    return codes.astype(np.int64)


def _single_thread_blas() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _greedy(X: np.ndarray, T: np.ndarray, w: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Place groups heaviest first into the fold that least raises the objective."""
    n_groups = X.shape[0]
    # Weight of a group: its images counted by class rarity (X[:, :-2] are the class counts).
    n_classes = X.shape[1] - 2
    weight = (X[:, :n_classes] * w[:n_classes]).sum(axis=1)
    # Seeded shuffle first, then a stable sort: equal weights keep the shuffled order.
    perm = rng.permutation(n_groups)
    order = perm[np.argsort(-weight[perm], kind="stable")]
    fold_order = rng.permutation(n_folds)  # seeded tie-break between equally good folds
    F = np.zeros((n_folds, X.shape[1]))
    assign = np.empty(n_groups, dtype=np.int64)
    wX = X * w
    for g in order:
        # Objective increase of adding x to fold k: sum_j w_j (2 x_j (F_kj - T_j) + x_j^2);
        # the x_j^2 part is the same for every fold.
        score = (F[fold_order] - T) @ wX[g]
        k = fold_order[int(np.argmin(score))]
        F[k] += X[g]
        assign[g] = k
    return assign


def _profiles(X: np.ndarray, members: np.ndarray, rng: np.random.Generator, limit: int) -> np.ndarray:
    """One representative per distinct group profile (swapping identical groups changes
    nothing), at most ``limit`` of them (a seeded sample) to bound the swap search."""
    if len(members) == 0:
        return members
    _, first = np.unique(X[members], axis=0, return_index=True)
    reps = members[np.sort(first)]
    if len(reps) > limit:
        reps = np.sort(rng.choice(reps, size=limit, replace=False))
    return reps


def _local_search(
    X: np.ndarray,
    T: np.ndarray,
    w: np.ndarray,
    assign: np.ndarray,
    n_folds: int,
    rng: np.random.Generator,
    max_iter: int = 1000,
    max_candidates: int = 512,
) -> np.ndarray:
    """Apply the best single move or pairwise swap of groups while the objective drops."""
    assign = assign.copy()
    F = np.zeros((n_folds, X.shape[1]))
    np.add.at(F, assign, X)
    wX = X * w
    self_term = 2.0 * (wX * X).sum(axis=1)  # 2 sum_j w_j x_j^2
    n_in = np.bincount(assign, minlength=n_folds)
    tol = 1e-9
    for _ in range(max_iter):
        # The objective is a sum over folds, so changes touching disjoint folds add up
        # exactly: each round applies the best candidates that share no fold.
        candidates: list[tuple[float, tuple[int, int], tuple[str, int, int]]] = []
        # Moves g: a -> b change the objective by 2 sum_j w_j x_j (F_bj - F_aj) + 2 sum_j w_j x_j^2.
        D = wX @ (F - T).T  # [G, K]
        own = D[np.arange(len(assign)), assign]
        move = 2.0 * (D - own[:, None]) + self_term[:, None]
        move[np.arange(len(assign)), assign] = np.inf
        move[n_in[assign] <= 1] = np.inf  # never empty a fold
        g, b = np.unravel_index(int(np.argmin(move)), move.shape)
        if move[g, b] < -tol:
            candidates.append((float(move[g, b]), (int(assign[g]), int(b)), ("move", int(g), int(b))))
        # Swaps g (in a) <-> h (in b): with d = x_g - x_h moving from a to b the change is
        # sum_j w_j (2 d_j (F_bj - F_aj) + 2 d_j^2)  =  A_g + B_h - 4 sum_j w_j x_gj x_hj.
        members = [_profiles(X, np.flatnonzero(assign == k), rng, max_candidates) for k in range(n_folds)]
        for a in range(n_folds):
            for b in range(a + 1, n_folds):
                ga, hb = members[a], members[b]
                if len(ga) == 0 or len(hb) == 0:
                    continue
                diff = F[b] - F[a]
                A = 2.0 * (wX[ga] @ diff) + self_term[ga]
                B = -2.0 * (wX[hb] @ diff) + self_term[hb]
                delta = A[:, None] + B[None, :] - 4.0 * (wX[ga] @ X[hb].T)
                i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
                if delta[i, j] < -tol:
                    candidates.append((float(delta[i, j]), (a, b), ("swap", int(ga[i]), int(hb[j]))))
        if not candidates:
            break
        touched: set[int] = set()
        for _, folds, op in sorted(candidates, key=lambda c: c[0]):
            if touched.intersection(folds):
                continue
            touched.update(folds)
            if op[0] == "move":
                _, g, b = op
                a = assign[g]
                F[a] -= X[g]
                F[b] += X[g]
                n_in[a] -= 1
                n_in[b] += 1
                assign[g] = b
            else:
                _, g, h = op
                a, b = assign[g], assign[h]
                F[a] += X[h] - X[g]
                F[b] += X[g] - X[h]
                assign[g], assign[h] = b, a
    return assign


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
    fold are balanced (see the module docstring for the objective).

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
    n_folds = int(n_folds)
    groups = _group_codes(df, group_col)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_folds < 2:
        raise TfkitError(f"n_folds must be at least 2, got {n_folds}")
    if n_folds > n_groups:
        what = f"groups in {group_col!r}" if group_col else "rows"
        raise TfkitError(f"n_folds={n_folds} is more than the {n_groups} {what}: every fold needs one")
    strata = _strata(df[label_col], n_bins)
    n_classes = len(strata.names)
    # Columns: per-class counts, images, groups (a constant 1 per group).
    X = np.zeros((n_groups, n_classes + 2))
    np.add.at(X, (groups, strata.codes), 1.0)
    X[:, n_classes] = X[:, :n_classes].sum(axis=1)
    X[:, n_classes + 1] = 1.0
    T = X.sum(axis=0) / n_folds
    w = np.empty_like(T)
    w[:n_classes] = 1.0 / T[:n_classes]
    w[n_classes] = IMAGE_WEIGHT / T[n_classes]
    w[n_classes + 1] = GROUP_WEIGHT / T[n_classes + 1]

    rng = np.random.default_rng(seed)
    # The matrices here are small: a multi-threaded BLAS only adds contention
    # (measured 15x slower on a busy 2-core machine), so run it on one thread.
    with _single_thread_blas():
        assign = _greedy(X, T, w, n_folds, rng)
        if refine:
            assign = _local_search(X, T, w, assign, n_folds, rng)
    assign = _fill_empty(X, assign, n_folds)
    return assign[groups]


def _fill_empty(X: np.ndarray, assign: np.ndarray, n_folds: int) -> np.ndarray:
    """Guarantee every fold holds a group (moves the smallest group of the fullest fold)."""
    assign = assign.copy()
    while True:
        counts = np.bincount(assign, minlength=n_folds)
        empty = np.flatnonzero(counts == 0)
        if len(empty) == 0:
            return assign
        donor = int(np.argmax(counts))
        members = np.flatnonzero(assign == donor)
        g = members[int(np.argmin(X[members, -2]))]
        assign[g] = int(empty[0])


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
        >>> print(format_fold_table(fold_table(df, assign_folds(df, 2, "label"), "label")))  # doctest: +SKIP
    """
    counts = [c for c in table.columns if c in ("images", "groups") or c.startswith("n[")]
    total = table[counts].sum()
    shown = table.copy()
    shown.index = shown.index.astype(str)
    shown.loc["total"] = total
    for c in ("pos_rate", "max_share_dev", "mean", "std"):
        if c in table.columns:
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
) -> pd.DataFrame:
    """Read a CSV, assign triple-stratified folds, write ``<id_col>,fold`` and print the balance table.

    Args:
        csv: input CSV, one row per image.
        out: output CSV (written atomically) with columns ``id_col`` and ``fold``.
        id_col: id column (must be unique).
        label_col: label column (classes, or a numeric target that gets binned).
        group_col: group column, or ``None`` (each row its own group).
        n_folds: number of folds.
        seed: random seed (same seed, same folds).
        n_bins: quantile bins for a numeric target; 0 never bins.

    Returns:
        The written DataFrame (``id_col``, ``fold``) in the CSV's row order.

    Raises:
        TfkitError: unreadable CSV, missing column, duplicate id, missing label
            or group, or a bad ``n_folds``; the message names the line.

    Example:
        >>> folds_from_csv("train.csv", "folds.csv", label_col="target", group_col="patient_id")  # doctest: +SKIP
    """
    csv = Path(csv)
    if not csv.is_file():
        raise TfkitError(f"CSV {csv} not found")
    try:
        # Ids and groups stay text: "007" and "7" are different ids.
        keep_text = {c: str for c in (id_col, group_col) if c}
        df = pd.read_csv(csv, dtype=keep_text, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TfkitError(f"CSV {csv} could not be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    cols = ", ".join(map(str, df.columns))
    for role, col in (("id", id_col), ("label", label_col), ("group", group_col)):
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
    for role, col in (("label", label_col), ("group", group_col)):
        if col is None:
            continue
        missing = df[col].isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise TfkitError(f"CSV {csv} line {i + 2}: {role} ({col!r}) missing for id {ids.iloc[i]!r}")
    n_groups = df[group_col].nunique() if group_col else len(df)
    if n_folds < 2 or n_folds > n_groups:
        what = f"groups in {group_col!r}" if group_col else "rows"
        raise TfkitError(f"--folds must be between 2 and the {n_groups} {what} of {csv}, got {n_folds}")
    if n_bins < 0:
        raise TfkitError(f"--bins must be 0 (never bin) or a positive number of quantile bins, got {n_bins}")
    folds = assign_folds(df, n_folds, label_col, group_col=group_col, seed=seed, n_bins=n_bins)
    result = pd.DataFrame({id_col: ids.to_numpy(), "fold": folds})
    write_csv(out, result)
    table = fold_table(df, folds, label_col, group_col, n_bins=n_bins)
    print(f"{n_folds} folds of {len(df)} images, {n_groups} groups (label {label_col!r}"
          f"{f', group {group_col!r}' if group_col else ''}, seed {seed}) -> {out}")
    print(format_fold_table(table))
    return result
