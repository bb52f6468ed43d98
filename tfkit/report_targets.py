"""Report sections for multi-label, regression and distribution runs (``tfkit report``).

From ``oof.csv`` (and ``thresholds.json``):

* multi-label: ``pr_curves.png`` (one precision-recall curve per class with the
  operating points of 0.5 and of the OOF thresholds marked), ``per_class.csv``
  (support, AP, AUC, F1 at 0.5 and at the threshold, the thresholds),
  ``top_losses.csv`` (rows with the largest binary cross-entropy);
* regression and distribution: ``regression.png`` (predicted against true with
  the identity line, and residuals against predicted, per target; a
  distribution's mean score), ``per_target.csv`` (RMSE, MAE, Pearson,
  Spearman), ``top_losses.csv`` (largest absolute errors).

Example (needs a multi-label run's ``oof.csv``)::

    sections = target_sections(oof, names, "multilabel", Path("report"), saved={})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tfkit import metrics_multilabel as mlm
from tfkit import metrics_regression as mrm
from tfkit.metrics import binary_auc
from tfkit.targets import oof_arrays
from tfkit.utils import pyplot, save_figure, write_csv

Section = tuple[str, "str | None", "pd.DataFrame | None", str]
MAX_PANELS = 16  # classes or targets drawn (the CSVs list all)


def pr_curve(labels: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as a threshold, highest first
    (the points ``sklearn.metrics.precision_recall_curve`` gives, without its end point).

    Returns:
        ``(precision, recall, thresholds)``; empty arrays when the label has no positive.

    Example:
        >>> [a.tolist() for a in pr_curve([1, 0, 1], [0.9, 0.5, 0.3])]
        [[1.0, 0.5, 0.6666666666666666], [0.5, 0.5, 1.0], [0.9, 0.5, 0.3]]
    """
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if y.sum() == 0:
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(t)[last]
    return tps / (last + 1), tps / y.sum(), s[last]


def _operating_point(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    pred = s >= t
    tp = float((pred & (y > 0.5)).sum())
    return (tp / pred.sum() if pred.sum() else 1.0), tp / max(float((y > 0.5).sum()), 1.0)


def multilabel_table(labels: np.ndarray, proba: np.ndarray, names: Sequence[str], saved: dict) -> pd.DataFrame:
    """Per-class numbers of a multi-label OOF: support, AP, AUC, F1 at 0.5 and at the saved thresholds.

    Example:
        >>> multilabel_table(np.array([[1, 0], [0, 1]]), np.array([[0.8, 0.3], [0.4, 0.6]]), ["a", "b"], {})["ap"].tolist()
        [1.0, 1.0]
    """
    y, p = mlm.as_multi_hot(labels), np.asarray(proba, dtype=np.float64)
    rows = []
    for k, name in enumerate(names):
        row = {"class": name, "support": int(y[:, k].sum()), "ap": mlm.average_precision(y[:, k], p[:, k]),
               "auc": binary_auc(y[:, k], p[:, k]),
               "f1@0.5": mlm.fbeta(y[:, [k]], mlm.binarise(p[:, [k]], 0.5), 1.0)}
        for fam in ("f1", "f2"):
            if fam in saved:
                t = float(saved[fam][k])
                row[f"{fam} threshold"] = t
                row[f"{fam}@threshold"] = mlm.fbeta(y[:, [k]], mlm.binarise(p[:, [k]], t), float(fam[1:]))
        rows.append(row)
    return pd.DataFrame(rows)


def plot_pr_curves(labels: np.ndarray, proba: np.ndarray, names: Sequence[str], saved: dict, path: Path) -> Path:
    """One PR curve per class (up to :data:`MAX_PANELS`), with the 0.5 and OOF-threshold operating points."""
    y, p = np.asarray(labels), np.asarray(proba, dtype=np.float64)
    shown = list(range(min(len(names), MAX_PANELS)))
    cols = min(4, len(shown))
    rows = (len(shown) + cols - 1) // cols
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), shown):
        ax.axis("on")
        prec, rec, _ = pr_curve(y[:, k], p[:, k])
        ax.step(rec, prec, where="post", lw=1.2)
        marks = [("0.5", 0.5, "k")] + [(f"{f} {saved[f][k]:.2f}", saved[f][k], c)
                                      for f, c in (("f1", "tab:red"), ("f2", "tab:green")) if f in saved]
        for label, t, colour in marks:
            pr, rc = _operating_point(y[:, k], p[:, k], float(t))
            ax.plot([rc], [pr], "o", color=colour, ms=5, label=label)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{names[k][:20]} (AP {mlm.average_precision(y[:, k], p[:, k]):.3f})", fontsize=8)
        ax.set_xlabel("recall", fontsize=7)
        ax.set_ylabel("precision", fontsize=7)
        ax.legend(fontsize=6, loc="lower left")
    fig.suptitle("Precision-recall per class (OOF); dots: thresholds 0.5 and fitted on OOF", fontsize=9)
    return save_figure(fig, path)


