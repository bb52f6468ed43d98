"""Where each task's labels and predictions live in ``oof.csv``, how its CV
is scored from them, and the decision thresholds chosen on them.

``oof.csv`` columns per task (``names`` are the records' classes, target
columns or bins, see :func:`output_names`):

=============  ===============================  ========================
task           labels                           predictions
=============  ===============================  ========================
binary         ``label`` (class index)          ``p_<class>`` (both)
multiclass     ``label`` (class index)          ``p_<class>``
multilabel     ``y_<class>`` (0/1), ``label``    ``p_<class>``
               (space-separated tags)
regression     ``y_<target>``                   ``pred_<target>``
  on grades    ``label`` (grade 0..K-1)         ``pred``
distribution   ``y_<bin>`` (counts or shares)    ``p_<bin>``
=============  ===============================  ========================

"On grades" is regression trained on single-label records whose classes are
the ordinal grades ``0..K-1`` (APTOS): the class index is the target.

The ``*_tuned`` scores in ``cv.json`` use thresholds cross-fitted over the
folds (:mod:`tfkit.thresholds`); :func:`fit_thresholds` fits them on every
fold together for ``thresholds.json``, which ``tfkit predict`` applies.

Example:
    >>> index = pd.DataFrame({"id": ["a", "b"], "fold": [0, 1], "y_cat": [1, 0], "y_dog": [1, 1]})
    >>> oof_frame(index, np.array([[0.9, 0.7], [0.2, 0.6]]), ["cat", "dog"], "multilabel")["label"].tolist()
    ['cat dog', 'dog']
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from tfkit import thresholds as th
from tfkit.metrics import F_SCORES, compute_metrics
from tfkit.utils import TfkitError

VECTOR_TASKS = ("multilabel", "regression", "distribution")


def output_names(manifest: dict, task: str) -> list[str]:
    """The names of a run's outputs: classes, regression target columns or distribution bins.

    Args:
        manifest: the records' manifest (``classes``; ``targets`` for numeric targets).
        task: the resolved task.

    Returns:
        Names in manifest order; for regression on grades, the grades.

    Example:
        >>> output_names({"classes": [], "targets": ["pawpularity"]}, "regression")
        ['pawpularity']
    """
    if task in ("regression", "distribution") and manifest.get("targets"):
        return [str(t) for t in manifest["targets"]]
    names = [str(c) for c in manifest.get("classes") or []]
    if not names:
        raise TfkitError(f"manifest.json lists no classes or targets for task {task}")
    return names


def on_grades(manifest: dict, task: str) -> bool:
    """Regression on the class index of single-label records (ordinal grades)."""
    return task == "regression" and not manifest.get("targets")


def head_size(manifest: dict, task: str) -> tuple[int, int]:
    """``(num_classes, n_targets)`` for :func:`tfkit.models.create_model`.

    Example:
        >>> head_size({"targets": ["a", "b"]}, "regression"), head_size({"classes": ["x", "y", "z"]}, "multilabel")
        ((2, 2), (3, 1))
    """
    names = output_names(manifest, task)
    if task == "regression":
        return len(names), 1 if on_grades(manifest, task) else len(names)
    return len(names), 1


def _vector_labels(frame: pd.DataFrame, names: Sequence[str], task: str) -> bool:
    """Whether ``frame`` holds one ``y_<name>`` column per output (else the ``label`` column)."""
    return task in VECTOR_TASKS and all(f"y_{n}" in frame for n in names)


def prediction_columns(frame: pd.DataFrame, names: Sequence[str], task: str) -> list[str]:
    """The prediction columns of an OOF frame (see the module table)."""
    if task == "regression":
        return [f"pred_{n}" for n in names] if _vector_labels(frame, names, task) else ["pred"]
    return [f"p_{n}" for n in names]


def oof_frame(index: pd.DataFrame, proba: np.ndarray, names: Sequence[str], task: str) -> pd.DataFrame:
    """Predictions in the ``oof.csv`` layout of the module table.

    Args:
        index: rows in prediction order (``tfkit.data.read_index``): id, fold,
            and ``label`` or ``y_<name>`` columns.
        proba: model outputs ``[N, K]`` (binary may be ``[N, 1]``).
        names: :func:`output_names`.
        task: the run's task.

    Returns:
        The frame.

    Example:
        >>> oof_frame(pd.DataFrame({"id": ["a"], "fold": [0], "label": [1]}), np.array([[0.2, 0.8]]), ["x", "y"], "multiclass")
          id  fold  label  p_x  p_y
        0  a     0      1  0.2  0.8
    """
    names = [str(n) for n in names]
    vector = _vector_labels(index, names, task)
    label_cols = [f"y_{n}" for n in names] if vector else ["label"]
    frame = index[["id", "fold", *label_cols]].reset_index(drop=True).copy()
    proba = np.asarray(proba, dtype=np.float64).reshape(len(frame), -1)
    if task == "multilabel" and vector:
        y = frame[label_cols].to_numpy()
        frame.insert(2, "label", [" ".join(n for n, v in zip(names, row) if v > 0.5) for row in y])
    if task == "binary" and proba.shape[1] == 1:
        proba = np.concatenate([1.0 - proba, proba], axis=1)
    cols = prediction_columns(frame, names, task)
    if proba.shape[1] != len(cols):
        raise TfkitError(f"model outputs shape {proba.shape}, expected [N, {len(cols)}] for {task} outputs {names}")
    for j, c in enumerate(cols):
        frame[c] = proba[:, j]
    return frame


def oof_arrays(frame: pd.DataFrame, names: Sequence[str], task: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, predictions)`` of an OOF frame as :func:`tfkit.metrics.compute_metrics` takes them.

    Returns:
        labels: ``[N]`` class indices or grades, or ``[N, K]``; predictions:
        ``[N]`` (binary P(class 1), one regression target) or ``[N, K]``.

    Example:
        >>> f = pd.DataFrame({"id": ["a"], "fold": [0], "label": [1], "p_x": [0.2], "p_y": [0.8]})
        >>> [a.tolist() for a in oof_arrays(f, ["x", "y"], "binary")]
        [[1], [0.8]]
    """
    names = [str(n) for n in names]
    if _vector_labels(frame, names, task):
        labels = frame[[f"y_{n}" for n in names]].to_numpy(dtype=np.float64)
    else:
        labels = frame["label"].to_numpy()
    preds = frame[prediction_columns(frame, names, task)].to_numpy(dtype=np.float64)
    if task == "binary":
        preds = preds[:, 1]
    elif preds.shape[1] == 1 and task == "regression":
        preds, labels = preds[:, 0], labels.reshape(len(frame), -1)[:, 0]
    return labels, preds


