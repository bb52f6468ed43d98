"""Evaluation report of a trained run: where is the model wrong, and can its
probabilities be trusted?

From the run's out-of-fold predictions (``RUN/oof.csv``; every image scored by
the fold model that never saw it) the report writes, into one folder:

* ``confusion_matrix.png`` (counts, rows normalised in colour),
* ``per_class.csv`` (precision, recall, F1, support per class),
* ``top_losses.csv`` (every misclassified image, most confidently wrong
  first: label-noise candidates) and ``top_losses.png`` (the worst ones),
* ``gradcam.png`` (Grad-CAM of the last convolutional feature map, for the true
  and the predicted class),
* ``calibration.png`` (reliability diagram with expected calibration error),
* ``report.html`` (or ``report.md``) showing all of it, referencing the PNGs beside it.

Multi-label, regression and distribution runs get their own sections instead
(:mod:`tfkit.report_targets`: per-class PR curves with the OOF thresholds,
predicted-vs-true and residual plots); records with other than three
channels add ``channels.png`` (the worst images channel by channel).

Example::

    from tfkit.report import report
    report("runs/digits", records="records")   # PosixPath('runs/digits/report/report.html')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tfkit.manifest import Manifest, resolve_task
from tfkit.report_page import DEFAULT_FORMAT, FORMATS, check_format, write_page  # noqa: F401  (FORMATS re-exported)
from tfkit.report_targets import target_sections
from tfkit.run import RunFolder, oof_probabilities
from tfkit.show import to_rgb
from tfkit.targets import output_names
from tfkit.utils import TfkitError, pyplot, save_figure, write_csv

N_BINS = 10


# --------------------------------------------------------------------------- numbers


def per_class_table(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class, plus macro and weighted averages.

    Args:
        labels: true class indices ``[N]``.
        pred: predicted class indices ``[N]``.
        classes: class names.

    Returns:
        DataFrame with columns class, precision, recall, f1, support.

    Example:
        >>> per_class_table(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b"])["recall"].tolist()
        [1.0, 0.5, 0.75, 0.6666666666666666]
    """
    from sklearn.metrics import precision_recall_fscore_support

    idx = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    rows = [dict(**{"class": str(c)}, precision=p[i], recall=r[i], f1=f[i], support=int(s[i])) for i, c in enumerate(classes)]
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(labels, pred, labels=idx, average=avg, zero_division=0)
        rows.append({"class": f"({avg} avg)", "precision": ap, "recall": ar, "f1": af, "support": int(len(labels))})
    return pd.DataFrame(rows)


