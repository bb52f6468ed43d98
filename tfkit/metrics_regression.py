"""Regression and distribution metrics in numpy: RMSE, MAE, Pearson and
Spearman correlation (PetFinder Pawpularity scores RMSE), and for histogram
targets (AVA's 10-bin vote counts) the earth mover's distance and the
correlation of the histograms' mean scores.

Targets and predictions are ``[N]`` or ``[N, T]`` (T target columns); errors
are pooled over every cell, correlations averaged over columns. The tests
check each function against scikit-learn or SciPy.

Example:
    >>> rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    1.1547005383792515
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfkit.utils import TfkitError


def _pair(targets: Any, preds: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(preds, dtype=np.float64)
    t = t[:, None] if t.ndim == 1 else t
    p = p[:, None] if p.ndim == 1 else p
    if t.shape != p.shape:
        raise TfkitError(f"regression metrics: targets {t.shape} but predictions {p.shape}")
    if not np.all(np.isfinite(t)):
        raise TfkitError(f"regression metrics: target row {int(np.argwhere(~np.isfinite(t))[0, 0])} is not a finite number")
    return t, p


def rmse(targets: Any, preds: Any) -> float:
    """Root mean squared error over every cell.

    Example:
        >>> rmse([[0.0, 0.0]], [[3.0, 4.0]])
        3.5355339059327378
    """
    t, p = _pair(targets, preds)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(targets: Any, preds: Any) -> float:
    """Mean absolute error over every cell.

    Example:
        >>> mae([1.0, 2.0], [2.0, 4.0])
        1.5
    """
    t, p = _pair(targets, preds)
    return float(np.mean(np.abs(p - t)))


def _pearson_columns(t: np.ndarray, p: np.ndarray) -> float:
    tc, pc = t - t.mean(0), p - p.mean(0)
    den = np.sqrt((tc**2).sum(0) * (pc**2).sum(0))
    # A constant column has no correlation (NaN, as SciPy); the mean skips it.
    r = np.where(den > 0, (tc * pc).sum(0) / np.where(den > 0, den, 1.0), np.nan)
    return float(np.nanmean(r)) if np.any(np.isfinite(r)) else float("nan")


def pearson(targets: Any, preds: Any) -> float:
    """Pearson correlation, averaged over target columns.

    Returns:
        r in [-1, 1]; NaN when targets or predictions are constant in every column.

    Example:
        >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
        0.9933992677987828
    """
    return _pearson_columns(*_pair(targets, preds))


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=0)  # ties get their average rank


def spearman(targets: Any, preds: Any) -> float:
    """Spearman rank correlation (Pearson of average ranks), averaged over target columns.

    Example:
        >>> spearman([1.0, 2.0, 3.0], [2.0, 4.0, 70.0])
        1.0
    """
    t, p = _pair(targets, preds)
    return _pearson_columns(_ranks(t), _ranks(p))


def normalise_histograms(counts: Any, name: str = "targets") -> np.ndarray:
    """Rows of non-negative counts divided by their sums (distribution targets).

    Raises:
        TfkitError: a negative or non-finite count, or a row summing to 0, naming the row.

    Example:
        >>> normalise_histograms([[1, 3]]).tolist()
        [[0.25, 0.75]]
    """
    h = np.asarray(counts, dtype=np.float64)
    if h.ndim != 2:
        raise TfkitError(f"{name}: expected histograms [N, K], got shape {h.shape}")
    bad = ~np.isfinite(h) | (h < 0)
    if bad.any():
        raise TfkitError(f"{name}: row {int(np.argwhere(bad)[0, 0])} holds a negative or missing count")
    total = h.sum(1, keepdims=True)
    if np.any(total <= 0):
        raise TfkitError(f"{name}: row {int(np.flatnonzero(total[:, 0] <= 0)[0])} sums to 0 (an empty histogram)")
    return h / total


def emd(targets: Any, preds: Any, r: float = 2.0) -> float:
    """Mean earth mover's distance between histograms ``[N, K]``:
    ``(mean_k |CDF_p - CDF_t|^r)^(1/r)`` per row (the NIMA form of
    :class:`tfkit.losses.EarthMoverDistance`), averaged over rows. Rows are
    normalised to sum to 1 first.

    Example:
        >>> emd([[0, 1, 0]], [[1, 0, 0]], r=1)
        0.3333333333333333
    """
    t = normalise_histograms(targets)
    p = normalise_histograms(preds, name="predictions")
    if t.shape != p.shape:
        raise TfkitError(f"emd: targets {t.shape} but predictions {p.shape}")
    gap = np.abs(np.cumsum(p - t, axis=1))
    return float(np.mean(np.mean(gap**r, axis=1) ** (1.0 / r)))


def mean_score(histograms: Any, bins: Any = None) -> np.ndarray:
    """Expected bin value of each histogram row (AVA's "mean score").

    Args:
        histograms: ``[N, K]`` counts or probabilities.
        bins: the value of each bin (default ``0..K-1``; an offset changes no
            error or correlation of two mean scores).

    Returns:
        float64 ``[N]``.

    Example:
        >>> mean_score([[1, 1, 2]]).tolist()
        [1.25]
    """
    h = normalise_histograms(histograms)
    values = np.arange(h.shape[1], dtype=np.float64) if bins is None else np.asarray(bins, dtype=np.float64)
    return h @ values