# --------------------------------------------------------------------------- thresholds


def _wanted(metric_names: Sequence[str] | None, name: str) -> bool:
    return metric_names is None or name in metric_names


def _betas(metric_names: Sequence[str] | None) -> list[str]:
    """The F-families (``f1``, ``f2``) whose ``_tuned`` scores are asked for."""
    return [f for f in ("f1", "f2") if any(_wanted(metric_names, n + "_tuned") for n in F_SCORES if n.startswith(f))]


def _grades(labels: np.ndarray, num_grades: int | None) -> int | None:
    """K when the labels are one column of grades 0..K-1 (QWK applies), else None."""
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1 or y.size == 0 or y.min() < 0 or np.any(np.mod(y, 1) != 0):
        return None
    return max(int(num_grades or 0), int(y.max()) + 1)


def _fitters(labels: np.ndarray, preds: np.ndarray, task: str, metric_names: Sequence[str] | None,
             num_grades: int | None) -> dict[str, Any]:
    """``{key: fit(mask) -> params}`` for each threshold family the metrics ask for."""
    from tfkit.metrics_multilabel import best_thresholds

    out: dict[str, Any] = {}
    if task == "multilabel":
        for fam in _betas(metric_names):
            beta = float(fam[1:])
            out[fam] = lambda m, beta=beta: best_thresholds(labels[m], preds[m], beta)
    elif task == "regression" and _wanted(metric_names, "qwk_tuned"):
        k = _grades(labels, num_grades)
        if k is not None and k >= 2:
            out["qwk"] = lambda m: th.fit_cut_points(labels[m], preds[m], k)
    return out


def fit_thresholds(frame: pd.DataFrame, names: Sequence[str], task: str,
                   metric_names: Sequence[str] | None = None) -> dict[str, list]:
    """Thresholds fitted on every row of an OOF frame: what ``thresholds.json`` holds.

    Args:
        frame: ``oof.csv``.
        names: :func:`output_names`.
        task: the run's task.
        metric_names: ``train.metrics`` (``None``: all); a family is fitted when
            one of its ``_tuned`` scores is asked for.

    Returns:
        multilabel: ``{"f1": [C], "f2": [C]}`` per-class thresholds; regression on
        grades: ``{"qwk": [K-1]}`` cut points; else ``{}``.

    Example:
        >>> f = pd.DataFrame({"id": list("abcd"), "fold": [0, 0, 1, 1], "label": [0, 1, 1, 2],
        ...                   "pred": [0.1, 0.4, 0.45, 1.2]})  # rounding would say 0, 0, 0, 1
        >>> fit_thresholds(f, ["0", "1", "2"], "regression", ["qwk_tuned"])
        {'qwk': [0.25, 0.825]}
    """
    labels, preds = oof_arrays(frame, names, task)
    mask = np.ones(len(frame), dtype=bool)
    return {k: [float(v) for v in fit(mask)]
            for k, fit in _fitters(labels, preds, task, metric_names, _num_grades(frame, names, task)).items()}


def _num_grades(frame: pd.DataFrame, names: Sequence[str], task: str) -> int | None:
    """Classes (QWK ratings) of class-index labels; None for y_ columns (grades from the data)."""
    return None if _vector_labels(frame, names, task) else len(names)


