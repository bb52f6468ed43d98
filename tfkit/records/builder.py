"""The builder: images + CSV -> fold-sharded TFRecords, ``manifest.json`` and ``folds.csv``.

Every example is a ``tf.train.Example`` with ``image`` (JPEG, 3 channels; or one PNG
per channel with ``channels``), ``id``, ``group``, ``label`` (class index, -1 when
unknown; for multi-label records the list of positive class indices) or ``target``
(regression: the list of targets), ``fold`` (-1 for test), ``height``, ``width`` and
``meta/<col>`` (float for numeric columns, NaN when missing; int64 vocab index for
categorical ones, -1 when missing/unknown). ``manifest.json`` holds the task, the class
(or target) names, image format and channels, feature schema, metadata vocabularies,
fold settings and per-shard sha256; ``folds.csv`` holds id,fold; ``sizes.csv`` holds
id,height,width of each image file as it was (upright), before any resizing.

:func:`build_records` runs named steps, each in the module that owns it: validate the
options (:class:`~tfkit.records.spec.BuildSpec`), read the table and find the images
(:mod:`~tfkit.records.table`), resolve classes and labels (:mod:`~tfkit.records.targets`),
assign folds and plan the shards (:func:`plan_layout`), encode examples
(:mod:`~tfkit.records.examples`, :mod:`~tfkit.records.workers`), write shards
(:mod:`~tfkit.records.writer`) and the manifest (:func:`manifest_dict`).

Why it is fast and reproducible:

* Every row is validated, every image path resolved, folds assigned, rows sorted by
  (fold, original row order) and every shard's rows fixed *before* any image is
  read; records are then produced strictly in that order
  (:class:`~tfkit.records.workers.RecordStream`), so the output bytes do not depend
  on ``workers``. With ``skip_bad``, images found unreadable while writing make a
  second pass: folds are assigned again without those rows and the shards rewritten,
  so the records are exactly those of the CSV without them (folds stay balanced over
  what is written).
* Everything is written in a hidden temporary folder beside ``out`` and renamed at
  the end (:func:`tfkit.utils.atomic_dir`): a killed build leaves no folder that looks
  complete, and a re-run succeeds (stale temporary folders of dead builds are removed).
* TensorFlow is never imported (tested): records are framed by
  :mod:`tfkit.records.tfrecord`.

Example (on the exported digits)::

    m = build_records(csv="digits/train.csv", images="digits/images", out="records", size=32)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import sys
from typing import Any, Sequence

from tfkit import __version__
from tfkit import folds as folds_mod
from tfkit.exclude import excluded_rows
from tfkit.records.checksum import crc32c_backend, preloading_crc32c
from tfkit.records.examples import ExampleEncoder
from tfkit.records.metadata import feature_types, metadata_spec
from tfkit.records.shards import FOLDS_FILE, MANIFEST_FILE, SOURCE_SIZES
from tfkit.records.spec import BuildSpec
from tfkit.records.table import MISSING, BadRows, Rows, read_table, read_train_manifest, resolve_rows
from tfkit.records.targets import Targets, resolve_targets, sort_classes
from tfkit.records.workers import EncodeOptions, RecordStream, worker_pool
from tfkit.records.writer import ShardWriter
from tfkit.utils import TfkitError, atomic_dir, write_csv, write_json

__all__ = ["MISSING", "BuildSpec", "build_records", "sort_classes"]


@preloading_crc32c
def build_records(
    csv: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike = "records",
    id_col: str = "id",
    path_col: str | None = None,
    label_col: str | None = "label",
    group_col: str | None = None,
    meta_cols: Sequence[str] | None = None,
    n_folds: int = 5,
    seed: int = 42,
    size: int | None = None,
    quality: int = 95,
    workers: int = 0,
    split: str = "train",
    shard_size: int = 2048,
    skip_bad: bool = False,
    overwrite: bool = False,
    classes_from: str | os.PathLike | None = None,
    verify: str = "decode",
    progress: bool = True,
    label_sep: str | None = None,
    label_cols: Sequence[str] | None = None,
    target_cols: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    exclude: str | os.PathLike | None = None,
    ordinal: bool = False,
) -> dict:
    """Turn a folder of images plus a CSV into fold-sharded TFRecords with a manifest.

    Args:
        csv: CSV with one row per image.
        images: images folder; every image must resolve (symlinks followed) inside it.
        out: output folder (created atomically; a non-empty one needs ``overwrite``).
        id_col: unique id column.
        path_col: column of paths relative to ``images``; without it an image is
            ``<id><ext>`` for the first of ``IMAGE_EXTENSIONS`` present.
        label_col: label column (required for train; optional for test).
        group_col: column kept together in one fold (e.g. patient_id); default the id.
        meta_cols: extra columns stored as ``meta/<col>``: numeric when every
            non-missing value is a number (float, NaN missing), else categorical (vocab index).
        n_folds: number of folds (train).
        seed: fold seed.
        size: square output side: shorter side resized to ``size`` then centre-cropped;
            None keeps the original size.
        quality: JPEG quality for re-encoded images.
        workers: processes that re-encode images, and threads that run ``verify="decode"``
            checks (0 = all cores). Output bytes do not depend on it.
        split: ``"train"`` (labels required, folds assigned) or ``"test"`` (fold -1).
        shard_size: maximum examples per shard (a fold's rows are split evenly).
        skip_bad: skip bad rows (missing/zero-byte/corrupt/non-image file, missing or
            unknown label, escaping path, duplicate id) and list them in ``manifest["skipped"]``.
        overwrite: replace a non-empty ``out``.
        classes_from: test split: the train records' ``manifest.json`` (or folder); gives the
            class list and the metadata vocabularies so indices match the train records.
        verify: integrity check of JPEGs passed through untouched: ``"decode"`` (default,
            reads every byte) or ``"markers"`` (truncation only, ~10x cheaper); see
            :func:`encode_image`. Re-encoded images are always fully decoded.
        progress: show a tqdm progress bar.
        label_sep: multi-label from tags in ``label_col`` separated by this (e.g. ``" "``);
            stored as the list of positive class indices.
        label_cols: multi-label from one 0/1 column per class (the classes, in this order).
        target_cols: regression on these numeric columns (several: a distribution target);
            stored as a float list ``target``.
        channels: each image is one grey file per channel, ``<id>_<channel>.<ext>``, stored
            losslessly as one PNG per channel (8- or 16-bit as the files are).
        exclude: CSV listing ids to leave out (e.g. ``tfkit clean``'s ``flagged.csv``); every
            listed id must be in ``csv``. The records equal a build from the CSV without those rows.
        ordinal: the classes are ordered grades, in the manifest's class order (natural
            sort: "2" before "10"); recorded as ``"ordinal": true``, it lets training
            report quadratic weighted kappa.

    Returns:
        The manifest dict (also written to ``out/manifest.json``).

    Raises:
        TfkitError: one line naming the row or file at fault.

    Example (on the exported digits, ``tfkit datasets export digits --out digits``)::

        m = build_records("digits/train.csv", "digits/images", "records", size=32, n_folds=5)
        m["classes"], [s["file"] for s in m["shards"]][:1]
        # (['0', '1', ...], ['train00-000-288.tfrec'])
    """
    spec = BuildSpec(
        csv=csv, images=images, out=out, id_col=id_col, path_col=path_col, label_col=label_col,
        group_col=group_col, meta_cols=meta_cols, n_folds=n_folds, seed=seed, size=size, quality=quality,
        workers=workers, split=split, shard_size=shard_size, skip_bad=skip_bad, overwrite=overwrite,
        classes_from=classes_from, verify=verify, progress=progress, label_sep=label_sep,
        label_cols=label_cols, target_cols=target_cols, channels=channels, exclude=exclude, ordinal=ordinal,
    )
    train_manifest = read_train_manifest(spec.classes_from)
    spec = spec.with_train_manifest(train_manifest)
    frame = read_table(spec)
    targets = resolve_targets(spec, frame, train_manifest)
    bad = BadRows(spec.csv, spec.skip_bad)
    skip = () if spec.exclude is None else excluded_rows(spec.exclude, frame[spec.id_col], spec.id_col, spec.csv)
    rows = resolve_rows(spec, frame, targets.errors, bad, skip=skip)
    n_workers = spec.n_workers(len(rows.keep))
    # Waits for the preloading thread: before forking (a thread inside dlopen at fork
    # time can deadlock the child) and before the progress bar writes to stderr.
    crc32c_backend()
    with atomic_dir(spec.out, overwrite=spec.overwrite) as tmp, contextlib.ExitStack() as stack:
        pool = worker_pool(n_workers, stack)
        bar = _progress_bar(spec, len(rows.keep), stack)
        writer = ShardWriter(tmp, stack)
        while True:  # once, or again without the images found bad (--skip-bad)
            layout = plan_layout(spec, frame, targets, rows, train_manifest)
            stream = RecordStream(layout.order, layout.rows.paths, layout.encoder.record,
                                  EncodeOptions(spec.size, int(spec.quality), spec.verify), n_workers, pool, stack)
            written = write_shards(spec, layout, stream, writer, bad, bar)
            if not spec.train or not written.bad_rows or len(written.bad_rows) == len(rows.keep):
                break
            # The folds were balanced counting images that turned out to be unreadable:
            # balance them again without those rows and write the shards again, so the
            # records are exactly those of the CSV without them (a second pass, only then).
            rows = rows.without(written.bad_rows)
            _restart(tmp, bar, spec, len(written.bad_rows), len(rows.keep))
        bar.close()
        if not written.shards:
            raise TfkitError(f"CSV {spec.csv}: every image was bad; nothing to write")
        manifest = manifest_dict(spec, targets, layout, written, bad)
        write_csv(tmp / FOLDS_FILE, _table(written.ids, ["id", "fold"]))
        write_csv(tmp / SOURCE_SIZES, _table(written.source_sizes, ["id", "height", "width"]))
        write_json(tmp / MANIFEST_FILE, manifest)
    if spec.progress:
        print(f"wrote {manifest['n_examples']} examples in {len(written.shards)} shards to {spec.out}"
              + (f" ({len(bad.skipped)} bad rows skipped)" if bad.skipped else ""), file=sys.stderr)
    return manifest


def _progress_bar(spec: BuildSpec, total: int, stack: contextlib.ExitStack) -> Any:
    from tqdm.auto import tqdm

    return stack.enter_context(tqdm(total=total, unit="img", desc="build-records", disable=not spec.progress))


def _restart(tmp: Any, bar: Any, spec: BuildSpec, n_bad: int, n_rows: int) -> None:
    for p in tmp.iterdir():
        p.unlink()
    if spec.progress:
        bar.write(f"tfkit: {n_bad} unreadable image(s) skipped; assigning folds without them "
                  "and writing the shards again", file=sys.stderr)
    bar.reset(total=n_rows)


def _table(rows: list[tuple], columns: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What is fixed before any image is read.

    Attributes:
        rows: the rows laid out; a position indexes its lists.
        ids, groups: per position.
        folds: int64 fold per position (-1 for the test split).
        meta_spec: the metadata columns' specs, over these rows.
        plan: ``(fold, shard index, positions)`` of every shard, in file order.
        encoder: frames each position's record.
    """

    rows: Rows
    ids: list[str]
    groups: list[str]
    folds: Any
    meta_spec: dict[str, dict]
    plan: list[tuple[int, int, list[int]]]
    encoder: ExampleEncoder

    @property
    def order(self) -> list[int]:
        """Every position, in the order the records are written."""
        return [j for _, _, positions in self.plan for j in positions]


def plan_layout(spec: BuildSpec, frame: Any, targets: Targets, rows: Rows, train_manifest: dict | None) -> Layout:
    """Assign folds, take the metadata statistics and plan the shards of ``rows``."""
    sub = frame.iloc[rows.keep].reset_index(drop=True)
    ids = [v.strip() for v in sub[spec.id_col].tolist()]
    groups = [g.strip() for g in sub[spec.group_col].tolist()] if spec.group_col else list(ids)
    labels = targets.of(rows.keep)
    folds = assign_row_folds(spec, ids, targets.kind, labels, len(targets.classes), groups)
    meta_spec = metadata_spec(sub, spec.meta_cols, (train_manifest or {}).get("metadata"))
    meta = {c: sub[c].tolist() for c in spec.meta_cols}
    encoder = ExampleEncoder(ids, groups, labels, folds, meta, meta_spec, targets.kind)
    return Layout(rows, ids, groups, folds, meta_spec, plan_shards(folds, spec.shard_size), encoder)


def assign_row_folds(spec: BuildSpec, ids: list[str], kind: str, labels: Sequence[Any], n_classes: int,
                     groups: list[str]) -> Any:
    """The fold of each row (train: stratified by its labels, groups kept together; test: -1).

    Single-label rows go to :func:`tfkit.folds.assign_folds` (classes, groups, group sizes),
    multi-label rows to :func:`tfkit.folds.multilabel_folds` (iterative stratification with
    groups isolated), regression rows to :func:`tfkit.folds.regression_folds` (quantile bins
    of every target column).

    Raises:
        TfkitError: more folds than groups.
    """
    import numpy as np
    import pandas as pd

    if not spec.train:
        return np.full(len(ids), -1, np.int64)
    n_groups = len(set(groups))
    if spec.n_folds > n_groups:
        raise TfkitError(f"--folds {spec.n_folds} exceeds the number of groups ({n_groups}) in {spec.csv}")
    if kind == "multilabel":
        folds = folds_mod.multilabel_folds([list(row) for row in labels], spec.n_folds, groups=groups,
                                           seed=spec.seed, n_classes=n_classes)
    elif kind == "regression":
        folds = folds_mod.regression_folds(np.asarray([list(row) for row in labels], dtype=np.float64),
                                           spec.n_folds, groups=groups, seed=spec.seed)
    else:
        fold_frame = pd.DataFrame({"id": ids, "label": list(labels), "group": groups})
        # n_bins=0: class indices are categories; with > 50 classes assign_folds would
        # otherwise read them as a numeric target and bin index ranges.
        folds = folds_mod.assign_folds(fold_frame, spec.n_folds, "label", "group", seed=spec.seed, n_bins=0)
    return np.asarray(folds, dtype=np.int64)


def plan_shards(folds: Any, shard_size: int) -> list[tuple[int, int, list[int]]]:
    """Each fold's positions (in row order) split evenly into ``ceil(n / shard_size)`` shards.

    Example:
        >>> plan_shards([1, 0, 1, 1], 2)
        [(0, 0, [1]), (1, 0, [0, 2]), (1, 1, [3])]
    """
    import numpy as np

    plan: list[tuple[int, int, list[int]]] = []
    for f in sorted({int(f) for f in folds}):
        positions = [j for j, fj in enumerate(folds) if fj == f]
        n_shards = math.ceil(len(positions) / shard_size)
        for s, chunk in enumerate(np.array_split(np.array(positions, dtype=np.int64), n_shards)):
            plan.append((f, s, chunk.tolist()))
    return plan


@dataclasses.dataclass
class Written:
    """What one pass over the shard plan wrote."""

    shards: list[dict] = dataclasses.field(default_factory=list)
    sizes: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # stored (height, width)
    n_passed: int = 0  # images stored byte-for-byte
    ids: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (id, fold) in file order
    bit_depth: int = 8  # of channel PNGs: 16 when any is
    source_sizes: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (id, height, width)
    bad_rows: set[int] = dataclasses.field(default_factory=set)  # CSV rows whose image could not be read


def write_shards(spec: BuildSpec, layout: Layout, stream: RecordStream, writer: ShardWriter, bad: BadRows,
                 bar: Any) -> Written:
    """Write every shard of ``layout.plan`` from ``stream``; unreadable images go to ``bad``.

    Raises:
        TfkitError: an unreadable image without ``skip_bad``.
    """
    written = Written()
    records = iter(stream)
    for fold, shard, positions in layout.plan:
        with writer.open(spec.split, fold, shard) as out:
            for _ in positions:
                res = next(records)
                bar.update(1)
                if res.error is not None:
                    i = layout.rows.keep[res.row]
                    bad.report(i, layout.ids[res.row], layout.rows.paths[res.row], res.error)
                    written.bad_rows.add(i)
                    continue
                out.add(res.data)
                written.sizes.add((res.height, res.width))
                written.n_passed += bool(res.passed)
                written.bit_depth = max(written.bit_depth, res.bit_depth)
                written.ids.append((layout.ids[res.row], int(layout.folds[res.row])))
                written.source_sizes.append((layout.ids[res.row], res.source_height, res.source_width))
            info = out.close()
        if info is not None:
            written.shards.append(info)
    return written


def manifest_dict(spec: BuildSpec, targets: Targets, layout: Layout, written: Written, bad: BadRows) -> dict:
    """The ``manifest.json`` of a build: classes, image format, features, metadata, folds, shards.

    Single-label RGB builds keep exactly the keys they always had; other tasks add
    ``targets`` (regression) and label columns, multi-channel images their channel names.
    """
    manifest = {
        "tfkit_version": __version__,
        "split": spec.split,
        "n_examples": int(sum(s["count"] for s in written.shards)),
        "classes": targets.classes,
        "task": targets.task,
        **({"targets": targets.names} if targets.kind == "regression" else {}),
        "image": _image_entry(spec, written),
        "features": _features(spec, targets, layout),
        "metadata": layout.meta_spec,
        "folds": {
            "n_folds": int(spec.n_folds) if spec.train else 0,
            "method": FOLD_METHODS[targets.kind] if spec.train else None,
            "seed": int(spec.seed), "label_col": targets.label_col, "group_col": spec.group_col,
        },
        "shards": written.shards,
        "skipped": bad.sorted(),
        "columns": {"id": spec.id_col, "label": targets.label_col, "group": spec.group_col, "path": spec.path_col},
        "source": {"csv": str(spec.csv), "images": str(spec.images),
                   **({"exclude": str(spec.exclude)} if spec.exclude is not None else {})},
    }
    given = {"label_sep": spec.label_sep, "label_cols": list(spec.label_cols), "target_cols": list(spec.target_cols)}
    manifest["columns"].update({k: v for k, v in given.items() if v})
    if spec.ordinal:
        manifest["ordinal"] = True  # only when declared: other manifests keep their bytes
    return manifest


FOLD_METHODS = {
    "single": "tfkit.folds.assign_folds (triple-stratified: groups, classes, group sizes)",
    "multilabel": "tfkit.folds.multilabel_folds (iterative stratification, groups isolated)",
    "regression": "tfkit.folds.regression_folds (quantile bins of every target, groups isolated)",
}


def _image_entry(spec: BuildSpec, written: Written) -> dict:
    sizes = written.sizes
    entry = {
        "size": [spec.size, spec.size] if spec.size else (list(next(iter(sizes))) if len(sizes) == 1 else None),
        "channels": len(spec.channels) or 3,
        "format": "png" if spec.channels else "jpeg",
        "quality": None if spec.channels else int(spec.quality),
        "resize": "shorter side to size, centre crop" if spec.size else None,
        "passed_through": int(written.n_passed),
        "verify": spec.verify,
    }
    if spec.channels:
        entry.update(channel_names=list(spec.channels), bit_depth=written.bit_depth)
    return entry


def _features(spec: BuildSpec, targets: Targets, layout: Layout) -> dict[str, str]:
    label = {"single": {"label": "int64"}, "multilabel": {"label": "int64_list"},
             "regression": {"target": "float32_list"}}[targets.kind]
    return {"image": "bytes_list" if spec.channels else "bytes", "id": "bytes", "group": "bytes", **label,
            "fold": "int64", "height": "int64", "width": "int64", **feature_types(layout.meta_spec)}
