"""The :class:`Augment` Keras layer: :func:`tfkit.augment.augment_batch` on the
accelerator, on the TensorFlow and the JAX backend."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

from tfkit.augment.batch import augment_batch, resize_batch
from tfkit.augment.checks import check_augment_config
from tfkit.config import AugmentConfig

__all__ = ["Augment"]


@keras.saving.register_keras_serializable(package="tfkit")
class Augment(keras.layers.Layer):
    """:func:`augment_batch` as a Keras layer, for augmenting on the accelerator
    (``data.augment_on: device``). Each training call draws a fresh seed
    ``[seed, counter]`` from a counter variable, so it compiles with XLA (TF's
    ``jit_compile`` or ``jax.jit``) and never repeats a batch's draws; inference
    resizes only (:func:`resize_batch`). The ops follow the backend of the
    inputs (``keras.ops`` arrays: tf tensors on TensorFlow, ``jax.Array`` on JAX),
    and the same seed and counter give the same batch on both.

    Args:
        cfg: :class:`AugmentConfig` (or its dict form).
        out_size: side of the output images.
        seed: base seed of the stream.

    Call args:
        inputs: images ``[B, H, W, C]``, or ``(images, labels)`` to mix labels.
        training: augment when True, resize only otherwise.

    Returns:
        Images (or ``(images, labels)``), float32 in [0, 1].

    Example:
        >>> import tensorflow as tf
        >>> layer = Augment(AugmentConfig(hflip_p=0.5), 32, seed=1)
        >>> layer(tf.zeros([2, 32, 32, 3]), training=True).shape
        TensorShape([2, 32, 32, 3])
    """

    def __init__(self, cfg: AugmentConfig | dict, out_size: int, seed: int = 0, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")  # no autocast: runs in float32 under mixed precision
        super().__init__(**kwargs)
        self.cfg = AugmentConfig(**cfg) if isinstance(cfg, dict) else cfg
        check_augment_config(self.cfg)
        self.out_size = int(out_size)
        self.seed = int(seed)
        # int32: JAX has no int64 unless x64 is enabled (2**31 batches is plenty).
        self.counter = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                       name="counter")

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        images, labels = (inputs if isinstance(inputs, (tuple, list)) else (inputs, None))
        if not training:
            x = resize_batch(images, self.out_size, self.cfg.interpolation)
            return (x, labels) if labels is not None else x
        step = keras.ops.convert_to_tensor(self.counter.value)
        self.counter.assign(step + 1)
        seed = keras.ops.stack([keras.ops.convert_to_tensor(self.seed, "int32"), keras.ops.cast(step, "int32")])
        x, labels = augment_batch(images, labels, self.cfg, self.out_size, seed)
        return (x, labels) if isinstance(inputs, (tuple, list)) else x

    def compute_output_shape(self, input_shape: Any) -> Any:
        if isinstance(input_shape, (tuple, list)) and input_shape and isinstance(input_shape[0], (tuple, list)):
            return ((input_shape[0][0], self.out_size, self.out_size, input_shape[0][-1]), input_shape[1])
        return (input_shape[0], self.out_size, self.out_size, input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(cfg=dataclasses.asdict(self.cfg), out_size=self.out_size, seed=self.seed)
        return config
