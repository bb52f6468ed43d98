"""Losses for each task: cross-entropy with label smoothing, focal loss and
the asymmetric loss for binary and multi-label targets; MSE, MAE and Huber
for regression; the earth mover's distance for distribution targets; and
"balanced" class weights for imbalanced data.

Targets follow the pipeline contract: one-hot ``[B, C]`` for multiclass,
``[B, 1]`` for binary, multi-hot ``[B, C]`` for multilabel, ``[B, T]`` floats
for regression (T target columns) and ``[B, K]`` histograms summing to 1 for
distribution targets (K bins).

The two losses Keras lacks (:class:`AsymmetricLoss`, :class:`EarthMoverDistance`)
use ``keras.ops`` only, so they run on every backend, and are registered for
safe-mode loading.

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
from keras import ops

from tfkit.config import TrainConfig
from tfkit.utils import TfkitError

LOSSES = ("auto", "crossentropy", "focal", "asl", "mse", "mae", "huber", "emd")
# Which losses each task accepts; "auto" takes the first.
TASK_LOSSES = {
    "binary": ("crossentropy", "focal", "asl"),
    "multiclass": ("crossentropy", "focal"),
    "multilabel": ("crossentropy", "focal", "asl"),
    "regression": ("mse", "mae", "huber"),
    "distribution": ("emd", "crossentropy", "mse"),
}


# --------------------------------------------------------------------------- losses Keras lacks


@keras.saving.register_keras_serializable(package="tfkit")
class AsymmetricLoss(keras.losses.Loss):
    """Asymmetric loss for multi-label targets (Ridnik et al., ICCV 2021), on
    sigmoid probabilities.

    Per label, with ``p`` the probability and ``p_m = max(p - clip, 0)`` the
    shifted probability of a negative::

        L = -[ y (1 - p)^gamma_pos log(p) + (1 - y) p_m^gamma_neg log(1 - p_m) ]

    averaged over labels (like Keras' binary cross-entropy). A larger
    ``gamma_neg`` down-weights the many easy negatives of a multi-label set;
    ``clip`` discards negatives predicted below it (and lowers the weight of
    possibly mislabelled ones). With ``gamma_pos = gamma_neg = 0`` and
    ``clip = 0`` it is binary cross-entropy. Soft targets (mixup) are
    accepted: ``y`` weighs the two terms.

    Args:
        gamma_pos: focusing exponent of positives (paper: 0).
        gamma_neg: focusing exponent of negatives (paper: 4).
        clip: probability margin subtracted for negatives (paper: 0.05).
        label_smoothing: targets become ``y (1 - s) + s / 2``.
        name: loss name.
        reduction: Keras reduction.

    Example:
        >>> y, p = np.array([[1.0, 0.0]]), np.array([[0.9, 0.02]])
        >>> float(AsymmetricLoss(clip=0.05)(y, p)) < float(keras.losses.BinaryCrossentropy()(y, p))
        True
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05,
                 label_smoothing: float = 0.0, name: str = "asymmetric_loss",
                 reduction: str = "sum_over_batch_size", **kwargs: Any) -> None:
        super().__init__(name=name, reduction=reduction, **kwargs)
        if gamma_pos < 0 or gamma_neg < 0:
            raise TfkitError(f"asymmetric loss: gammas must be >= 0, got {gamma_pos}, {gamma_neg}")
        if not 0.0 <= clip < 1.0:
            raise TfkitError(f"asymmetric loss: clip must be in [0, 1), got {clip}")
        self.gamma_pos, self.gamma_neg = float(gamma_pos), float(gamma_neg)
        self.clip, self.label_smoothing = float(clip), float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        eps = keras.config.epsilon()
        p = ops.clip(ops.cast(y_pred, "float32"), eps, 1.0 - eps)
        y = ops.cast(y_true, "float32")
        if self.label_smoothing:
            y = y * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        p_neg = ops.maximum(p - self.clip, 0.0) if self.clip else p
        pos = ops.log(p)
        neg = ops.log(ops.maximum(1.0 - p_neg, eps))
        # A zero exponent is skipped, not computed: d/dx x^0 at x = 0 is NaN in autodiff.
        if self.gamma_pos:
            pos = pos * ops.power(1.0 - p, self.gamma_pos)
        if self.gamma_neg:
            # The floor keeps x^gamma's gradient finite for gamma < 1 at clipped negatives.
            neg = neg * ops.power(ops.maximum(p_neg, eps), self.gamma_neg)
        return -ops.mean(y * pos + (1.0 - y) * neg, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma_pos": self.gamma_pos, "gamma_neg": self.gamma_neg,
                "clip": self.clip, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="tfkit")
