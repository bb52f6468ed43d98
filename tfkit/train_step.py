"""The training wrapper: on-device augmentation and SAM inside the train step.

:class:`TrainingModel` wraps the model that is saved; only the wrapped
``net`` is ever written to disk. Keras calls ``train_step`` with the
backend's own signature, so each backend's step is its own method and
:data:`STEPS` maps ``keras.backend.backend()`` to it: the TensorFlow step is
:meth:`TrainingModel.tf_train_step` (``(data) -> logs``, variables updated in
place), the JAX step :meth:`TrainingModel.jax_train_step` (``(state, data) ->
(logs, state)``, pure: Keras jits it and threads the variables through it).
Both do the same thing in the same order, and tests/test_jax.py checks that
they give the same update on the same batch.

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
STEPS = {"tensorflow": "tf_train_step", "jax": "jax_train_step"}


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

    def test_step(self, *args: Any) -> Any:
        """Keras' hook: this backend's validation step, exact on padded batches (see :meth:`tf_test_step`)."""
        if keras.backend.backend() == "jax":
            return self.jax_test_step(*args)
        return self.tf_test_step(*args)

    @staticmethod
    def _real_rows_loss(loss: Any, x: Any, sw: Any) -> tuple[Any, Any]:
        """``(loss, rows)`` of a validation batch whose padded rows have weight 0 in ``sw``.

        Keras' ``sum_over_batch_size`` divides the weighted sum by every row, padded
        ones included; rescaled to the mean over the real rows and counted with their
        number, the epoch's ``val_loss`` equals the unpadded one.
        """
        rows = keras.ops.cast(keras.ops.shape(keras.tree.flatten(x)[0])[0], "float32")
        if sw is None:
            return loss, rows
        real = keras.ops.sum(keras.ops.cast(sw, "float32"))
        return loss * rows / keras.ops.maximum(real, 1.0), real

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
        # No sample weights for the metrics (class weights are the loss's): they are compiled as
        # weighted_metrics for the padded validation batches (FoldSetup.wrap).
        return self.compute_metrics(x, y, y_pred, sample_weight=None)

    def tf_test_step(self, data: Any) -> dict:
        """One validation batch (TensorFlow backend), exact on batches padded to a static shape.

        tfkit pads the last validation batch with zero rows and passes a 0/1 row
        mask as the sample weights (:func:`tfkit.data.build_dataset`'s
        ``pad_remainder``): one traced shape per fold, and the mask keeps padded
        rows out of the loss and every metric.

        Args:
            data: ``(x, y)`` or ``(x, y, mask)``.

        Returns:
            The metric logs.
        """
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw, training=False)
        loss, rows = self._real_rows_loss(unscale_loss_for_distribution(loss), x, sw)
        self._loss_tracker.update_state(loss, sample_weight=rows)
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
        return self._augment(x, y, seed)

    def _augment(self, x: Any, y: Any, seed: Any) -> tuple[Any, Any]:
        """On-device augmentation of a batch with the int32 ``[2]`` ``seed``."""
        if isinstance(x, dict):
            img, y = augment_batch(x["image"], y, self.augment_cfg, self.image_size, seed)
            return {**x, "image": img}, y
        return augment_batch(x, y, self.augment_cfg, self.image_size, seed)

    # ----------------------------------------------------------------------- JAX

    def jax_train_step(self, state: tuple, data: Any) -> tuple[dict, tuple]:
        """One optimizer step on a batch (JAX backend): the TensorFlow step, written pure.

        Under ``keras.distribution.DataParallel`` Keras compiles it as one SPMD
        program over the global batch, so the gradient (and SAM's perturbation)
        is the global one, as on one device.

        Args:
            state: ``(trainable, non_trainable, optimizer, metrics)`` variable values.
            data: ``(x, y)`` or ``(x, y, sample_weight)``.

        Returns:
            ``(logs, new state)``.
        """
        import jax

        trainable, non_trainable, opt_vars, metric_vars = state
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        if self.augment_cfg is not None:
            step = opt_vars[self._iterations_index()]
            # One program sees the whole global batch: there are no replicas to tell apart.
            seed = jax.numpy.stack([jax.numpy.int32(self.seed), step.astype("int32")])
            x, y = self._augment(x, y, seed)
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
        (_, (loss, y_pred, non_trainable, new_metric_vars)), grads = grad_fn(
            trainable, non_trainable, metric_vars, x, y, sw, training=True, optimizer_variables=opt_vars)
        if self.sam_rho > 0:
            grads, non_trainable = self._jax_sam_gradients(
                grad_fn, grads, trainable, non_trainable, metric_vars, opt_vars, x, y, sw)
        trainable, opt_vars = self.optimizer.stateless_apply(opt_vars, grads, trainable)
        # No sample weights for the metrics (class weights are the loss's): on JAX tfkit compiles
        # them as weighted_metrics for the padded eval batches (FoldSetup.wrap).
        logs, new_metric_vars = self._update_metrics_variables(new_metric_vars, loss, x, y, y_pred, None)
        return logs, (trainable, non_trainable, opt_vars, new_metric_vars)

    def _jax_sam_gradients(self, grad_fn: Any, grads: list, trainable: list, non_trainable: list,
                           metric_vars: list, opt_vars: list, x: Any, y: Any, sw: Any) -> tuple[list, list]:
        """SAM's second gradient, at ``w + rho * g / ||g||`` (TensorFlow: the same in :meth:`tf_train_step`).

        Returns:
            The gradient to apply at the original weights and the non-trainable
            state after the second forward pass (BatchNorm statistics move twice,
            as on TensorFlow).
        """
        import jax.numpy as jnp

        # The perturbation direction is g/||g||, which the loss scale cancels out of.
        grads = [g.astype(v.dtype) for g, v in zip(grads, trainable)]
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype("float32"))) for g in grads))
        factor = jnp.where(jnp.isfinite(norm) & (norm > 0), self.sam_rho / (norm + 1e-12), 0.0)
        perturbed = [v + g * factor.astype(g.dtype) for v, g in zip(trainable, grads)]
        (_, (_, _, non_trainable, _)), grads = grad_fn(
            perturbed, non_trainable, metric_vars, x, y, sw, training=True, optimizer_variables=opt_vars)
        return grads, non_trainable

    def jax_test_step(self, state: tuple, data: Any) -> tuple[dict, tuple]:
        """One validation batch (JAX backend): :meth:`tf_test_step`, written pure.

        Args:
            state: ``(trainable, non_trainable, metrics)`` variable values.
            data: ``(x, y)`` or ``(x, y, mask)``.

        Returns:
            ``(logs, new state)``.
        """
        trainable, non_trainable, metric_vars = state
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        _, (loss, y_pred, non_trainable, metric_vars) = self.compute_loss_and_updates(
            trainable, non_trainable, metric_vars, x, y, sw, training=False)
        loss, rows = self._real_rows_loss(loss, x, sw)
        with keras.StatelessScope(state_mapping=list(zip(self.metrics_variables, metric_vars))) as scope:
            self._loss_tracker.update_state(loss, sample_weight=rows)
            logs = self.compute_metrics(x, y, y_pred, sw)
        metric_vars = [scope.get_current_value(v) if scope.get_current_value(v) is not None else v.value
                       for v in self.metrics_variables]
        return logs, (trainable, non_trainable, metric_vars)

    def _iterations_index(self) -> int:
        """Position of the optimizer's step counter in ``optimizer.variables`` (the JAX state)."""
        iterations = self.optimizer.iterations
        for i, v in enumerate(self.optimizer.variables):
            if v is iterations:
                return i
        raise TfkitError("train_step: the optimizer's iterations counter is not among its variables")
