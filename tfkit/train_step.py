"""The training wrapper: on-device augmentation and SAM inside the train step.

:class:`TrainingModel` wraps the model that is saved; only the wrapped
``net`` is ever written to disk. Keras calls ``train_step`` with the
backend's own signature, so each backend's step is its own method and
:data:`STEPS` maps ``keras.backend.backend()`` to it: the TensorFlow step is
:meth:`TrainingModel.tf_train_step` (``(data) -> logs``); a JAX step
(``(state, data) -> (logs, state)``) sits beside it under ``"jax"``.

SAM (Foret et al. 2021, ``sam_rho`` > 0): climb to the worst point within
``rho`` along ``g / ||g||``, take the gradient there, climb back down and
apply that gradient at the original weights.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution

from tfkit.augment import augment_batch
from tfkit.config import AugmentConfig
from tfkit.heads import margin_forward
from tfkit.utils import TfkitError

__all__ = ["TrainingModel", "STEPS"]

# keras.backend.backend() -> the TrainingModel method that is that backend's train step.
STEPS = {"tensorflow": "tf_train_step"}


class TrainingModel(keras.Model):
    """Wraps a model for training: on-device augmentation and SAM in the train step.

    Args:
        model: the Keras model to train (inputs/outputs per the tfkit contract).
        sam_rho: sharpness-aware minimisation radius (0 = plain training).
        augment_cfg: an ``AugmentConfig`` to apply on device, or ``None``.
        image_size: output side of on-device augmentation.
        seed: base seed of on-device augmentation (step and replica are mixed in).

    Example::

        wrapper = TrainingModel(model, sam_rho=0.05)
        wrapper.compile(optimizer="sgd", loss="categorical_crossentropy")
        wrapper.fit(x, y)   # trains ``model``; save ``model``, not the wrapper
    """

    def __init__(self, model: keras.Model, sam_rho: float = 0.0, augment_cfg: AugmentConfig | None = None,
                 image_size: int = 0, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.net = model
        self.sam_rho = float(sam_rho)
        self.augment_cfg = augment_cfg
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.margin = margin_forward(model)  # an ArcFace head needs the labels at training

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.net(inputs, training=training)

    def train_step(self, *args: Any) -> Any:
        """Keras' hook: run this backend's step (see :data:`STEPS`)."""
        backend = keras.backend.backend()
        if backend not in STEPS:
            raise TfkitError(f"KERAS_BACKEND={backend}: tfkit trains with {', '.join(STEPS)} only")
        return getattr(self, STEPS[backend])(*args)

    # ----------------------------------------------------------------------- TensorFlow

    def tf_train_step(self, data: Any) -> dict:
        """One optimizer step on a batch (TensorFlow backend).

        Args:
            data: ``(x, y)`` or ``(x, y, sample_weight)``.

        Returns:
            The metric logs.
        """
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        if self.augment_cfg is not None:
            x, y = self._tf_augment(x, y)
        variables = self.trainable_variables
        grads, y_pred = self._tf_gradients(x, y, sw, variables, track=True)
        if self.sam_rho > 0:
            # The perturbation direction is g/||g||, which the loss scale cancels out of.
            grads = [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype) for g, v in zip(grads, variables)]
            norm = tf.linalg.global_norm(grads)
            factor = tf.where(tf.math.is_finite(norm) & (norm > 0), self.sam_rho / (norm + 1e-12), 0.0)
            eps = [g * tf.cast(factor, g.dtype) for g in grads]
            for v, e in zip(variables, eps):
                v.assign_add(e)
            grads, _ = self._tf_gradients(x, y, sw, variables, track=False)
            for v, e in zip(variables, eps):
                v.assign_sub(e)
        self.optimizer.apply(grads, variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sw)

    def _tf_gradients(self, x: Any, y: Any, sw: Any, variables: list, track: bool) -> tuple[list, Any]:
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True) if self.margin is None else self.margin(x, y)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw, training=True)
            if track:
                batch = tf.shape(tf.nest.flatten(x)[0])[0]
                self._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=batch)
            scaled = self.optimizer.scale_loss(loss)
        return tape.gradient(scaled, variables), y_pred

    def _tf_augment(self, x: Any, y: Any) -> tuple[Any, Any]:
        replica = tf.distribute.get_replica_context()
        rid = replica.replica_id_in_sync_group if replica is not None else 0
        step = tf.cast(self.optimizer.iterations, tf.int32)
        seed = tf.stack([tf.constant(self.seed, tf.int32) + tf.cast(rid, tf.int32) * 7919, step])
        if isinstance(x, dict):
            img, y = augment_batch(x["image"], y, self.augment_cfg, self.image_size, seed)
            return {**x, "image": img}, y
        return augment_batch(x, y, self.augment_cfg, self.image_size, seed)
