"""Multi-label metrics in numpy, on multi-hot labels ``[N, C]`` and sigmoid
probabilities ``[N, C]``: F-beta with macro, micro and per-sample averaging
(Human Protein Atlas scores macro F1, Planet and iMet sample-averaged F2),
mean column-wise ROC AUC (RANZCR) and mean average precision.

Every function is checked against scikit-learn in the tests. Predictions
are binarised with ``p >= threshold``, where the threshold is one number, one
per class ``[C]`` or one per row and class ``[N, C]`` (cross-fitted thresholds
give each fold its own: :mod:`tfkit.thresholds`).

Example:
    >>> y = np.array([[1, 0], [1, 1], [0, 1]])
    >>> p = np.array([[0.9, 0.2], [0.6, 0.4], [0.3, 0.8]])
    >>> fbeta(y, p >= 0.5, beta=1, average="macro")
    0.8333333333333333
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tfkit.utils import TfkitError

AVERAGES = ("macro", "micro", "samples")


def as_multi_hot(labels: Any, n_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Multi-hot labels as an ``int64 [N, C]`` array of 0/1.

    Args:
        labels: array-like ``[N, C]`` of 0/1 (booleans or floats that are 0 or 1).
        n_classes: expected C (checked when given).
        name: what to call the array in errors.

    Returns:
        The labels as int64.

    Raises:
        TfkitError: not 2-D, wrong width, or values other than 0 and 1.

    Example:
        >>> as_multi_hot([[1.0, 0.0]]).dtype
        dtype('int64')
    """
    y = np.asarray(labels)
    if y.ndim != 2:
        raise TfkitError(f"{name}: expected a multi-hot [N, C] array, got shape {y.shape}")
    if n_classes is not None and y.shape[1] != n_classes:
        raise TfkitError(f"{name}: expected {n_classes} label columns, got {y.shape[1]}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise TfkitError(f"{name}: row {r}, column {c} holds {y[r, c].item()!r}; multi-hot labels are 0 or 1")
    return y.astype(np.int64)


def binarise(proba: np.ndarray, thresholds: Any = 0.5) -> np.ndarray:
    """``proba >= thresholds`` as int64, thresholds broadcast (scalar, ``[C]`` or ``[N, C]``).

    Example:
        >>> binarise(np.array([[0.3, 0.3]]), [0.2, 0.5]).tolist()
        [[1, 0]]
    """
    return (np.asarray(proba, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def _fbeta_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> np.ndarray:
    """F-beta from counts; 0 where precision and recall are both undefined (scikit-learn's zero_division=0)."""
    b2 = float(beta) ** 2
    num = (1.0 + b2) * tp
    den = num + b2 * fn + fp
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def fbeta(labels: Any, pred: Any, beta: float = 1.0, average: str = "macro") -> float:
    """F-beta score of binary predictions ``[N, C]``.

    ``(1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)``: beta = 2 weighs recall
    four times as much as precision (Planet, iMet).

    Args:
        labels: multi-hot ``[N, C]``.
        pred: 0/1 predictions ``[N, C]`` (e.g. :func:`binarise`).
        beta: the recall weight.
        average: ``macro`` (mean of per-class F), ``micro`` (F of the summed
            counts) or ``samples`` (mean of per-row F). A class or row with no
            positive label and no positive prediction scores 0, as in
            ``sklearn.metrics.fbeta_score(..., zero_division=0)``.

    Returns:
        The score in [0, 1].

    Example:
        >>> fbeta([[1, 0, 1]], [[1, 1, 0]], beta=2, average="samples")
        0.5
    """
    if average not in AVERAGES:
        raise TfkitError(f"fbeta: average must be one of {', '.join(AVERAGES)}, got {average!r}")
    y = as_multi_hot(labels)
    p = as_multi_hot(pred, y.shape[1], name="predictions")
    if p.shape != y.shape:
        raise TfkitError(f"fbeta: {y.shape[0]} label rows but {p.shape[0]} prediction rows")
    axis = 1 if average == "samples" else 0
    tp = (y & p).sum(axis)
    fp = ((1 - y) & p).sum(axis)
    fn = (y & (1 - p)).sum(axis)
    if average == "micro":
        return float(_fbeta_counts(tp.sum(), fp.sum(), fn.sum(), beta))
    return float(_fbeta_counts(tp, fp, fn, beta).mean())


def _ranked_counts(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores in decreasing order cut at each distinct value: (cut score, true
    positives, false positives) when everything scoring >= that cut is predicted positive."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each distinct value
    tps = np.cumsum(t)[last]
    return s[last], tps, (last + 1) - tps


def average_precision(labels: Any, score: Any) -> float:
    """Average precision of one label: ``sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds (``sklearn.metrics.average_precision_score``;
    no interpolation).

    Args:
        labels: 0/1 ``[N]``.
        score: higher means more likely positive, ``[N]``.

    Returns:
        AP in [0, 1], or NaN when the label has no positive.

    Example:
        >>> average_precision([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.5])
        0.8333333333333333
    """
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    _, tps, fps = _ranked_counts(y, np.asarray(score, dtype=np.float64).reshape(-1))
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def column_means(labels: Any, proba: Any, metric: Any) -> float:
    """Mean of ``metric(labels[:, k], proba[:, k])`` over the columns where it
    is defined (not NaN): mean column-wise ROC AUC with ``binary_auc``, mAP with
    :func:`average_precision`.

    Returns:
        The mean, or NaN when no column is defined.

    Example:
        >>> column_means([[1, 0], [0, 0]], [[0.9, 0.1], [0.2, 0.3]], average_precision)
        1.0
    """
    y = np.asarray(labels)
    p = np.asarray(proba, dtype=np.float64)
    values = [metric(y[:, k], p[:, k]) for k in range(y.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def best_threshold(labels: Any, score: Any, beta: float = 1.0) -> tuple[float, float]:
    """The threshold that maximises one label's F-beta, and that F-beta.

    Every cut between two distinct scores is tried (an exact search, O(N log N));
    the threshold returned is the midpoint between the last score predicted
    positive and the next one below it, so it generalises to unseen scores
    between them. Ties in F go to the higher threshold (fewer positives).

    Args:
        labels: 0/1 ``[N]``.
        score: probabilities ``[N]``.
        beta: F-beta's recall weight.

    Returns:
        ``(threshold, f_beta)``; ``(0.5, 0.0)`` for a label with no positive
        (no threshold can score above 0 there).

    Example:
        >>> best_threshold([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.3])
        (0.35, 1.0)
    """
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.5, 0.0
    cuts, tps, fps = _ranked_counts(y, s)
    f = _fbeta_counts(tps, fps, n_pos - tps, beta)
    i = int(np.argmax(f))  # first maximum: the highest cut
    below = cuts[i + 1] if i + 1 < cuts.size else cuts[i] - 1e-6
    return float((cuts[i] + below) / 2.0), float(f[i])


def best_thresholds(labels: Any, proba: Any, beta: float = 1.0) -> np.ndarray:
    """Per-class thresholds maximising each class's F-beta (:func:`best_threshold`).

    Independent per class, so exact for macro F-beta; for micro and
    per-sample averages it is the usual approximation (the classes interact there).

    Args:
        labels: multi-hot ``[N, C]``.
        proba: ``[N, C]``.
        beta: F-beta's recall weight.

    Returns:
        float64 ``[C]``.

    Example:
        >>> best_thresholds([[1, 0], [0, 1]], [[0.7, 0.6], [0.2, 0.9]]).round(3).tolist()
        [0.45, 0.75]
    """
    y = as_multi_hot(labels)
    p = np.asarray(proba, dtype=np.float64)
    if p.shape != y.shape:
        raise TfkitError(f"best_thresholds: labels {y.shape} but predictions {p.shape}")
    return np.array([best_threshold(y[:, k], p[:, k], beta)[0] for k in range(y.shape[1])])
