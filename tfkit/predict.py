"""Test-time augmentation (TTA) and fold ensembling: trained folds -> submission.

Every image is predicted under ``n_views`` views (dihedral symmetries, flips,
or seeded random augmentation passes). All views of a batch are stacked into
the batch dimension and go through each fold's model in **one** forward pass
inside one compiled function (``tf.function`` on TensorFlow, ``jax.jit`` on JAX); the outputs are reshaped back to
``[views, batch, classes]`` and averaged (arithmetic or geometric mean). Folds
are then averaged with equal weights or weights proportional to each fold's
CV score.

Example::

    from tfkit.predict import predict
    sub = predict("runs/digits", out="submission.csv", records="records/test", tta=4)
    sub.columns[:3].tolist()   # ['id', '0', '1']
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from tfkit.checks import AVERAGES, MAX_VIEWS, TTA_MODES, check_tta, validate  # noqa: F401  (re-exported)
from tfkit.config import Config, PredictConfig, resolve_tta_mode
from tfkit.manifest import Manifest, resolve_task
from tfkit.metrics import lower_is_better
from tfkit.preflight import check_out_dir, check_out_file, check_records
from tfkit.records import IMAGE_EXTENSIONS
from tfkit.run import RunFolder, oof_frame, oof_metrics, primary_metric, recompute_cv_frame
from tfkit.targets import output_names
from tfkit.utils import TfkitError, write_csv

# Image formats the builder reads (Pillow) but tf.io.decode_image cannot: predict them from records.
_TF_CANNOT_DECODE = frozenset({".tif", ".tiff", ".webp"})
# Metrics where a smaller value is better: their fold weight is 1 / score.
_EPS = 1e-7


# --------------------------------------------------------------------------- run folder


def load_run(run: str | os.PathLike, overrides: Iterable[str] = ()) -> tuple[Config, Manifest]:
    """Read a run folder's resolved config (plus ``--set`` overrides) and manifest.

    Args:
        run: folder written by :func:`tfkit.train.train`.
        overrides: ``"predict.tta=8"``-style strings applied on top of ``RUN/config.yaml``.

    Returns:
        ``(cfg, manifest)``.

    Raises:
        TfkitError: the folder, its config or its manifest is missing.

    Example::

        cfg, manifest = load_run("runs/digits", ["predict.average=gmean"])
    """
    overrides = list(overrides)
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not key.startswith("predict."):
            raise TfkitError(f"--set {text}: predict reads only predict.* keys; {key} is fixed by the run's training "
                             "(RUN/config.yaml) and would be ignored")
    return RunFolder(run).load(overrides)


def run_folds(run: str | os.PathLike) -> list[int]:
    """Folds of a run that finished training (``done.json`` and ``model.keras`` exist).

    Args:
        run: run folder.

    Returns:
        Sorted fold indices.

    Raises:
        TfkitError: no fold has finished.

    Example::

        run_folds("runs/digits")   # [0, 1, 2, 3, 4]
    """
    return RunFolder(run).finished_folds()


def load_models(run: str | os.PathLike, folds: Sequence[int] | None = None) -> list[Any]:
    """Load the model of each fold with ``safe_mode=True``.

    Args:
        run: run folder.
        folds: folds to load (default every finished fold).

    Returns:
        Keras models, in the order of ``folds``.

    Example::

        models = load_models("runs/digits", folds=[0, 1])
    """
    folder = RunFolder(run)
    with _strategy().scope():  # on JAX: weights replicated over the devices that share each batch
        return [folder.load_model(k) for k in (folder.finished_folds() if folds is None else folds)]


def _strategy() -> Any:
    """Where prediction runs: on JAX every local device (a batch is split over
    them); on TensorFlow the default strategy (one device)."""
    import keras

    if keras.backend.backend() == "jax":
        from tfkit.strategy import get_strategy

        return get_strategy()
    import tensorflow as tf

    return tf.distribute.get_strategy()


def fold_weights(run: str | os.PathLike, folds: Sequence[int], how: str = "equal") -> np.ndarray:
    """Weights of each fold's model in the ensemble, summing to 1.

    Args:
        run: run folder (``cv.json`` is read for ``how="cv"``).
        folds: the folds being ensembled.
        how: ``"equal"``, or ``"cv"``: proportional to each fold's primary CV metric
            (``1 / score`` for metrics where lower is better, such as log loss).

    Returns:
        float64 array of ``len(folds)`` weights.

    Example::

        fold_weights("runs/digits", [0, 1], "cv")
        array([0.49, 0.51])
    """
    n = len(folds)
    if how == "equal":
        return np.full(n, 1.0 / n)
    if how != "cv":
        raise TfkitError(f"predict.fold_weights: expected 'equal' or 'cv', got {how!r}")
    folder = RunFolder(run)
    path = folder.cv_path
    if not path.is_file():
        raise TfkitError(f"predict.fold_weights=cv needs {path}, which does not exist")
    cv = folder.read_cv()
    primary = cv.get("primary")
    scores = []
    for k in folds:
        fold = (cv.get("folds") or {}).get(str(k)) or {}
        score = fold.get(primary)
        if score is None or not np.isfinite(score):
            raise TfkitError(f"{path}: fold {k} has no finite '{primary}' score for predict.fold_weights=cv")
        scores.append(float(score))
    scores = np.asarray(scores, dtype=np.float64)
    if lower_is_better(primary):
        if np.any(scores <= 0):
            raise TfkitError(f"{path}: '{primary}' must be positive to weight folds by 1/score, got {scores.tolist()}")
        scores = 1.0 / scores
    elif np.any(scores < 0) or scores.sum() <= 0:
        raise TfkitError(f"{path}: '{primary}' scores must be non-negative to weight folds, got {scores.tolist()}")
    return scores / scores.sum()


# --------------------------------------------------------------------------- TTA core


TTA_MAGNITUDE = 0.5  # augment-mode TTA views use half the training magnitudes


def _tta_augment_config(aug_cfg: Any) -> Any:
    """The training augmentation, tamed for test-time views.

    TTA averages plausible views of one image: mixup/cutmix would blend two
    test images, and cutout, noise and blur only destroy evidence the model
    needs, so they are off; geometric and colour magnitudes are halved (full
    training strength is tuned to regularise, and at test time it costs
    accuracy: on the digits demo full-strength views lowered OOF accuracy).
    """
    m = TTA_MAGNITUDE
    return dataclasses.replace(
        aug_cfg, mixup_p=0.0, cutmix_p=0.0, cutout_p=0.0, noise_p=0.0, blur_p=0.0,
        rotate=aug_cfg.rotate * m, shear=aug_cfg.shear * m, zoom=aug_cfg.zoom * m, shift=aug_cfg.shift * m,
        hue=aug_cfg.hue * m, saturation=aug_cfg.saturation * m, contrast=aug_cfg.contrast * m,
        brightness=aug_cfg.brightness * m,
    )


def _views(images, n_views: int, mode: str, aug_cfg: Any, seed, seed_rows: int | None = None):
    """``[n_views, B, H, W, C]`` views of a batch; view 0 is always the identity.

    ``dihedral``, ``flips``, ``five_crop`` (the full image, then the centre and
    four corner crops of 0.875 of the side, resized back: up to 6 views) and
    ``ten_crop`` (those and their mirrors: up to 12) are
    :func:`tfkit.augment.tta_views`; crops resample like training
    (``aug_cfg.interpolation``). ``augment`` draws seeded augmentation passes,
    per block of ``seed_rows`` rows: batch ``i`` of ``R`` blocks seeds block ``r``
    as block ``i * R + r`` of the whole stream, so an image gets the same views
    whether its batch holds one device's rows or several devices' (the draws
    themselves are equal on both backends: :mod:`tfkit.augment.draws`).
    """
    from keras import ops

    from tfkit import augment

    if mode != "augment":
        interpolation = aug_cfg.interpolation if aug_cfg is not None else "nearest"
        return augment.tta_views(images, n_views, mode=mode, interpolation=interpolation)
    views = [images]
    size, rows = int(images.shape[1]), int(images.shape[0])
    block = seed_rows if seed_rows and rows % seed_rows == 0 else rows
    blocks = rows // block
    seed = ops.cast(seed, "int32")
    for v in range(1, n_views):
        parts = []
        for r in range(blocks):
            view_seed = ops.stack([seed[0], (seed[1] * blocks + r) * n_views + v])
            aug, _ = augment.augment_batch(images[r * block:(r + 1) * block], None, aug_cfg, size, view_seed)
            parts.append(ops.cast(aug, images.dtype))
        views.append(parts[0] if blocks == 1 else ops.concatenate(parts, axis=0))
    return ops.stack(views, axis=0)


def _average_views(out, average: str, multiclass: bool):
    """Average ``[V, B, C]`` model outputs over views."""
    from keras import ops

    if average == "mean":
        return ops.mean(out, axis=0)
    p = ops.clip(out, _EPS, 1.0 - _EPS)
    if multiclass:
        # geometric mean over views, renormalised to a distribution over classes
        g = ops.exp(ops.mean(ops.log(p), axis=0))
        return g / ops.sum(g, axis=-1, keepdims=True)
    # independent sigmoid outputs: geometric mean of p and of 1 - p, renormalised
    gp = ops.exp(ops.mean(ops.log(p), axis=0))
    gq = ops.exp(ops.mean(ops.log(1.0 - p), axis=0))
    return gp / (gp + gq)


def _tta_body(x, seed, call, n_models: int, n_views: int, mode: str, average: str, task: str, augment_cfg: Any,
              seed_rows: int | None = None):
    """One batch under TTA through every model, in ``keras.ops`` (traced by either backend).

    ``call(i, inputs)`` runs model ``i``; returns ``(tta [M, B, C], identity [M, B, C])``.
    """
    from keras import ops

    images = ops.cast(x["image"] if isinstance(x, dict) else x, "float32")
    if n_views == 1:
        flat = images
    else:
        views = _views(images, n_views, mode, augment_cfg, seed, seed_rows)
        flat = ops.reshape(views, (-1, *images.shape[1:]))
    inputs = flat
    if isinstance(x, dict):
        inputs = dict(x)
        inputs["image"] = flat
        for key, value in x.items():
            if key != "image":
                # every view of an image keeps that image's metadata
                inputs[key] = ops.tile(value, [n_views] + [1] * (len(value.shape) - 1))
    tta, plain = [], []
    for i in range(n_models):
        out = ops.cast(call(i, inputs), "float32")
        out = ops.reshape(out, (n_views, -1, out.shape[-1]))
        # softmax outputs renormalise over the classes; sigmoids and regression per output
        multiclass = task in ("multiclass", "distribution") and out.shape[-1] != 1
        tta.append(_average_views(out, average, multiclass))
        plain.append(out[0])
    return ops.stack(tta), ops.stack(plain)


def _tensorflow_step(body, models: list):
    import tensorflow as tf

    # autograph=False: body is the same code jax.jit runs (no Python branch on a
    # tensor); AutoGraph would only rewrite the augmentation's source again.
    @tf.function(reduce_retracing=True, autograph=False)
    def step(x, seed):
        return body(x, seed, lambda i, inputs: models[i](inputs, training=False))

    return step


def _jax_step(body, models: list):
    """``body`` under ``jax.jit`` with the weights passed in (``stateless_call``), not baked in as constants.

    Under a ``DataParallel`` distribution (:class:`tfkit.strategy.JaxStrategy`)
    the batch is padded to a multiple of the devices and split over them;
    the weights are already replicated.
    """
    import jax
    import keras

    def pure(states, x, seed):
        def call(i, inputs):
            trainable, non_trainable = states[i]
            return models[i].stateless_call(trainable, non_trainable, inputs, training=False)[0]

        return body(x, seed, call)

    jitted = jax.jit(pure)
    states = [([v.value for v in m.trainable_variables], [v.value for v in m.non_trainable_variables]) for m in models]
    distribution = keras.distribution.distribution()

    def step(x, seed):
        x = keras.tree.map_structure(np.asarray, x)
        n = int(keras.tree.flatten(x)[0].shape[0])
        if distribution is not None:
            devices = int(np.prod(distribution.device_mesh.shape))
            x = keras.tree.map_structure(lambda t: _pad_rows(t, -(-n // devices) * devices), x)
            x = keras.tree.map_structure(
                lambda t: keras.distribution.distribute_tensor(t, distribution.get_data_layout(t.shape)), x)
        tta, plain = jitted(states, x, np.asarray(seed, np.int32))
        return tta[:, :n], plain[:, :n]

    return step


def _pad_rows(t: np.ndarray, rows: int) -> np.ndarray:
    """``t`` with zero rows appended up to ``rows`` (a static batch size)."""
    t = np.asarray(t)
    return t if len(t) >= rows else np.pad(t, [(0, rows - len(t))] + [(0, 0)] * (t.ndim - 1))


def make_tta_step(
    models: Sequence[Any],
    n_views: int,
    mode: str = "dihedral",
    average: str = "mean",
    task: str = "multiclass",
    augment_cfg: Any = None,
    seed_rows: int | None = None,
):
    """Build the compiled function that predicts one batch under TTA with every model.

    The views of the batch are stacked into the batch dimension (``V * B``
    images), each model sees them in a single call, and its output is reshaped
    to ``[V, B, C]`` and averaged over views. One body in ``keras.ops``,
    compiled per backend: a ``tf.function`` on TensorFlow, ``jax.jit`` over
    the models' ``stateless_call`` on JAX.

    Args:
        models: Keras models taking the image tensor (or ``{"image", "meta"}``).
        n_views: views per image.
        mode: ``dihedral`` | ``flips`` | ``augment``.
        average: ``mean`` | ``gmean``.
        task: the run's task; decides how a geometric mean is renormalised.
        augment_cfg: :class:`tfkit.config.AugmentConfig` for ``mode="augment"``.
        seed_rows: ``mode="augment"`` draws its views per block of this many rows
            (the per-device batch), so the views do not depend on the device count.

    Returns:
        ``step(x, seed) -> (tta [M, B, C], identity [M, B, C])`` where ``seed`` is
        an int32 ``[2]`` array (used by ``mode="augment"`` only) and ``identity``
        is each model's prediction on the untransformed view.

    Example::

        step = make_tta_step([model], n_views=8)
        tta, plain = step(images, np.array([0, 0], np.int32))
    """
    import keras

    check_tta(n_views, mode, average, task)
    if mode == "auto":
        if augment_cfg is None:
            raise TfkitError("predict.tta_mode=auto needs the run's augment config (the views it was trained on)")
        mode = resolve_tta_mode(augment_cfg)
    if mode == "augment":
        if augment_cfg is None:
            raise TfkitError("predict.tta_mode=augment needs the run's augment config")
        augment_cfg = _tta_augment_config(augment_cfg)
    models = list(models)

    def body(x, seed, call):
        return _tta_body(x, seed, call, len(models), n_views, mode, average, task, augment_cfg, seed_rows)

    if keras.backend.backend() == "jax":
        return _jax_step(body, models)
    return _tensorflow_step(body, models)


def predict_proba(
    models: Sequence[Any],
    dataset: Any,
    n_views: int = 1,
    mode: str = "dihedral",
    average: str = "mean",
    weights: Sequence[float] | None = None,
    task: str = "multiclass",
    augment_cfg: Any = None,
    seed: int = 0,
    per_model: bool = False,
    progress: bool = True,
    seed_rows: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict a dataset with TTA and a weighted ensemble of models.

    Args:
        models: Keras models (e.g. one per fold).
        dataset: ``tf.data.Dataset`` yielding image batches (float32 ``[B, S, S, 3]`` in
            ``[0, 1]``) or ``{"image", "meta"}`` dicts; ``(x, y)`` pairs are accepted and
            ``y`` is ignored.
        n_views: views per image (1 = no TTA).
        mode: ``dihedral`` | ``flips`` | ``augment`` (seeded random augmentation passes).
        average: ``mean`` or ``gmean`` over views.
        weights: one weight per model (default equal); normalised to sum to 1.
        task: the run's task (``multiclass``, ``binary``, ``multilabel``, ``regression``).
        augment_cfg: augmentation config for ``mode="augment"``.
        seed: base seed of ``mode="augment"``; same seed, same predictions.
        per_model: also return each model's TTA and untransformed predictions.
        progress: show a progress bar.
        seed_rows: rows per seeded block of ``mode="augment"`` views (see
            :func:`make_tta_step`); tfkit passes the per-device batch.

    Returns:
        ``[N, C]`` float32 ensemble predictions; with ``per_model=True`` the tuple
        ``(ensemble [N, C], tta [M, N, C], identity [M, N, C])``.

    Example::

        proba = predict_proba(models, ds, n_views=8, mode="dihedral", average="gmean")
    """
    import keras
    from tqdm.auto import tqdm

    models = list(models)
    if not models:
        raise TfkitError("predict_proba: no models given")
    w = np.full(len(models), 1.0 / len(models)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(models),) or np.any(w < 0) or w.sum() <= 0:
        raise TfkitError(f"predict_proba: expected {len(models)} non-negative weights, got {list(np.ravel(w))}")
    w = w / w.sum()
    step = make_tta_step(models, n_views, mode, average, task, augment_cfg, seed_rows)
    tta_parts, plain_parts = [], []
    full = None  # size of the first batch; a shorter last batch is padded to it
    for i, batch in enumerate(tqdm(dataset, desc=f"predict x{n_views} views", disable=not progress, leave=False)):
        if isinstance(batch, tuple):
            batch = batch[0]
        batch = keras.tree.map_structure(np.asarray, batch)  # tf.data tensors feed either backend as NumPy
        n = int(keras.tree.flatten(batch)[0].shape[0])
        full = full or n
        # One static shape for every call: the step is traced once (no
        # retracing per partial batch) and compiles as is for XLA/TPU.
        batch = keras.tree.map_structure(lambda t: _pad_rows(t, full), batch)
        tta, plain = step(batch, np.array([seed, i], np.int32))
        tta_parts.append(keras.ops.convert_to_numpy(tta)[:, :n])
        plain_parts.append(keras.ops.convert_to_numpy(plain)[:, :n])
    if not tta_parts:
        raise TfkitError("predict_proba: the dataset yielded no images")
    tta = np.concatenate(tta_parts, axis=1)
    plain = np.concatenate(plain_parts, axis=1)
    ensemble = np.tensordot(w, tta.astype(np.float64), axes=1).astype(np.float32)
    if per_model:
        return ensemble, tta, plain
    return ensemble


