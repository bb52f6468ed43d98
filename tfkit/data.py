"""tf.data pipelines from fold-sharded TFRecords (`tfkit.records` format).

Training streams are built for throughput: shard files are read in parallel
with an order-ignoring ``interleave``, examples are shuffled (seeded) and
repeated, batched with ``drop_remainder=True`` so every tensor has a static
shape (XLA/TPU), and augmented *per batch* with :func:`tfkit.augment.augment_batch`
compiled by XLA (:func:`tfkit.augment.batch_augmenter`; 3-4x faster on the host
than the same graph run op by op). Each batch's augmentation seed is derived from
``(cfg.data.seed, batch index)``, so the augmentation stream for a seed does not
depend on how many workers the pipeline runs.

Parallelism is fixed, not autotuned: JPEG decoding runs :data:`DECODE_CALLS`
examples at a time (one per core), the batch-level augmentation
:data:`BATCH_CALLS` batches at a time, and :data:`PREFETCH` batches are buffered.
``tf.data`` autotuning is switched off because, on the host, its buffers grew to
GBs while an iterator sat idle and it causes the iterator-destroy stall below
(see :func:`pipeline_options`).

Evaluation and prediction streams are deterministic: shard files sorted,
a fixed-width deterministic interleave, no shuffle, no repeat, the last
partial batch kept, and :func:`read_index` returns the ids in exactly the
order the examples come out, so predictions line up with ids.

Images enter models as float32 in [0, 1], shape ``[B, S, S, 3]`` with
``S = cfg.data.image_size``. Targets are one-hot for multiclass/multilabel
(so mixup/cutmix can mix them) and ``[B, 1]`` for binary/regression.

**Iterator-destroy stall.** In TF 2.21 with autotune on, destroying a tf.data
iterator can block for seconds; ``model.fit(ds, epochs=N)`` makes a new
iterator per epoch and pays it every epoch. Train on the repeated stream
(``repeat=True``, the default) with ``steps_per_epoch=steps_per_epoch(...)``.

Example::

    cfg = load_config(None, ["data.image_size=32", "data.batch_size=16"])
    train_ds = build_dataset("records", cfg, folds=[1, 2, 3, 4], mode="train")
    val_ds = build_dataset("records", cfg, folds=[0], mode="eval")
    model.fit(train_ds, epochs=5, validation_data=val_ds,
              steps_per_epoch=steps_per_epoch("records", [1, 2, 3, 4], 16))
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from tfkit import augment as _augment
from tfkit import records as _records
from tfkit.config import Config
from tfkit.manifest import TASKS, Manifest, resolve_task
from tfkit.utils import TfkitError

MODES = ("train", "eval", "predict")
# Eval/predict read this many shards at once, deterministically: a fixed width
# (never AUTOTUNE, which depends on the machine's core count) keeps the example
# order identical on every machine.
EVAL_CYCLE = 4
TRAIN_CYCLE = 16
# Fixed parallelism (autotune is off, see the module docstring): one decode call
# per core; two batches in flight in the XLA augmentation so one batch's
# per-call overhead overlaps the other's work; two batches ready ahead of the model.
DECODE_CALLS = max(1, os.cpu_count() or 1)
BATCH_CALLS = 2
PREFETCH = 2

__all__ = [
    "build_dataset",
    "read_index",
    "steps_per_epoch",
    "metadata_dim",
    "encode_targets",
    "select_files",
    "load_examples",
    "pipeline_options",
]


# --------------------------------------------------------------------------- helpers


def _manifest(records: str, manifest: Mapping | None) -> Manifest:
    return Manifest.from_dict(manifest if manifest is not None else _records.load_manifest(records))


def encode_targets(labels: tf.Tensor, task: str, num_classes: int) -> tf.Tensor:
    """Labels as stored -> float32 targets of the contract's shape.

    Args:
        labels: an int class index (-1 = unknown gives an all-zero row), or a
            float vector as multi-label and regression records store it
            (multi-hot ``[C]``, targets ``[T]``).
        task: one of :data:`TASKS`.
        num_classes: number of classes.

    Returns:
        float32 ``[..., C]`` (one-hot) for multiclass, the multi-hot ``[..., C]``
        for multilabel, ``[..., 1]`` for binary and regression on grades,
        ``[..., T]`` targets for regression (never one-hot), histograms
        normalised to sum to 1 for distribution (so mixup mixes distributions).

    Example:
        >>> encode_targets(tf.constant([2, 0]), "multiclass", 3).numpy().tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
        >>> encode_targets(tf.constant([2.0, 6.0]), "distribution", 2).numpy().tolist()
        [0.25, 0.75]
    """
    if task not in TASKS:
        raise TfkitError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if labels.dtype.is_floating:  # a stored vector: multi-hot or numeric targets
        y = tf.cast(labels, tf.float32)
        if task == "distribution":
            y = y / tf.maximum(tf.reduce_sum(y, axis=-1, keepdims=True), 1e-12)
        return y
    if task in ("multiclass", "multilabel"):
        return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    if task in ("binary", "regression"):
        return tf.cast(labels, tf.float32)[..., None]
    raise TfkitError(f"task {task} needs records with a vector of targets, these store a class index")


def metadata_dim(manifest: dict, names: Sequence[str]) -> int:
    """Width of the raw ``meta`` input: one value per column fed to the model.

    The values are raw (numeric as float, NaN when missing; categorical as the
    manifest vocabulary index, -1 when missing): the model's
    :class:`tfkit.metadata.MetadataEncoder` encodes them with statistics of its
    fold's training rows, so no statistic of a validation fold reaches training.

    Args:
        manifest: the records' manifest.
        names: metadata columns fed to the model (``cfg.data.metadata``).

    Returns:
        The last dimension of the float32 ``meta`` tensor (0 when ``names`` is empty).

    Example:
        >>> m = {"metadata": {"age": {"kind": "numeric", "mean": 50, "std": 10},
        ...                   "site": {"kind": "categorical", "vocab": ["head", "torso", "leg"]}}}
        >>> metadata_dim(m, ["age", "site"])
        2
    """
    return len(Manifest.from_dict(manifest).metadata_columns(names))


def _meta_raw(manifest: dict, names: Sequence[str]) -> Callable[[dict], tf.Tensor]:
    """Per-example raw metadata ``[len(names)]`` float32: numeric as stored (NaN missing),
    categorical as the vocabulary index (-1 missing)."""
    cols = [name for name, _ in Manifest.from_dict(manifest).metadata_columns(names)]

    def raw(meta: dict) -> tf.Tensor:
        return tf.stack([tf.cast(tf.reshape(meta[name], []), tf.float32) for name in cols])

    return raw


def select_files(records: str, folds: Sequence[int] | None = None, manifest: dict | None = None) -> list[str]:
    """The sorted shard files of the chosen folds (local path or gs://).

    Args:
        records: records folder.
        folds: fold numbers to read; None reads every shard of the split.
        manifest: the loaded manifest (read from ``records`` when None).

    Returns:
        Sorted list of shard paths.

    Raises:
        TfkitError: a fold is out of range, or no shard matches.

    Example::

        select_files("records", folds=[0])
        ['records/train00-000-360.tfrec']
    """
    manifest = _manifest(records, manifest)
    split = manifest.split
    if folds is not None:
        folds = [int(f) for f in folds]
        if split != "train":
            raise TfkitError(f"{records}: folds={folds} asked of {split} records, which have no folds")
        n_folds = manifest.n_folds
        bad = [f for f in folds if not 0 <= f < n_folds]
        if bad:
            raise TfkitError(f"{records}: fold(s) {bad} out of range, the records have folds 0..{n_folds - 1}")
    files = sorted(_records.shard_files(records, folds=folds, split=split))
    if not files:
        raise TfkitError(f"{records}: no {split} shard files for folds={folds}")
    return files


def steps_per_epoch(records: str, folds: Sequence[int] | None, global_batch: int) -> int:
    """Full batches per epoch of the training stream (``drop_remainder=True``), from shard names.

    Args:
        records: records folder.
        folds: folds trained on (None: all).
        global_batch: batch size summed over replicas.

    Returns:
        ``n_examples // global_batch`` (at least 1).

    Raises:
        TfkitError: the folds hold fewer examples than one batch.

    Example::

        steps_per_epoch("records", [1, 2, 3, 4], 64)
        22
    """
    n = _records.count_from_names(select_files(records, folds))
    if n < global_batch:
        raise TfkitError(f"{records}: folds {folds} hold {n} examples, fewer than one batch of {global_batch}")
    return n // global_batch


# --------------------------------------------------------------------------- reading


def _examples(files: list[str], parse: Callable, train: bool, seed: int, deterministic: bool) -> tf.data.Dataset:
    """Parsed (not decoded) examples of ``files``."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if train:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        cycle = min(len(files), TRAIN_CYCLE)
    else:
        cycle = min(len(files), EVAL_CYCLE)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle, block_length=1, num_parallel_calls=min(cycle, DECODE_CALLS),
        deterministic=deterministic or not train,
    )
    return ds.map(parse, num_parallel_calls=DECODE_CALLS, deterministic=deterministic or not train)