def top_losses(oof: pd.DataFrame, proba: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Misclassified out-of-fold images, most confidently wrong first.

    Args:
        oof: ``oof.csv`` frame (id, fold, label).
        proba: ``[N, C]`` probabilities aligned with ``oof``.
        classes: class names.

    Returns:
        DataFrame with columns rank, id, fold, label, pred, p_label, p_pred, loss
        (cross-entropy of the true class), sorted by loss descending.

    Example:
        >>> top_losses(pd.DataFrame({"id": ["x"], "fold": [0], "label": [0]}), np.array([[0.1, 0.9]]), ["a", "b"])["pred"].tolist()
        ['b']
    """
    labels = oof["label"].to_numpy().astype(int)
    pred = proba.argmax(1)
    rows = np.arange(len(labels))
    p_label = proba[rows, labels]
    frame = pd.DataFrame({
        "id": oof["id"].astype(str).to_numpy(), "fold": oof["fold"].to_numpy(),
        "label": np.asarray(classes, dtype=object)[labels], "pred": np.asarray(classes, dtype=object)[pred],
        "p_label": p_label, "p_pred": proba[rows, pred], "loss": -np.log(np.clip(p_label, 1e-12, 1.0)),
        "label_index": labels,
    })
    frame = frame[pred != labels].sort_values("loss", ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame


def reliability(proba: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> tuple[pd.DataFrame, float]:
    """Top-label reliability: accuracy vs confidence in equal-width bins, and the ECE.

    Args:
        proba: ``[N, C]`` probabilities.
        labels: true class indices ``[N]``.
        n_bins: confidence bins over ``[0, 1]``.

    Returns:
        ``(bins, ece)``: DataFrame with lo, hi, count, confidence, accuracy per bin
        (NaN for empty bins), and the expected calibration error
        ``sum_b n_b / N * |acc_b - conf_b|``.

    Example:
        >>> round(reliability(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))[1], 4)
        0.35
    """
    conf = proba.max(1)
    correct = (proba.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    rows, ece = [], 0.0
    for b in range(n_bins):
        m = which == b
        n = int(m.sum())
        c = float(conf[m].mean()) if n else float("nan")
        a = float(correct[m].mean()) if n else float("nan")
        if n:
            ece += n / len(conf) * abs(a - c)
        rows.append(dict(lo=edges[b], hi=edges[b + 1], count=n, confidence=c, accuracy=a))
    return pd.DataFrame(rows), float(ece)


# --------------------------------------------------------------------------- Grad-CAM


def last_conv_layer(model: Any) -> Any:
    """The last layer with a 4-D output inside the model's ``backbone`` (or the model itself).

    Args:
        model: a :func:`tfkit.models.create_model` model.

    Returns:
        The Keras layer whose output feature map Grad-CAM uses.

    Example::

        last_conv_layer(model).name
        's2_relu1'
    """
    try:
        holder = model.get_layer("backbone")
    except ValueError:
        holder = model
    for layer in reversed(holder.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4:
            return layer
    raise TfkitError(f"Grad-CAM: no layer with a 4-D feature map in {holder.name}")


def gradcam(model: Any, images: Any, class_index: Sequence[int], layer: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps (Selvaraju et al. 2017) on the last convolutional feature map, on either backend.

    The chosen layer's output ``A`` is intercepted during one eager forward pass
    and shifted by a zero tensor ``d``: the class score's gradient with respect
    to ``d`` is its gradient with respect to ``A``, taken by
    :func:`tfkit.backend.gradient` (``GradientTape`` on TensorFlow, ``jax.grad``
    on JAX). Averaged over space it weights the channels of ``A``; the weighted
    sum is passed through ReLU and scaled to ``[0, 1]``.

    Args:
        model: Keras model taking float32 ``[B, S, S, 3]`` in ``[0, 1]``.
        images: ``[B, S, S, 3]`` model inputs.
        class_index: class whose score is explained, one per image (for a single
            sigmoid output, 1 explains the positive class, 0 the negative).
        layer: feature-map layer (default :func:`last_conv_layer`).

    Returns:
        ``(heatmaps [B, h, w] in [0, 1] at the feature map's resolution, proba [B, C])``.

    Example::

        cams, p = gradcam(model, x, [3, 5])
    """
    from keras import ops

    from tfkit.backend import gradient

    layer = layer or last_conv_layer(model)
    images = np.asarray(images, dtype=np.float32)
    idx = np.asarray(class_index, dtype=np.int32)
    if idx.shape != (len(images),):
        raise TfkitError(f"gradcam: expected one class index per image ({len(images)}), got {idx.shape[0] if idx.ndim else 0}")
    box: dict[str, Any] = {}
    original = layer.call

    def shifted(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        box["features"] = out
        return out + ops.cast(box["shift"], out.dtype)

    def score(shift: Any) -> tuple[Any, tuple[Any, Any]]:
        box["shift"] = shift
        proba = ops.cast(model(images, training=False), "float32")
        if proba.shape[-1] == 1:
            p = proba[:, 0]
            chosen = ops.where(idx == 1, p, 1.0 - p)
        else:
            chosen = ops.take_along_axis(proba, idx[:, None], axis=1)[:, 0]
        # images are independent (inference mode), so d sum / d A_b = d score_b / d A_b
        return ops.sum(chosen), (proba, box["features"])

    shift = np.zeros((len(images), *layer.output.shape[1:]), np.float32)
    layer.call = shifted  # instance attribute: only these forward passes are intercepted
    try:
        grads, (proba, features) = gradient(score, shift)
    finally:
        del layer.call
    features = ops.cast(features, "float32")
    weights = ops.mean(ops.cast(grads, "float32"), axis=(1, 2), keepdims=True)
    cam = ops.convert_to_numpy(ops.relu(ops.sum(weights * features, axis=-1)))
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0)
    return cam, ops.convert_to_numpy(proba)


# --------------------------------------------------------------------------- plots