# --------------------------------------------------------------------------- sources


def list_images(folder: str | os.PathLike, csv: str | os.PathLike | None = None, id_column: str = "id") -> pd.DataFrame:
    """Resolve the images to predict in a plain folder.

    Without ``csv`` every image file directly in ``folder`` (the extensions of
    :data:`tfkit.records.IMAGE_EXTENSIONS`) is used and its id is the file stem.
    With ``csv`` the rows (and their order) come from the CSV's ``id_column``; a
    ``path`` column, if present, names each file relative to ``folder``, otherwise
    the file is ``<id>.<ext>``. Every path must stay inside ``folder``. TIFF and
    WebP files, which TensorFlow cannot decode, are refused.

    Args:
        folder: images folder.
        csv: optional CSV (e.g. Kaggle's ``sample_submission.csv``).
        id_column: id column of the CSV.

    Returns:
        DataFrame with columns ``id`` and ``path`` (absolute).

    Example::

        list_images("test_images").head(2)
    """
    root = Path(folder)
    if not root.is_dir():
        raise TfkitError(f"--images: folder not found: {root}")
    root = root.resolve()
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise TfkitError(f"--images: two files share the id {p.stem!r}: {by_stem[p.stem].name} and {p.name}")
        by_stem[p.stem] = p
    if csv is None:
        if not files:
            raise TfkitError(f"--images: no {'/'.join(IMAGE_EXTENSIONS)} files in {root}")
        return _decodable(pd.DataFrame({"id": list(by_stem), "path": [str(p) for p in by_stem.values()]}))
    csv = Path(csv)
    if not csv.is_file():
        raise TfkitError(f"--csv: file not found: {csv}")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if id_column not in frame.columns:
        raise TfkitError(f"{csv}: no id column {id_column!r} (columns: {', '.join(frame.columns)})")
    paths = []
    for row, (rid, rel) in enumerate(zip(frame[id_column], frame.get("path", [None] * len(frame))), start=2):
        if rel:
            path = (root / rel).resolve()
            if not path.is_relative_to(root):
                raise TfkitError(f"{csv} line {row}: path {rel!r} leaves the images folder {root}")
            if not path.is_file():
                raise TfkitError(f"{csv} line {row}: image not found: {path}")
        else:
            path = by_stem.get(rid)
            if path is None:
                raise TfkitError(
                    f"{csv} line {row}: no image named {rid}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}> in {root}"
                )
        paths.append(str(path))
    if frame[id_column].duplicated().any():
        dup = frame[id_column][frame[id_column].duplicated()].iloc[0]
        raise TfkitError(f"{csv}: id {dup!r} appears more than once")
    return _decodable(pd.DataFrame({"id": frame[id_column].tolist(), "path": paths}))


