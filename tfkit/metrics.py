"""Metrics, twice: numpy (``compute_metrics``, on out-of-fold predictions,
the numbers a CV score is built from) and Keras streaming metrics
(``keras_metrics``, logged during training).

The numpy metrics are our own implementations (tests check them against
scikit-learn): accuracy, ROC AUC (binary; macro one-vs-rest for multiclass and
multilabel), F1 (positive class for binary, macro otherwise), log loss and
quadratic weighted kappa (Keras has none; ``QuadraticWeightedKappa`` streams it).

Example:
    >>> import numpy as np
    >>> compute_metrics(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4]), "binary")["accuracy"]
    0.6666666666666666
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from tfkit import metrics_multilabel as mlm
from tfkit import metrics_regression as mrm
from tfkit.utils import TfkitError

# Metric names where a smaller value is better; the one list that monitors,
# tuner objectives and CV-weighted fold ensembles all consult.
LOWER_IS_BETTER = ("loss", "error", "mse", "rmse", "mae")


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of metric ``name`` (``val_`` prefix allowed) is better.

    Example:
        >>> lower_is_better("val_log_loss"), lower_is_better("val_rmse"), lower_is_better("val_auc")
        (True, True, False)
    """
    return any(k in str(name).lower() for k in LOWER_IS_BETTER)


