"""Blend runs trained on the same records, from their out-of-fold predictions.

Different backbones, image sizes and seeds make different mistakes; a blend of
their predictions usually beats the best of them. Every run's ``oof.csv`` holds
a prediction for each training image from the fold model that never saw it, so
a blend can be fitted and scored on those rows, as long as all runs used the
same folds (otherwise a run's "out-of-fold" row was seen by another run's
model, and the blend's CV would leak). :func:`check_same_folds` compares the
runs' classes, OOF ids, the fold of every id and its label, and refuses a
mismatch by name.

Methods (``METHODS``):

* ``mean``: equal weights.
* ``rank``: mean of per-class ranks scaled to (0, 1] (for AUC; the scores are
  not probabilities, so probability metrics such as log loss are meaningless for it).
* ``weights``: non-negative weights summing to 1 that minimise the OOF log loss
  (MSE for regression), by projected gradient descent on the simplex; a smooth,
  proper objective rather than the task metric, which may be a step function.
* ``greedy``: Caruana et al. (2004) ensemble selection with replacement: start
  from the best run, repeatedly add the run (again, if it helps) that most
  improves the task metric of the running average, and keep the best point of
  that path; weights are the counts.

Honest CV: a fitted blend (``weights``, ``greedy``) scored on the rows it was
fitted on is optimistic. So for each fold ``k`` the blend is fitted on the other
folds' rows and applied to fold ``k``'s rows (nested): the written ``oof.csv``
holds those rows, ``cv.json``'s ``metrics`` are computed from it (recomputable
with :func:`tfkit.run.recompute_cv_frame`), and the in-sample score of the
blend fitted on every row sits beside it under ``in_sample``. The submission
uses the blend fitted on every row.

Output folder (written whole or not at all)::

    OUT/oof.csv  OUT/cv.json  OUT/weights.json  OUT/manifest.json  OUT/correlation.png
    OUT/submission.csv  (with submissions or test records)

Example (two trained runs and their ``tfkit predict`` submissions)::

    result = ensemble(["runs/cnn16", "runs/cnn32"], "runs/blend", method="greedy",
                      subs=["sub_cnn16.csv", "sub_cnn32.csv"])
    result["cv"]["metrics"]["accuracy"], result["cv"]["in_sample"]["accuracy"]   # nested, in-sample
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tfkit.manifest import Manifest
from tfkit.run import EnsembleFolder, recompute_cv_frame
from tfkit.run_view import RunView, oof_values, read_run
from tfkit.utils import TfkitError, atomic_dir, pyplot, read_id_csv, save_figure, write_csv

METHODS = ("mean", "rank", "weights", "greedy")
DEFAULT_METHOD = "weights"
GREEDY_STEPS = 20  # bag size of greedy selection
# The floor of a blended true-class probability before the log: tfkit.metrics.PROBA_EPS, not imported
# from there because tfkit.metrics imports Keras and the CLI reads this module before choosing a backend.
_TINY = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- runs


def run_names(views: Sequence[RunView]) -> list[str]:
    """Short display names: the folder names, or the paths where two names collide."""
    names = [v.path.name for v in views]
    return names if len(set(names)) == len(names) else [str(v.path) for v in views]


def _fold_setup(manifest: Manifest) -> dict:
    return {k: v for k, v in manifest.folds.items() if k in ("n_folds", "seed", "group_col", "label_col")}


def check_same_folds(views: Sequence[RunView]) -> None:
    """Refuse runs that cannot be blended on their OOF rows, naming the mismatch.

    Every run must have the same task and classes, predict the same ids out of
    fold, put each id in the same fold and give it the same label. Records rebuilt
    at another image size from the same CSV and fold seed pass (their folds agree).

    Args:
        views: the runs.

    Raises:
        TfkitError: one line naming the two runs and the first difference.
    """
    base = views[0]
    a = _indexed(base)
    for v in views[1:]:
        pair = f"runs {base.path} and {v.path}"
        if v.task != base.task or v.classes != base.classes:
            raise TfkitError(f"{pair} differ in task or classes ({base.task} {base.classes[:6]} vs "
                             f"{v.task} {v.classes[:6]}); only runs on the same records can be blended")
        b = _indexed(v)
        missing, extra = a.index.difference(b.index), b.index.difference(a.index)
        if len(missing) or len(extra):
            ident, where = (missing[0], v.path) if len(missing) else (extra[0], base.path)
            raise TfkitError(f"{pair} predict different images out of fold ({len(a)} vs {len(b)} rows; id {ident!r} "
                             f"is missing from {where}): train every fold of both runs on the same records")
        b = b.loc[a.index]
        for col, what in (("fold", "folds"), ("label", "labels")):
            diff = np.flatnonzero(a[col].to_numpy() != b[col].to_numpy())
            if diff.size:
                i = diff[0]
                setup = _fold_setup(base.manifest), _fold_setup(v.manifest)
                why = f"; fold setup {setup[0]} vs {setup[1]}" if setup[0] != setup[1] else ""
                raise TfkitError(f"{pair} were trained on different {what}: id {a.index[i]!r} has {col} "
                                 f"{a[col].iloc[i]} vs {b[col].iloc[i]} ({diff.size} ids differ{why}); "
                                 "blending them would leak")


def _indexed(view: RunView) -> pd.DataFrame:
    frame = view.oof.set_index("id")
    if frame.index.duplicated().any():
        raise TfkitError(f"{view.path}: id {frame.index[frame.index.duplicated()][0]!r} appears twice in its OOF predictions")
    return frame


def stack_oof(views: Sequence[RunView]) -> tuple[pd.DataFrame, np.ndarray]:
    """The runs' OOF predictions aligned by id, in the first run's row order.

    Returns:
        ``(index, values)``: ``index`` has id, fold, label; ``values`` is
        ``[M runs, N rows, K columns]`` float64.
    """
    index = views[0].oof[["id", "fold", "label"]].reset_index(drop=True)
    values = [oof_values(v)[pd.Index(v.oof["id"]).get_indexer(index["id"])] for v in views]
    return index, np.stack(values)


# --------------------------------------------------------------------------- blends


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto ``{w >= 0, sum(w) = 1}`` (Duchi et al. 2008).

    Example:
        >>> project_simplex(np.array([0.5, 2.0])).tolist()
        [0.0, 1.0]
    """
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, v.size + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1.0), 0.0)


