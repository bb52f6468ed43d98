"""``tfkit show``: the plots a person looks at before training.

Three PNGs, plus the numbers behind them so they can be checked:

- ``augment_grid.png``: rows are training images (one per class in turn),
  columns are the resized original then ``n_draws`` augmentation draws of the
  same image with the run's ``augment`` config, each captioned with its
  (possibly mixed) label.
- ``class_counts.png``: examples per class and fold as grouped bars; the
  numbers are in ``class_counts.csv`` (rows = classes, one column per fold, total).
- ``eda.png``: image sizes (stored, beside the files' original sizes), examples per class, and one panel per
  metadata column (histogram for numeric, bars for categorical, with the
  missing count); the numbers are in ``eda.json``.

Example::

    paths = show("records", load_config(None, ["augment.preset=digits"]), "show")
    [p.name for p in paths]
    ['augment_grid.png', 'class_counts.png', 'class_counts.csv', 'eda.png', 'eda.json']
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from tfkit.checks import validate
from tfkit.config import Config
from tfkit.manifest import Manifest, resolve_task
from tfkit.preflight import check_out_dir, check_records
from tfkit.utils import TfkitError, pyplot, save_figure, write_csv, write_json

MAX_SIZE_BARS = 12  # more distinct stored sizes than this: histograms instead of bars


def class_counts(index: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Examples per class and fold.

    Args:
        index: :func:`tfkit.data.read_index` output (columns label, fold; multi-label
            records also ``y_<class>``, and each image then counts once per label it has).
        classes: class names; label ``i`` is ``classes[i]`` (-1 is counted as "(unlabelled)").

    Returns:
        DataFrame indexed by class name with one column per fold (``fold0``...,
        or ``test`` for fold -1) and a ``total`` column; every class appears, zeros included.

    Example:
        >>> idx = pd.DataFrame({"label": [0, 1, 1], "fold": [0, 0, 1]})
        >>> class_counts(idx, ["a", "b"])["total"].tolist()
        [1, 2]
    """
    fold_name = index["fold"].map(lambda f: f"fold{f}" if f >= 0 else "test")
    if all(f"y_{c}" in index for c in classes):  # multi-label: positives per label
        table = index[[f"y_{c}" for c in classes]].gt(0.5).groupby(fold_name.to_numpy()).sum().T.astype(np.int64)
        table.index = list(classes)
        return _finish_counts(table)
    names = list(classes) + (["(unlabelled)"] if (index["label"] < 0).any() else [])
    label_name = index["label"].map(lambda i: classes[i] if 0 <= i < len(classes) else "(unlabelled)")
    table = pd.crosstab(pd.Categorical(label_name, categories=names), fold_name, dropna=False)
    return _finish_counts(table.reindex(index=names, fill_value=0))


def _finish_counts(table: pd.DataFrame) -> pd.DataFrame:
    table = table[sorted(table.columns, key=lambda c: (c == "test", int(c[4:]) if c != "test" else 0))]
    table.index.name = "class"
    table.columns.name = None
    table["total"] = table.sum(axis=1)
    return table.astype(np.int64)


def _caption(y: np.ndarray, classes: list[str], task: str) -> str:
    if task == "regression":
        return " ".join(f"{float(v):.3g}" for v in y[:3])
    if task == "distribution":
        return f"mean bin {float(np.dot(y, np.arange(len(y)))):.2f}"
    if task == "multilabel":  # mixed shares are shown when not 0/1
        on = [(classes[i], float(v)) for i, v in enumerate(y) if v > 0.01]
        return " ".join(n if v > 0.999 else f"{n} {v:.2f}" for n, v in on)[:40] or "(none)"
    if y.shape[-1] == 1:  # binary: P(class 1)
        p = float(y[0])
        name = classes[int(p >= 0.5)] if len(classes) == 2 else str(int(p >= 0.5))
        return name if p in (0.0, 1.0) else f"{classes[1] if len(classes) == 2 else 1} p={p:.2f}"
    order = np.argsort(-y)
    names = [classes[i] if i < len(classes) else str(i) for i in order[:2]]
    if float(y[order[0]]) >= 0.999:
        return names[0]
    # mixup/cutmix: the two largest shares, so the mixed-in class is visible too
    return f"{names[0]} {float(y[order[0]]):.2f} + {names[1]} {float(y[order[1]]):.2f}"