METRICS = ("accuracy", "auc", "f1", "log_loss", "qwk", "rmse", "mae")
# Multi-label, regression and distribution metrics (tfkit.metrics_multilabel,
# tfkit.metrics_regression): F-beta for beta 1 and 2 with three averages, at 0.5
# and at per-class thresholds fitted on the other folds ("_tuned").
F_SCORES = tuple(f"f{b}{avg}" for b in (1, 2) for avg in ("", "_micro", "_samples"))
TARGET_METRICS = (*F_SCORES[1:], *(f + "_tuned" for f in F_SCORES), "map", "pearson", "spearman", "qwk_tuned", "emd")
METRICS = METRICS + TARGET_METRICS
# Clip probabilities before the log like scikit-learn (>= 1.5: the machine epsilon of
# float64, which tfkit computes in), so a confident wrong prediction costs a large but
# finite amount, and the same amount as in sklearn.metrics.log_loss.
PROBA_EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- numpy


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; ties count one half.

    Args:
        y_true: 0/1 labels.
        score: higher means more likely positive.

    Returns:
        AUC in [0, 1], or NaN when only one class is present.

    Example:
        >>> binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(bool).reshape(-1)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64).reshape(-1))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights over ratings ``0..num_classes-1``.

    ``1 - sum(W * O) / sum(W * E)`` with ``O`` the confusion matrix, ``E`` the
    outer product of the two rating histograms over ``n`` and
    ``W[i, j] = (i - j)**2``. Equals ``sklearn.metrics.cohen_kappa_score(...,
    weights="quadratic", labels=range(num_classes))``.

    Args:
        y_true: integer ratings.
        y_pred: integer ratings.
        num_classes: number of ratings; defaults to ``max(y_true, y_pred) + 1``.

    Returns:
        Kappa in [-1, 1]; 1.0 when both vectors are the same constant (no
        disagreement is possible: scikit-learn returns NaN there).

    Example:
        >>> quadratic_weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3])
        1.0
    """
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise TfkitError(f"quadratic_weighted_kappa: {t.size} labels but {p.size} predictions")
    if t.size == 0:
        raise TfkitError("quadratic_weighted_kappa: no ratings")
    if min(t.min(), p.min()) < 0:
        raise TfkitError("quadratic_weighted_kappa: ratings must be >= 0")
    k = int(num_classes or max(t.max(), p.max()) + 1)
    observed = np.zeros((k, k), dtype=np.float64)
    np.add.at(observed, (t, p), 1.0)
    return _kappa_from_confusion(observed)


def _kappa_from_confusion(observed: np.ndarray) -> float:
    k = observed.shape[0]
    idx = np.arange(k, dtype=np.float64)
    weights = (idx[:, None] - idx[None, :]) ** 2
    n = observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(n, 1.0)
    denom = float((weights * expected).sum())
    return 1.0 if denom == 0 else float(1.0 - (weights * observed).sum() / denom)


def _as_2d(proba: np.ndarray) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    return proba[:, None] if proba.ndim == 1 else proba


def compute_metrics(
    labels: Any, proba: Any, task: str, names: Sequence[str] | None = None, num_classes: int | None = None,
    thresholds: Any = None,
) -> dict[str, float]:
    """Metrics of predictions against labels, in numpy.

    Args:
        labels: class indices ``[N]`` (binary, multiclass; one-hot ``[N, C]``
            is accepted), multi-hot ``[N, C]`` (multilabel) or targets ``[N]``
            (regression).
        proba: ``[N, C]`` probabilities (multiclass, multilabel); ``[N]``,
            ``[N, 1]`` (P(class 1)) or ``[N, 2]`` (binary); ``[N]`` predictions
            (regression).
        task: ``binary | multiclass | multilabel | regression``.
        names: metrics to return (default: all that apply to the task).
        num_classes: ratings for QWK (default from the data).
        thresholds: multilabel: per-class thresholds ``[C]`` or ``[N, C]`` for
            the ``*_tuned`` F scores; regression: ordinal cut points ``[K-1]``
            or ``[N, K-1]`` for ``qwk_tuned`` (see :mod:`tfkit.thresholds`).

    Returns:
        ``{name: float}``. binary: accuracy (threshold 0.5), auc, f1 (positive
        class), log_loss, qwk. multiclass: accuracy (argmax), auc (macro
        one-vs-rest over classes with positives and negatives), f1 (macro over
        classes in labels or predictions, like scikit-learn), log_loss, qwk of
        the argmax. multilabel, regression, distribution: see
        :func:`multilabel_metrics`, :func:`regression_metrics`,
        :func:`distribution_metrics`.

    Raises:
        TfkitError: shape mismatch, unknown task or metric name.

    Example:
        >>> m = compute_metrics([0, 2, 1], [[.8, .1, .1], [.1, .2, .7], [.3, .4, .3]], "multiclass")
        >>> m["accuracy"], m["qwk"]
        (1.0, 1.0)
    """
    if names is not None:
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise TfkitError(f"metrics: unknown metric {unknown[0]!r} (expected some of: {', '.join(METRICS)})")
    y = np.asarray(labels)
    out: dict[str, float] = {}
    if task in ("binary", "multiclass"):
        p = _as_2d(proba)
        if y.ndim == 2:
            y = y.argmax(1) if y.shape[1] > 1 else y[:, 0]
        y = y.astype(np.int64).reshape(-1)
        if p.shape[0] != y.size:
            raise TfkitError(f"compute_metrics: {y.size} labels but {p.shape[0]} predictions")
        if task == "binary":
            if p.shape[1] > 2:
                raise TfkitError(f"compute_metrics: binary task but predictions have {p.shape[1]} columns")
            p1 = p[:, -1]
            pred = (p1 >= 0.5).astype(np.int64)
            pc = np.clip(p1, PROBA_EPS, 1 - PROBA_EPS)
            tp, fp, fn = np.sum((pred == 1) & (y == 1)), np.sum((pred == 1) & (y == 0)), np.sum((pred == 0) & (y == 1))
            out = {
                "accuracy": float(np.mean(pred == y)),
                "auc": binary_auc(y, p1),
                "f1": float(_f1(np.array(tp), np.array(fp), np.array(fn))),
                "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
                "qwk": quadratic_weighted_kappa(y, pred, 2),
            }
        else:
            c = p.shape[1]
            if y.size and (y.min() < 0 or y.max() >= c):
                raise TfkitError(f"compute_metrics: label outside 0..{c - 1}")
            pred = p.argmax(1)
            aucs = [binary_auc(y == k, p[:, k]) for k in range(c)]
            aucs = [a for a in aucs if not np.isnan(a)]
            onehot_t, onehot_p = np.eye(c)[y], np.eye(c)[pred]
            tp = (onehot_t * onehot_p).sum(0)
            fp = onehot_p.sum(0) - tp
            fn = onehot_t.sum(0) - tp
            present = (onehot_t.sum(0) + onehot_p.sum(0)) > 0
            pc = np.clip(p, PROBA_EPS, 1 - PROBA_EPS)
            pc = pc / pc.sum(1, keepdims=True)
            out = {
                "accuracy": float(np.mean(pred == y)),
                "auc": float(np.mean(aucs)) if aucs else float("nan"),
                "f1": float(_f1(tp, fp, fn)[present].mean()),
                "log_loss": float(-np.mean(np.log(pc[np.arange(y.size), y]))),
                "qwk": quadratic_weighted_kappa(y, pred, num_classes or c),
            }
    elif task == "multilabel":
        out = multilabel_metrics(y, proba, thresholds)
    elif task == "regression":
        out = regression_metrics(y, proba, num_classes, thresholds)
    elif task == "distribution":
        out = distribution_metrics(y, proba)
    else:
        raise TfkitError(f"compute_metrics: unknown task {task!r}")
    if names is not None:
        out = {n: out[n] for n in names if n in out}
    return out


# --------------------------------------------------------------------------- numpy: multi-label, regression, distribution


def _fscore_parts(name: str) -> tuple[float, str]:
    """``"f2_micro"`` -> ``(2.0, "micro")``; plain ``"f1"`` is macro."""
    head, _, avg = name.partition("_")
    return float(head[1:]), avg or "macro"


def multilabel_metrics(labels: Any, proba: Any, thresholds: dict[str, Any] | None = None) -> dict[str, float]:
    """Multi-label metrics of sigmoid probabilities against multi-hot labels.

    Args:
        labels: multi-hot ``[N, C]``.
        proba: ``[N, C]``.
        thresholds: ``{"f1": t, "f2": t}`` with ``t`` per-class thresholds ``[C]``
            or ``[N, C]`` (:mod:`tfkit.thresholds`); each adds the ``*_tuned``
            scores of that beta.

    Returns:
        accuracy (per label, threshold 0.5), auc (mean column-wise ROC AUC over
        labels with positives and negatives), map (mean average precision over
        labels with positives), log_loss (mean binary cross-entropy), and
        :data:`F_SCORES` at 0.5: f1 / f2 (macro), f1_micro, f1_samples, ...

    Example:
        >>> m = multilabel_metrics([[1, 0], [0, 1]], [[0.9, 0.4], [0.3, 0.6]], {"f1": [0.5, 0.5]})
        >>> m["f1"], m["f1_tuned"], m["map"]
        (1.0, 1.0, 1.0)
    """
    p = _as_2d(proba)
    y = mlm.as_multi_hot(labels, p.shape[1])
    if y.shape[0] != p.shape[0]:
        raise TfkitError(f"compute_metrics: {y.shape[0]} labels but {p.shape[0]} predictions")
    pred = mlm.binarise(p, 0.5)
    pc = np.clip(p, PROBA_EPS, 1 - PROBA_EPS)
    out = {
        "accuracy": float(np.mean(pred == y)),
        "auc": mlm.column_means(y, p, binary_auc),
        "map": mlm.column_means(y, p, mlm.average_precision),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
    }
    for name in F_SCORES:
        beta, avg = _fscore_parts(name)
        out[name] = mlm.fbeta(y, pred, beta, avg)
        key = name.partition("_")[0]
        if thresholds and key in thresholds:
            out[name + "_tuned"] = mlm.fbeta(y, mlm.binarise(p, thresholds[key]), beta, avg)
    return out


def regression_metrics(targets: Any, preds: Any, num_classes: int | None = None,
                       thresholds: dict[str, Any] | None = None) -> dict[str, float]:
    """Regression metrics, pooled (errors) or averaged (correlations) over target columns.

    Args:
        targets: ``[N]`` or ``[N, T]``.
        preds: same shape.
        num_classes: grades for QWK (default from the labels).
        thresholds: ``{"qwk": cuts}``, ordinal cut points ``[K-1]`` or ``[N, K-1]``.

    Returns:
        rmse, mae, pearson, spearman; for one target of non-negative integers
        (ordinal grades) also qwk (predictions rounded, clipped to the label
        range) and, with cut points, qwk_tuned.

    Example:
        >>> m = regression_metrics([0, 1, 2], [0.2, 0.9, 2.4])
        >>> round(m["rmse"], 4), m["qwk"]
        (0.2646, 1.0)
    """
    t, p = _pair_targets(targets, preds)
    out = {"rmse": mrm.rmse(t, p), "mae": mrm.mae(t, p), "pearson": mrm.pearson(t, p), "spearman": mrm.spearman(t, p)}
    if t.shape[1] == 1 and np.all(np.mod(t, 1) == 0) and t.min() >= 0:
        grades = t[:, 0].astype(np.int64)
        lo, hi = int(grades.min()), int(grades.max())
        k = max(int(num_classes or 0), hi + 1)
        out["qwk"] = quadratic_weighted_kappa(grades, np.clip(np.rint(p[:, 0]), lo, hi).astype(np.int64), k)
        if thresholds and "qwk" in thresholds:
            from tfkit.thresholds import apply_cut_points  # thresholds builds on this module

            out["qwk_tuned"] = quadratic_weighted_kappa(grades, np.minimum(apply_cut_points(p[:, 0], thresholds["qwk"]), k - 1), k)
    return out


def _pair_targets(targets: Any, preds: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(preds, dtype=np.float64)
    t = t.reshape(-1, 1) if t.ndim < 2 else t
    p = p.reshape(len(p), -1) if p.ndim else p.reshape(1, 1)
    if p.shape != t.shape:
        raise TfkitError(f"compute_metrics: {t.shape[0]} labels but {p.shape[0]} predictions"
                         if p.shape[0] != t.shape[0] else f"compute_metrics: targets {t.shape} but predictions {p.shape}")
    return t, p


def distribution_metrics(histograms: Any, proba: Any) -> dict[str, float]:
    """Metrics of predicted distributions over ordered bins against target histograms.

    Args:
        histograms: ``[N, K]`` counts (votes) or probabilities.
        proba: ``[N, K]`` predicted distributions.

    Returns:
        emd (NIMA's r=2 earth mover's distance), and rmse, mae, pearson,
        spearman of the mean scores (expected bin index).

    Example:
        >>> distribution_metrics([[0, 2, 2]], [[0, 0.5, 0.5]])["emd"]
        0.0
    """
    t, p = mrm.normalise_histograms(histograms), mrm.normalise_histograms(proba, name="predictions")
    if t.shape != p.shape:
        raise TfkitError(f"compute_metrics: targets {t.shape} but predictions {p.shape}")
    ts, ps = mrm.mean_score(t), mrm.mean_score(p)
    return {"emd": mrm.emd(t, p), "rmse": mrm.rmse(ts, ps), "mae": mrm.mae(ts, ps),
            "pearson": mrm.pearson(ts, ps), "spearman": mrm.spearman(ts, ps)}


# --------------------------------------------------------------------------- keras


@keras.saving.register_keras_serializable(package="tfkit")
class QuadraticWeightedKappa(keras.metrics.Metric):
    """Streaming quadratic weighted kappa: accumulates a ``C x C`` confusion
    matrix over batches (one-hot matmul: XLA- and TPU-friendly), kappa at the end.

    Args:
        num_classes: number of ratings.
        task: ``multiclass`` (argmax of one-hot targets and probabilities),
            ``binary`` ([B, 1] targets, threshold 0.5) or ``regression``
            (targets and predictions rounded, clipped to ``0..C-1``).
        name: metric name.

    Example:
        >>> m = QuadraticWeightedKappa(3)
        >>> m.update_state(np.eye(3)[[0, 1, 2]], np.eye(3)[[0, 1, 2]])
        >>> float(m.result())
        1.0
    """

    def __init__(self, num_classes: int, task: str = "multiclass", name: str = "qwk", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes) if task != "binary" else 2
        self.task = task
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", name="confusion", dtype="float32"
        )

    def _ratings(self, v: Any, is_pred: bool) -> Any:
        v = ops.cast(v, "float32")
        if self.task == "multiclass":
            return ops.argmax(v, axis=-1)
        v = ops.reshape(v, (-1,))
        if self.task == "binary":
            return ops.cast(v >= 0.5, "int32")
        return ops.cast(ops.clip(ops.round(v), 0, self.num_classes - 1), "int32")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        t = ops.one_hot(self._ratings(y_true, False), self.num_classes, dtype="float32")
        p = ops.one_hot(self._ratings(y_pred, True), self.num_classes, dtype="float32")
        if sample_weight is not None:
            t = t * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        self.confusion.assign_add(ops.matmul(ops.transpose(t), p))

    def result(self) -> Any:
        o = ops.convert_to_tensor(self.confusion)
        idx = ops.cast(ops.arange(self.num_classes), "float32")
        w = ops.square(idx[:, None] - idx[None, :])
        n = ops.maximum(ops.sum(o), 1.0)
        e = ops.outer(ops.sum(o, axis=1), ops.sum(o, axis=0)) / n
        num, den = ops.sum(w * o), ops.sum(w * e)
        return ops.where(den > 0, 1.0 - num / ops.where(den > 0, den, 1.0), 1.0)

    def reset_state(self) -> None:
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "task": self.task}


@keras.saving.register_keras_serializable(package="tfkit")
class HistogramAUC(keras.metrics.Metric):
    """Streaming ROC AUC from score histograms; the macro mean over columns (one-vs-rest).

    Each column's scores are counted into ``bins`` equal bins on [0, 1],
    separately for positives and negatives (one ``segment_sum`` per batch:
    XLA-, TPU- and JAX-friendly); at the end every column's AUC is the
    rank-sum AUC of the histograms (scores in one bin count as ties, one half)
    and the result is their mean over the columns that hold both positives and
    negatives, like :func:`compute_metrics`. With 1,000 bins it agrees with the
    exact AUC to about 1e-3.

    Why not ``keras.metrics.AUC``: on TensorFlow its multi-label path makes
    oneDNN print an error line ("oneDNN supports DT_BOOL only on platforms with
    AVX-512"; seen on CPUs with AVX-512 too) in every run, which no default
    log level hides (tests/test_quiet.py checks every logged metric).

    Args:
        num_columns: score columns: 1 for a binary ``[B, 1]`` output, C for multiclass.
        bins: histogram bins.
        name: metric name.

    Example:
        >>> m = HistogramAUC(1)
        >>> m.update_state(np.array([[0], [0], [1], [1]]), np.array([[0.1], [0.4], [0.35], [0.8]]))
        >>> round(float(m.result()), 4)
        0.75
    """

    def __init__(self, num_columns: int, bins: int = 1000, name: str = "auc", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.num_columns, self.bins = int(num_columns), int(bins)
        size = (self.num_columns * self.bins,)
        self.pos = self.add_variable(shape=size, initializer="zeros", name="pos", dtype="float32")
        self.neg = self.add_variable(shape=size, initializer="zeros", name="neg", dtype="float32")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        c, b = self.num_columns, self.bins
        p = ops.reshape(ops.cast(y_pred, "float32"), (-1, c))
        t = ops.reshape(ops.cast(y_true, "float32"), (-1, c))
        if sample_weight is not None:
            w = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        else:
            w = ops.ones_like(t[:, :1])
        idx = ops.clip(ops.cast(ops.floor(p * b), "int32"), 0, b - 1) + ops.arange(c, dtype="int32")[None, :] * b
        idx = ops.reshape(idx, (-1,))
        self.pos.assign_add(ops.segment_sum(ops.reshape(t * w, (-1,)), idx, num_segments=c * b))
        self.neg.assign_add(ops.segment_sum(ops.reshape((1.0 - t) * w, (-1,)), idx, num_segments=c * b))

    def result(self) -> Any:
        pos = ops.reshape(ops.convert_to_tensor(self.pos), (self.num_columns, self.bins))
        neg = ops.reshape(ops.convert_to_tensor(self.neg), (self.num_columns, self.bins))
        above = ops.flip(ops.cumsum(ops.flip(pos, axis=1), axis=1), axis=1) - pos  # positives scored higher
        n_pos, n_neg = ops.sum(pos, axis=1), ops.sum(neg, axis=1)
        valid = ops.cast((n_pos > 0) & (n_neg > 0), "float32")
        auc = ops.sum(neg * (above + 0.5 * pos), axis=1) / ops.maximum(n_pos * n_neg, 1e-12)
        n_valid = ops.sum(valid)
        return ops.where(n_valid > 0, ops.sum(auc * valid) / ops.maximum(n_valid, 1.0), float("nan"))

    def reset_state(self) -> None:
        for v in (self.pos, self.neg):
            v.assign(ops.zeros(v.shape, dtype="float32"))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_columns": self.num_columns, "bins": self.bins}


@keras.saving.register_keras_serializable(package="tfkit")
class HistogramAP(HistogramAUC):
    """Streaming average precision (area under the PR curve) from the same score histograms;
    the mean over the columns that hold a positive (``map`` of a multi-label run, like
    :func:`compute_metrics`).

    Each bin is one threshold (scores in a bin count as ties): AP is the sum over bins,
    from the highest, of the bin's share of the positives times the precision of
    everything scored at or above it, which is scikit-learn's ``average_precision_score``
    when the scores are the bins. Why not ``keras.metrics.AUC(curve="PR", multi_label=True)``:
    the oneDNN error line of its multi-label path (see :class:`HistogramAUC`).

    Args:
        num_columns: score columns (labels).
        bins: histogram bins.
        name: metric name.

    Example:
        >>> m = HistogramAP(1, name="map")
        >>> m.update_state(np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.8], [0.7], [0.1]]))
        >>> round(float(m.result()), 4)  # precision 1/1 at the first positive, 2/3 at the second
        0.8333
    """

    def __init__(self, num_columns: int, bins: int = 1000, name: str = "map", **kwargs: Any) -> None:
        super().__init__(num_columns, bins=bins, name=name, **kwargs)

    def result(self) -> Any:
        pos = ops.flip(ops.reshape(ops.convert_to_tensor(self.pos), (self.num_columns, self.bins)), axis=1)
        neg = ops.flip(ops.reshape(ops.convert_to_tensor(self.neg), (self.num_columns, self.bins)), axis=1)
        tp, fp = ops.cumsum(pos, axis=1), ops.cumsum(neg, axis=1)  # at or above each bin, highest first
        n_pos = ops.sum(pos, axis=1)
        ap = ops.sum(pos * tp / ops.maximum(tp + fp, 1e-12), axis=1) / ops.maximum(n_pos, 1e-12)
        valid = ops.cast(n_pos > 0, "float32")
        n_valid = ops.sum(valid)
        return ops.where(n_valid > 0, ops.sum(ap * valid) / ops.maximum(n_valid, 1.0), float("nan"))


# Default metrics by task: the first is the CV headline (cv.json "primary").
DEFAULT_METRICS = {
    "binary": ("auc", "log_loss", "accuracy", "f1"),
    "multiclass": ("accuracy", "log_loss", "f1", "auc"),
    "multilabel": ("auc", "map", "f1_tuned", "log_loss", "f1"),
    "regression": ("rmse", "mae", "pearson", "spearman"),
    "distribution": ("emd", "rmse", "pearson", "spearman"),
}
# What train.monitor "auto" picks: a threshold-free score, or the task's own.
DEFAULT_MONITOR = {"binary": "val_auc", "multiclass": "val_log_loss", "multilabel": "val_auc",
                   "regression": "val_rmse", "distribution": "val_emd"}
# The metrics each task computes (cv.json); regression adds qwk with 2+ ratings.
TASK_METRICS = {
    "binary": ("accuracy", "auc", "f1", "log_loss", "qwk"),
    "multiclass": ("accuracy", "auc", "f1", "log_loss", "qwk"),
    "multilabel": ("accuracy", "auc", "f1", "log_loss", "map", *F_SCORES[1:], *(f + "_tuned" for f in F_SCORES)),
    "regression": ("rmse", "mae", "pearson", "spearman", "qwk_tuned"),
    "distribution": ("emd", "rmse", "mae", "pearson", "spearman"),
}
# Computed from the OOF predictions only (no streaming version in the training log).
NUMPY_ONLY = ("spearman", "qwk_tuned", *(f for f in F_SCORES if f.endswith("_samples")),
              *(f + "_tuned" for f in F_SCORES))


def resolve_metrics(names: Sequence[str] | None, monitor: str, task: str, ordinal: bool,
                    classes: Sequence[str] = ()) -> tuple[list[str], str]:
    """The metrics and monitor of a run: defaults by task, and QWK only for ordered classes.

    Args:
        names: ``train.metrics`` (``None``: :data:`DEFAULT_METRICS` of the task, with
            ``qwk`` first when the classes are ordinal).
        monitor: ``train.monitor`` (``"auto"``: :data:`DEFAULT_MONITOR`, ``val_qwk``
            for ordinal classes; ``val_loss`` when that metric is not logged).
        task: the resolved task.
        ordinal: the classes are declared ordered grades (``data.ordinal`` or
            ``build-records --ordinal``), in the manifest's class order.
        classes: class names (named in the error).

    Returns:
        ``(metrics, monitor)``, both concrete.

    Raises:
        TfkitError: QWK asked of classes not declared ordinal (it weighs
            disagreements by the distance between class indices, which means
            nothing for unordered classes); an unknown metric name.

    Example:
        >>> resolve_metrics(None, "auto", "binary", False)
        (['auc', 'log_loss', 'accuracy', 'f1'], 'val_auc')
        >>> resolve_metrics(None, "auto", "multiclass", True)
        (['qwk', 'accuracy', 'log_loss', 'f1', 'auc'], 'val_qwk')
        >>> resolve_metrics(["accuracy"], "auto", "multiclass", False)
        (['accuracy'], 'val_loss')
    """
    ordered = bool(ordinal) and task in ("binary", "multiclass", "regression")
    if names is None:
        names = (["qwk"] if ordered and task != "binary" else []) + list(DEFAULT_METRICS.get(task, ()))
    names = list(names)
    # a numeric target is ordered by nature: asking QWK of it is fine; classes must be declared ordered
    if ("qwk" in names or monitor.removeprefix("val_") == "qwk") and not (ordered or task == "regression"):
        order = (f" (in the manifest's class order: {', '.join(map(str, classes[:6]))}"
                 f"{'...' if len(classes) > 6 else ''})") if classes else ""
        raise TfkitError("train.metrics: qwk (quadratic weighted kappa) weighs errors by the distance between class "
                         "indices and needs ordered classes; declare them with data.ordinal: true or build-records "
                         f"--ordinal{order}, or drop qwk")
    names = applicable_metrics(names, task, len(classes) if task == "regression" else 2)
    if monitor == "auto":
        monitor = "val_qwk" if ordered and "qwk" in names else DEFAULT_MONITOR.get(task, "val_loss")
        if monitor.removeprefix("val_") not in logged_metrics(names, task, len(classes) if task == "regression" else 2):
            monitor = "val_loss"
    return names, monitor


def applicable_metrics(names: Sequence[str], task: str | None = None, num_classes: int = 0) -> list[str]:
    """The names of ``names`` a run of ``task`` computes (:func:`keras_metrics` builds exactly these).

    Args:
        names: ``train.metrics``.
        task: the task; ``None`` keeps every known name.
        num_classes: number of classes (regression QWK needs at least 2 ratings).

    Returns:
        The applicable names, in the order given.

    Raises:
        TfkitError: an unknown name.

    Example:
        >>> applicable_metrics(["accuracy", "rmse", "qwk"], "multiclass", 5)
        ['accuracy', 'qwk']
        >>> applicable_metrics(["accuracy", "rmse", "qwk"], "regression", 5)
        ['rmse', 'qwk']
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise TfkitError(f"train.metrics: unknown metric {unknown[0]!r} (expected some of: {', '.join(METRICS)})")
    if task is None:
        return list(names)
    ok = set(TASK_METRICS.get(task, ())) | ({"qwk"} if task == "regression" and num_classes != 1 else set())
    return [n for n in names if n in ok]


