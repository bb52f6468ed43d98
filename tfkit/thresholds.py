"""Decision thresholds chosen on out-of-fold predictions: per-class
probability thresholds for multi-label F-beta, and cut points that turn a
regression output into ordinal grades for quadratic weighted kappa (APTOS
trained as regression).

A threshold chosen on the same predictions it is scored on flatters the
score. :func:`cross_fit` gives every fold the thresholds fitted on the *other*
folds, so the "tuned" scores in ``cv.json`` are honest estimates; the
thresholds fitted on every fold together are the ones ``tfkit predict`` applies
to the test set (``thresholds.json`` in the run folder).

Example:
    >>> y = np.array([0, 1, 2, 2, 1, 0])
    >>> pred = np.array([0.2, 1.4, 1.6, 2.4, 1.1, 0.4])
    >>> apply_cut_points(pred, fit_cut_points(y, pred, 3)).tolist()
    [0, 1, 2, 2, 1, 0]
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tfkit.metrics import quadratic_weighted_kappa
from tfkit.metrics_multilabel import best_thresholds
from tfkit.utils import TfkitError

# Candidate positions tried for each cut point per sweep, and sweeps over all cuts.
CUT_CANDIDATES = 64
CUT_SWEEPS = 3


def apply_cut_points(preds: Any, cuts: Any) -> np.ndarray:
    """Ordinal grades from continuous predictions: grade ``g`` where
    ``cuts[g-1] <= pred < cuts[g]``.

    Args:
        preds: ``[N]`` predictions.
        cuts: increasing ``[K-1]`` cut points, or ``[N, K-1]`` (one row per prediction).

    Returns:
        int64 ``[N]`` grades in ``0..K-1``.

    Example:
        >>> apply_cut_points([0.2, 0.7, 3.0], [0.5, 1.5]).tolist()
        [0, 1, 2]
    """
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    c = np.asarray(cuts, dtype=np.float64)
    if c.ndim == 1:
        return np.searchsorted(c, p, side="right").astype(np.int64)
    return (p[:, None] >= c).sum(1).astype(np.int64)


def _qwk(y: np.ndarray, preds: np.ndarray, cuts: np.ndarray, k: int) -> float:
    return quadratic_weighted_kappa(y, apply_cut_points(preds, cuts), k)


def fit_cut_points(labels: Any, preds: Any, n_grades: int) -> np.ndarray:
    """Cut points that maximise QWK of ``apply_cut_points(preds, cuts)`` against ``labels``.

    Coordinate ascent from the rounding cuts ``0.5, 1.5, ...``: each cut in
    turn moves to the best of :data:`CUT_CANDIDATES` positions between its
    neighbours (quantiles of the predictions there), for :data:`CUT_SWEEPS`
    sweeps. Deterministic, and never worse than rounding on the data it is fitted on.

    Args:
        labels: integer grades ``0..n_grades-1``, ``[N]``.
        preds: continuous predictions ``[N]``.
        n_grades: K.

    Returns:
        float64 ``[K-1]``, increasing.

    Example:
        >>> fit_cut_points([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 2).tolist()
        [0.25]
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise TfkitError(f"fit_cut_points: {y.size} labels but {p.size} predictions")
    if n_grades < 2 or y.min() < 0 or y.max() >= n_grades:
        raise TfkitError(f"fit_cut_points: grades must lie in 0..{n_grades - 1} (K >= 2)")
    cuts = np.arange(n_grades - 1, dtype=np.float64) + 0.5
    best = _qwk(y, p, cuts, n_grades)
    for _ in range(CUT_SWEEPS):
        for j in range(cuts.size):
            lo = cuts[j - 1] if j > 0 else min(p.min(), cuts[0]) - 1.0
            hi = cuts[j + 1] if j + 1 < cuts.size else max(p.max(), cuts[-1]) + 1.0
            inside = np.unique(p[(p > lo) & (p < hi)])
            # Midpoints between neighbouring predictions: each is a distinct split.
            mids = (inside[:-1] + inside[1:]) / 2.0
            if mids.size > CUT_CANDIDATES:
                mids = np.unique(np.quantile(mids, np.linspace(0, 1, CUT_CANDIDATES)))
            for c in mids:
                trial = cuts.copy()
                trial[j] = c
                score = _qwk(y, p, trial, n_grades)
                if score > best + 1e-12:
                    best, cuts = score, trial
    return cuts


def cross_fit(fit: Callable[[np.ndarray], np.ndarray], folds: Any) -> np.ndarray:
    """Out-of-fold parameters: row ``i`` gets ``fit(mask)`` where ``mask`` selects
    every row *not* in row ``i``'s fold.

    Args:
        fit: maps a boolean row mask to a parameter vector (thresholds, cuts).
        folds: fold number per row ``[N]``.

    Returns:
        ``[N, P]``: the parameters each row is scored with.

    Raises:
        TfkitError: fewer than two folds (nothing to fit on).

    Example:
        >>> cross_fit(lambda m: np.array([m.sum()]), [0, 0, 1]).ravel().tolist()
        [1, 1, 2]
    """
    f = np.asarray(folds).reshape(-1)
    ids = np.unique(f)
    if ids.size < 2:
        raise TfkitError(f"cross_fit: need predictions of at least 2 folds, got folds {ids.tolist()}")
    out: np.ndarray | None = None
    for k in ids:
        params = np.asarray(fit(f != k))
        if out is None:
            out = np.empty((f.size, params.size), dtype=params.dtype)
        out[f == k] = params
    assert out is not None
    return out


def cross_fit_thresholds(labels: Any, proba: Any, folds: Any, beta: float = 1.0) -> np.ndarray:
    """Per-class F-beta thresholds for each row, fitted on the other folds.

    Returns:
        ``[N, C]`` thresholds.

    Example:
        >>> y = np.array([[1], [0], [1], [0]])
        >>> cross_fit_thresholds(y, y * 0.8 + 0.1, [0, 0, 1, 1]).ravel().tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    y, p = np.asarray(labels), np.asarray(proba, dtype=np.float64)
    return cross_fit(lambda m: best_thresholds(y[m], p[m], beta), folds)


def cross_fit_cut_points(labels: Any, preds: Any, folds: Any, n_grades: int) -> np.ndarray:
    """Ordinal cut points for each row, fitted on the other folds.

    Returns:
        ``[N, K-1]`` cut points.
    """
    y, p = np.asarray(labels).reshape(-1), np.asarray(preds, dtype=np.float64).reshape(-1)
    return cross_fit(lambda m: fit_cut_points(y[m], p[m], n_grades), folds)
