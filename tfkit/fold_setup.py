"""What training on all folds but one needs, derived once: shared by ``train_fold`` and ``lr_find``.

:class:`FoldSetup` checks the fold against the records' folds, resolves the
task, picks the distribution strategy and mixed precision, and then builds
the model, its compiled :class:`~tfkit.train_step.TrainingModel` wrapper and
the datasets the same way for every caller.

Example::

    setup = FoldSetup.create(cfg, "records", fold=0)
    with setup.strategy.scope():
        wrapper = setup.wrap(setup.build_model(64), optimizer, 64, seed=0)
    wrapper.fit(setup.dataset(64, "train"), steps_per_epoch=10)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import keras

from tfkit import data as tfdata
from tfkit import records as tfrec
from tfkit.checks import resolve_run_config, validate
from tfkit.config import Config
from tfkit.distill import TrainTargets, prepare_targets
from tfkit.losses import create_loss
from tfkit.manifest import Manifest, resolve_task
from tfkit.metadata import fit_encoding
from tfkit.metrics import keras_metrics
from tfkit.models import model_from_config
from tfkit.strategy import get_strategy, gradient_replicas, set_mixed_precision
from tfkit.targets import head_size, output_names
from tfkit.train_step import TrainingModel
from tfkit.utils import TfkitError

__all__ = ["FoldSetup", "with_size"]


def with_size(cfg: Config, size: int) -> Config:
    """A copy of ``cfg`` whose data section uses ``size`` pixels."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=int(size)))