def cv_metrics(frame: pd.DataFrame, names: Sequence[str], task: str,
               metric_names: Sequence[str] | None = None) -> dict:
    """Overall and per-fold metrics of an OOF frame, ``*_tuned`` scores with cross-fitted thresholds.

    Each row is scored with thresholds fitted on the other folds, so the tuned
    scores are estimates for unseen data. With a single fold in the frame
    (held-out test predictions) no threshold can be cross-fitted and the
    ``*_tuned`` scores are left out.

    Args:
        frame: ``oof.csv``.
        names: :func:`output_names`.
        task: the run's task.
        metric_names: metric names (``train.metrics``); ``None`` for every applicable one.

    Returns:
        ``{"metrics": {...}, "folds": {"k": {...}}}``.
    """
    labels, preds = oof_arrays(frame, names, task)
    num_grades = _num_grades(frame, names, task)
    folds = frame["fold"].to_numpy()
    per_row: dict[str, np.ndarray] = {}
    if np.unique(folds).size >= 2:
        per_row = {k: th.cross_fit(fit, folds) for k, fit in
                   _fitters(labels, preds, task, metric_names, num_grades).items()}

    def score(rows: np.ndarray) -> dict:
        values = compute_metrics(labels[rows], preds[rows], task, names=metric_names,
                                 num_classes=num_grades, thresholds={k: v[rows] for k, v in per_row.items()})
        return {k: float(v) for k, v in values.items()}

    everything = np.ones(len(frame), dtype=bool)
    return {"metrics": score(everything),
            "folds": {str(int(k)): score(folds == k) for k in np.unique(folds)}}


# --------------------------------------------------------------------------- decisions on new data


def threshold_family(saved: dict, choice: str | float = "auto", primary: str | None = None) -> str | None:
    """Which saved threshold family ``predict.threshold`` picks.

    Args:
        saved: ``thresholds.json`` (may be empty).
        choice: ``auto`` (the family of the run's primary metric when it is an F
            score, else ``f1``, else ``f2``), ``f1``, ``f2``, or a number (a
            fixed threshold for every class: returns None).
        primary: the run's primary metric (``cv.json``).

    Returns:
        ``"f1"``, ``"f2"`` or None (fixed thresholds).

    Raises:
        TfkitError: a family that the run did not fit, or an unreadable choice.

    Example:
        >>> threshold_family({"f1": [0.3], "f2": [0.2]}, "auto", "f2_samples_tuned")
        'f2'
    """
    if choice == "auto":
        fam = (primary or "").partition("_")[0]
        for key in ([fam] if fam in ("f1", "f2") else []) + ["f1", "f2"]:
            if key in saved:
                return key
        return None
    if choice in ("f1", "f2"):
        if choice not in saved:
            raise TfkitError(f"predict.threshold={choice}: the run has no {choice} thresholds (thresholds.json is "
                             f"written when train.metrics asks for a {choice}*_tuned score)")
        return choice
    try:
        float(choice)
    except ValueError:
        raise TfkitError(f"predict.threshold: expected auto, f1, f2 or a number, got {choice!r}")
    return None


def decision_thresholds(saved: dict, choice: str | float, n_classes: int, primary: str | None = None) -> np.ndarray:
    """Per-class thresholds for turning probabilities into tags on new data.

    Returns:
        float64 ``[C]``: the saved family's thresholds, or the fixed number
        (0.5 with ``auto`` when the run saved none).

    Example:
        >>> decision_thresholds({}, "0.3", 2).tolist()
        [0.3, 0.3]
    """
    fam = threshold_family(saved, choice, primary)
    if fam is None:
        return np.full(n_classes, 0.5 if choice == "auto" else float(choice))
    t = np.asarray(saved[fam], dtype=np.float64)
    if t.shape != (n_classes,):
        raise TfkitError(f"thresholds.json: {fam} has {t.size} thresholds for {n_classes} classes")
    return t


def tags(proba: np.ndarray, names: Sequence[str], thresholds: np.ndarray) -> list[str]:
    """Space-separated names of the classes at or above their threshold, per row.

    Example:
        >>> tags(np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1]]), ["a", "b", "c"], np.array([0.5, 0.5, 0.7]))
        ['a', '']
    """
    on = np.asarray(proba) >= np.asarray(thresholds)[None, :]
    return [" ".join(n for n, v in zip(names, row) if v) for row in on]


def grades(preds: np.ndarray, n_grades: int, saved: dict) -> np.ndarray:
    """Ordinal grades from regression outputs: the saved QWK cut points, else rounding; clipped to 0..K-1.

    Example:
        >>> grades(np.array([0.4, 1.2, 9.0]), 3, {"qwk": [0.3, 1.5]}).tolist()
        [1, 1, 2]
    """
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    g = th.apply_cut_points(p, saved["qwk"]) if "qwk" in saved else np.rint(p)
    return np.clip(g, 0, n_grades - 1).astype(np.int64)


def bin_values(names: Sequence[str]) -> np.ndarray:
    """The value of each distribution bin: its name when every name is a number
    (AVA's ``1..10``), else its index.

    Example:
        >>> bin_values(["1", "2", "3"]).tolist(), bin_values(["low", "high"]).tolist()
        ([1.0, 2.0, 3.0], [0.0, 1.0])
    """
    try:
        return np.array([float(n) for n in names])
    except ValueError:
        return np.arange(len(names), dtype=np.float64)