def _decoder(manifest: Manifest, image_size: int) -> Callable[[dict], dict]:
    size = manifest.image_size
    channels = manifest.n_channels
    decode_image = _records.make_image_decoder(manifest)

    def decode(ex: dict) -> dict:
        ex = dict(ex)
        image = decode_image(ex["image"])
        if image.dtype == tf.uint16:
            # 16-bit channels keep their precision as float32 in [0, 1] (the pipeline takes uint8 or float32).
            image = tf.cast(image, tf.float32) / 65535.0
        if size:
            # A static shape from the manifest; a shard that disagrees fails loudly here.
            image = tf.ensure_shape(image, [int(size[0]), int(size[1]), channels])
        else:
            # Sizes vary: one resize per example so examples can be batched; kept
            # uint8 so shuffle buffers and caches stay 4x smaller than float.
            resized = tf.image.resize(image, [image_size, image_size], antialias=True)
            if image.dtype == tf.uint8:
                resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
            image = tf.ensure_shape(resized, [image_size, image_size, channels])
        ex["image"] = image
        return ex

    return decode


def _stored_shape(image: tf.Tensor) -> tf.Tensor:
    """``[height, width]`` of a stored image from its header, without decoding:
    a JPEG's SOF, or for multi-channel records the first channel PNG's IHDR."""
    if image.shape.rank == 0:
        return tf.io.extract_jpeg_shape(image)[:2]
    wh = tf.io.decode_raw(tf.strings.substr(image[0], 16, 8), tf.int32, little_endian=False)
    return tf.stack([wh[1], wh[0]])