@dataclasses.dataclass
class FoldSetup:
    """What training on the folds other than ``fold`` needs, derived once (shared with ``lr_find``).

    Build it with :meth:`create`; it checks the fold, the task and the replicas before any work.
    """

    cfg: Config
    records: Path
    manifest: Manifest
    fold: int
    train_folds: list[int]
    task: str
    classes: list[str]
    strategy: Any
    global_batch: int
    metadata: dict | None  # the metadata encoding fitted on the training folds (tfkit.metadata)
    targets: TrainTargets | None = None  # teacher soft targets / pseudo rows of this fold (tfkit.distill)

    @classmethod
    def create(cls, cfg: Config, records: str | os.PathLike, fold: int,
               manifest: Manifest | dict | None = None, strategy: Any = None,
               targets: TrainTargets | None = None) -> "FoldSetup":
        """Check ``fold`` against the records, pick the strategy and mixed precision.

        Args:
            cfg: resolved config.
            records: train records folder.
            fold: the held-out fold.
            manifest: the records' manifest (read when ``None``).
            strategy: the distribution strategy (detected when ``None``).
            targets: the run's :func:`tfkit.distill.prepare_targets` (prepared here when ``None``
                and the config sets ``train.teacher`` or ``train.pseudo``).

        Returns:
            The set-up.
        """
        manifest = Manifest.from_dict(manifest or tfrec.load_manifest(records))
        fold = manifest.check_folds([fold])[0]
        strategy = strategy or get_strategy()
        cfg = resolve_run_config(cfg, manifest)
        validate(cfg, manifest, replicas=gradient_replicas(strategy))
        task = resolve_task(cfg.model.task, manifest=manifest)
        set_mixed_precision(cfg.train.mixed_precision, strategy)
        train_folds = [f for f in range(manifest.n_folds) if f != fold]
        metadata = None
        if cfg.data.metadata:
            # Fitted on the training folds' rows only: the validation fold is not even read.
            rows = tfdata.read_index(records, folds=train_folds, manifest=manifest, extra=True)
            metadata = fit_encoding(rows, cfg.data.metadata, manifest, categorical=cfg.model.meta_categorical)
        targets = targets or prepare_targets(cfg, records, manifest, folds=[fold])
        return cls(cfg=cfg, records=Path(records), manifest=manifest, fold=fold, train_folds=train_folds, task=task,
                   classes=output_names(manifest, task), strategy=strategy,
                   global_batch=cfg.data.batch_size * strategy.num_replicas_in_sync, metadata=metadata,
                   targets=targets.for_fold(fold) if targets is not None else None)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device_augment(self) -> bool:
        return self.cfg.data.augment_on == "device"

    def build_model(self, size: int) -> keras.Model:
        """The config's model at ``size`` pixels (call inside ``strategy.scope()``)."""
        num_classes, n_targets = head_size(self.manifest, self.task)
        return model_from_config(self.cfg.model, num_classes, size, self.task, metadata=self.metadata,
                                 channels=self.manifest.n_channels, n_targets=n_targets)

    def freeze_backbone(self, model: keras.Model) -> None:
        """Make the layer named ``backbone`` non-trainable (``train.freeze_epochs``)."""
        try:
            model.get_layer("backbone").trainable = False
        except ValueError:
            raise TfkitError(f"train.freeze_epochs={self.cfg.train.freeze_epochs} needs a model with a layer named 'backbone'")

    def wrap(self, model: keras.Model, optimizer: Any, size: int, seed: int, metrics: bool = True) -> TrainingModel:
        """``model`` inside a compiled :class:`TrainingModel` (call inside ``strategy.scope()``).

        Args:
            model: the model to train.
            optimizer: its optimizer.
            size: image size (for on-device augmentation).
            seed: seed of on-device augmentation.
            metrics: compile ``train.metrics`` and ``train.steps_per_execution`` too.

        Returns:
            The compiled wrapper.
        """
        t = self.cfg.train
        wrapper = TrainingModel(model, sam_rho=t.sam_rho, augment_cfg=self.cfg.augment if self.device_augment else None,
                                image_size=size, seed=seed)
        # Padded eval batches carry a row mask as sample weights, which Keras gives only to
        # weighted_metrics; the train steps give them none, like Keras' unweighted metrics.
        extra = {"weighted_metrics": keras_metrics(t.metrics, self.task, self.num_classes),
                 "steps_per_execution": t.steps_per_execution} if metrics else {}
        wrapper.compile(optimizer=optimizer, loss=create_loss(t, self.task, self.num_classes), **extra)
        return wrapper

    def dataset(self, size: int, mode: str, folds: Sequence[int] | None = None, **kwargs: Any) -> Any:
        """``tfkit.data.build_dataset`` at ``size`` pixels on ``folds`` (default: the training folds).

        ``mode="train"`` repeats and augments on the host unless augmentation runs on device, and
        carries the fold's teacher targets and pseudo rows; the other modes yield the hard labels;
        eval and predict batches are padded to the global batch (unless ``pad_remainder`` is given):
        one static shape, so one trace per fold on TensorFlow and one program split over the devices
        on JAX; slice predictions to the validation rows.
        """
        if mode == "train":
            kwargs = dict(augment=not self.device_augment, repeat=True, targets=self.targets, **kwargs)
        else:
            kwargs.setdefault("pad_remainder", True)
        return tfdata.build_dataset(self.records, with_size(self.cfg, size),
                                    folds=self.train_folds if folds is None else list(folds), mode=mode,
                                    manifest=self.manifest, batch_size=self.global_batch, **kwargs)

    def statistics_batches(self, size: int) -> Any:
        """Un-augmented, unpadded batches of the training folds, for BatchNorm statistics passes
        (precise BN, SWA): padded zero rows would enter the statistics; the passes skip the short
        last batch instead."""
        return self.dataset(size, "eval", pad_remainder=False)

    def train_steps(self) -> int:
        """Full batches per epoch of the training stream: the training folds plus the pseudo rows."""
        n_pseudo = self.targets.n_pseudo if self.targets is not None else 0
        return (self.count(self.train_folds) + n_pseudo) // self.global_batch

    def count(self, folds: Sequence[int]) -> int:
        """Examples in the train shards of ``folds`` (from the shard names)."""
        return int(tfrec.count_from_names(tfrec.shard_files(self.records, folds=list(folds), split="train")))