def _pick_ids(index: pd.DataFrame, n: int) -> list[str]:
    """Up to n ids, one class after the other, so the grid shows every class it can."""
    groups = [g["id"].tolist() for _, g in index.groupby("label", sort=True)]
    picked: list[str] = []
    depth = 0
    while len(picked) < n and any(depth < len(g) for g in groups):
        picked += [g[depth] for g in groups if depth < len(g)][: n - len(picked)]
        depth += 1
    return picked


def plot_augment_grid(records: str, cfg: Config, index: pd.DataFrame, manifest: Mapping, path: Path,
                      n_images: int = 8, n_draws: int = 4) -> Path:
    """Write the grid of original + augmented draws of the same images.

    Args:
        records: records folder.
        cfg: run config (``augment`` section, ``data.image_size``, ``data.seed``).
        index: :func:`tfkit.data.read_index` of the records.
        manifest: the records' manifest.
        path: PNG to write.
        n_images: rows (images).
        n_draws: augmented columns per image.

    Returns:
        ``path``.

    Example::

        plot_augment_grid("records", cfg, read_index("records"), manifest, Path("grid.png"))
    """
    import tensorflow as tf

    from tfkit import augment, data

    ids = _pick_ids(index, n_images)
    ex = data.load_examples(records, ids, manifest=manifest, image_size=cfg.data.image_size)
    manifest = Manifest.from_dict(manifest)
    task = resolve_task(cfg.model.task, manifest=manifest)
    classes = manifest.classes
    labels = ex["label"] if ex["label"].dtype.kind == "f" else np.maximum(ex["label"], 0)
    y = data.encode_targets(tf.constant(labels), task, len(classes))
    classes = classes or manifest.targets
    size = int(cfg.data.image_size)
    columns = [(augment.resize_batch(tf.constant(ex["image"]), size).numpy(), y.numpy(), "original")]
    for d in range(n_draws):
        seed = tf.constant([int(cfg.data.seed), 1_000_003 + d], tf.int64)
        img, lab = augment.augment_batch(tf.constant(ex["image"]), y, cfg.augment, size, seed)
        columns.append((img.numpy(), lab.numpy(), f"draw {d + 1}"))

    plt = pyplot()
    rows, cols = len(ids), len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.1 * rows), squeeze=False, layout="constrained")
    for r in range(rows):
        for c, (imgs, labs, title) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(np.clip(to_rgb(imgs[r]), 0.0, 1.0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(_caption(labs[r], classes, task), fontsize=7)
            if r == 0:
                ax.set_xlabel(title, fontsize=8)
                ax.xaxis.set_label_position("top")
            if c == 0:
                ax.set_ylabel(str(ex["id"][r])[:18], fontsize=7)
    fig.suptitle(f"augment preset={cfg.augment.preset!r}, size {size}px: original, then {n_draws} draws", fontsize=9)
    return save_figure(fig, path)


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Images of any channel count as RGB for display: the first three channels
    as red, green, blue (RGBY: the yellow stain is left out), grey repeated,
    two channels as red and green.

    Example:
        >>> to_rgb(np.ones((2, 2, 4))).shape, to_rgb(np.ones((2, 2, 1))).shape
        ((2, 2, 3), (2, 2, 3))
    """
    x = np.asarray(images)
    c = x.shape[-1]
    if c == 3:
        return x
    if c == 1:
        return np.repeat(x, 3, axis=-1)
    if c == 2:
        return np.concatenate([x, np.zeros_like(x[..., :1])], axis=-1)
    return x[..., :3]


def _stretch(tile: np.ndarray) -> np.ndarray:
    """A grey tile stretched to its own 1st-99th percentiles (dim stains become visible)."""
    lo, hi = np.percentile(tile, [1, 99])
    return np.clip((tile - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(tile, dtype=np.float64)


def plot_channels(images: np.ndarray, ids: Any, channels: list[str], path: Path, captions: Any = None) -> Path:
    """One row per image: the first three channels as RGB, then every channel as a grey tile.

    Args:
        images: ``[N, H, W, C]`` uint8 or float in [0, 1].
        ids: N ids (row labels).
        channels: C channel names (column titles).
        path: PNG to write.
        captions: optional N strings (e.g. labels) shown over the RGB view.

    Returns:
        ``path``.
    """
    x = np.asarray(images, dtype=np.float64)
    x = x / 255.0 if np.asarray(images).dtype == np.uint8 else x
    n, c = x.shape[0], x.shape[-1]
    plt = pyplot()
    fig, axes = plt.subplots(n, c + 1, figsize=(1.7 * (c + 1), 1.8 * n), squeeze=False, layout="constrained")
    for r in range(n):
        axes[r][0].imshow(np.clip(to_rgb(x[r]), 0, 1), interpolation="nearest")
        axes[r][0].set_ylabel(str(ids[r])[:16], fontsize=7)
        if captions is not None:
            axes[r][0].set_title(str(captions[r])[:30], fontsize=7)
        for k in range(c):
            axes[r][k + 1].imshow(_stretch(x[r, ..., k]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                axes[r][k + 1].set_title(str(channels[k])[:12], fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    rgb = "/".join(channels[:3]) if c >= 3 else "grey" if c == 1 else "/".join(channels) + "/0"
    fig.suptitle(f"first column: {rgb} as RGB; then each channel (stretched to its 1-99th percentiles)", fontsize=8)
    return save_figure(fig, path)


def plot_class_counts(counts: pd.DataFrame, path: Path) -> Path:
    """Grouped bar chart of :func:`class_counts` (bars = folds, groups = classes).

    Args:
        counts: output of :func:`class_counts`.
        path: PNG to write.

    Returns:
        ``path``.

    Example::

        plot_class_counts(class_counts(idx, classes), Path("class_counts.png"))
    """
    plt = pyplot()
    folds = [c for c in counts.columns if c != "total"]
    n_cls = len(counts)
    width = 0.8 / max(1, len(folds))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * n_cls * max(1, len(folds)) ** 0.5 + 2), 4))
    x = np.arange(n_cls)
    for i, f in enumerate(folds):
        ax.bar(x + (i - (len(folds) - 1) / 2) * width, counts[f].to_numpy(), width, label=f)
    ax.set_xticks(x)
    ax.set_xticklabels([str(c)[:14] for c in counts.index], rotation=45 if n_cls > 8 else 0, ha="right" if n_cls > 8 else "center")
    ax.set_ylabel("examples")
    ax.set_title(f"class counts per fold ({int(counts['total'].sum())} examples)")
    ax.legend(fontsize=8, ncol=min(len(folds), 5))
    return save_figure(fig, path)


def eda_summary(index: pd.DataFrame, manifest: Mapping, source: pd.DataFrame | None = None) -> dict:
    """Numbers behind ``eda.png``.

    Args:
        index: :func:`tfkit.data.read_index` with ``extra=True``.
        manifest: the records' manifest.
        source: :func:`tfkit.records.source_sizes` (the image files' own sizes), or None
            for records built before they were recorded.

    Returns:
        ``{"n_examples", "image_sizes": {"HxW": count}, "source_sizes": {"HxW": count} | None,
        "class_counts": {name: count},
        "metadata": {col: {"kind", "missing", numeric: "min/mean/max" | categorical: "counts"}}}``
        (``image_sizes`` are the stored sizes, ``source_sizes`` those of the files).

    Example::

        eda_summary(read_index("records", extra=True), manifest)["n_examples"]
        1437
    """
    manifest = Manifest.from_dict(manifest)
    classes = manifest.classes
    summary: dict[str, Any] = {
        "n_examples": int(len(index)),
        "image_sizes": _size_counts(index),
        "source_sizes": _size_counts(source) if source is not None else None,
        "class_counts": {name: int(class_counts(index, classes).loc[name, "total"]) for name in classes},
        "metadata": {},
    }
    targets = [t for t in manifest.targets if f"y_{t}" in index]
    if targets:
        summary["targets"] = {t: {"min": float(index[f"y_{t}"].min()), "mean": float(index[f"y_{t}"].mean()),
                                  "max": float(index[f"y_{t}"].max())} for t in targets}
    for col, spec in manifest.metadata.items():
        v = index[col]
        entry: dict[str, Any] = {"kind": spec["kind"], "missing": int(v.isna().sum())}
        if spec["kind"] == "numeric":
            ok = v.dropna()
            if len(ok):
                entry.update(min=float(ok.min()), mean=float(ok.mean()), max=float(ok.max()))
        else:
            entry["counts"] = {str(k): int((v == k).sum()) for k in spec["vocab"]}
        summary["metadata"][col] = entry
    return summary


def _size_counts(frame: pd.DataFrame) -> dict[str, int]:
    sizes = (frame["height"].astype(str) + "x" + frame["width"].astype(str)).value_counts()
    return {k: int(v) for k, v in sizes.items()}


def _plot_sizes(ax: Any, index: pd.DataFrame, summary: dict, source: pd.DataFrame | None) -> None:
    # the files' own sizes beside the stored ones: an input size is chosen from the former
    series = {"stored": (summary["image_sizes"], index)}
    if summary.get("source_sizes") is not None and source is not None:
        series["original"] = (summary["source_sizes"], source)
    labels = list(dict.fromkeys(k for counts, _ in series.values() for k in counts))
    if len(labels) <= MAX_SIZE_BARS:
        width = 0.8 / len(series)
        for k, (name, (counts, _)) in enumerate(series.items()):
            x = np.arange(len(labels)) + (k - (len(series) - 1) / 2) * width
            ax.bar(x, [counts.get(s, 0) for s in labels], width, label=name)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, fontsize=8)
        ax.set_xlabel("size (H x W)")
    else:
        for name, (_, frame) in series.items():
            ax.hist([frame["height"], frame["width"]], bins=30, label=[f"{name} height", f"{name} width"],
                    histtype="step")
        ax.set_xlabel("pixels")
    ax.legend(fontsize=8)
    ax.set_ylabel("images")
    distinct = ", ".join(f"{len(counts)} {name}" for name, (counts, _) in series.items())
    ax.set_title(f"image sizes ({distinct} distinct)", fontsize=9)


def plot_eda(index: pd.DataFrame, manifest: Mapping, summary: dict, path: Path,
             source: pd.DataFrame | None = None) -> Path:
    """Write the EDA panels: image sizes (stored and original), per-class counts, metadata distributions.

    Args:
        index: :func:`tfkit.data.read_index` with ``extra=True``.
        manifest: the records' manifest.
        summary: :func:`eda_summary` of the same index.
        path: PNG to write.
        source: the image files' own sizes (:func:`tfkit.records.source_sizes`), drawn beside
            the stored sizes when given.

    Returns:
        ``path``.

    Example::

        plot_eda(idx, manifest, eda_summary(idx, manifest), Path("eda.png"))
    """
    plt = pyplot()
    manifest = Manifest.from_dict(manifest)
    meta = list(manifest.metadata.items())
    n_panels = 2 + len(meta)
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]

    _plot_sizes(flat[0], index, summary, source)

    ax = flat[1]
    cc = summary["class_counts"]
    if not cc and summary.get("targets"):  # regression: the targets' distributions
        for t in list(summary["targets"])[:4]:
            ax.hist(index[f"y_{t}"].to_numpy(), bins=30, alpha=0.6, label=t[:14])
        ax.legend(fontsize=7)
        ax.set_title(f"targets ({summary['n_examples']} examples)")
        cc = {}
    ax.bar(range(len(cc)), list(cc.values()))
    ax.set_xticks(range(len(cc)))
    ax.set_xticklabels([str(k)[:12] for k in cc], rotation=45 if len(cc) > 8 else 0, fontsize=8)
    if cc:
        ax.set_title(f"examples per class ({summary['n_examples']} total)")

    for ax, (col, spec) in zip(flat[2:], meta):
        entry = summary["metadata"][col]
        if spec["kind"] == "numeric":
            ax.hist(index[col].dropna().to_numpy(), bins=30)
        else:
            counts = entry["counts"]
            ax.bar(range(len(counts)), list(counts.values()))
            ax.set_xticks(range(len(counts)))
            ax.set_xticklabels([k[:12] for k in counts], rotation=45, fontsize=7, ha="right")
        ax.set_title(f"{col} ({spec['kind']}, {entry['missing']} missing)", fontsize=9)
    for ax in flat[n_panels:]:
        ax.axis("off")
    fig.suptitle(f"records EDA: {manifest.split} split", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def show(records: str, cfg: Config, out: str | os.PathLike, n_images: int = 8, n_draws: int = 4) -> list[Path]:
    """Write the augmentation grid, class counts per fold and EDA plots of ``records``.

    Args:
        records: records folder (local or gs://).
        cfg: run config; the grid uses ``cfg.augment``, ``cfg.data.image_size`` and ``cfg.data.seed``.
        out: folder for the files (created; existing files of the same names are replaced).
        n_images: images (rows) in the augmentation grid.
        n_draws: augmentation draws (columns after the original) per image.

    Returns:
        Paths written: ``augment_grid.png``, ``channels.png`` (images with other than 3
        channels), ``class_counts.png`` and ``class_counts.csv`` (records with classes),
        ``eda.png``, ``eda.json``.

    Raises:
        TfkitError: bad ``n_images``/``n_draws``, or unreadable records.

    Example::

        show("records", load_config(None, ["augment.preset=digits"]), "show", n_images=4)
    """
    from tfkit import data, records as records_mod

    if n_images < 1 or n_draws < 0:
        raise TfkitError(f"show: expected --n >= 1 and --draws >= 0, got {n_images} and {n_draws}")
    out = check_out_dir(out, "--out")
    manifest = Manifest.from_dict(check_records(records))
    validate(cfg, manifest)  # the augmentation it draws, and the rest of the config, before any file is written
    out.mkdir(parents=True, exist_ok=True)
    index = data.read_index(records, manifest=manifest, extra=True)
    if index.empty:
        raise TfkitError(f"{records}: the records hold no examples")
    classes = manifest.classes

    paths = [plot_augment_grid(records, cfg, index, manifest, out / "augment_grid.png", n_images, n_draws)]
    channels = manifest.channel_names
    if len(channels) != 3:
        ids = _pick_ids(index, n_images)
        ex = data.load_examples(records, ids, manifest=manifest, image_size=cfg.data.image_size)
        paths.append(plot_channels(ex["image"], ids, channels, out / "channels.png"))
    if classes:
        counts = class_counts(index, classes)
        paths.append(plot_class_counts(counts, out / "class_counts.png"))
        write_csv(out / "class_counts.csv", counts.reset_index())
        paths.append(out / "class_counts.csv")
    try:
        source = records_mod.source_sizes(records)
    except TfkitError:  # records built before the original sizes were recorded
        source = None
    summary = eda_summary(index, manifest, source)
    paths.append(plot_eda(index, manifest, summary, out / "eda.png", source))
    write_json(out / "eda.json", summary)
    paths.append(out / "eda.json")
    return paths