def _balanced(ds: tf.data.Dataset, labels: np.ndarray, num_classes: int, seed: int, buffer: int) -> tf.data.Dataset:
    """Infinite class-balanced stream: uniform over the classes present."""
    present = [c for c in range(num_classes) if np.any(labels == c)]
    if not present:
        raise TfkitError("data.oversample: no labelled examples in the chosen folds")
    streams = []
    for c in present:
        n_c = int(np.sum(labels == c))
        s = ds.filter(lambda ex, c=c: tf.equal(ex["label"], c))
        streams.append(s.shuffle(min(buffer, n_c), seed=seed + 1 + c, reshuffle_each_iteration=True).repeat())
    weights = [1.0 / len(present)] * len(present)
    return tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=seed)


def read_index(
    records: str,
    folds: Sequence[int] | None = None,
    manifest: dict | None = None,
    extra: bool = False,
) -> pd.DataFrame:
    """The examples' ids in exactly the order eval/predict datasets yield them.

    Args:
        records: records folder (local or gs://).
        folds: folds to read (None: all).
        manifest: the loaded manifest (read from ``records`` when None).
        extra: also return ``height``, ``width`` (of the stored JPEG, read from
            its header without decoding) and one column per metadata feature
            (numeric as float with NaN when missing, categorical as the vocab
            string or None).

    Returns:
        DataFrame with columns id, label, fold, group (+ extras), one row per example.
        Records with a label vector add one ``y_<name>`` column per class
        (multi-label, 0/1) or target (regression); ``label`` then holds the
        space-separated tags or the first target.

    Example::

        idx = read_index("records", folds=[0])
        proba = model.predict(build_dataset("records", cfg, [0], mode="eval"))
        idx["p"] = proba[:, 1]  # row i of proba is idx.id[i]
    """
    manifest = _manifest(records, manifest)
    files = select_files(records, folds, manifest)
    parse = _records.make_parser(manifest)
    meta_cols = list(manifest.metadata) if extra else []

    def slim(ex: dict) -> dict:
        out = {"id": ex["id"], "label": ex["label"], "fold": ex["fold"], "group": ex["group"]}
        if extra:
            shape = _stored_shape(ex["image"])
            out["height"], out["width"] = shape[0], shape[1]
            for c in meta_cols:
                out[f"meta/{c}"] = ex["meta"][c]
        return out

    ds = _examples(files, parse, train=False, seed=0, deterministic=True).map(slim).batch(4096)
    cols: dict[str, list] = {}
    total = math.ceil(_records.count_from_names(files) / 4096)
    for batch in tqdm(ds.as_numpy_iterator(), total=total, desc="read index", leave=False, disable=total < 3):
        for k, v in batch.items():
            cols.setdefault(k, []).append(v)
    if not cols:
        return pd.DataFrame(columns=["id", "label", "fold", "group"])
    data = {k: np.concatenate(v) for k, v in cols.items()}
    frame = pd.DataFrame({
        "id": [b.decode("utf-8") for b in data["id"]],
        "label": _label_column(data["label"], manifest),
        "fold": data["fold"].astype(np.int64),
        "group": [b.decode("utf-8") for b in data["group"]],
    })
    if data["label"].ndim == 2:
        names = _vector_names(manifest)
        for j, name in enumerate(names):
            frame[f"y_{name}"] = data["label"][:, j].astype(np.float64)
    if extra:
        frame["height"] = data["height"].astype(np.int64)
        frame["width"] = data["width"].astype(np.int64)
        for c in meta_cols:
            spec = manifest.metadata[c]
            v = data[f"meta/{c}"]
            if spec["kind"] == "numeric":
                frame[c] = v.astype(np.float64)
            else:
                vocab = spec["vocab"]
                frame[c] = [vocab[i] if 0 <= i < len(vocab) else None for i in v.astype(np.int64)]
    return frame