def _objective(values: np.ndarray, labels: np.ndarray, task: str):
    """``f(w) -> (loss, gradient)`` of the blend ``sum_m w_m values[m]``: log loss or MSE."""
    n = values.shape[1]
    if task == "regression":
        x, y = values[:, :, 0].T, labels.astype(np.float64)

        def mse(w: np.ndarray) -> tuple[float, np.ndarray]:
            r = x @ w - y
            return float(r @ r / n), 2.0 * (x.T @ r) / n

        return mse
    q = values[:, np.arange(n), labels.astype(np.int64)].T  # [N, M]: each run's true-class probability

    def log_loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.maximum(q @ w, _TINY)
        return float(-np.mean(np.log(p))), -(q.T @ (1.0 / p)) / n

    return log_loss


def fit_weights(values: np.ndarray, labels: np.ndarray, task: str, max_iter: int = 2000, tol: float = 1e-12) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the blend's log loss (MSE for regression).

    Projected gradient descent with a backtracking step (the objective is convex
    in the weights), started from equal weights: deterministic, no SciPy.

    Args:
        values: ``[M, N, K]`` predictions of M runs.
        labels: ``[N]`` class indices (regression: targets).
        task: the runs' task.
        max_iter: iteration cap.
        tol: stop when the weights move less than this.

    Returns:
        ``[M]`` weights.

    Example:
        >>> good, bad = np.array([[[0.1, 0.9]]]), np.array([[[0.9, 0.1]]])
        >>> fit_weights(np.concatenate([good, bad]), np.array([1]), "binary").round(3).tolist()
        [1.0, 0.0]
    """
    f = _objective(values, labels, task)
    w = np.full(values.shape[0], 1.0 / values.shape[0])
    loss, grad = f(w)
    step = 1.0
    for _ in range(max_iter):
        while True:
            new = project_simplex(w - step * grad)
            d = new - w
            new_loss, new_grad = f(new)
            # Sufficient decrease of a projected step: the quadratic bound with curvature 1/step.
            if new_loss <= loss + grad @ d + (d @ d) / (2 * step) + 1e-15 or step < 1e-12:
                break
            step /= 2
        w, loss, grad, step = new, new_loss, new_grad, step * 2
        if np.sqrt(d @ d) < tol:
            break
    return w


def _score(values: np.ndarray, labels: np.ndarray, task: str, metric: str, n_classes: int) -> float:
    from tfkit.metrics import compute_metrics

    pred = values[:, 0] if task == "regression" else values
    return float(compute_metrics(labels, pred, task, names=[metric], num_classes=n_classes)[metric])


def greedy_weights(values: np.ndarray, labels: np.ndarray, task: str, metric: str, steps: int = GREEDY_STEPS) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004) on ``metric``.

    Starts from the best single run; each step adds the run whose inclusion
    gives the best metric of the running average; the best point along the path
    (earliest on ties) gives the weights. Ties of the metric (accuracy moves in
    steps of 1/N and often stalls) are broken by the smooth loss the
    ``weights`` method fits (log loss, MSE), then by the earlier run.

    Args:
        values: ``[M, N, K]`` predictions.
        labels: ``[N]`` labels.
        task: the runs' task.
        metric: a :func:`tfkit.metrics.compute_metrics` name.
        steps: models in the final bag (the first included).

    Returns:
        ``[M]`` weights (selection counts / total).
    """
    from tfkit.metrics import lower_is_better

    sign = -1.0 if lower_is_better(metric) else 1.0
    k = values.shape[2]

    def gain(avg: np.ndarray) -> tuple[float, float]:
        smooth = _objective(avg[None], labels, task)(np.ones(1))[0]
        return sign * _score(avg, labels, task, metric, k), -smooth

    counts = np.zeros(values.shape[0])
    first = max(range(len(values)), key=lambda m: (gain(values[m]), -m))
    counts[first], total = 1, values[first].copy()
    best, best_counts = gain(total), counts.copy()
    for n in range(1, max(1, int(steps))):
        gains = [gain((total + v) / (n + 1)) for v in values]
        m = max(range(len(values)), key=lambda j: (gains[j], -j))
        counts[m] += 1
        total += values[m]
        if gains[m] > best:
            best, best_counts = gains[m], counts.copy()
    return best_counts / best_counts.sum()


