"""Stochastic weight averaging and BatchNorm statistics recomputation.

SWA (``swa_epochs`` = N > 0, Izmailov et al. 2018; replaces ``tfa.optimizers.SWA``):
the weights at the end of each of the last N epochs are averaged with equal
weights (the weights that are validated and checkpointed, i.e. the EMA weights
when ``ema`` > 0); the learning-rate schedule is left alone, so SWA averages
whatever it gives (best with ``cosine_restarts`` or ``cyclic``). At the end the
average is loaded and BatchNorm moving statistics are recomputed with
:func:`bn_update` (one pass in training mode, no weight update, over up to
:data:`SWA_BN_BATCHES` un-augmented batches of the training folds in file
order, as an exact mean of the batch statistics). Other non-trainable float
variables are averaged too (they are constant while frozen); integer ones keep
their last value. The running average survives a kill (``SwaAverage.save``).

:func:`bn_update` is useful on its own: any model whose BatchNorm statistics
lag its weights (few steps per epoch, momentum 0.99) can be given exact
statistics of its training data.

Example::

    swa = SwaAverage(start=8)
    swa.update(model, epoch=8)   # at each epoch end from ``start`` on
    swa.assign_to(model)
    bn_update(model, train_ds_without_augmentation)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfkit.batchnorm import recompute_statistics, trainable_batchnorms
from tfkit.config import TrainConfig
from tfkit.utils import TfkitError

__all__ = ["SWA_BN_BATCHES", "SwaAverage", "bn_update", "swa_start"]

SWA_BN_BATCHES = 200  # batches of the BatchNorm statistics pass after SWA


def swa_start(t: TrainConfig) -> int | None:
    """First epoch (0-based) whose end-of-epoch weights enter the SWA average.

    Args:
        t: the ``train`` config section (``swa_epochs``, ``epochs``).

    Returns:
        The epoch, or ``None`` when SWA is off.
    """
    n, epochs = int(t.swa_epochs), int(t.epochs)
    if n == 0:
        return None
    if not 1 <= n <= epochs:
        raise TfkitError(f"train.swa_epochs: expected 0 (off) to train.epochs={epochs}, got {n}")
    return epochs - n


class SwaAverage:
    """Equal-weight running mean of a model's weights (float64), saved with the resume state.

    Args:
        start: first epoch that is averaged.
    """

    def __init__(self, start: int):
        self.start = int(start)
        self.count = 0
        self.epochs: list[int] = []
        self.mean: list[np.ndarray] = []

    def update(self, model: Any, epoch: int) -> None:
        """Add ``model``'s current weights as the average's next member (epoch ``epoch``)."""
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
        """Load the average into ``model`` (same architecture)."""
        if len(model.weights) != len(self.mean):
            raise TfkitError(f"SWA average holds {len(self.mean)} weights, the model has {len(model.weights)}")
        for v, m in zip(model.weights, self.mean):
            v.assign(m.astype(v.dtype))

    def info(self) -> dict:
        """The JSON-able part of the state: ``{"start", "count", "epochs"}``."""
        return {"start": self.start, "count": self.count, "epochs": list(self.epochs)}

    def save(self, path: Path) -> None:
        """Write the averaged arrays to ``path`` (``.npz``) atomically."""
        tmp = path.with_name(".swa.tmp.npz")
        np.savez(tmp, **{f"w{i}": m for i, m in enumerate(self.mean)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, info: dict, path: Path) -> "SwaAverage":
        """The average saved by :meth:`info` and :meth:`save`.

        Args:
            info: the dict :meth:`info` returned.
            path: the ``.npz`` :meth:`save` wrote (needed when ``count`` > 0).

        Returns:
            The restored average.
        """
        swa = cls(info["start"])
        swa.count, swa.epochs = int(info["count"]), list(info["epochs"])
        if swa.count:
            if not path.is_file():
                raise TfkitError(f"{path} is missing: the SWA average cannot be resumed; delete {path.parent} to restart the fold")
            saved = np.load(path)
            swa.mean = [saved[f"w{i}"] for i in range(len(saved.files))]
        return swa


def bn_update(model: Any, dataset: Any, max_batches: int = SWA_BN_BATCHES) -> int:
    """Recompute BatchNorm moving statistics with one pass in training mode (SWA's ``bn_update``).

    Each trainable BatchNormalization layer's moving mean/variance become the
    mean over the batches of the batch statistics
    (:func:`tfkit.batchnorm.recompute_statistics`, compiled). No other variable
    changes: a forward pass computes no gradient. Frozen (non-trainable)
    BatchNorm layers keep their statistics.

    Args:
        model: a Keras model.
        dataset: yields ``(x, y)`` or ``x`` batches the model accepts (a ``tf.data.Dataset`` or any iterable).
        max_batches: at most this many batches are used.

    Returns:
        The number of batches used (0 when the model has no trainable BatchNorm).

    Example:
        >>> import keras, tensorflow as tf
        >>> inp = keras.Input((2,))
        >>> model = keras.Model(inp, keras.layers.BatchNormalization()(inp))
        >>> ds = tf.data.Dataset.from_tensor_slices(tf.constant([[1.0, 2.0], [3.0, 6.0]])).batch(1)
        >>> bn_update(model, ds)
        2
        >>> keras.ops.convert_to_numpy(model.layers[1].moving_mean).tolist()
        [2.0, 4.0]
    """
    if not trainable_batchnorms(model):
        return 0
    n = recompute_statistics(model, dataset, max_batches)
    if n == 0:
        raise TfkitError("SWA: the training folds yielded no batch for the BatchNorm statistics pass")
    return n