def regression_table(targets: np.ndarray, preds: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """RMSE, MAE, Pearson and Spearman per target column.

    Example:
        >>> regression_table(np.array([[1.0], [2.0], [4.0]]), np.array([[1.5], [2.0], [3.0]]), ["y"])["mae"].tolist()
        [0.5]
    """
    t = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    p = np.asarray(preds, dtype=np.float64).reshape(t.shape)
    return pd.DataFrame([{"target": n, "rmse": mrm.rmse(t[:, j], p[:, j]), "mae": mrm.mae(t[:, j], p[:, j]),
                          "pearson": mrm.pearson(t[:, j], p[:, j]), "spearman": mrm.spearman(t[:, j], p[:, j]),
                          "mean_true": float(t[:, j].mean()), "mean_pred": float(p[:, j].mean())}
                         for j, n in enumerate(names)])


def plot_regression(targets: np.ndarray, preds: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Per target: predicted vs true (identity line) and residual vs predicted (zero line)."""
    t = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    p = np.asarray(preds, dtype=np.float64).reshape(t.shape)
    shown = list(range(min(t.shape[1], MAX_PANELS // 2)))
    plt = pyplot()
    fig, axes = plt.subplots(len(shown), 2, figsize=(8.0, 3.4 * len(shown)), squeeze=False, layout="constrained")
    alpha = float(np.clip(300.0 / max(len(t), 1), 0.05, 0.8))
    for row, j in zip(axes, shown):
        lo, hi = float(min(t[:, j].min(), p[:, j].min())), float(max(t[:, j].max(), p[:, j].max()))
        row[0].scatter(t[:, j], p[:, j], s=6, alpha=alpha)
        row[0].plot([lo, hi], [lo, hi], "k--", lw=1)
        row[0].set_xlabel(f"true {names[j]}", fontsize=8)
        row[0].set_ylabel("predicted", fontsize=8)
        row[0].set_title(f"{names[j]}: RMSE {mrm.rmse(t[:, j], p[:, j]):.4g}, "
                         f"Pearson {mrm.pearson(t[:, j], p[:, j]):.3f}", fontsize=8)
        row[1].scatter(p[:, j], p[:, j] - t[:, j], s=6, alpha=alpha)
        row[1].axhline(0.0, color="k", ls="--", lw=1)
        row[1].set_xlabel("predicted", fontsize=8)
        row[1].set_ylabel("residual (pred - true)", fontsize=8)
    fig.suptitle("Out-of-fold predictions against the truth, and their residuals", fontsize=9)
    return save_figure(fig, path)


def worst_rows(oof: pd.DataFrame, labels: np.ndarray, preds: np.ndarray, task: str, n: int) -> pd.DataFrame:
    """The ``n`` OOF rows with the largest loss: binary cross-entropy summed over
    labels (multi-label) or absolute error (summed over targets; a distribution's mean score).

    Example:
        >>> f = pd.DataFrame({"id": ["a", "b"], "fold": [0, 1]})
        >>> worst_rows(f, np.array([1.0, 2.0]), np.array([1.1, 5.0]), "regression", 1)["id"].tolist()
        ['b']
    """
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    if task == "multilabel":
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        loss = -(y * np.log(pc) + (1 - y) * np.log(1 - pc)).sum(1)
    else:
        loss = np.abs(p - y).reshape(len(y), -1).sum(1)
    frame = oof[["id", "fold"]].reset_index(drop=True).assign(loss=loss)
    if "label" in oof:
        frame.insert(2, "label", oof["label"].to_numpy())
    return frame.sort_values("loss", ascending=False, kind="stable").head(n).reset_index(drop=True)


def target_sections(oof: pd.DataFrame, names: Sequence[str], task: str, out: Path, saved: dict,
                    n_worst: int = 16) -> list[Section]:
    """Write the plots and tables of a multi-label, regression or distribution run into ``out``.

    Args:
        oof: ``oof.csv``.
        names: the run's output names.
        task: ``multilabel``, ``regression`` or ``distribution``.
        out: report folder.
        saved: ``thresholds.json`` (may be empty).
        n_worst: rows of the worst-predictions table shown on the page.

    Returns:
        Page sections ``(heading, png, table, note)``.
    """
    labels, preds = oof_arrays(oof, names, task)
    if task == "distribution":  # judged on the mean score (the histograms' own errors are the emd in cv.json)
        bins = np.arange(len(names), dtype=np.float64)
        labels, preds, names = mrm.mean_score(labels, bins), mrm.mean_score(preds, bins), ["mean bin"]
    worst = worst_rows(oof, labels, preds, task, len(oof))
    write_csv(out / "top_losses.csv", worst)
    if task == "multilabel":
        plot_pr_curves(labels, preds, names, saved, out / "pr_curves.png")
        table = multilabel_table(labels, preds, names, saved)
        write_csv(out / "per_class.csv", table)
        fitted = ", ".join(k for k in ("f1", "f2") if k in saved) or "none (no *_tuned metric asked)"
        return [("Precision-recall per class", "pr_curves.png", None, f"Thresholds fitted on OOF: {fitted}."),
                ("Per-class metrics", None, table, "per_class.csv"),
                ("Largest losses", None, worst.head(n_worst), "Rows with the largest binary cross-entropy "
                 "(all in top_losses.csv): label-noise candidates.")]
    plot_regression(labels, preds, names, out / "regression.png")
    table = regression_table(labels, preds, names)
    write_csv(out / "per_target.csv", table)
    what = "mean score (expected bin index)" if task == "distribution" else "targets"
    return [("Predicted against true", "regression.png", None, f"Per {what}; residual = predicted - true."),
            ("Per-target metrics", None, table, "per_target.csv"),
            ("Largest errors", None, worst.head(n_worst), "Rows with the largest absolute error (top_losses.csv).")]