def rank_blend(values: np.ndarray) -> np.ndarray:
    """Mean over runs of each column's ranks (ties averaged) divided by the row count."""
    return np.mean([pd.DataFrame(v).rank(method="average", pct=True).to_numpy() for v in values], axis=0)


def method_weights(method: str, values: np.ndarray, labels: np.ndarray, task: str, metric: str,
                   steps: int = GREEDY_STEPS) -> np.ndarray | None:
    """The weights ``method`` fits on these rows (``None`` for ``rank``, which has none)."""
    if method == "mean":
        return np.full(values.shape[0], 1.0 / values.shape[0])
    if method == "weights":
        return fit_weights(values, labels, task)
    if method == "greedy":
        return greedy_weights(values, labels, task, metric, steps)
    if method == "rank":
        return None
    raise TfkitError(f"ensemble --method: expected one of {', '.join(METHODS)}, got {method!r}")


def apply_blend(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """``sum_m weights[m] * values[m]``, or the rank blend when ``weights`` is ``None``."""
    return rank_blend(values) if weights is None else np.tensordot(weights, values, axes=1)


def nested_blend(method: str, values: np.ndarray, labels: np.ndarray, folds: np.ndarray, task: str,
                 metric: str, steps: int = GREEDY_STEPS) -> tuple[np.ndarray, dict[int, np.ndarray | None]]:
    """Honest OOF blend: each fold's rows blended with weights fitted on the other folds' rows.

    Returns:
        ``(blended [N, K], {fold: weights})``.
    """
    if method == "rank":  # nothing is fitted: ranking every row at once is not optimistic
        return rank_blend(values), {int(k): None for k in np.unique(folds)}
    out = np.zeros(values.shape[1:])
    per_fold: dict[int, np.ndarray | None] = {}
    for k in np.unique(folds):
        held = folds == k
        w = method_weights(method, values[:, ~held], labels[~held], task, metric, steps)
        out[held] = apply_blend(values[:, held], w)
        per_fold[int(k)] = w
    return out, per_fold


# --------------------------------------------------------------------------- submissions


def read_submission(path: str | os.PathLike, id_column: str) -> pd.DataFrame:
    """A ``tfkit predict`` probability CSV, checked: the id column, unique ids, numeric columns."""
    path = Path(path)
    frame = read_id_csv(path, id_column, str(path), f"ensemble --subs: file not found: {path}")
    for col in frame.columns.drop(id_column):
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise TfkitError(f"{path}: column {col!r} is not numeric; blend probability submissions "
                             "(predict.output=proba)")
    return frame


def stack_submissions(frames: Sequence[pd.DataFrame], names: Sequence[str], id_column: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Submissions aligned by id in the first one's order: ``(id frame, values [M, N, K])``."""
    base = frames[0]
    cols = list(base.columns.drop(id_column))
    ids = pd.Index(base[id_column])
    values = []
    for name, frame in zip(names, frames):
        if list(frame.columns.drop(id_column)) != cols:
            raise TfkitError(f"ensemble: the submission of {name} has columns {list(frame.columns)}, "
                             f"expected {[id_column, *cols]}")
        pos = pd.Index(frame[id_column]).get_indexer(ids)
        if (pos < 0).any() or len(frame) != len(ids):
            missing = ids[pos < 0][0] if (pos < 0).any() else frame[id_column][~frame[id_column].isin(ids)].iloc[0]
            raise TfkitError(f"ensemble: the submissions of {names[0]} and {name} cover different ids "
                             f"(e.g. {missing!r})")
        values.append(frame[cols].to_numpy(dtype=np.float64)[pos])
    return base[[id_column]].reset_index(drop=True), np.stack(values)


def _test_predictions(views: Sequence[RunView], subs: Sequence[str | os.PathLike] | None,
                      test_records: str | os.PathLike | None, tta: int | None, progress: bool) -> list[pd.DataFrame] | None:
    if subs and test_records is not None:
        raise TfkitError("ensemble: give --subs or --test-records, not both")
    id_column = views[0].cfg.predict.id_column
    if subs:
        if len(subs) != len(views):
            raise TfkitError(f"ensemble --subs: expected one submission per run ({len(views)}), got {len(subs)}")
        return [read_submission(s, id_column) for s in subs]
    if test_records is None:
        return None
    from tfkit.predict import predict

    frames = []
    for v in views:
        frame = predict(v.path, out=None, records=test_records, tta=tta, progress=progress)
        frames.append(frame.rename(columns={v.cfg.predict.id_column: id_column}))
    if any(not all(pd.api.types.is_numeric_dtype(f[c]) for c in f.columns.drop(id_column)) for f in frames):
        raise TfkitError("ensemble --test-records: a run writes labels (predict.output=label); blends need probabilities")
    return frames


# --------------------------------------------------------------------------- outputs


def plot_correlation(values: np.ndarray, names: Sequence[str], scores: Sequence[float], weights: np.ndarray | None,
                     metric: str, path: str | os.PathLike) -> Path:
    """Heatmap of the Pearson correlation of the runs' OOF predictions, each run labelled with its CV."""
    plt = pyplot()
    m = len(names)
    corr = np.corrcoef(values.reshape(m, -1))
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * m, 1.6 + 1.1 * m))
    im = ax.imshow(corr, cmap="viridis", vmin=float(np.nanmin(corr)), vmax=1.0)
    for i in range(m):
        for j in range(m):
            ax.text(j, i, f"{corr[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="black" if corr[i, j] > np.nanmean(corr) else "white")
    labels = [f"{n}\n{metric} {s:.4f}" + ("" if weights is None else f"\nweight {w:.2f}")
              for n, s, w in zip(names, scores, weights if weights is not None else [None] * m)]
    ax.set_xticks(range(m), labels, fontsize=7)
    ax.set_yticks(range(m), labels, fontsize=7)
    ax.set_title("OOF prediction correlation between runs", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def _methods_table(methods: dict, names: Sequence[str], single: Sequence[float], metric: str, chosen: str) -> str:
    lines = [f"{'':<12} {'in-sample':>10} {'nested CV':>10}  weights",
             *[f"{n[:12]:<12} {s:>10.4f} {'':>10}  (single run)" for n, s in zip(names, single)]]
    for name, row in methods.items():
        w = "ranks" if row["weights"] is None else " ".join(f"{x:.2f}" for x in row["weights"])
        mark = " <-" if name == chosen else ""
        lines.append(f"{name:<12} {row['in_sample']:>10.4f} {row['nested']:>10.4f}  {w}{mark}")
    lines.append(f"{metric}: in-sample = blend fitted and scored on the same OOF rows (optimistic for weights "
                 "and greedy); nested CV = each fold blended with weights fitted on the other folds (honest)")
    return "\n".join(lines)


def _evaluate_methods(methods: Sequence[str], values: np.ndarray, index: pd.DataFrame, task: str, metric: str,
                      n_classes: int, steps: int) -> dict[str, dict]:
    labels, folds = index["label"].to_numpy(), index["fold"].to_numpy()
    out = {}
    for method in methods:
        w = method_weights(method, values, labels, task, metric, steps)
        nested, per_fold = nested_blend(method, values, labels, folds, task, metric, steps)
        out[method] = dict(weights=w, per_fold=per_fold, nested_values=nested,
                           in_sample=_score(apply_blend(values, w), labels, task, metric, n_classes),
                           nested=_score(nested, labels, task, metric, n_classes),
                           in_sample_values=apply_blend(values, w))
    return out


# --------------------------------------------------------------------------- command


def ensemble(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    method: str = DEFAULT_METHOD,
    metric: str | None = None,
    subs: Sequence[str | os.PathLike] | None = None,
    test_records: str | os.PathLike | None = None,
    tta: int | None = None,
    steps: int = GREEDY_STEPS,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Blend runs trained on the same records; write the blended OOF, CV, weights, plot and submission.

    Args:
        runs: two or more run folders (``tfkit train`` runs or ``tfkit tune`` trial runs).
        out: output folder, written atomically (a non-empty one needs ``overwrite``).
        method: ``mean`` | ``rank`` | ``weights`` | ``greedy`` (see the module docstring); every
            applicable method is scored and printed, this one is written.
        metric: the task metric scored and used by ``greedy`` (default the first run's primary).
        subs: one ``tfkit predict`` probability CSV per run, in the order of ``runs``.
        test_records: instead of ``subs``: test records every run predicts (with ``tta`` views).
        tta: views per image with ``test_records`` (default each run's ``predict.tta``).
        steps: bag size of ``greedy``.
        overwrite: replace a non-empty ``out``.
        progress: progress bars while predicting ``test_records``.

    Returns:
        ``{"cv": cv.json dict, "weights": weights.json dict, "out": Path}``.

    Raises:
        TfkitError: fewer than two runs, runs on different records or folds, a bad option or file.

    Example::

        ensemble(["runs/a", "runs/b"], "runs/ab", method="greedy")["cv"]["methods"]
    """
    if len(runs) < 2:
        raise TfkitError(f"ensemble --runs: expected at least two runs, got {len(runs)}")
    if method not in METHODS:
        raise TfkitError(f"ensemble --method: expected one of {', '.join(METHODS)}, got {method!r}")
    views = [read_run(r) for r in runs]
    task = views[0].task
    if task == "multilabel":
        raise TfkitError("ensemble: multilabel runs are not supported yet (binary, multiclass and regression are)")
    if task == "regression" and method == "rank":
        raise TfkitError("ensemble --method rank is for classification scores (AUC); regression blends with "
                         "mean, weights or greedy")
    check_same_folds(views)
    metric = metric or views[0].primary
    index, values = stack_oof(views)
    names, classes = run_names(views), views[0].classes
    single = [_score(v, index["label"].to_numpy(), task, metric, len(classes)) for v in values]
    tests = _test_predictions(views, subs, test_records, tta, progress)
    methods = [m for m in METHODS if not (task == "regression" and m == "rank")]
    table = _evaluate_methods(methods, values, index, task, metric, len(classes), steps)
    chosen = table[method]
    cols = views[0].value_columns
    blended = pd.concat([index, pd.DataFrame(chosen["nested_values"], columns=cols)], axis=1)
    metric_names = list(views[0].cfg.train.metrics)
    cv = recompute_cv_frame(blended, classes, task, names=metric_names)
    in_sample = pd.concat([index, pd.DataFrame(chosen["in_sample_values"], columns=cols)], axis=1)
    cv.update(
        primary=metric, task=task, method=method, n_folds=int(index["fold"].nunique()),
        n_folds_trained=int(index["fold"].nunique()),
        cv_kind="nested: each fold blended with weights fitted on the other folds" if method in ("weights", "greedy")
        else "no fitting: the blend is the same on every fold",
        in_sample=recompute_cv_frame(in_sample, classes, task, names=metric_names)["metrics"],
        methods={m: {"in_sample": r["in_sample"], "nested": r["nested"]} for m, r in table.items()},
        runs={n: {"run": str(v.path), metric: s} for n, v, s in zip(names, views, single)},
    )
    weights = _weights_record(views, names, single, metric, method, chosen)
    submission = None
    if tests is not None:
        ids, test_values = stack_submissions(tests, names, views[0].cfg.predict.id_column)
        submission = pd.concat([ids, pd.DataFrame(apply_blend(test_values, chosen["weights"]),
                                                  columns=tests[0].columns.drop(ids.columns[0]))], axis=1)
    with atomic_dir(out, overwrite=overwrite, what="ensemble --out") as tmp:
        folder = EnsembleFolder(tmp)
        folder.write_oof(blended)
        folder.write_cv(cv)
        folder.write_weights(weights)
        folder.write_manifest(views[0].manifest)
        if submission is not None:
            write_csv(folder.submission_path, submission)
        plot_correlation(values, names, single, chosen["weights"], metric, folder.correlation_path)
    print(f"ensemble of {len(views)} runs on {len(index)} OOF images ({task})")
    print(_methods_table(table, names, single, metric, method))
    print(f"-> {method}: CV {metric} {chosen['nested']:.4f} (in-sample {chosen['in_sample']:.4f}) -> {out}"
          + (f" (submission of {len(submission)} rows)" if submission is not None else ""))
    return {"cv": cv, "weights": weights, "out": Path(out)}


def _weights_record(views: Sequence[RunView], names: Sequence[str], single: Sequence[float], metric: str,
                    method: str, chosen: dict) -> dict:
    w = chosen["weights"]
    return {
        "method": method, "metric": metric,
        "runs": [{"name": n, "run": str(v.path), "weight": None if w is None else float(x), metric: s}
                 for n, v, s, x in zip(names, views, single, w if w is not None else [None] * len(views))],
        "nested": {str(k): None if pw is None else [float(x) for x in pw] for k, pw in chosen["per_fold"].items()},
    }