class EarthMoverDistance(keras.losses.Loss):
    """Earth mover's distance between ordered histograms (Hou, Yu & Samaras 2016;
    the NIMA loss of Talebi & Milanfar 2018): ``(mean_k |CDF_p(k) - CDF_y(k)|^r)^(1/r)``.

    Both sides are normalised to sum to 1 first, so vote counts work as
    targets. Unlike cross-entropy it knows the bins are ordered: mass put one
    bin away costs less than mass put five bins away.

    Args:
        r: the norm (2 in NIMA; 1 gives the classic EMD divided by the bin count).
        name: loss name.
        reduction: Keras reduction.

    Example:
        >>> y = np.array([[0.0, 1.0, 0.0]])
        >>> near, far = np.array([[0.5, 0.5, 0.0]]), np.array([[0.0, 0.5, 0.5]])
        >>> round(float(EarthMoverDistance(r=1)(y, near)), 4), round(float(EarthMoverDistance(r=1)(y, [[1.0, 0, 0]])), 4)
        (0.1667, 0.3333)
    """

    def __init__(self, r: float = 2.0, name: str = "emd", reduction: str = "sum_over_batch_size",
                 **kwargs: Any) -> None:
        super().__init__(name=name, reduction=reduction, **kwargs)
        if r < 1:
            raise TfkitError(f"earth mover's distance: r must be >= 1, got {r}")
        self.r = float(r)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        eps = keras.config.epsilon()
        y = ops.cast(y_true, "float32")
        p = ops.cast(y_pred, "float32")
        y = y / ops.maximum(ops.sum(y, axis=-1, keepdims=True), eps)
        p = p / ops.maximum(ops.sum(p, axis=-1, keepdims=True), eps)
        gap = ops.abs(ops.cumsum(p - y, axis=-1))
        if self.r == 1.0:
            return ops.mean(gap, axis=-1)
        # Floored before the root: d/dx x^(1/r) is infinite at 0 (a perfect prediction).
        return ops.power(ops.maximum(ops.mean(ops.power(gap, self.r), axis=-1), 1e-12), 1.0 / self.r)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "r": self.r}


# --------------------------------------------------------------------------- factory


def _check_loss(name: str, task: str) -> str:
    if name not in LOSSES:
        raise TfkitError(f"train.loss: unknown loss {name!r} (expected one of: {', '.join(LOSSES)})")
    if task not in TASK_LOSSES:
        raise TfkitError(f"create_loss: unknown task {task!r}")
    allowed = TASK_LOSSES[task]
    if name == "auto":
        return allowed[0]
    if name not in allowed:
        fits = ", ".join(t for t, names in TASK_LOSSES.items() if name in names)
        raise TfkitError(f"train.loss={name} does not fit task {task} ({name} is for {fits}); "
                         f"{task} uses {', '.join(allowed)} (or auto)")
    return name


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
    name = _check_loss(train_cfg.loss, task)
    if not 0.0 <= float(train_cfg.label_smoothing) < 1.0:
        raise TfkitError(f"train.label_smoothing: expected a value in [0, 1), got {float(train_cfg.label_smoothing)}")
    if name == "focal" and float(train_cfg.focal_gamma) < 0:
        raise TfkitError(f"train.focal_gamma: expected >= 0, got {float(train_cfg.focal_gamma)}")
    return name


def create_loss(train_cfg: Any, task: str, num_classes: int) -> keras.losses.Loss:
    """The Keras loss for ``task`` from ``train_cfg``.

    Args:
        train_cfg: a :class:`tfkit.config.TrainConfig` (``loss``,
            ``label_smoothing``, ``focal_gamma``, ``asl_gamma_pos``,
            ``asl_gamma_neg``, ``asl_clip``, ``huber_delta``).
        task: ``binary | multiclass | multilabel | regression | distribution``.
        num_classes: number of classes (for checks only).

    Returns:
        ``auto`` takes the task's first loss in :data:`TASK_LOSSES`: cross-entropy
        for classification, MSE for regression, EMD for distributions.
        ``crossentropy``: categorical (multiclass, distribution) or binary
        (binary, multilabel) with label smoothing. ``focal``:
        ``CategoricalFocalCrossentropy`` / ``BinaryFocalCrossentropy`` with
        ``gamma`` and smoothing (no alpha re-weighting: use class weights for
        that). ``asl``: :class:`AsymmetricLoss`. ``mse`` / ``mae`` / ``huber``
        (``delta = huber_delta``). ``emd``: :class:`EarthMoverDistance` (r=2).

    Raises:
        TfkitError: unknown loss or task, or a loss that does not fit the task
        (e.g. a classification loss for regression).

    Example:
        >>> from tfkit.config import TrainConfig
        >>> create_loss(TrainConfig(), "binary", 2).name
        'binary_crossentropy'
    """
    name = check_loss(train_cfg, task)
    smoothing = float(train_cfg.label_smoothing)
    if name == "mse":
        return keras.losses.MeanSquaredError()
    if name == "mae":
        return keras.losses.MeanAbsoluteError()
    if name == "huber":
        delta = float(getattr(train_cfg, "huber_delta", 1.0))
        if delta <= 0:
            raise TfkitError(f"train.huber_delta: expected > 0, got {delta}")
        return keras.losses.Huber(delta=delta)
    if name == "emd":
        return EarthMoverDistance()
    if name == "asl":
        return AsymmetricLoss(gamma_pos=float(train_cfg.asl_gamma_pos), gamma_neg=float(train_cfg.asl_gamma_neg),
                              clip=float(train_cfg.asl_clip), label_smoothing=smoothing)
    categorical = task in ("multiclass", "distribution")
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