def logged_metrics(names: Sequence[str], task: str | None = None, num_classes: int = 0) -> list[str]:
    """The names of ``names`` that the training log streams (:func:`keras_metrics`; what a monitor can watch).

    The rest of :func:`applicable_metrics` are computed on the OOF predictions
    only (:data:`NUMPY_ONLY`; a distribution's errors of the mean score).

    Example:
        >>> logged_metrics(["auc", "f2_samples_tuned", "map"], "multilabel", 5)
        ['auc', 'map']
    """
    names = applicable_metrics(names, task, num_classes)
    if task == "distribution":
        return [n for n in names if n == "emd"]
    return [n for n in names if n not in NUMPY_ONLY]


def keras_metrics(names: Sequence[str], task: str, num_classes: int) -> list[keras.metrics.Metric]:
    """Keras metric objects for ``compile(metrics=...)``, named like the numpy ones.

    Args:
        names: e.g. ``["accuracy", "auc", "f1", "log_loss", "qwk"]``; names that
            do not apply to the task (e.g. ``rmse`` for multiclass, ``qwk`` for
            multilabel) are skipped.
        task: ``binary | multiclass | multilabel | regression``.
        num_classes: number of classes (ratings for regression QWK).

    Returns:
        A list of metrics; logged as ``accuracy``, ``auc``, ``f1``, ``log_loss``,
        ``qwk``, ``rmse``, ``mae`` (``val_`` prefixed on validation data).

    Raises:
        TfkitError: an unknown name.

    Example:
        >>> [m.name for m in keras_metrics(["accuracy", "qwk"], "multiclass", 5)]
        ['accuracy', 'qwk']
    """
    out: list[keras.metrics.Metric] = []
    for name in applicable_metrics(names, task, num_classes):
        m: keras.metrics.Metric | None = None
        if name in TARGET_METRICS or task == "distribution":
            m = _target_keras_metric(name, task, num_classes)  # None: numpy only (cv.json)
        elif task == "regression":
            if name == "rmse":
                m = keras.metrics.RootMeanSquaredError(name="rmse")
            elif name == "mae":
                m = keras.metrics.MeanAbsoluteError(name="mae")
            else:
                m = QuadraticWeightedKappa(num_classes, task="regression")
        elif name == "accuracy":
            m = (keras.metrics.CategoricalAccuracy if task == "multiclass" else keras.metrics.BinaryAccuracy)(name="accuracy")
        elif name == "auc":  # binary: one sigmoid column; else the macro one-vs-rest mean
            m = HistogramAUC(1 if task == "binary" else num_classes)
        elif name == "f1":
            # threshold None = argmax row-wise (multiclass); 0.5 for sigmoid outputs.
            m = _built(keras.metrics.F1Score(average="macro", threshold=None if task == "multiclass" else 0.5,
                                             name="f1"), num_classes if task != "binary" else 1)
        elif name == "log_loss":
            m = (keras.metrics.CategoricalCrossentropy if task == "multiclass" else keras.metrics.BinaryCrossentropy)(name="log_loss")
        else:
            m = QuadraticWeightedKappa(num_classes, task=task)
        if m is not None:
            out.append(m)
    return out


