"""K-fold training: one model per fold, out-of-fold predictions, a CV score you can trust.

For every fold ``k`` a model is trained on the shards of the other folds and
validated on fold ``k``'s shards only (shard files hold one fold each, so the
split is decided by file names, never by a filter that could leak). The best
epoch (``cfg.train.monitor``) is kept; its predictions on fold ``k`` become
fold ``k``'s rows of ``oof.csv``, and ``cv.json`` is computed from ``oof.csv``
alone, so anyone can recompute it.

Run folder::

    RUN/config.yaml  RUN/manifest.json  RUN/oof.csv  RUN/cv.json  RUN/curves.png
    RUN/fold{k}/model.keras  history.csv  done.json  logs/ (TensorBoard)
    RUN/fold{k}/resume/      last epoch's weights + optimizer state (deleted when the fold is done)

Resume: re-running the same command skips folds with ``done.json`` and continues
an unfinished fold from its last finished epoch (model weights, optimizer
moments, EMA, best score and early-stopping patience are restored).

Training phases: ``freeze_epochs`` (backbone frozen) and ``progressive``
(``[[epoch, size], ...]``) cut the epochs into phases. Each phase rebuilds the
model at its image size, copies the weights over (conv nets with global pooling
have size-independent weights) and starts a fresh optimizer whose schedule
continues from the phase's first step; the optimizer's moments restart at a
phase boundary, as they do in the usual "unfreeze and recompile" recipe.

Discriminative learning rates (``layer_lr_decay`` < 1): the backbone's weighted
layers, in build order, are cut into ``layer_lr_groups`` equal consecutive
groups; group ``g`` (0 = nearest the input) trains with
``lr * layer_lr_decay ** (groups - g)`` and the head with ``lr``. The factor is
applied to the learning rate inside the optimizer's per-variable update (not to
the gradients, which Adam would normalise away), so it is exact for SGD, Adam
and AdamW alike (AdamW's decoupled weight decay keeps the base rate).

SWA (``swa_epochs`` = N > 0, Izmailov et al. 2018; replaces ``tfa.optimizers.SWA``):
the weights at the end of each of the last N epochs are averaged with equal
weights (the weights that are validated and checkpointed, i.e. the EMA weights
when ``ema`` > 0); the learning-rate schedule is left alone, so SWA averages
whatever it gives (best with ``cosine_restarts`` or ``cyclic``). At the end the
average is loaded, BatchNorm moving statistics are recomputed (``bn_update``:
one pass in training mode, no weight update, over up to 200 un-augmented
batches of the training folds in file order, as an exact mean of the batch
statistics) and the result is always the fold's ``model.keras`` and its OOF
predictions; the best-epoch checkpoint is kept as ``best.keras`` and both
models' validation metrics are in ``done.json`` and ``cv.json`` (``metrics``
vs ``swa.best_checkpoint_metrics``). Other non-trainable float variables are averaged
too (they are constant while frozen); integer ones keep their last value. The
running average survives a kill (``resume/e{epoch}.swa.npz``).

Example:
    >>> from tfkit.config import load_config
    >>> cfg = load_config("tfkit/configs/digits.yaml")  # doctest: +SKIP
    >>> cv = train(cfg, "records", "runs/digits")  # doctest: +SKIP
    >>> cv["metrics"]["accuracy"]  # doctest: +SKIP
    0.993
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tfkit.config import Config, config_to_dict, save_config
from tfkit.utils import TfkitError, pyplot, read_json, save_figure, seed_everything, write_csv, write_json

__all__ = ["train", "train_fold", "lr_find", "oof_frame", "oof_probabilities", "recompute_cv", "TrainingModel", "bn_update"]

_IGNORED_ON_RESUME = {("train", "folds"), ("train", "verbose")}
_SWA_BN_BATCHES = 200  # batches of the BatchNorm statistics pass after SWA


# --------------------------------------------------------------------------- small helpers


def _task(cfg: Config, manifest: dict) -> str:
    from tfkit.data import resolve_task

    # Before any training: a task the records cannot feed fails in one line.
    return resolve_task(manifest, cfg.model.task)


def _with_size(cfg: Config, size: int) -> Config:
    """A copy of ``cfg`` whose data section uses ``size`` pixels."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=int(size)))


def _monitor_mode(monitor: str) -> str:
    from tfkit.metrics import lower_is_better

    return "min" if lower_is_better(monitor) else "max"


def _n_folds(manifest: dict) -> int:
    try:
        return int(manifest["folds"]["n_folds"])
    except (KeyError, TypeError, ValueError):
        raise TfkitError("manifest.json has no folds.n_folds: build the records with --split train")


def _check_folds(folds: Sequence[int], n_folds: int) -> list[int]:
    out = sorted(set(int(f) for f in folds))
    bad = [f for f in out if not 0 <= f < n_folds]
    if bad:
        raise TfkitError(f"--folds: fold(s) {bad} do not exist (the records have folds 0..{n_folds - 1})")
    if n_folds < 2:
        raise TfkitError(f"the records have {n_folds} fold; K-fold training needs at least 2")
    return out


def _phases(cfg: Config) -> list[dict]:
    """Cut ``[0, epochs)`` into phases of constant image size and frozen state."""
    epochs = int(cfg.train.epochs)
    if epochs < 1:
        raise TfkitError(f"train.epochs: expected >= 1, got {epochs}")
    sizes = {0: int(cfg.data.image_size)}
    for item in cfg.train.progressive:
        if len(item) != 2 or item[0] < 0 or item[1] < 8:
            raise TfkitError(f"train.progressive: expected [[epoch, size], ...] with size >= 8, got {cfg.train.progressive}")
        sizes[int(item[0])] = int(item[1])
    cuts = sorted({0, *[e for e in sizes if e < epochs], *([cfg.train.freeze_epochs] if 0 < cfg.train.freeze_epochs < epochs else [])})
    phases = []
    for i, start in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else epochs
        size = sizes[max(e for e in sizes if e <= start)]
        phases.append(dict(index=i, start=start, end=end, size=size, frozen=start < cfg.train.freeze_epochs))
    return phases