def _vector_names(manifest: dict) -> list[str]:
    """Names of the label vector's entries: the classes of multi-label records, the target columns of regression ones."""
    manifest = Manifest.from_dict(manifest)
    return manifest.classes if manifest.kind == "multilabel" else manifest.targets


def _label_column(labels: np.ndarray, manifest: dict) -> Any:
    """``label`` of the index: the class index, or for vector labels the tags
    (multi-label, space-separated) or the first target (regression)."""
    if labels.ndim == 1:
        return labels.astype(np.int64)
    if Manifest.from_dict(manifest).kind == "multilabel":
        names = _vector_names(manifest)
        return [" ".join(n for n, v in zip(names, row) if v > 0.5) for row in labels]
    return labels[:, 0].astype(np.float64)


def load_examples(
    records: str,
    ids: Sequence[str],
    manifest: dict | None = None,
    image_size: int = 32,
) -> dict[str, np.ndarray]:
    """Decoded images of the examples with the given ids (for plots and inspection).

    Args:
        records: records folder (local or gs://).
        ids: example ids to fetch; every one must exist in the records.
        manifest: the loaded manifest (read from ``records`` when None).
        image_size: side used only when stored sizes vary (images are then
            resized per example, as the training pipeline does).

    Returns:
        ``{"image": uint8 [n, H, W, C], "label": int64 [n] (float [n, K] for vector labels), "id": str [n]}``
        in the order of ``ids``.

    Raises:
        TfkitError: an id is not in the records.

    Example::

        ex = load_examples("records", ["img_0001", "img_0002"])
        ex["image"].shape
        (2, 32, 32, 3)
    """
    manifest = _manifest(records, manifest)
    wanted = [str(i) for i in ids]
    if not wanted:
        raise TfkitError("load_examples: no ids given")
    files = select_files(records, None, manifest)
    table = tf.constant(wanted)
    ds = _examples(files, _records.make_parser(manifest), train=False, seed=0, deterministic=True)
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["id"], table)))
    ds = ds.map(_decoder(manifest, image_size), num_parallel_calls=DECODE_CALLS, deterministic=True)
    found: dict[str, tuple[np.ndarray, int]] = {}
    for ex in ds.map(lambda ex: {"image": ex["image"], "label": ex["label"], "id": ex["id"]}).as_numpy_iterator():
        found.setdefault(ex["id"].decode("utf-8"), (ex["image"], ex["label"]))
    missing = [i for i in wanted if i not in found]
    if missing:
        raise TfkitError(f"{records}: id(s) not found in the records: {missing[:5]}")
    return {
        "image": np.stack([found[i][0] for i in wanted]),
        "label": np.stack([np.asarray(found[i][1]) for i in wanted]),
        "id": np.array(wanted),
    }