_SIGNATURES = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
               ".bmp": (b"BM",), ".gif": (b"GIF87a", b"GIF89a")}


def _decodable(images: pd.DataFrame) -> pd.DataFrame:
    """``images`` unchanged, or a one-line error naming the first file TensorFlow cannot decode:
    an unsupported format, an empty file, or one whose first bytes are not its format's signature
    (checked before anything is predicted, so no error surfaces mid-way without a file name)."""
    for path in images["path"]:
        p = Path(path)
        ext = p.suffix.lower()
        if ext in _TF_CANNOT_DECODE:
            raise TfkitError(f"--images: {p.name}: TensorFlow cannot decode {p.suffix} files; "
                             "build test records from the folder instead (tfkit build-records --split test)")
        with open(p, "rb") as f:
            head = f.read(8)
        if not head:
            raise TfkitError(f"--images: {p}: empty file (0 bytes)")
        if ext in _SIGNATURES and not head.startswith(_SIGNATURES[ext]):
            raise TfkitError(f"--images: {p}: not a {ext[1:].upper()} image (its first bytes are not a "
                             f"{ext[1:].upper()} signature; corrupted or misnamed)")
    return images


def image_folder_dataset(paths: Sequence[str], image_size: int, batch_size: int) -> Any:
    """A deterministic ``tf.data`` pipeline of image files -> float32 ``[B, S, S, 3]`` in ``[0, 1]``.

    Files are decoded by TensorFlow (JPEG/PNG/BMP, grayscale and RGBA converted to
    RGB, no animation frames). Their sizes vary, so each image is resized to
    ``S`` exactly as :mod:`tfkit.data` does for records of varying sizes
    (antialiased resize, rounded to uint8), then goes through
    :func:`tfkit.augment.resize_batch` like every evaluation batch.

    Args:
        paths: image files.
        image_size: side ``S`` of the model input.
        batch_size: images per batch (the last batch may be smaller).

    Returns:
        ``tf.data.Dataset`` of image batches, in the order of ``paths``.

    Example::

        ds = image_folder_dataset(["a.png", "b.jpg"], 32, 64)
    """
    import tensorflow as tf

    from tfkit.augment import resize_batch

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False, dtype=tf.uint8)
        image.set_shape([None, None, 3])
        image = tf.image.resize(image, [image_size, image_size], antialias=True)
        return tf.ensure_shape(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), [image_size, image_size, 3])

    ds = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    ds = ds.map(lambda x: resize_batch(x, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _image_size(run: str | os.PathLike, folds: Sequence[int], cfg: Config) -> int:
    """The input side the fold models were selected at (progressive resizing may
    end above ``data.image_size``); every fold must agree. Sets ``cfg.data.image_size``."""
    folder = RunFolder(run)
    sizes = {int(folder.done(k).get("image_size") or cfg.data.image_size) for k in folds}
    if len(sizes) != 1:
        raise TfkitError(f"{run}: folds were trained at different image sizes {sorted(sizes)}; predict them separately")
    cfg.data.image_size = sizes.pop()
    return cfg.data.image_size


def _device_batch(cfg: Config) -> int:
    """Images per predict batch on one device (``predict.batch_size``, else ``data.batch_size``)."""
    return int(cfg.predict.batch_size or cfg.data.batch_size)


def _batch_size(cfg: Config) -> int:
    """Images per predict batch: the per-device batch times the devices (1 on TensorFlow)."""
    return _device_batch(cfg) * int(_strategy().num_replicas_in_sync)


def _check_same_records(records: str | os.PathLike, manifest: Manifest) -> None:
    """Out-of-fold predictions are only out of fold on the records the run was
    trained on: other folds (another seed or K) would score images a model saw."""
    if not manifest.same_source(check_records(records)):
        raise TfkitError(f"{records}: these are not the records the run was trained on (folds or shard checksums "
                         "differ from RUN/manifest.json); OOF scores on them would leak")


def records_dataset(records: str | os.PathLike, cfg: Config, manifest: Manifest, folds: Sequence[int] | None = None):
    """Deterministic predict-mode dataset of a records folder plus its aligned index.

    Args:
        records: records folder (local or ``gs://``); its own manifest picks the split's shards.
        cfg: the run's config (image size, metadata columns).
        manifest: the run's (training) manifest; the records' classes must match its classes.
        folds: folds to read (``None``: all shards).

    Returns:
        ``(dataset, index)`` where ``index`` has columns id, label, fold, group in
        the order the dataset yields images.

    Example::

        ds, index = records_dataset("records/test", cfg, manifest)
    """
    from tfkit import data

    records = str(records)
    own = Manifest.from_dict(check_records(records))  # shards as listed, sha256 included
    manifest = Manifest.from_dict(manifest)
    if own.targets and own.targets != manifest.targets:
        raise TfkitError(f"{records}: targets {own.targets} differ from the run's {manifest.targets}")
    for what, mine, theirs in (("image size", own.image_size, manifest.image_size),
                               ("channels", (own.get("image") or {}).get("channels"),
                                (manifest.get("image") or {}).get("channels"))):
        if mine is not None and theirs is not None and mine != theirs:
            raise TfkitError(f"{records}: {what} {mine} differs from the run's training records ({theirs}); "
                             "build the test records with the same --size/--channels")
    if own.classes and own.classes != manifest.classes:
        raise TfkitError(
            f"{records}: classes {own['classes']} differ from the run's {manifest['classes']} "
            "(build test records with --classes-from the training manifest)"
        )
    for col in cfg.data.metadata or []:
        # Records store a category as its vocabulary index: the indices must mean what they meant in
        # training (numbers are stored raw; each fold model standardises them with its own statistics).
        if [own.metadata_spec(col).get(k) for k in ("kind", "vocab")] != \
                [manifest.metadata_spec(col).get(k) for k in ("kind", "vocab")]:
            raise TfkitError(
                f"{records}: metadata column {col!r} is encoded differently from the run's "
                "(rebuild the records with --classes-from RUN/manifest.json)"
            )
    ds = data.build_dataset(
        records, cfg, folds=folds, mode="predict", manifest=own,
        batch_size=_batch_size(cfg), augment=False, repeat=False,
    )
    index = data.read_index(records, folds=folds, manifest=own)
    return ds, index


# --------------------------------------------------------------------------- outputs


def full_proba(out: np.ndarray, task: str) -> np.ndarray:
    """Model outputs as one column per class: a binary ``[N, 1]`` becomes ``[1 - p, p]``."""
    out = np.asarray(out, dtype=np.float64)
    if task == "binary" and out.shape[-1] == 1:
        return np.concatenate([1.0 - out, out], axis=1)
    return out


def submission_frame(ids: Sequence[str], out: np.ndarray, classes: Sequence[str], task: str, pcfg: PredictConfig,
                     thresholds: dict | None = None, primary: str | None = None) -> pd.DataFrame:
    """The competition CSV as a DataFrame: the id column plus probabilities, values or labels.

    Args:
        ids: image ids, aligned with ``out``.
        out: ``[N, K]`` model outputs (binary: ``[N, 1]`` probability of ``classes[1]``).
        classes: the run's output names (:func:`tfkit.targets.output_names`).
        task: the run's task.
        pcfg: ``predict`` config: ``id_column``, ``label_columns``, ``output``, ``threshold``.
        thresholds: the run's ``thresholds.json`` (multi-label tags, grades).
        primary: the run's primary metric (which thresholds ``threshold=auto`` picks).

    Returns:
        DataFrame. ``output="proba"``: one column per output named by
        ``label_columns`` (default the class / target / bin names; a binary task
        writes the positive class only unless two names are given; regression on
        grades writes ``target``). ``output="label"``: one column: the predicted
        class (default ``label``); for multilabel the space-separated tags at or
        above the OOF thresholds (default ``labels``); for regression on grades
        the grade (OOF cut points when fitted, else rounding); for a
        distribution its mean score (``score``); numeric regression targets are
        written as values either way.

    Example:
        >>> submission_frame(["a"], np.array([[0.2, 0.8]]), ["cat", "dog"], "multiclass", PredictConfig())
          id  cat  dog
        0  a  0.2  0.8
    """
    out = np.asarray(out)
    ids = [str(i) for i in ids]
    if len(ids) != len(out):
        raise TfkitError(f"predict: {len(ids)} ids but {len(out)} predictions")
    names = list(pcfg.label_columns) if pcfg.label_columns else None
    frame = pd.DataFrame({pcfg.id_column: ids})
    if pcfg.output not in ("proba", "label"):
        raise TfkitError(f"predict.output: expected 'proba' or 'label', got {pcfg.output!r}")
    on_values = task == "regression" and len(classes) == out.reshape(len(out), -1).shape[1]
    if pcfg.output == "label" and not on_values:
        values, default = _labels(out, classes, task, pcfg, thresholds or {}, primary)
        if names and len(names) != 1:
            raise TfkitError(f"predict.label_columns: output=label takes one name, got {names}")
        frame[names[0] if names else default] = values
        return frame
    if task == "binary" and out.shape[1] == 1 and (names is None or len(names) == 1):
        values, default = out, [str(classes[-1])]
    elif task == "regression":
        values = out.reshape(len(out), -1)
        default = [str(c) for c in classes] if on_values else ["target"]
    else:
        values = full_proba(out, task)
        default = [str(c) for c in classes]
    cols = names or default
    if len(cols) != values.shape[1]:
        raise TfkitError(f"predict.label_columns: expected {values.shape[1]} names, got {len(cols)}: {cols}")
    if pcfg.id_column in cols:
        raise TfkitError(f"predict.label_columns: {pcfg.id_column!r} is already the id column")
    for j, c in enumerate(cols):
        frame[c] = values[:, j]
    return frame


def _labels(out: np.ndarray, classes: Sequence[str], task: str, pcfg: PredictConfig, saved: dict,
            primary: str | None) -> tuple[Any, str]:
    """``(values, default column name)`` of ``output=label``."""
    from tfkit import targets

    if task == "multilabel":
        t = targets.decision_thresholds(saved, pcfg.threshold, len(classes), primary)
        return targets.tags(out, [str(c) for c in classes], t), "labels"
    if task == "regression":  # on grades: the classes are the grades 0..K-1
        return np.asarray(classes, dtype=object)[targets.grades(out, len(classes), saved)], "label"
    if task == "distribution":
        p = np.asarray(out, dtype=np.float64)
        return (p / p.sum(1, keepdims=True)) @ targets.bin_values(classes), "score"
    return np.asarray(classes, dtype=object)[full_proba(out, task).argmax(axis=1)], "label"


def _oof_layout(index: pd.DataFrame, out: np.ndarray, classes: Sequence[str], task: str) -> pd.DataFrame:
    """Predictions in ``oof.csv`` layout (id, fold, label, ``p_<class>``... or ``pred``)."""
    return oof_frame(index, np.asarray(out, dtype=np.float64), [str(c) for c in classes], task)


def _known_labels(index: pd.DataFrame) -> bool:
    """Whether every row of a records index carries a label (a class index >= 0, or ``y_`` columns)."""
    if len(index) == 0:
        return False
    y_cols = [c for c in index.columns if c.startswith("y_")]
    if y_cols:
        return bool(np.all(np.isfinite(index[y_cols].to_numpy(dtype=np.float64))))
    if "label" not in index:
        return False
    return bool(np.all(index["label"].to_numpy() >= 0))


# --------------------------------------------------------------------------- commands


def _resolve(cfg: Config, manifest: Manifest, tta: int | None) -> tuple[Config, str]:
    """The run's config with ``tta`` applied, validated whole before any work, and the task."""
    if tta is not None:
        cfg = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, tta=int(tta)))
    validate(cfg, manifest, predicting=True)
    return cfg, resolve_task(cfg.model.task, manifest=manifest)


