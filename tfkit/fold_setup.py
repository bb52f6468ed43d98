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
from tfkit.config import Config
from tfkit.losses import create_loss
from tfkit.manifest import Manifest, resolve_task
from tfkit.metrics import keras_metrics
from tfkit.models import model_from_config
from tfkit.strategy import get_strategy, set_mixed_precision
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
    meta_dim: int

    @classmethod
    def create(cls, cfg: Config, records: str | os.PathLike, fold: int,
               manifest: Manifest | dict | None = None) -> "FoldSetup":
        """Check ``fold`` against the records, pick the strategy and mixed precision.

        Args:
            cfg: resolved config.
            records: train records folder.
            fold: the held-out fold.
            manifest: the records' manifest (read when ``None``).

        Returns:
            The set-up.
        """
        manifest = Manifest.from_dict(manifest or tfrec.load_manifest(records))
        fold = manifest.check_folds([fold])[0]
        task = resolve_task(cfg.model.task, manifest=manifest)  # a task the records cannot feed fails here
        if cfg.data.augment_on not in ("host", "device"):
            raise TfkitError(f"data.augment_on: expected host or device, got {cfg.data.augment_on!r}")
        strategy = get_strategy()
        set_mixed_precision(cfg.train.mixed_precision, strategy)
        if cfg.train.sam_rho > 0 and strategy.num_replicas_in_sync > 1:
            raise TfkitError("train.sam_rho > 0 runs on one replica only (the perturbation is per-device)")
        meta_dim = tfdata.metadata_dim(manifest, cfg.data.metadata) if cfg.data.metadata else 0
        return cls(cfg=cfg, records=Path(records), manifest=manifest, fold=fold,
                   train_folds=[f for f in range(manifest.n_folds) if f != fold], task=task,
                   classes=output_names(manifest, task), strategy=strategy,
                   global_batch=cfg.data.batch_size * strategy.num_replicas_in_sync, meta_dim=meta_dim)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device_augment(self) -> bool:
        return self.cfg.data.augment_on == "device"

    def build_model(self, size: int) -> keras.Model:
        """The config's model at ``size`` pixels (call inside ``strategy.scope()``)."""
        num_classes, n_targets = head_size(self.manifest, self.task)
        return model_from_config(self.cfg.model, num_classes, size, self.task, self.meta_dim,
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
        extra = dict(metrics=keras_metrics(t.metrics, self.task, self.num_classes),
                     steps_per_execution=t.steps_per_execution) if metrics else {}
        wrapper.compile(optimizer=optimizer, loss=create_loss(t, self.task, self.num_classes), **extra)
        return wrapper

    def dataset(self, size: int, mode: str, folds: Sequence[int] | None = None, **kwargs: Any) -> Any:
        """``tfkit.data.build_dataset`` at ``size`` pixels on ``folds`` (default: the training folds).

        ``mode="train"`` repeats and augments on the host unless augmentation runs on device.
        """
        if mode == "train":
            kwargs = dict(augment=not self.device_augment, repeat=True, **kwargs)
        return tfdata.build_dataset(self.records, with_size(self.cfg, size),
                                    folds=self.train_folds if folds is None else list(folds), mode=mode,
                                    manifest=self.manifest, batch_size=self.global_batch, **kwargs)

    def count(self, folds: Sequence[int]) -> int:
        """Examples in the train shards of ``folds`` (from the shard names)."""
        return int(tfrec.count_from_names(tfrec.shard_files(self.records, folds=list(folds), split="train")))