# --------------------------------------------------------------------------- datasets


def _check_request(mode: str, pad_remainder: bool, with_ids: bool, augment_on: str) -> None:
    """The argument checks of :func:`build_dataset` that need no records."""
    if mode not in MODES:
        raise TfkitError(f"build_dataset: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if pad_remainder and (mode == "train" or with_ids):
        raise TfkitError("build_dataset: pad_remainder is for eval/predict batches without ids")
    if augment_on not in ("host", "device"):
        raise TfkitError(f"data.augment_on: expected host or device, got {augment_on!r}")


def _batchable(task: str | None, num_classes: int, mix: Callable | None, encode_meta: Callable | None) -> Callable:
    """The per-example map to what is batched: image, id, encoded target ``y`` (teacher-mixed), metadata."""

    def to_batchable(ex: dict) -> dict:
        out = {"image": ex["image"], "id": ex["id"]}
        out["y"] = encode_targets(ex["label"], task, num_classes) if task else ex["label"]
        if mix is not None:
            out["y"] = mix(ex["id"], out["y"])
        if encode_meta is not None:
            out["meta"] = encode_meta(ex["meta"])
        return out

    return to_batchable


def _shuffled(ds: tf.data.Dataset, records: str, folds: Sequence[int] | None, manifest: Manifest, dcfg: Any,
              targets: Any, repeat: bool) -> tf.data.Dataset:
    """The training stream's order: class-balanced oversampling (``data.oversample``) or a plain shuffle."""
    seed = int(dcfg.seed)
    if not dcfg.oversample:
        ds = ds.shuffle(dcfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return ds.repeat() if repeat else ds
    if manifest.kind != "single":
        raise TfkitError(f"data.oversample balances single-label classes; these records are {manifest.kind}")
    labels = read_index(records, folds, manifest)["label"].to_numpy()
    if targets is not None:
        labels = np.concatenate([labels, targets.pseudo_labels])
    ds = _balanced(ds, labels, manifest.num_classes, seed, dcfg.shuffle_buffer)
    return ds if repeat else ds.take(len(labels))


def _finisher(augmenter: Callable, host_augment: bool, seed: int, with_meta: bool, mode: str,
              with_ids: bool) -> Callable:
    """The per-batch map: augment (or only resize) the images, then shape the element ``mode`` yields."""

    def finish(step: tf.Tensor, b: dict):
        if host_augment:
            # Stateless per-batch seed: batch i gets the same random parameters
            # whatever the number of parallel workers.
            op_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
            image, y = augmenter(b["image"], b["y"], op_seed)
        else:
            # Resize only: labels stay out of the compiled function.
            image, _ = augmenter(b["image"], None, tf.zeros([2], tf.int64))
            y = b["y"]
        x = {"image": image, "meta": b["meta"]} if with_meta else image
        if mode == "predict":
            return (x, b["id"]) if with_ids else x
        return (x, y, b["id"]) if with_ids else (x, y)

    return finish


def build_dataset(
    records: str,
    cfg: Config,
    folds: Sequence[int] | None = None,
    mode: str = "train",
    manifest: dict | None = None,
    batch_size: int | None = None,
    augment: bool = True,
    repeat: bool = True,
    deterministic: bool = False,
    with_ids: bool = False,
    pad_remainder: bool = False,
    targets: Any = None,
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` over the shards of ``folds``.

    Args:
        records: records folder (local or gs://).
        cfg: the run config; reads ``cfg.data``, ``cfg.augment`` and ``cfg.model.task``.
        folds: folds to read (None: every shard of the split).
        mode: "train" (shuffled, repeated, ``drop_remainder``, augmented),
            "eval" (yields ``(x, y)`` in :func:`read_index` order, last partial batch kept)
            or "predict" (yields ``x`` in the same order).
        manifest: the loaded manifest (read from ``records`` when None).
        batch_size: global batch size (default ``cfg.data.batch_size``).
        augment: train mode: apply ``cfg.augment`` on the host (ignored when
            ``cfg.data.augment_on == "device"``: the model augments, the host only resizes).
        repeat: train mode: repeat forever (train with ``steps_per_epoch``; see the module
            note on the iterator-destroy stall). False gives one epoch
            (with oversampling: as many examples as the folds hold).
        deterministic: train mode: make the whole stream (file order, interleave,
            shuffle, augmentation) a function of ``cfg.data.seed``, at some cost in
            speed. Without it only the augmentation stream is seeded per batch index.
        with_ids: also yield the ids: eval ``(x, y, ids)``, predict ``(x, ids)``,
            train ``(x, y, ids)`` (for inspection; Keras would read a 3rd element as
            sample weights).
        pad_remainder: eval/predict: pad the last partial batch with zero rows to a full
            batch, so every batch has one static shape (one compiled program; a batch
            split over JAX devices must divide by their count). Eval then yields
            ``(x, y, mask)``: Keras reads the float32 0/1 mask as sample weights, so
            padded rows count in no metric; predict yields padded ``x`` (keep the first
            ``len(read_index(...))`` predictions).
        targets: train mode: a ``tfkit.distill.TrainTargets`` view of one fold (teacher soft
            targets mixed into ``y`` by id, confident pseudo-labelled test examples added to
            the stream); ignored by eval/predict, which always yield the hard labels.

    Returns:
        Dataset of ``(x, y)`` (train/eval) or ``x`` (predict), where ``x`` is float32
        ``[B, S, S, 3]`` in [0, 1], or ``{"image": ..., "meta": float32 [B, M]}`` when
        ``cfg.data.metadata`` names M columns (raw values, see :func:`metadata_dim`); ``y`` is float32 ``[B, C]`` or ``[B, 1]``.

    Raises:
        TfkitError: unknown mode, bad folds, missing metadata column, no shards,
            train/eval asked of records without labels.

    Example::

        ds = build_dataset("records", cfg, folds=[1, 2, 3, 4], mode="train")
        x, y = next(iter(ds))
        x.shape, y.shape
        (TensorShape([64, 32, 32, 3]), TensorShape([64, 10]))
    """
    dcfg = cfg.data
    _check_request(mode, pad_remainder, with_ids, dcfg.augment_on)
    manifest = _manifest(records, manifest)
    if mode != "predict" and not manifest.has_labels:
        raise TfkitError(f"{records}: the records hold no labels (built without a label column); "
                         f"mode={mode!r} needs them, use mode='predict'")
    files = select_files(records, folds, manifest)
    train = mode == "train"
    batch = int(batch_size or dcfg.batch_size)
    if batch < 1:
        raise TfkitError(f"data.batch_size: expected a positive integer, got {batch}")
    size = int(dcfg.image_size)
    seed = int(dcfg.seed)
    # Predict needs no targets (and unlabelled test records may have no task).
    task = resolve_task(cfg.model.task, manifest=manifest) if mode != "predict" else None
    num_classes = manifest.num_classes
    meta_names = list(dcfg.metadata or [])
    encode_meta = _meta_raw(manifest, meta_names) if meta_names else None

    ordered = bool(deterministic or not train)
    ds = _examples(files, _records.make_parser(manifest), train, seed, deterministic)
    targets = targets if train else None
    if targets is not None:
        ds = targets.add_examples(ds, _records.count_from_names(files), seed, meta_names)
    mix = targets.mixer() if targets is not None else None  # the id lookup is built here, eagerly
    decode = _decoder(manifest, size)
    to_batchable = _batchable(task, num_classes, mix, encode_meta)
    decoded = False
    if dcfg.cache:
        # Cache after decode (decoding is the costly step), before shuffle, so every
        # epoch reshuffles the cached examples.
        ds = ds.map(decode, num_parallel_calls=DECODE_CALLS, deterministic=ordered).cache()
        decoded = True
    if train:
        ds = _shuffled(ds, records, folds, manifest, dcfg, targets, repeat)
    if decoded:
        ds = ds.map(to_batchable, num_parallel_calls=DECODE_CALLS, deterministic=ordered)
    else:
        # Decoding after the shuffle keeps only encoded JPEG bytes in the shuffle
        # buffer; decode and target encoding share one map (one hop per example).
        ds = ds.map(lambda ex: to_batchable(decode(ex)), num_parallel_calls=DECODE_CALLS, deterministic=ordered)
    ds = ds.batch(batch, drop_remainder=train)

    host_augment = train and augment and dcfg.augment_on == "host"
    # Built once per dataset, outside the map function: one XLA program per
    # input shape (eval compiles a second one for its last partial batch).
    augmenter = _augment.batch_augmenter(cfg.augment if host_augment else None, size)
    finish = _finisher(augmenter, host_augment, seed, encode_meta is not None, mode, with_ids)
    ds = ds.enumerate().map(finish, num_parallel_calls=BATCH_CALLS, deterministic=ordered)
    if pad_remainder:
        ds = ds.map(_pad_to(batch, mode), num_parallel_calls=BATCH_CALLS, deterministic=True)
    if not train:
        # Shard names carry the counts, so the number of batches is known without
        # reading: Keras then sizes its progress bar and stops cleanly instead of
        # running the iterator dry ("Your input ran out of data").
        n = _records.count_from_names(files)
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch)))
    ds = ds.prefetch(PREFETCH)
    # Training ignores example order for speed (unless deterministic); eval keeps it so ids align.
    return ds.with_options(pipeline_options(ordered))


def _pad_to(batch: int, mode: str) -> Callable:
    """A ``map`` function padding a batch with zero rows to ``batch`` rows (eval: plus a 0/1 row mask)."""

    def pad(t: tf.Tensor) -> tf.Tensor:
        rows = batch - tf.shape(t)[0]
        out = tf.pad(t, [[0, rows]] + [[0, 0]] * (t.shape.rank - 1))
        return tf.ensure_shape(out, [batch, *t.shape[1:]])

    def fn(x, y=None):
        n = tf.shape(tf.nest.flatten(x)[0])[0]
        x = tf.nest.map_structure(pad, x)
        if mode == "predict":
            return x
        return x, pad(y), tf.cast(tf.range(batch) < n, tf.float32)

    return fn


def pipeline_options(deterministic: bool) -> tf.data.Options:
    """The ``tf.data`` options of tfkit's batched streams: fixed parallelism, autotune off.

    Autotuning is off because its buffers grew to GBs of RSS on the host while an
    iterator sat idle, and because it causes the TF 2.21 iterator-destroy stall
    (seconds per ``fit`` epoch); parallelism is fixed instead
    (:data:`DECODE_CALLS`, :data:`BATCH_CALLS`, :data:`PREFETCH`).

    Args:
        deterministic: keep element order (eval/predict, or a seeded training stream).

    Returns:
        ``tf.data.Options`` to pass to ``Dataset.with_options``.

    Example:
        >>> pipeline_options(True).autotune.enabled
        False
    """
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    options.autotune.enabled = False
    return options