def predict(
    run: str | os.PathLike,
    out: str | os.PathLike | None = "submission.csv",
    records: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    csv: str | os.PathLike | None = None,
    tta: int | None = None,
    overrides: Iterable[str] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Predict test records or a folder of images with every fold and TTA; write the submission.

    Args:
        run: run folder written by :func:`tfkit.train.train`.
        out: submission CSV, written atomically (``None``: do not write).
        records: test records folder (``tfkit build-records --split test``).
        images: a plain folder of images instead of records.
        csv: with ``images``: CSV whose id column lists the images (and their order).
        tta: views per image (default ``predict.tta`` of the run's config).
        overrides: ``"predict.average=gmean"``-style config overrides.
        progress: show progress bars.

    Returns:
        The submission DataFrame. When the test records carry labels,
        ``frame.attrs["metrics"]`` holds the held-out metrics of the ensemble.

    Raises:
        TfkitError: neither or both of ``records``/``images``, a bad option, or a missing file.

    Example::

        sub = predict("runs/digits", "submission.csv", records="records/test", tta=4)
    """
    if (records is None) == (images is None):
        raise TfkitError("predict: give exactly one of --records or --images")
    if csv is not None and images is None:
        raise TfkitError("predict: --csv is used with --images only")
    if out is not None:
        check_out_file(out, "--out")  # before anything is predicted
    cfg, manifest = load_run(run, overrides)
    cfg, task = _resolve(cfg, manifest, tta)
    pcfg = cfg.predict
    folds = run_folds(run)
    weights = fold_weights(run, folds, pcfg.fold_weights)
    _image_size(run, folds, cfg)
    models = load_models(run, folds)  # a missing or damaged model fails before any data is read
    if records is not None:
        ds, index = records_dataset(records, cfg, manifest)
        ids = index["id"].tolist()
    else:
        if cfg.data.metadata:
            raise TfkitError(
                f"predict --images: the model also needs metadata ({', '.join(cfg.data.metadata)}); predict test records instead"
            )
        index = list_images(images, csv, id_column=pcfg.id_column)
        ids = index["id"].tolist()
        ds = image_folder_dataset(index["path"].tolist(), cfg.data.image_size, _batch_size(cfg))
    proba = predict_proba(
        models, ds, pcfg.tta, pcfg.tta_mode, pcfg.average, weights=weights, task=task,
        augment_cfg=cfg.augment, seed=pcfg.seed, progress=progress, seed_rows=_device_batch(cfg),
    )
    if len(proba) != len(ids):
        raise TfkitError(f"predict: {len(proba)} predictions for {len(ids)} ids (records index and data disagree)")
    names = output_names(manifest, task)
    folder = RunFolder(run)
    saved = folder.read_thresholds()
    frame = submission_frame(ids, proba, names, task, pcfg, thresholds=saved, primary=folder.read_cv().get("primary"))
    if records is not None and _known_labels(index):
        held = _oof_layout(index.assign(fold=-1), proba, names, task)
        frame.attrs["metrics"] = oof_metrics(held, names, task, names=cfg.train.metrics, thresholds=saved)
    if out is not None:
        write_csv(out, frame)
    msg = f"predicted {len(frame)} images with {len(folds)} folds x {pcfg.tta} {pcfg.tta_mode} views ({pcfg.average})"
    if "metrics" in frame.attrs:
        msg += "; held-out " + ", ".join(f"{k}={v:.4f}" for k, v in frame.attrs["metrics"].items())
    print(msg + (f" -> {out}" if out is not None else ""))
    return frame


def oof_tta(
    run: str | os.PathLike,
    records: str | os.PathLike,
    tta: int | None = None,
    overrides: Iterable[str] = (),
    progress: bool = True,
) -> dict:
    """Recompute out-of-fold predictions with TTA; report the CV score with and without it.

    Each fold's model predicts its own held-out fold of the training records,
    under the same views and averaging as :func:`predict`. The untransformed
    view of the same forward pass gives the no-TTA predictions, so both scores
    come from one pipeline. Writes ``RUN/oof_tta.csv`` (id, fold, label,
    ``p_<class>``...) and ``RUN/cv_tta.json``.

    Args:
        run: run folder.
        records: the training records the run was trained on.
        tta: views per image (default ``predict.tta`` of the run's config).
        overrides: config overrides (``predict.*``).
        progress: show progress bars.

    Returns:
        The ``cv_tta.json`` dict: ``{"n_views", "mode", "average", "primary",
        "no_tta": {...}, "tta": {...}, "folds": {k: {"no_tta", "tta"}}}``.

    Example::

        oof_tta("runs/digits", "records/train", tta=4)["tta"]["accuracy"]
    """
    cfg, manifest = load_run(run, overrides)
    cfg, task = _resolve(cfg, manifest, tta)
    pcfg = cfg.predict
    classes = output_names(manifest, task)
    folds = run_folds(run)
    _image_size(run, folds, cfg)
    check_out_dir(run, "--run")  # RUN/oof_tta.csv and RUN/cv_tta.json are written at the end
    _check_same_records(records, manifest)
    models = load_models(run, folds)
    with_tta, without = [], []
    for k, model in zip(folds, models):
        ds, index = records_dataset(records, cfg, manifest, folds=[k])
        if not _known_labels(index):
            raise TfkitError(f"{records}: fold {k} has examples without labels; OOF needs labelled training records")
        _, tta_out, plain_out = predict_proba(
            [model], ds, pcfg.tta, pcfg.tta_mode, pcfg.average, task=task, augment_cfg=cfg.augment,
            seed=pcfg.seed, per_model=True, progress=progress, seed_rows=_device_batch(cfg),
        )
        with_tta.append(_oof_layout(index, tta_out[0], classes, task))
        without.append(_oof_layout(index, plain_out[0], classes, task))
    oof, oof_plain = pd.concat(with_tta, ignore_index=True), pd.concat(without, ignore_index=True)
    scored = recompute_cv_frame(oof, classes, task, names=cfg.train.metrics)
    plain = recompute_cv_frame(oof_plain, classes, task, names=cfg.train.metrics)
    primary = primary_metric(cfg.train.metrics, scored["metrics"])
    result: dict[str, Any] = {
        "n_views": pcfg.tta, "mode": pcfg.tta_mode, "average": pcfg.average, "primary": primary,
        "no_tta": plain["metrics"], "tta": scored["metrics"],
        "folds": {k: {"no_tta": plain["folds"][k], "tta": scored["folds"][k]} for k in scored["folds"]},
    }
    path = RunFolder(run).write_oof_tta(oof, result)
    print(
        f"OOF {primary}: {result['no_tta'][primary]:.4f} without TTA, {result['tta'][primary]:.4f} with "
        f"{pcfg.tta} {pcfg.tta_mode} views ({pcfg.average}) -> {path}"
    )
    return result
