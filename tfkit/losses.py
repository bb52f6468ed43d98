"""Losses for each task: cross-entropy with label smoothing, focal loss,
MSE for regression; and "balanced" class weights for imbalanced data.

Targets follow the pipeline contract: one-hot ``[B, C]`` for multiclass,
``[B, 1]`` for binary and regression, multi-hot ``[B, C]`` for multilabel.

Example:
    >>> from tfkit.config import TrainConfig
    >>> loss = create_loss(TrainConfig(loss="focal", focal_gamma=2.0), "multiclass", 10)
    >>> type(loss).__name__
    'CategoricalFocalCrossentropy'
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from tfkit.config import TrainConfig
from tfkit.utils import TfkitError

LOSSES = ("auto", "crossentropy", "focal", "mse")


def check_loss(train_cfg: TrainConfig, task: str) -> str:
    """Check the loss settings against the task; one-line errors naming the key.

    Args:
        train_cfg: the ``train`` section (``loss``, ``label_smoothing``, ``focal_gamma``).
        task: binary | multiclass | multilabel | regression.

    Returns:
        The concrete loss name (``auto`` resolved).

    Example:
        >>> from tfkit.config import TrainConfig
        >>> check_loss(TrainConfig(loss="auto"), "regression")
        'mse'
    """
    name = train_cfg.loss
    if name not in LOSSES:
        raise TfkitError(f"train.loss: unknown loss {name!r} (expected one of: {', '.join(LOSSES)})")
    if task not in ("binary", "multiclass", "multilabel", "regression"):
        raise TfkitError(f"create_loss: unknown task {task!r}")
    if name == "auto":
        name = "mse" if task == "regression" else "crossentropy"
    if not 0.0 <= float(train_cfg.label_smoothing) < 1.0:
        raise TfkitError(f"train.label_smoothing: expected a value in [0, 1), got {float(train_cfg.label_smoothing)}")
    if task == "regression" and name != "mse":
        raise TfkitError(f"train.loss={name} is a classification loss; regression uses mse (or auto)")
    if task != "regression" and name == "mse":
        raise TfkitError(f"train.loss=mse is for regression; task {task} uses crossentropy or focal")
    if name == "focal" and float(train_cfg.focal_gamma) < 0:
        raise TfkitError(f"train.focal_gamma: expected >= 0, got {float(train_cfg.focal_gamma)}")
    return name


def create_loss(train_cfg: Any, task: str, num_classes: int) -> keras.losses.Loss:
    """The Keras loss for ``task`` from ``train_cfg``.

    Args:
        train_cfg: a :class:`tfkit.config.TrainConfig` (``loss``,
            ``label_smoothing``, ``focal_gamma``).
        task: ``binary | multiclass | multilabel | regression``.
        num_classes: number of classes (for checks only).

    Returns:
        ``auto``: MSE for regression, else cross-entropy. ``crossentropy``:
        categorical (multiclass) or binary (binary, multilabel) with label
        smoothing. ``focal``: ``CategoricalFocalCrossentropy`` /
        ``BinaryFocalCrossentropy`` with ``gamma`` and smoothing (no alpha
        re-weighting: use class weights for that). ``mse``: mean squared error.

    Raises:
        TfkitError: unknown loss, or a classification loss for regression
        (or MSE for classification).

    Example:
        >>> from tfkit.config import TrainConfig
        >>> create_loss(TrainConfig(), "binary", 2).name
        'binary_crossentropy'
    """
    name = check_loss(train_cfg, task)
    smoothing = float(train_cfg.label_smoothing)
    if task == "regression":
        return keras.losses.MeanSquaredError()
    categorical = task == "multiclass"
    if name == "crossentropy":
        if categorical:
            return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
        return keras.losses.BinaryCrossentropy(label_smoothing=smoothing)
    gamma = float(train_cfg.focal_gamma)
    if categorical:
        # Keras' default alpha=0.25 only rescales the loss for softmax targets; 1.0 keeps
        # gamma=0 identical to cross-entropy.
        return keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=gamma, label_smoothing=smoothing)
    return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=False, gamma=gamma, label_smoothing=smoothing)


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> dict[int, float]:
    """"Balanced" class weights: ``n / (num_classes * count[c])`` (scikit-learn's
    ``compute_class_weight("balanced")``), for ``fit(class_weight=...)``.

    Args:
        labels: integer class index per training example.
        num_classes: number of classes.

    Returns:
        ``{class: weight}`` for every class in ``0..num_classes-1``; a class
        with no examples gets weight 0 (it never occurs in training).

    Raises:
        TfkitError: a label outside ``0..num_classes-1`` or no labels.

    Example:
        >>> class_weights([0, 0, 0, 1], 2)
        {0: 0.6666666666666666, 1: 2.0}
    """
    y = np.asarray(labels).reshape(-1)
    if y.size == 0:
        raise TfkitError("class_weights: no labels")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise TfkitError("class_weights: expected integer class indices")
        y = y.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise TfkitError(f"class_weights: label {int(y[bad][0])} outside 0..{num_classes - 1}")
    counts = np.bincount(y, minlength=num_classes)
    return {c: (float(y.size / (num_classes * counts[c])) if counts[c] else 0.0) for c in range(num_classes)}