def _built(metric: keras.metrics.Metric, width: int) -> keras.metrics.Metric:
    """``metric`` with its variables created now, for outputs ``[batch, width]``.

    Keras' F-scores create their variables at the first ``update_state``. Inside
    the compiled train step that makes TensorFlow trace the step twice (once to
    create the variables, once to run): ~1.6 s more per fold for a small model.
    One eager update on zeros, then a reset, creates them up front.
    """
    zeros = np.zeros((1, int(width)), "float32")
    metric.update_state(zeros, zeros)
    metric.reset_state()
    return metric


@keras.saving.register_keras_serializable(package="tfkit")
class PearsonR(keras.metrics.Metric):
    """Streaming Pearson correlation, exact over all batches (running sums of
    ``t``, ``p``, ``t^2``, ``p^2``, ``tp``); with several target columns every
    cell is pooled (the numpy ``pearson`` averages per column: equal for one
    target). ``keras.metrics.PearsonCorrelation`` instead averages per-batch correlations.

    Example:
        >>> m = PearsonR()
        >>> m.update_state([[1.0], [2.0]], [[2.0], [4.0]]); m.update_state([[3.0]], [[7.0]])
        >>> round(float(m.result()), 4)
        0.9934
    """

    def __init__(self, name: str = "pearson", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.sums = self.add_variable(shape=(6,), initializer="zeros", name="sums", dtype="float32")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        t = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        p = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        w = ops.ones_like(t) if sample_weight is None else ops.reshape(
            ops.broadcast_to(ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1)),
                             ops.shape(ops.reshape(y_pred, (ops.shape(y_pred)[0], -1)))), (-1,))
        self.sums.assign_add(ops.stack([ops.sum(w), ops.sum(w * t), ops.sum(w * p), ops.sum(w * t * t),
                                        ops.sum(w * p * p), ops.sum(w * t * p)]))

    def result(self) -> Any:
        n, st, sp, stt, spp, stp = (self.sums[i] for i in range(6))
        n = ops.maximum(n, 1.0)
        cov = stp - st * sp / n
        den = ops.sqrt(ops.maximum((stt - st * st / n) * (spp - sp * sp / n), 0.0))
        return ops.where(den > 0, cov / ops.where(den > 0, den, 1.0), 0.0)

    def reset_state(self) -> None:
        self.sums.assign(ops.zeros((6,), dtype="float32"))


def _target_keras_metric(name: str, task: str, num_classes: int) -> keras.metrics.Metric | None:
    """Streaming versions of the multi-label, regression and distribution metrics
    that have one (per-sample F scores, Spearman and the ``_tuned`` scores are numpy only)."""
    if task == "multilabel":
        if name in ("f1_micro", "f2", "f2_micro"):
            beta, avg = _fscore_parts(name)
            return _built(keras.metrics.FBetaScore(average=avg, beta=beta, threshold=0.5, name=name), num_classes)
        if name == "map":  # area under the PR curve per label, averaged, on 1,000 score bins
            return HistogramAP(num_classes, name="map")
    if task == "regression" and name == "pearson":
        return PearsonR(name="pearson")
    if task == "distribution" and name == "emd":
        from tfkit.losses import EarthMoverDistance

        return keras.metrics.MeanMetricWrapper(EarthMoverDistance(reduction=None), name="emd")
    return None