def confusion_figure(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> Any:
    """The confusion-matrix figure: counts in the cells, colour = row-normalised recall.

    The title is the figure's (``suptitle`` under constrained layout), so it
    sits above both the matrix and its colour bar and never runs into the bar,
    however many classes (and however long the title) there are.
    """
    from sklearn.metrics import confusion_matrix

    plt = pyplot()
    cm = confusion_matrix(labels, pred, labels=list(range(len(classes))))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 2), max(3.5, 0.6 * n + 1.5)), layout="constrained")
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    fig.suptitle(f"Confusion matrix (OOF)\nn={len(labels)}, accuracy {np.mean(labels == pred):.4f}")
    return fig


def plot_confusion(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Confusion-matrix PNG (:func:`confusion_figure`)."""
    return save_figure(confusion_figure(labels, pred, classes), path)


def plot_calibration(bins: pd.DataFrame, ece: float, path: Path) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, with bin counts."""
    plt = pyplot()
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centres = (bins["lo"] + bins["hi"]) / 2
    width = float(bins["hi"].iloc[0] - bins["lo"].iloc[0])
    ax.bar(centres, bins["accuracy"].fillna(0), width=width * 0.95, color="tab:blue", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ok = bins["count"] > 0
    ax.plot(bins["confidence"][ok], bins["accuracy"][ok], "o-", color="tab:red", label="(confidence, accuracy)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability (top-label), ECE = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centres, bins["count"], width=width * 0.95, color="gray")
    axc.set_yscale("symlog")
    axc.set_xlabel("confidence of the predicted class")
    axc.set_ylabel("images")
    axc.set_xlim(0, 1)
    return save_figure(fig, path)


def _grid(n: int, cols: int = 8) -> tuple[int, int]:
    cols = min(cols, max(n, 1))
    return (n + cols - 1) // cols, cols


def plot_top_losses(images: np.ndarray, rows: pd.DataFrame, path: Path) -> Path:
    """Grid of the most confidently wrong images, titled id / true -> predicted (p)."""
    plt = pyplot()
    r, c = _grid(len(rows))
    fig, axes = plt.subplots(r, c, figsize=(2.0 * c, 2.3 * r), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, (_, row) in zip(axes.ravel(), images, rows.iterrows()):
        ax.imshow(to_rgb(img))
        ax.set_title(f"{row['id']}\n{row['label']} -> {row['pred']} ({row['p_pred']:.2f})", fontsize=7)
    fig.suptitle("Most confidently wrong (OOF): label-noise candidates", fontsize=10)
    return save_figure(fig, path)


def plot_gradcam(images: np.ndarray, cams: list[np.ndarray], titles: list[list[str]], path: Path) -> Path:
    """Rows of image | CAM of the true class | CAM of the predicted class."""
    import tensorflow as tf

    plt = pyplot()
    fig, axes = plt.subplots(len(images), 3, figsize=(6.3, 2.2 * len(images)), squeeze=False)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        img = to_rgb(img)
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(titles[i][0], fontsize=7)
        for j, cam in enumerate(cams[i], start=1):
            up = tf.image.resize(cam[..., None], [h, w], method="bilinear").numpy()[..., 0]
            axes[i, j].imshow(img)
            axes[i, j].imshow(up, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].set_title(titles[i][j], fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle("Grad-CAM (last conv feature map)", fontsize=10)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- report


def report(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    n_worst: int = 16,
    gradcam_ids: Sequence[str] | None = None,
    records: str | os.PathLike | None = None,
    fmt: str = DEFAULT_FORMAT,
    n_gradcam: int = 4,
) -> Path:
    """Write the evaluation report of a run's out-of-fold predictions.

    Args:
        run: run folder written by :func:`tfkit.train.train` (``oof.csv``, ``cv.json``).
        out: report folder (default ``RUN/report``).
        n_worst: most confidently wrong images shown in the grid (``top_losses.csv``
            lists every misclassified image).
        gradcam_ids: ids to explain with Grad-CAM (default: the ``n_gradcam`` worst).
        records: the training records the run was trained on; they supply the
            images of the grid and of Grad-CAM. Without them those two sections are
            left out (the numbers and ``top_losses.csv`` are still written).
        fmt: ``html`` (``report.html``) or ``md`` (``report.md``).
        n_gradcam: how many of the worst images Grad-CAM explains by default.

    Returns:
        Path of ``report.html`` / ``report.md``.

    Raises:
        TfkitError: the run has no ``oof.csv``, an id is unknown.

    Example::

        report("runs/digits", records="records", gradcam_ids=["img_0007"])
    """
    check_format(fmt)
    folder = RunFolder(run)
    cfg, manifest = folder.load()
    oof = folder.read_oof()
    task = resolve_task(cfg.model.task, manifest=manifest)
    classes = output_names(manifest, task)
    out = Path(out) if out is not None else folder.report_dir
    _check_inputs(out, manifest, oof, records, gradcam_ids, n_worst)
    out.mkdir(parents=True, exist_ok=True)
    sections = [_summary_section(folder, oof, task)]
    if task not in ("binary", "multiclass"):
        sections += target_sections(oof, classes, task, out, folder.read_thresholds(), n_worst)
        worst_rows = pd.read_csv(out / "top_losses.csv", dtype={"id": str})
        sections += _channel_section(records, manifest, cfg, worst_rows, n_worst, out)
        path = write_page(out, fmt, f"tfkit report: {folder.path.name}", sections)
        print(f"report -> {path}")
        return path

    proba = oof_probabilities(oof, classes, task)
    if task == "binary":
        proba = np.stack([1.0 - proba, proba], axis=1)
    labels = oof["label"].to_numpy().astype(int)
    pred = proba.argmax(1)

    plot_confusion(labels, pred, classes, out / "confusion_matrix.png")
    sections.append(("Confusion matrix", "confusion_matrix.png", None, ""))
    table = per_class_table(labels, pred, classes)
    write_csv(out / "per_class.csv", table)
    sections.append(("Per-class metrics", None, table, "per_class.csv"))

    bins, ece = reliability(proba, labels)
    plot_calibration(bins, ece, out / "calibration.png")
    write_csv(out / "calibration.csv", bins)
    sections.append(("Calibration", "calibration.png", None, f"Expected calibration error {ece:.4f} ({N_BINS} bins)."))

    worst = top_losses(oof, proba, classes)
    write_csv(out / "top_losses.csv", worst.drop(columns="label_index"))
    shown = worst.head(max(0, int(n_worst)))
    note = (f"{len(worst)} misclassified images, all listed in top_losses.csv (most confident mistakes first); "
            f"the {len(shown)} worst are shown.")
    if records is None:
        sections.append(("Most confidently wrong", None, shown.drop(columns="label_index"), note + " Pass records to see the images."))
    elif len(shown):
        from tfkit.data import load_examples

        ex = load_examples(str(records), shown["id"].tolist(), image_size=cfg.data.image_size)
        plot_top_losses(ex["image"], shown, out / "top_losses.png")
        sections.append(("Most confidently wrong", "top_losses.png", shown.drop(columns="label_index"), note))
    else:
        sections.append(("Most confidently wrong", None, None, "No misclassified image."))

    ids = list(gradcam_ids) if gradcam_ids else worst["id"].head(n_gradcam).tolist()
    if ids and records is not None and cfg.data.metadata:
        if gradcam_ids:
            raise TfkitError("report --gradcam: models with metadata inputs (data.metadata) are not supported by "
                             "Grad-CAM yet; run the report without --gradcam")
        sections.append(("Grad-CAM", None, None, "Left out: the models also take metadata inputs."))
    elif ids and records is not None:
        _gradcam_section(folder, cfg, records, oof, proba, classes, ids, out / "gradcam.png")
        sections.append(("Grad-CAM", "gradcam.png", None,
                         "Where each fold model looks: heatmaps of the last convolutional feature map for the "
                         "true class and the predicted class (out-of-fold models)."))
    sections += _channel_section(records, manifest, cfg, worst, n_worst, out)
    path = write_page(out, fmt, f"tfkit report: {folder.path.name}", sections)
    print(f"report -> {path}")
    return path


def _summary_section(folder: RunFolder, oof: pd.DataFrame, task: str) -> tuple[str, None, pd.DataFrame, str]:
    """The CV table (beside the TTA scores of ``cv_tta.json`` when present)."""
    cv = folder.read_cv()
    summary = pd.DataFrame([{"metric": k, "value": v} for k, v in (cv.get("metrics") or {}).items()])
    note_tta = ""
    tta = folder.read_cv_tta()
    if tta is not None:
        summary["with TTA"] = [tta["tta"].get(k, float("nan")) for k in summary["metric"]]
        note_tta = f" 'with TTA': {tta['n_views']} {tta['mode']} views ({tta['average']}), cv_tta.json."
    tuned = " *_tuned: thresholds fitted on the other folds (cross-fitted)." if any(
        str(k).endswith("_tuned") for k in summary.get("metric", [])) else ""
    return ("Cross-validation", None, summary,
            f"{len(oof)} out-of-fold images, {oof['fold'].nunique()} folds, task {task}.{note_tta}{tuned}")


def _channel_section(records: Any, manifest: dict, cfg: Any, worst: pd.DataFrame, n: int, out: Path) -> list:
    """Channel-by-channel views of the worst images, for records with other than 3 channels."""
    from tfkit.show import plot_channels

    channels = Manifest.from_dict(manifest).channel_names
    if records is None or len(channels) == 3 or worst.empty:
        return []
    from tfkit.data import load_examples

    shown = worst.head(max(1, min(int(n), 8)))
    ex = load_examples(str(records), shown["id"].tolist(), image_size=cfg.data.image_size)
    captions = shown["label"].astype(str).tolist() if "label" in shown else None
    plot_channels(ex["image"], shown["id"].tolist(), channels, out / "channels.png", captions=captions)
    return [("Channels of the worst images", "channels.png", None,
             f"{len(channels)} channels ({', '.join(channels)}): the first three as RGB, then each one.")]


def _check_inputs(out: Path, manifest: Any, oof: pd.DataFrame, records: Any, gradcam_ids: Sequence[str] | None,
                  n_worst: int) -> None:
    """Everything the report needs, checked before its folder is written."""
    from tfkit.preflight import check_out_dir, check_records

    if int(n_worst) < 0:
        raise TfkitError(f"--worst: expected a number of images >= 0, got {n_worst}")
    check_out_dir(out, "--out")
    if records is not None and not manifest.same_source(check_records(records)):
        raise TfkitError(f"--records {records}: not the records this run was trained on (folds or shard checksums "
                         "differ from RUN/manifest.json)")
    known = set(oof["id"].astype(str))
    missing = [i for i in (gradcam_ids or []) if i not in known]
    if missing:
        raise TfkitError(f"report --gradcam: id(s) not in the run's oof.csv: {missing[:5]}")


def _gradcam_section(folder: RunFolder, cfg: Any, records: Any, oof: pd.DataFrame, proba: np.ndarray,
                     classes: list[str], ids: list[str], path: Path) -> Path:
    from tfkit.augment import resize_batch
    from tfkit.data import load_examples

    pos = {i: n for n, i in enumerate(oof["id"].astype(str))}  # every id is in it (checked up front)
    ex = load_examples(str(records), ids, image_size=cfg.data.image_size)
    rows = [pos[i] for i in ids]
    folds = oof["fold"].to_numpy()[rows]
    cams: list[list[np.ndarray]] = [[] for _ in ids]
    titles: list[list[str]] = [[] for _ in ids]
    for k in sorted(set(int(f) for f in folds)):
        model = folder.load_model(k)
        size = int(model.input_shape[1] if not isinstance(model.input_shape, list) else model.input_shape[0][1])
        sel = [n for n, f in enumerate(folds) if f == k]
        x = resize_batch(ex["image"][sel], size)
        true = oof["label"].to_numpy().astype(int)[[rows[n] for n in sel]]
        pred = proba[[rows[n] for n in sel]].argmax(1)
        cam_true, p = gradcam(model, x, true)
        cam_pred, _ = gradcam(model, x, pred)
        for m, n in enumerate(sel):
            pm = p[m] if p.shape[1] > 1 else np.array([1 - p[m, 0], p[m, 0]])
            cams[n] = [cam_true[m], cam_pred[m]]
            titles[n] = [f"{ids[n]} (fold {k})", f"true {classes[true[m]]} ({pm[true[m]]:.2f})",
                         f"pred {classes[pred[m]]} ({pm[pred[m]]:.2f})"]
    return plot_gradcam(ex["image"], cams, titles, path)