def _write_keras_model(model: Any, path: Path) -> None:
    """Save a ``.keras`` file atomically (Keras insists on the suffix, so the temp name keeps it)."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _write_weights(model: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name.split('.')[0]}.tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- optimizer


def _lr_scaled(base: type) -> type:
    """Subclass a Keras optimizer so each variable's update uses ``lr * multiplier``."""

    class LayerScaled(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, lr_multipliers: dict[str, float] | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._tfkit_mult_by_path = dict(lr_multipliers or {})
            self._tfkit_mult: list[float] = []

        def build(self, variables: list) -> None:
            super().build(variables)
            self._tfkit_mult = [float(self._tfkit_mult_by_path.get(v.path, 1.0)) for v in variables]

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
            # The index lookup maps a replica's component variable to its Keras variable.
            m = self._tfkit_mult[self._get_variable_index(variable)] if self._tfkit_mult else 1.0
            if m != 1.0:
                learning_rate = learning_rate * m
            return super().update_step(gradient, variable, learning_rate)

    LayerScaled.__name__ = f"LayerScaled{base.__name__}"
    return LayerScaled


def _layer_multipliers(model: Any, decay: float, groups: int) -> dict[str, float]:
    """Per-variable LR factors for the backbone (see the module docstring)."""
    if decay == 1.0:
        return {}
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise TfkitError(f"train.layer_lr_decay={decay} needs a model with a layer named 'backbone'")
    layers = [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights]  # noqa: SLF001
    if not layers:
        return {}
    groups = max(1, min(int(groups), len(layers)))
    out: dict[str, float] = {}
    for i, layer in enumerate(layers):
        g = i * groups // len(layers)
        for v in layer.weights:
            out.setdefault(v.path, float(decay) ** (groups - g))
    return out


def _make_optimizer(cfg: Config, schedule: Any, multipliers: dict[str, float]) -> Any:
    import keras

    t = cfg.train
    common: dict[str, Any] = dict(learning_rate=schedule, global_clipnorm=t.clip_norm)
    if t.ema > 0:
        if not 0 < t.ema < 1:
            raise TfkitError(f"train.ema: expected a decay in (0, 1) such as 0.999, got {t.ema}")
        common.update(use_ema=True, ema_momentum=float(t.ema))
    name = t.optimizer.lower()
    if name == "adamw":
        cls, extra = keras.optimizers.AdamW, dict(weight_decay=t.weight_decay)
    elif name == "adam":
        cls, extra = keras.optimizers.Adam, {}
    elif name == "sgd":
        cls, extra = keras.optimizers.SGD, dict(momentum=t.momentum, nesterov=True)
    else:
        raise TfkitError(f"train.optimizer: unknown optimizer {t.optimizer!r} (expected adamw, adam or sgd)")
    opt = _lr_scaled(cls)(lr_multipliers=multipliers, **common, **extra)
    if name == "adamw":
        # Decaying biases and normalisation scales hurts; timm and the BERT recipe exclude them.
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


class _OffsetSchedule:
    """``schedule(step + offset)``: a phase's fresh optimizer continues the global schedule."""

    def __new__(cls, base: Any, offset: int) -> Any:
        import keras

        if not isinstance(base, keras.optimizers.schedules.LearningRateSchedule) or offset == 0:
            return base

        class Offset(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step: Any) -> Any:
                return base(step + offset)

            def get_config(self) -> dict:
                return {"offset": offset}

        return Offset()


# --------------------------------------------------------------------------- training model


def _training_model_class() -> type:
    import keras
    import tensorflow as tf
    from keras.src.losses.loss import unscale_loss_for_distribution

    class TrainingModel(keras.Model):
        """Wraps a model for training: on-device augmentation and SAM in ``train_step``.

        Only the wrapped ``model`` is ever saved; this wrapper is a training device.

        Args:
            model: the Keras model to train (inputs/outputs per the tfkit contract).
            sam_rho: sharpness-aware minimisation radius (0 = plain training).
            augment_cfg: an ``AugmentConfig`` to apply on device, or ``None``.
            image_size: output side of on-device augmentation.
            seed: base seed of on-device augmentation (step and replica are mixed in).
        """

        def __init__(self, model: Any, sam_rho: float = 0.0, augment_cfg: Any = None,
                     image_size: int = 0, seed: int = 0, **kwargs: Any):
            super().__init__(**kwargs)
            self.net = model
            self.sam_rho = float(sam_rho)
            self.augment_cfg = augment_cfg
            self.image_size = int(image_size)
            self.seed = int(seed)

        def call(self, inputs: Any, training: bool = False) -> Any:
            return self.net(inputs, training=training)

        def _augment(self, x: Any, y: Any) -> tuple[Any, Any]:
            from tfkit.augment import augment_batch

            replica = tf.distribute.get_replica_context()
            rid = replica.replica_id_in_sync_group if replica is not None else 0
            step = tf.cast(self.optimizer.iterations, tf.int32)
            seed = tf.stack([tf.constant(self.seed, tf.int32) + tf.cast(rid, tf.int32) * 7919, step])
            if isinstance(x, dict):
                img, y = augment_batch(x["image"], y, self.augment_cfg, self.image_size, seed)
                return {**x, "image": img}, y
            return augment_batch(x, y, self.augment_cfg, self.image_size, seed)

        def _loss(self, x: Any, y: Any, sw: Any, track: bool) -> tuple[Any, Any]:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw, training=True)
            if track:
                batch = tf.shape(tf.nest.flatten(x)[0])[0]
                self._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=batch)
            return loss, y_pred

        def train_step(self, data: Any) -> dict:
            x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
            if self.augment_cfg is not None:
                x, y = self._augment(x, y)
            variables = self.trainable_variables
            with tf.GradientTape() as tape:
                loss, y_pred = self._loss(x, y, sw, track=True)
                scaled = self.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            if self.sam_rho > 0:
                # SAM: climb to the worst point within rho (direction g/||g||, which the
                # loss scale cancels out of), take the gradient there, climb back down.
                grads = [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype) for g, v in zip(grads, variables)]
                norm = tf.linalg.global_norm(grads)
                factor = tf.where(tf.math.is_finite(norm) & (norm > 0), self.sam_rho / (norm + 1e-12), 0.0)
                eps = [g * tf.cast(factor, g.dtype) for g in grads]
                for v, e in zip(variables, eps):
                    v.assign_add(e)
                with tf.GradientTape() as tape2:
                    loss2, _ = self._loss(x, y, sw, track=False)
                    scaled2 = self.optimizer.scale_loss(loss2)
                grads = tape2.gradient(scaled2, variables)
                for v, e in zip(variables, eps):
                    v.assign_sub(e)
            self.optimizer.apply(grads, variables)
            return self.compute_metrics(x, y, y_pred, sample_weight=sw)

    return TrainingModel


