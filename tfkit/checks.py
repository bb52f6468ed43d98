"""The whole config checked at once, before any work starts.

``train``, ``lr-find``, ``tune`` and ``predict`` call :func:`validate` before
they create a folder or build a model, so a bad value fails in one line that
names its key (exit status 2 from the CLI) and leaves nothing behind. Each
section's rules live with the code that uses the value (``models``, ``losses``,
``optim``, ``scheduler``, ``augment``, ``swa``...): :func:`validate` runs them
all together, plus the checks that need several sections at once (the monitor
must be a metric the run logs; SAM needs one replica). The prediction section's
allowed values are defined here, since :mod:`tfkit.predict` comes after
training and the CLI and training must not import it.

Example:
    >>> from tfkit.config import load_config
    >>> validate(load_config(None, ["model.name=small_cnn"]))
    >>> validate(load_config(None, ["train.lr=0"]))
    Traceback (most recent call last):
    ...
    tfkit.utils.TfkitError: train.lr/min_lr: expected 0 <= min_lr <= lr and lr > 0, got lr=0.0, min_lr=1e-06
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tfkit.augment import check_augment_config
from tfkit.backend import BACKENDS
from tfkit.batchnorm import PRECISE_BN_MODES
from tfkit.config import Config, DataConfig, PredictConfig, TrainConfig
from tfkit.distill import check_distill_config
from tfkit.heads import check_head
from tfkit.losses import check_loss
from tfkit.manifest import Manifest, resolve_task
from tfkit.metadata import check_categorical
from tfkit.metrics import METRICS, applicable_metrics, logged_metrics, resolve_metrics
from tfkit.models import check_model_config
from tfkit.optim import check_optimizer
from tfkit.scheduler import check_schedule, phases
from tfkit.strategy import PRECISION_MODES
from tfkit.swa import swa_start
from tfkit.utils import TfkitError

__all__ = ["validate", "resolve_run_config", "check_tta", "monitor_names", "AUGMENT_ON", "CLASS_WEIGHTS", "TTA_MODES", "MAX_VIEWS",
           "AVERAGES", "FOLD_WEIGHTS", "OUTPUTS"]

AUGMENT_ON = ("host", "device")
CLASS_WEIGHTS = (None, "balanced")
# "auto" is made concrete when a config is loaded (tfkit.config.resolve_tta_mode)
TTA_MODES = ("auto", "dihedral", "flips", "five_crop", "ten_crop", "augment")
# tfkit.augment.MAX_VIEWS, spelled out so checking a config stays light (a test keeps them equal)
MAX_VIEWS = {"dihedral": 8, "flips": 4, "five_crop": 6, "ten_crop": 12}
AVERAGES = ("mean", "gmean")
FOLD_WEIGHTS = ("equal", "cv")
OUTPUTS = ("proba", "label")


def validate(cfg: Config, manifest: Mapping[str, Any] | None = None, replicas: int = 1,
             predicting: bool = False) -> None:
    """Check every section of ``cfg``; raise a one-line :class:`TfkitError` naming the first bad key.

    Args:
        cfg: the resolved config.
        manifest: the records' (or run's) manifest; with it the task, the loss and
            the monitor are checked against the records' classes.
        replicas: replicas that each compute their own gradient (SAM needs 1; a JAX
            ``DataParallel`` program computes one global gradient: see
            :func:`tfkit.strategy.gradient_replicas`).
        predicting: also check the ``predict`` section (``tfkit predict``).

    Returns:
        None.
    """
    if not predicting:  # a run's own config was resolved when it trained
        cfg = resolve_run_config(cfg, manifest)
    _check_data(cfg.data)
    check_augment_config(cfg.augment)
    check_model_config(cfg.model.name, cfg.model.pooling, cfg.model.dropout, cfg.data.image_size)
    phases(cfg)  # epochs >= 1 and a well-formed progressive schedule
    task = resolve_task(cfg.model.task, manifest=manifest) if manifest is not None else None
    check_head(cfg.model.head, task, cfg.model.arcface_scale, cfg.model.arcface_margin)
    check_categorical(cfg.model.meta_categorical)
    _check_train(cfg.train, task, len(manifest.get("classes") or []) if manifest is not None else 0, replicas)
    if predicting:
        p = cfg.predict
        check_tta(p.tta, p.tta_mode, p.average, task or "multiclass")
        _check_predict(p)


def resolve_run_config(cfg: Config, manifest: Mapping[str, Any] | None) -> Config:
    """``cfg`` with ``train.metrics`` and ``train.monitor`` made concrete for the records' task.

    ``metrics: null`` becomes the task's defaults and ``monitor: auto`` the metric
    that fits it (:func:`tfkit.metrics.resolve_metrics`); QWK asked of classes not
    declared ordinal (``data.ordinal`` or the manifest's ``ordinal``) is refused.
    The run folder saves this resolved config, so every later stage reads concrete names.

    Args:
        cfg: the config.
        manifest: the training records' manifest (``None``: ``cfg`` is returned as is).

    Returns:
        The resolved config (a copy; ``cfg`` is unchanged).

    Example:
        >>> from tfkit.config import load_config
        >>> r = resolve_run_config(load_config(None), {"task": "binary", "classes": ["a", "b"]})
        >>> r.train.metrics, r.train.monitor
        (['auc', 'log_loss', 'accuracy', 'f1'], 'val_auc')
    """
    if manifest is None:
        return cfg
    m = Manifest.from_dict(manifest)
    task = resolve_task(cfg.model.task, manifest=m)
    names, monitor = resolve_metrics(cfg.train.metrics, cfg.train.monitor, task,
                                     bool(cfg.data.ordinal or m.ordinal), m.classes)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, metrics=names, monitor=monitor))


def _check_data(d: DataConfig) -> None:
    if d.augment_on not in AUGMENT_ON:
        raise TfkitError(f"data.augment_on: expected host or device, got {d.augment_on!r}")
    if int(d.batch_size) < 1:
        raise TfkitError(f"data.batch_size: expected a positive integer, got {d.batch_size}")


def _check_train(t: TrainConfig, task: str | None, num_classes: int, replicas: int) -> None:
    check_optimizer(t)
    check_schedule(t)
    if task is not None:
        check_loss(t, task)
    allowed = monitor_names(list(METRICS) if t.metrics is None else t.metrics, task, num_classes)
    if t.monitor not in allowed and t.monitor != "auto":
        raise TfkitError(f"train.monitor: {t.monitor!r} is not a metric of this run (expected one of: {', '.join(allowed)})")
    swa_start(t)
    if t.precise_bn not in PRECISE_BN_MODES:
        raise TfkitError(f"train.precise_bn: expected one of {', '.join(PRECISE_BN_MODES)}, got {t.precise_bn!r}")
    if t.mixed_precision not in PRECISION_MODES:
        raise TfkitError(f"train.mixed_precision: unknown mode {t.mixed_precision!r} "
                         f"(expected one of: {', '.join(PRECISION_MODES)})")
    if t.class_weight not in CLASS_WEIGHTS:
        raise TfkitError(f"train.class_weight: expected null or balanced, got {t.class_weight!r}")
    if t.sam_rho < 0:
        raise TfkitError(f"train.sam_rho: expected a radius >= 0 (0 turns SAM off), got {t.sam_rho}")
    if t.sam_rho > 0 and replicas > 1:
        raise TfkitError("train.sam_rho > 0 runs on one TensorFlow replica only (the perturbation is per-device); "
                         "on several devices use train.backend=jax (one global gradient)")
    if t.backend not in BACKENDS:
        raise TfkitError(f"train.backend: unknown backend {t.backend!r} (expected one of: {', '.join(BACKENDS)})")
    check_distill_config(t, task)


def monitor_names(metrics: list[str], task: str | None, num_classes: int) -> list[str]:
    """What a run logs and ``train.monitor`` may name: losses and metrics, on training and validation data.

    Args:
        metrics: ``train.metrics``.
        task: the resolved task; ``None`` (records unknown) allows every listed metric.
        num_classes: number of classes.

    Returns:
        ``["loss", "val_loss", "accuracy", "val_accuracy", ...]``.

    Example:
        >>> monitor_names(["accuracy", "rmse"], "multiclass", 3)
        ['loss', 'val_loss', 'accuracy', 'val_accuracy']
    """
    names = logged_metrics(metrics, task, num_classes) if task is not None else applicable_metrics(metrics)
    return [n for m in ["loss", *names] for n in (m, f"val_{m}")]


def check_tta(n_views: int, mode: str, average: str, task: str = "multiclass") -> None:
    """Validate TTA options; raise a one-line :class:`TfkitError` naming the bad option.

    Example:
        >>> check_tta(8, "dihedral", "gmean")
        >>> check_tta(9, "dihedral", "mean")
        Traceback (most recent call last):
        ...
        tfkit.utils.TfkitError: predict.tta=9: tta_mode=dihedral has only 8 distinct views
    """
    if mode not in TTA_MODES:
        raise TfkitError(f"predict.tta_mode: expected one of {', '.join(TTA_MODES)}, got {mode!r}")
    if average not in AVERAGES:
        raise TfkitError(f"predict.average: expected one of {', '.join(AVERAGES)}, got {average!r}")
    if not isinstance(n_views, int) or n_views < 1:
        raise TfkitError(f"predict.tta: expected an integer >= 1, got {n_views!r}")
    if mode in MAX_VIEWS and n_views > MAX_VIEWS[mode]:
        raise TfkitError(f"predict.tta={n_views}: tta_mode={mode} has only {MAX_VIEWS[mode]} distinct views")
    if average == "gmean" and task == "regression":
        raise TfkitError("predict.average=gmean is undefined for regression outputs (use mean)")


def _check_predict(p: PredictConfig) -> None:
    if p.fold_weights not in FOLD_WEIGHTS:
        raise TfkitError(f"predict.fold_weights: expected 'equal' or 'cv', got {p.fold_weights!r}")
    if p.output not in OUTPUTS:
        raise TfkitError(f"predict.output: expected 'proba' or 'label', got {p.output!r}")
    if p.batch_size is not None and int(p.batch_size) < 1:
        raise TfkitError(f"predict.batch_size: expected a positive integer or null, got {p.batch_size}")