def TrainingModel(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - a class factory, used like a class
    """Build the training wrapper (see ``_training_model_class``); imports Keras lazily.

    Example:
        >>> wrapper = TrainingModel(model, sam_rho=0.05)  # doctest: +SKIP
    """
    return _training_model_class()(*args, **kwargs)


# --------------------------------------------------------------------------- SWA


def _swa_start(cfg: Config) -> int | None:
    """First epoch (0-based) whose end-of-epoch weights enter the SWA average, or ``None`` (off)."""
    n, epochs = int(cfg.train.swa_epochs), int(cfg.train.epochs)
    if n == 0:
        return None
    if not 1 <= n <= epochs:
        raise TfkitError(f"train.swa_epochs: expected 0 (off) to train.epochs={epochs}, got {n}")
    return epochs - n


class _SwaAverage:
    """Equal-weight running mean of a model's weights (float64), saved with the resume state.

    Args:
        start: first epoch that is averaged.

    Example:
        >>> swa = _SwaAverage(start=8)  # doctest: +SKIP
        >>> swa.update(model); swa.assign_to(model)  # doctest: +SKIP
    """

    def __init__(self, start: int):
        self.start = int(start)
        self.count = 0
        self.epochs: list[int] = []
        self.mean: list[np.ndarray] = []

    def update(self, model: Any, epoch: int) -> None:
        import keras

        # convert_to_numpy reads mirrored variables too (no float()/int() of a MirroredVariable).
        values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.weights]
        if self.count and [m.shape for m in self.mean] != [v.shape for v in values]:
            raise TfkitError("train.swa_epochs: the model's weight shapes changed inside the SWA window "
                             "(progressive resizing of a size-dependent model); start SWA after the last resize")
        if not self.count:
            self.mean = [v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v.copy() for v in values]
        else:
            for i, v in enumerate(values):
                if np.issubdtype(v.dtype, np.floating):
                    self.mean[i] += (v.astype(np.float64) - self.mean[i]) / (self.count + 1)
                else:
                    self.mean[i] = v.copy()  # counters/seeds: keep the last value
        self.count += 1
        self.epochs.append(int(epoch))

    def assign_to(self, model: Any) -> None:
        if len(model.weights) != len(self.mean):
            raise TfkitError(f"SWA average holds {len(self.mean)} weights, the model has {len(model.weights)}")
        for v, m in zip(model.weights, self.mean):
            v.assign(m.astype(v.dtype))

    def info(self) -> dict:
        return {"start": self.start, "count": self.count, "epochs": list(self.epochs)}

    def save(self, path: Path) -> None:
        tmp = path.with_name(".swa.tmp.npz")
        np.savez(tmp, **{f"w{i}": m for i, m in enumerate(self.mean)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, info: dict, path: Path) -> "_SwaAverage":
        swa = cls(info["start"])
        swa.count, swa.epochs = int(info["count"]), list(info["epochs"])
        if swa.count:
            if not path.is_file():
                raise TfkitError(f"{path} is missing: the SWA average cannot be resumed; delete {path.parent} to restart the fold")
            saved = np.load(path)
            swa.mean = [saved[f"w{i}"] for i in range(len(saved.files))]
        return swa


def bn_update(model: Any, dataset: Any, max_batches: int = _SWA_BN_BATCHES) -> int:
    """Recompute BatchNorm moving statistics with one pass in training mode (SWA's ``bn_update``).

    Each trainable BatchNormalization layer's moving mean/variance become the
    exact mean over the batches of the batch statistics (momentum ``1 - 1/n`` at
    batch ``n``). No other variable changes: a forward pass computes no gradient.
    Frozen (non-trainable) BatchNorm layers keep their statistics.

    Args:
        model: a Keras model (called eagerly with ``training=True``).
        dataset: yields ``(x, y)`` or ``x`` batches the model accepts.
        max_batches: at most this many batches are used.

    Returns:
        The number of batches used (0 when the model has no trainable BatchNorm).

    Example:
        >>> bn_update(model, eval_ds_of_training_folds, max_batches=100)  # doctest: +SKIP
        100
    """
    import keras

    bns = [layer for layer in model._flatten_layers(include_self=False)  # noqa: SLF001
           if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not bns:
        return 0
    momenta = [layer.momentum for layer in bns]
    n = 0
    try:
        for batch in dataset.take(int(max_batches)):
            x = batch[0] if isinstance(batch, tuple) else batch
            n += 1
            for layer in bns:
                layer.momentum = 1.0 - 1.0 / n  # cumulative mean; n=1 overwrites the old statistics
            model(x, training=True)
    finally:
        for layer, m in zip(bns, momenta):
            layer.momentum = m
    if n == 0:
        raise TfkitError("SWA: the training folds yielded no batch for the BatchNorm statistics pass")
    return n


# --------------------------------------------------------------------------- callbacks


def _fold_callback_class() -> type:
    import keras

    class FoldState(keras.callbacks.Callback):
        """Per epoch: history row, best checkpoint, early stopping and the resume state.

        Saving the resume state first and the best model after the EMA swap is the
        point of splitting it in two (``before``/``after`` the SwapEMAWeights callback).
        """

        def __init__(self, fold_dir: Path, inner: Any, state: dict, monitor: str, patience: int,
                     phase: dict, stage: str, swa: _SwaAverage | None = None):
            super().__init__()
            self.swa = swa
            self.fold_dir, self.inner, self.state = fold_dir, inner, state
            self.monitor, self.mode, self.patience = monitor, _monitor_mode(monitor), patience
            self.phase, self.stage = phase, stage
            self._t0 = time.time()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._t0 = time.time()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            if self.stage == "before":
                self._save_resume(epoch, logs)
            else:
                self._best(epoch, logs)

        def _best(self, epoch: int, logs: dict) -> None:
            s = self.state
            if self.monitor not in logs:
                raise TfkitError(f"train.monitor: {self.monitor!r} is not logged (logged: {', '.join(sorted(logs))})")
            value = float(logs[self.monitor])
            better = s["best"] is None or (value < s["best"] if self.mode == "min" else value > s["best"])
            if better and math.isfinite(value):
                _write_keras_model(self.inner, self.fold_dir / "model.keras")
                s.update(best=value, best_epoch=epoch, wait=0, best_size=self.phase["size"])
            else:
                s["wait"] += 1
            if self.swa is not None and epoch >= self.swa.start:
                # Written before state.json (the commit point), so a kill keeps average and epoch in step.
                self.swa.update(self.inner, epoch)
                self.swa.save(self.fold_dir / "resume" / f"e{epoch + 1}.swa.npz")
                s["swa"] = self.swa.info()
            s["epoch"] = epoch + 1
            write_json(self.fold_dir / "resume" / "state.json", s)
            for old in (self.fold_dir / "resume").glob("e*.*"):
                if not old.name.startswith(f"e{epoch + 1}."):
                    old.unlink(missing_ok=True)
            if self.patience and s["wait"] >= self.patience:
                s["stopped"] = True
                write_json(self.fold_dir / "resume" / "state.json", s)
                self.model.stop_training = True

        def _save_resume(self, epoch: int, logs: dict) -> None:
            s = self.state
            row = {"epoch": epoch, "lr": float(_current_lr(self.model.optimizer)), "image_size": self.phase["size"],
                   "time_s": round(time.time() - self._t0, 3)}
            row.update({k: float(v) for k, v in logs.items() if np.ndim(v) == 0})
            s["history"].append(row)
            write_csv(self.fold_dir / "history.csv", pd.DataFrame(s["history"]))
            # Files are named by epoch and state.json (written by the "after" stage) names
            # the epoch to resume from, so a kill at any point leaves a consistent set.
            res = self.fold_dir / "resume"
            res.mkdir(exist_ok=True)
            _write_weights(self.inner, res / f"e{epoch + 1}.weights.h5")
            opt_vars = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(self.model.optimizer.variables)}
            tmp = res / ".optimizer.tmp.npz"
            np.savez(tmp, **opt_vars)
            os.replace(tmp, res / f"e{epoch + 1}.optimizer.npz")
            s["phase"] = self.phase["index"]

    return FoldState


def _current_lr(optimizer: Any) -> float:
    lr = optimizer.learning_rate
    try:
        return float(np.asarray(lr))
    except TypeError:
        return float(np.asarray(lr(optimizer.iterations)))


# --------------------------------------------------------------------------- one fold


def train_fold(cfg: Config, records: str | os.PathLike, fold: int, out: str | os.PathLike,
               manifest: dict | None = None, callbacks: Sequence[Any] = ()) -> dict:
    """Train fold ``fold``: fit on the other folds' shards, validate on its own.

    Args:
        cfg: resolved config.
        records: train records folder (shards + manifest.json).
        fold: the validation fold.
        out: run folder; writes ``out/fold{fold}/``.
        manifest: the records' manifest (read when ``None``).
        callbacks: extra Keras callbacks (run after tfkit's own, e.g. for tests or logging).

    Returns:
        The fold's summary (also ``fold{k}/done.json``): metrics on its validation
        fold, best epoch, epochs run, image size of the best checkpoint, seconds.

    Example:
        >>> summary = train_fold(cfg, "records", 0, "runs/r1")  # doctest: +SKIP
    """
    import keras

    from tfkit import data as tfdata
    from tfkit import records as tfrec
    from tfkit.losses import class_weights, create_loss
    from tfkit.metrics import compute_metrics, keras_metrics
    from tfkit.models import model_from_config
    from tfkit.scheduler import create_schedule, schedule_callbacks
    from tfkit.strategy import get_strategy, set_mixed_precision

    out = Path(out)
    fold_dir = out / f"fold{fold}"
    if (fold_dir / "done.json").is_file():
        return read_json(fold_dir / "done.json")
    manifest = manifest or tfrec.load_manifest(records)
    n_folds = _n_folds(manifest)
    fold = _check_folds([fold], n_folds)[0]
    train_folds = [f for f in range(n_folds) if f != fold]
    task = _task(cfg, manifest)
    classes = list(manifest["classes"])
    num_classes = len(classes)
    fold_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    strategy = get_strategy()
    set_mixed_precision(cfg.train.mixed_precision, strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.data.batch_size * replicas
    steps = tfdata.steps_per_epoch(records, train_folds, global_batch)
    if steps < 1:
        raise TfkitError(f"fold {fold}: the training folds hold fewer examples than one batch of {global_batch}")
    meta_dim = tfdata.metadata_dim(manifest, cfg.data.metadata) if cfg.data.metadata else 0
    device_aug = cfg.data.augment_on == "device"
    if cfg.data.augment_on not in ("host", "device"):
        raise TfkitError(f"data.augment_on: expected host or device, got {cfg.data.augment_on!r}")
    cw = None
    if cfg.train.class_weight:
        if cfg.train.class_weight != "balanced":
            raise TfkitError(f"train.class_weight: expected null or balanced, got {cfg.train.class_weight!r}")
        labels = tfdata.read_index(records, folds=train_folds, manifest=manifest)["label"].to_numpy()
        cw = class_weights(labels, num_classes)

    n_val = tfrec.count_from_names(tfrec.shard_files(records, folds=[fold], split="train"))
    val_steps = -(-n_val // global_batch)  # the eval dataset keeps the last partial batch
    state_path = fold_dir / "resume" / "state.json"
    state: dict = read_json(state_path) if state_path.is_file() else dict(
        epoch=0, best=None, best_epoch=None, best_size=None, wait=0, history=[], phase=None, stopped=False)
    # Rows of epochs that finished after the last consistent state are replayed.
    state["history"] = [r for r in state["history"] if r["epoch"] < state["epoch"]]
    resumed_from = state["epoch"]
    if resumed_from and cfg.train.verbose:
        print(f"fold {fold}: resuming after epoch {resumed_from}")
    swa_start = _swa_start(cfg)
    swa = None
    if swa_start is not None:
        swa = (_SwaAverage.load(state["swa"], fold_dir / "resume" / f"e{state['epoch']}.swa.npz")
               if state.get("swa") else _SwaAverage(swa_start))
    if state["epoch"] == 0:
        (fold_dir / "best.keras").unlink(missing_ok=True)  # a stale one from a deleted attempt

    seed_everything(cfg.train.seed + fold)
    if cfg.train.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    base_schedule = create_schedule(cfg.train, steps, cfg.train.epochs)
    extra_cb = schedule_callbacks(cfg.train)
    FoldState = _fold_callback_class()
    inner = None
    phases = _phases(cfg)
    for phase in phases:
        if phase["end"] <= state["epoch"] or state.get("stopped"):
            continue
        pcfg = _with_size(cfg, phase["size"])
        with strategy.scope():
            new = model_from_config(cfg.model, num_classes, phase["size"], task, meta_dim)
            if inner is not None:
                new.set_weights(inner.get_weights())
            elif state["epoch"] > 0:
                new.load_weights(fold_dir / "resume" / f"e{state['epoch']}.weights.h5")
            inner = new
            if phase["frozen"]:
                try:
                    inner.get_layer("backbone").trainable = False
                except ValueError:
                    raise TfkitError(f"train.freeze_epochs={cfg.train.freeze_epochs} needs a model with a layer named 'backbone'")
            mult = _layer_multipliers(inner, cfg.train.layer_lr_decay, cfg.train.layer_lr_groups) if not phase["frozen"] else {}
            schedule = _OffsetSchedule(base_schedule, phase["start"] * steps)
            optimizer = _make_optimizer(cfg, schedule, mult)
            wrapper = TrainingModel(inner, sam_rho=cfg.train.sam_rho, augment_cfg=cfg.augment if device_aug else None,
                                    image_size=phase["size"], seed=cfg.data.seed + 1000 * fold)
            wrapper.compile(optimizer=optimizer, loss=create_loss(cfg.train, task, num_classes),
                            metrics=keras_metrics(cfg.train.metrics, task, num_classes),
                            steps_per_execution=cfg.train.steps_per_execution)
            optimizer.build(wrapper.trainable_variables)
            opt_file = fold_dir / "resume" / f"e{state['epoch']}.optimizer.npz"
            if state["epoch"] > phase["start"] and state.get("phase") == phase["index"] and opt_file.is_file():
                saved = np.load(opt_file)
                if len(saved.files) != len(optimizer.variables):
                    raise TfkitError(f"{fold_dir}/resume: optimizer state does not match the config; delete the folder to restart the fold")
                for i, v in enumerate(optimizer.variables):
                    v.assign(saved[f"v{i}"])
        if cfg.train.sam_rho > 0 and replicas > 1:
            raise TfkitError("train.sam_rho > 0 runs on one replica only (the perturbation is per-device)")
        train_ds = tfdata.build_dataset(records, pcfg, folds=train_folds, mode="train", manifest=manifest,
                                        batch_size=global_batch, augment=not device_aug, repeat=True,
                                        deterministic=cfg.train.deterministic)
        # Repeated with exactly val_steps batches per pass: Keras keeps one
        # validation iterator across epochs, so a finite one would run dry
        # (and a fresh one per epoch pays the iterator-destroy stall).
        val_ds = tfdata.build_dataset(records, pcfg, folds=[fold], mode="eval", manifest=manifest,
                                      batch_size=global_batch).repeat()
        cbs: list = [FoldState(fold_dir, inner, state, cfg.train.monitor, cfg.train.early_stopping, phase, "before", swa)]
        if cfg.train.ema > 0:
            cbs.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        cbs += [FoldState(fold_dir, inner, state, cfg.train.monitor, cfg.train.early_stopping, phase, "after", swa),
                keras.callbacks.TensorBoard(str(fold_dir / "logs"), write_graph=False, profile_batch=0),
                *extra_cb, *callbacks]
        wrapper.fit(train_ds, validation_data=val_ds, epochs=phase["end"], initial_epoch=state["epoch"],
                    steps_per_epoch=steps, validation_steps=val_steps, class_weight=cw, callbacks=cbs,
                    verbose=cfg.train.verbose, shuffle=False)  # tf.data shuffles; Keras would only warn
        if state.get("stopped"):
            break

    index = tfdata.read_index(records, folds=[fold], manifest=manifest)
    if set(index["fold"].unique()) != {fold}:
        raise TfkitError(f"fold {fold}: validation rows carry folds {sorted(index['fold'].unique())}")

    def evaluate(path: Path, size: int) -> tuple[pd.DataFrame, dict]:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        ds = tfdata.build_dataset(records, _with_size(cfg, size), folds=[fold], mode="predict", manifest=manifest,
                                  batch_size=global_batch)
        proba = np.asarray(model.predict(ds, verbose=0), dtype=np.float64)
        if len(index) != len(proba):
            raise TfkitError(f"fold {fold}: {len(proba)} predictions for {len(index)} validation rows")
        frame = oof_frame(index, proba, classes, task)
        return frame, _clean(compute_metrics(index["label"].to_numpy(), oof_probabilities(frame, classes, task),
                                             task, names=cfg.train.metrics, num_classes=num_classes))

    best_size = int(state["best_size"] or cfg.data.image_size)
    swa_info = None
    if swa is not None and swa.count:
        # SWA always becomes model.keras (it is what was asked for); the best epoch stays as best.keras.
        # The rename happens once, so a kill after it and a re-run still evaluate the true best checkpoint.
        if (fold_dir / "model.keras").is_file() and not (fold_dir / "best.keras").is_file():
            os.replace(fold_dir / "model.keras", fold_dir / "best.keras")
        last = state["epoch"] - 1
        phase = next(p for p in phases if p["start"] <= last < p["end"])
        size = int(phase["size"])
        with strategy.scope():
            swa_model = model_from_config(cfg.model, num_classes, size, task, meta_dim)
            if phase["frozen"]:
                swa_model.get_layer("backbone").trainable = False
            swa.assign_to(swa_model)
            bn_ds = tfdata.build_dataset(records, _with_size(cfg, size), folds=train_folds, mode="eval",
                                         manifest=manifest, batch_size=global_batch)
            n_bn = bn_update(swa_model, bn_ds, max_batches=_SWA_BN_BATCHES)
        _write_keras_model(swa_model, fold_dir / "model.keras")
        best_metrics = evaluate(fold_dir / "best.keras", best_size)[1] if (fold_dir / "best.keras").is_file() else None
        swa_info = dict(swa.info(), bn_batches=n_bn, image_size=size, best_checkpoint_metrics=best_metrics)
    else:
        size = best_size
    if not (fold_dir / "model.keras").is_file():
        raise TfkitError(f"fold {fold}: no checkpoint was written (monitor {cfg.train.monitor} never finite)")
    frame, metrics = evaluate(fold_dir / "model.keras", size)
    write_csv(fold_dir / "oof.csv", frame)
    summary = dict(fold=fold, metrics=metrics, best_epoch=state["best_epoch"], best=state["best"],
                   monitor=cfg.train.monitor, epochs_run=state["epoch"], image_size=size, swa=swa_info,
                   n_train=int(tfrec.count_from_names(tfrec.shard_files(records, folds=train_folds, split="train"))), n_val=int(len(index)), replicas=replicas,
                   resumed_from_epoch=resumed_from, seconds=round(time.time() - t_start, 1))
    write_json(fold_dir / "done.json", summary)
    shutil.rmtree(fold_dir / "resume", ignore_errors=True)
    keras.backend.clear_session()
    return summary


def _clean(metrics: dict) -> dict:
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in metrics.items()}


def oof_frame(index: pd.DataFrame, proba: np.ndarray, classes: list[str], task: str) -> pd.DataFrame:
    """Predictions in the ``oof.csv`` layout: ``id, fold, label, p_<class>...``.

    Args:
        index: rows in prediction order (``tfkit.data.read_index``), with id, fold, label.
        proba: model outputs ``[N, C]`` (binary may be ``[N, 1]``; regression ``[N, 1]``).
        classes: class names, in the manifest's order.
        task: the run's task.

    Returns:
        The frame (regression: a ``pred`` column instead of ``p_<class>``).

    Example:
        >>> oof_frame(pd.DataFrame({"id": ["a"], "fold": [0], "label": [1]}), np.array([[0.2, 0.8]]), ["x", "y"], "multiclass")
          id  fold  label  p_x  p_y
        0  a     0      1  0.2  0.8
    """
    frame = index[["id", "fold", "label"]].reset_index(drop=True).copy()
    if task == "regression":
        frame["pred"] = proba.reshape(len(frame), -1)[:, 0]
        return frame
    if task == "binary" and proba.ndim == 2 and proba.shape[1] == 1:
        proba = np.concatenate([1.0 - proba, proba], axis=1)
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise TfkitError(f"model outputs shape {proba.shape}, expected [N, {len(classes)}] for classes {classes}")
    for j, c in enumerate(classes):
        frame[f"p_{c}"] = proba[:, j]
    return frame


def oof_probabilities(frame: pd.DataFrame, classes: list[str], task: str) -> np.ndarray:
    """The prediction array ``compute_metrics`` expects, from ``oof.csv`` columns.

    Args:
        frame: ``oof.csv`` as a DataFrame.
        classes: class names (manifest order).
        task: binary | multiclass | multilabel | regression.

    Returns:
        ``[N]`` positive-class probability (binary) or prediction (regression),
        else ``[N, C]`` probabilities.

    Example:
        >>> p = oof_probabilities(pd.read_csv("run/oof.csv"), classes, "multiclass")  # doctest: +SKIP
    """
    if task == "regression":
        return frame["pred"].to_numpy(dtype=np.float64)
    p = frame[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
    return p[:, 1] if task == "binary" else p


def recompute_cv(run: str | os.PathLike) -> dict:
    """Recompute the overall and per-fold metrics of a run from its ``oof.csv``.

    Args:
        run: run folder.

    Returns:
        ``{"metrics": {...}, "folds": {"k": {...}}}``: what ``cv.json`` holds.

    Example:
        >>> recompute_cv("runs/digits")["metrics"]["accuracy"]  # doctest: +SKIP
    """
    run = Path(run)
    manifest = read_json(run / "manifest.json")
    task = read_json(run / "cv.json")["task"] if (run / "cv.json").is_file() else manifest.get("task", "multiclass")
    frame = pd.read_csv(run / "oof.csv", dtype={"id": str})
    from tfkit.config import load_config

    names = load_config(run / "config.yaml").train.metrics
    return recompute_cv_frame(frame, [str(c) for c in manifest["classes"]], task, names=names)


# --------------------------------------------------------------------------- all folds


def _check_resume_config(cfg: Config, path: Path) -> None:
    import yaml

    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        old = yaml.safe_load(f) or {}
    new = config_to_dict(cfg)
    diffs = []
    for section, values in new.items():
        for key, value in (values or {}).items():
            if (section, key) in _IGNORED_ON_RESUME:
                continue
            before = (old.get(section) or {}).get(key, "<missing>")
            if before != value and not (isinstance(value, tuple) and list(value) == before):
                diffs.append(f"{section}.{key}: {before!r} -> {value!r}")
    if diffs:
        raise TfkitError(f"{path.parent} was trained with another config ({'; '.join(diffs[:3])}); "
                         "use a new --out or restore the config")


def train(cfg: Config, records: str | os.PathLike, out: str | os.PathLike,
          folds: Sequence[int] | None = None, callbacks: Sequence[Any] = ()) -> dict:
    """Train every requested fold (skipping finished ones), then write oof.csv, cv.json and curves.png.

    Args:
        cfg: resolved config (``tfkit.config.load_config``).
        records: train records folder.
        out: run folder; re-running the same command resumes.
        folds: folds to train (default ``cfg.train.folds``, else all).
        callbacks: extra Keras callbacks passed to every fold's ``fit``.

    Returns:
        The ``cv.json`` dict: ``metrics`` (out-of-fold over every finished fold),
        ``folds`` (per fold), ``primary`` (the headline metric's name), ``task``.

    Example:
        >>> cv = train(load_config("tfkit/configs/digits.yaml"), "records", "runs/d")  # doctest: +SKIP
    """
    from tfkit import records as tfrec

    out = Path(out)
    manifest = tfrec.load_manifest(records)
    n_folds = _n_folds(manifest)
    chosen = _check_folds(folds if folds is not None else (cfg.train.folds if cfg.train.folds is not None
                                                           else range(n_folds)), n_folds)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume_config(cfg, out / "config.yaml")
    save_config(cfg, out / "config.yaml")
    write_json(out / "manifest.json", manifest)
    t0 = time.time()
    for k in chosen:
        train_fold(cfg, records, k, out, manifest=manifest, callbacks=callbacks)
    cv = _write_cv(cfg, out, manifest)
    _plot_curves(out)
    _print_summary(cv, time.time() - t0)
    return cv


def _write_cv(cfg: Config, out: Path, manifest: dict) -> dict:
    done = sorted(int(p.parent.name[4:]) for p in out.glob("fold*/done.json"))
    frames = [pd.read_csv(out / f"fold{k}" / "oof.csv", dtype={"id": str}) for k in done]
    oof = pd.concat(frames, ignore_index=True)
    if oof["id"].duplicated().any():
        raise TfkitError(f"{out}: id {oof['id'][oof['id'].duplicated()].iloc[0]!r} is predicted by two folds")
    write_csv(out / "oof.csv", oof)
    task = _task(cfg, manifest)
    cv = recompute_cv_frame(oof, [str(c) for c in manifest["classes"]], task, names=cfg.train.metrics)
    for k in done:
        info = read_json(out / f"fold{k}" / "done.json")
        cv["folds"][str(k)].update(best_epoch=info["best_epoch"], epochs_run=info["epochs_run"],
                                   seconds=info["seconds"], n_val=info["n_val"])
        if info.get("swa"):
            cv["folds"][str(k)]["swa"] = info["swa"]
    primary = next((m for m in cfg.train.metrics if m in cv["metrics"]), next(iter(cv["metrics"]), None))
    cv.update(primary=primary, task=task, n_folds_trained=len(done), n_folds=_n_folds(manifest))
    write_json(out / "cv.json", cv)
    return cv


def recompute_cv_frame(oof: pd.DataFrame, classes: list[str], task: str,
                       names: Sequence[str] | None = None) -> dict:
    """Overall and per-fold metrics of an OOF frame (``oof.csv`` layout).

    Args:
        oof: DataFrame with id, fold, label and ``p_<class>`` (or ``pred``) columns.
        classes: class names in manifest order.
        task: the task name.
        names: metric names (``cfg.train.metrics``); ``None`` for every applicable one.

    Returns:
        ``{"metrics": {...}, "folds": {"k": {...}}}``.

    Example:
        >>> recompute_cv_frame(pd.read_csv("run/oof.csv"), ["0", "1"], "binary")  # doctest: +SKIP
    """
    from tfkit.metrics import compute_metrics

    def m(part: pd.DataFrame) -> dict:
        return _clean(compute_metrics(part["label"].to_numpy(), oof_probabilities(part, classes, task), task,
                                      names=names, num_classes=len(classes)))

    return {"metrics": m(oof), "folds": {str(int(k)): m(p) for k, p in oof.groupby("fold", sort=True)}}


def _print_summary(cv: dict, seconds: float) -> None:
    names = list(cv["metrics"])
    head = f"{'fold':>5} {'epochs':>6} {'best':>5} " + " ".join(f"{n:>9}" for n in names) + f" {'time_s':>8}"
    print(head)
    for k, row in cv["folds"].items():
        print(f"{k:>5} {row.get('epochs_run', ''):>6} {row.get('best_epoch', ''):>5} "
              + " ".join(f"{row.get(n, float('nan')):>9.4f}" for n in names) + f" {row.get('seconds', 0):>8.1f}")
    print(f"{'oof':>5} {'':>6} {'':>5} " + " ".join(f"{cv['metrics'][n]:>9.4f}" for n in names) + f" {seconds:>8.1f}")
    p = cv.get("primary")
    if p:
        print(f"CV {p}: {cv['metrics'][p]:.4f} ({cv['n_folds_trained']}/{cv['n_folds']} folds)")


def _plot_curves(out: Path) -> Path | None:
    plt = pyplot()
    hist = {int(p.parent.name[4:]): pd.read_csv(p) for p in sorted(out.glob("fold*/history.csv"))}
    if not hist:
        return None
    metric_cols = sorted({c[4:] for h in hist.values() for c in h.columns if c.startswith("val_") and c != "val_loss"})
    panels = ["loss", *metric_cols[:3]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels):
        for k, h in hist.items():
            x = h["epoch"] + 1
            line = None
            if name in h:
                (line,) = ax.plot(x, h[name], "--", alpha=0.7)
            if f"val_{name}" in h:
                ax.plot(x, h[f"val_{name}"], "-", color=line.get_color() if line else None, label=f"fold {k}")
        ax.set_title(f"{name} (dashed: train, solid: val)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "curves.png", dpi=100)


# --------------------------------------------------------------------------- lr finder


def lr_find(cfg: Config, records: str | os.PathLike, out: str | os.PathLike, min_lr: float = 1e-7,
            max_lr: float = 1.0, steps: int = 100, fold: int = 0) -> dict:
    """Exponential learning-rate sweep (Smith 2015) on the training folds of ``fold``.

    The LR grows from ``min_lr`` to ``max_lr`` over ``steps`` batches, one
    optimizer step each; the loss is smoothed (EMA, bias-corrected) and the sweep
    stops once it exceeds 4x its minimum or turns non-finite.

    Args:
        cfg: resolved config (model, optimizer, loss and data are used as in training).
        records: train records folder.
        out: folder for ``lr_find.png`` and ``lr_find.csv``.
        min_lr: first learning rate.
        max_lr: last learning rate.
        steps: number of batches (>= 10).
        fold: the held-out fold whose training folds are swept.

    Returns:
        ``{"suggested_lr", "steepest_lr", "min_loss_lr", "csv", "png", "steps_run"}``.
        The suggestion is the LR of steepest descent of the smoothed loss,
        falling back to (LR at the minimum) / 10.

    Example:
        >>> lr_find(cfg, "records", "lr")["suggested_lr"]  # doctest: +SKIP
        0.0031
    """
    import keras

    from tfkit import data as tfdata
    from tfkit import records as tfrec
    from tfkit.losses import create_loss
    from tfkit.models import model_from_config
    from tfkit.strategy import get_strategy, set_mixed_precision

    if not 0 < min_lr < max_lr:
        raise TfkitError(f"lr-find: expected 0 < --min-lr < --max-lr, got {min_lr} and {max_lr}")
    if steps < 10:
        raise TfkitError(f"lr-find: --steps must be at least 10, got {steps}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = tfrec.load_manifest(records)
    n_folds = _n_folds(manifest)
    train_folds = [f for f in range(n_folds) if f != _check_folds([fold], n_folds)[0]]
    task = _task(cfg, manifest)
    num_classes = len(manifest["classes"])
    strategy = get_strategy()
    set_mixed_precision(cfg.train.mixed_precision, strategy)
    global_batch = cfg.data.batch_size * strategy.num_replicas_in_sync
    seed_everything(cfg.train.seed)
    ratio = max_lr / min_lr

    class Sweep(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            import tensorflow as tf

            frac = tf.cast(step, tf.float32) / float(steps - 1)
            return min_lr * tf.pow(tf.constant(ratio, tf.float32), frac)

    meta_dim = tfdata.metadata_dim(manifest, cfg.data.metadata) if cfg.data.metadata else 0
    device_aug = cfg.data.augment_on == "device"
    with strategy.scope():
        inner = model_from_config(cfg.model, num_classes, cfg.data.image_size, task, meta_dim)
        wrapper = TrainingModel(inner, sam_rho=cfg.train.sam_rho, augment_cfg=cfg.augment if device_aug else None,
                                image_size=cfg.data.image_size, seed=cfg.data.seed)
        wrapper.compile(optimizer=_make_optimizer(cfg, Sweep(), {}), loss=create_loss(cfg.train, task, num_classes))
    ds = tfdata.build_dataset(records, cfg, folds=train_folds, mode="train", manifest=manifest,
                              batch_size=global_batch, augment=not device_aug, repeat=True)
    lrs: list[float] = []
    losses: list[float] = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            loss = float((logs or {}).get("loss", float("nan")))
            lrs.append(min_lr * ratio ** (epoch / (steps - 1)))
            losses.append(loss)
            sm = _smooth(losses)
            if not math.isfinite(loss) or (len(sm) > 5 and sm[-1] > 4 * min(sm)):
                self.model.stop_training = True

    # One "epoch" per batch: Keras reports the running mean over an epoch, so
    # one-step epochs give each batch's own loss (the iterator lives across them).
    wrapper.fit(ds, epochs=steps, steps_per_epoch=1, callbacks=[Recorder()], verbose=0, shuffle=False)
    sm = _smooth(losses)
    lr_arr = np.asarray(lrs)
    finite = np.isfinite(sm)
    if finite.sum() < 3:
        raise TfkitError("lr-find: the loss was not finite at the smallest learning rates; lower --min-lr")
    i_min = int(np.nanargmin(np.where(finite, sm, np.inf)))
    min_loss_lr = float(lr_arr[i_min])
    steepest = None
    if i_min >= 2:
        grad = np.gradient(sm[: i_min + 1], np.log(lr_arr[: i_min + 1]))
        steepest = float(lr_arr[int(np.argmin(grad))])
    # Never suggest outside the swept range: below it nothing was measured.
    suggested = steepest if steepest is not None else max(min_loss_lr / 10, float(lr_arr[0]))
    write_csv(out / "lr_find.csv", pd.DataFrame({"lr": lr_arr, "loss": losses, "smoothed": sm}))
    _plot_lr(lr_arr, np.asarray(losses), sm, suggested, out / "lr_find.png")
    print(f"lr-find: suggested lr {suggested:.3g} (steepest descent {steepest if steepest is None else f'{steepest:.3g}'}, "
          f"min loss at {min_loss_lr:.3g}; {len(losses)} steps)")
    keras.backend.clear_session()
    return dict(suggested_lr=float(suggested), steepest_lr=steepest, min_loss_lr=min_loss_lr,
                steps_run=len(losses), csv=str(out / "lr_find.csv"), png=str(out / "lr_find.png"))


def _smooth(values: Sequence[float], beta: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (fastai's lr-finder smoothing)."""
    avg, out = 0.0, []
    for i, v in enumerate(values, 1):
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return np.asarray(out, dtype=np.float64)


def _plot_lr(lrs: np.ndarray, losses: np.ndarray, smooth: np.ndarray, suggested: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smooth, label="smoothed")
    ax.axvline(suggested, color="r", ls="--", label=f"suggested {suggested:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = smooth[np.isfinite(smooth)]
    if finite.size:
        ax.set_ylim(finite.min() * 0.9, min(finite.max(), finite[0] * 2) * 1.1)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
