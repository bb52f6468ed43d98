"""BatchNorm statistics that belong to the weights being validated and saved.

Keras's BatchNormalization keeps moving averages with momentum 0.99: after
``n`` steps, ``0.99 ** n`` of the initial statistics (mean 0, variance 1) is
still in them. With ~10 steps an epoch (a few hundred images), 12 epochs leave
30% of the initial statistics, and validation, the best-epoch choice and the
saved model all see statistics that do not belong to the weights (measured on
450 digits: OOF accuracy 0.13, and 0.90 once the same models' statistics are
recomputed; ``bench/bench_bn.py``).

Precise BN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", section 3):
before every validation, one forward pass in training mode over un-augmented
batches of the training folds replaces each trainable BN layer's moving
statistics by the exact mean of the batch statistics (momentum ``1 - 1/n`` at
batch ``n``). No weight changes (no gradient). The pass runs in the callback's
``on_test_begin``, i.e. after the EMA weights are swapped in (when EMA is on)
and before Keras validates, so validation, early stopping, the schedule
(``plateau``) and the checkpoint all see statistics of the current weights.

Frozen BN layers (a frozen backbone) are left alone: Keras runs a
non-trainable BatchNormalization in inference mode and the pass skips it.

Example (needs a model and the training folds' datasets)::

    cb = PreciseBN(train_folds_eval_dataset, max_batches=64)
    wrapper.fit(train_ds, validation_data=val_ds, callbacks=[SwapEMAWeights(True), cb])
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

import keras

from tfkit.utils import TfkitError

__all__ = ["PreciseBN", "TrainModeForward", "recompute_statistics", "trainable_batchnorms", "precise_bn_batches",
           "precise_bn_enabled", "PRECISE_BN_MODES", "PRECISE_BN_SAMPLES", "STALE_SHARE"]

PRECISE_BN_MODES = ("auto", "on", "off")
# Wu & Johnson (2021, fig. 4): population statistics estimated from ~10^4
# samples are as good as from the whole set; more only costs time.
PRECISE_BN_SAMPLES = 8192
# "auto" turns precise BN on when more than this share of the moving statistics at an
# epoch's end still comes from earlier epochs (older weights, or the initial 0/1).
STALE_SHARE = 0.01


def precise_bn_enabled(mode: str, steps_per_epoch: int, momentum: float) -> bool:
    """Whether the precise-BN pass runs (``train.precise_bn``).

    ``auto``: on when ``momentum ** steps_per_epoch > STALE_SHARE``, i.e. when more than
    1% of the moving statistics validated at an epoch's end would come from
    before that epoch: fewer than 459 steps an epoch at Keras's momentum 0.99.
    Above that the moving averages are fresh and the pass would only cost time.

    Example:
        >>> precise_bn_enabled("auto", 11, 0.99), precise_bn_enabled("auto", 1000, 0.99)
        (True, False)
        >>> precise_bn_enabled("on", 1000, 0.99), precise_bn_enabled("off", 11, 0.99)
        (True, False)
    """
    if mode not in PRECISE_BN_MODES:
        raise TfkitError(f"train.precise_bn: expected one of {', '.join(PRECISE_BN_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return float(momentum) ** int(steps_per_epoch) > STALE_SHARE


def trainable_batchnorms(model: Any) -> list:
    """The BatchNormalization layers whose statistics a training-mode pass would update."""
    return [layer for layer in model._flatten_layers(include_self=False)  # noqa: SLF001
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


class TrainModeForward(keras.Model):
    """``net`` called in training mode behind Keras's compiled ``predict_on_batch``.

    Keras compiles ``predict_on_batch`` on every backend (``tf.function`` on
    TensorFlow, ``jax.jit`` with the non-trainable state carried back on JAX),
    so the statistics pass runs compiled (here 13-25 ms a batch against
    160-175 ms eagerly for ``small_cnn`` at 32 px) without per-backend code.
    Build one per model and keep it: each one traces once.
    """

    def __init__(self, net: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.net = net

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.net(inputs, training=True)


def recompute_statistics(model: Any, batches: Iterable[Any], max_batches: int,
                         forward: TrainModeForward | None = None) -> int:
    """Replace trainable BN moving statistics by the mean of the batch statistics over ``batches``.

    The BN layers run with momentum 0 (each forward pass leaves its own
    batch's statistics in the moving variables), the values are summed in
    float64 after every batch and their mean is assigned at the end (Wu &
    Johnson's precise BN; fvcore's ``update_bn_stats`` does the same). Batches
    smaller than the first (a pass's last partial batch) are skipped: one
    static shape, one trace. No other variable changes.

    Args:
        model: a Keras model.
        batches: iterable of ``(x, y)`` or ``x`` batches (an iterator is consumed
            only as far as it is used).
        max_batches: at most this many batches are used.
        forward: a :class:`TrainModeForward` of ``model`` to reuse (built when ``None``).

    Returns:
        The number of batches used (0 when the model has no trainable BatchNorm).

    Example:
        >>> import numpy as np
        >>> inp = keras.Input((2,))
        >>> model = keras.Model(inp, keras.layers.BatchNormalization()(inp))
        >>> recompute_statistics(model, [np.array([[1.0, 2.0]]), np.array([[3.0, 6.0]])], 10)
        2
        >>> keras.ops.convert_to_numpy(model.layers[1].moving_mean).tolist()
        [2.0, 4.0]
    """
    import numpy as np

    bns = trainable_batchnorms(model)
    if not bns:
        return 0
    forward = forward or TrainModeForward(model)
    momenta = [layer.momentum for layer in bns]
    sums = [[0.0, 0.0] for _ in bns]
    n, full = 0, None
    try:
        for layer in bns:
            layer.momentum = 0.0
        for batch in batches:
            if n >= max_batches:
                break
            x = batch[0] if isinstance(batch, tuple) else batch
            size = int(keras.tree.flatten(x)[0].shape[0])
            full = full or size
            if size != full:
                continue
            forward.predict_on_batch(keras.tree.map_structure(np.asarray, x))  # NumPy feeds either backend
            n += 1
            for s, layer in zip(sums, bns):
                s[0] = s[0] + keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64)
                s[1] = s[1] + keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64)
    finally:
        for layer, m in zip(bns, momenta):
            layer.momentum = m
    for s, layer in zip(sums, bns):
        if n:
            layer.moving_mean.assign((s[0] / n).astype(layer.moving_mean.dtype))
            layer.moving_variance.assign((s[1] / n).astype(layer.moving_variance.dtype))
    return n


def precise_bn_batches(n_train: int, global_batch: int, samples: int = PRECISE_BN_SAMPLES) -> int:
    """Batches of the statistics pass: one pass over the training folds, at most ``samples`` examples.

    Example:
        >>> precise_bn_batches(360, 32), precise_bn_batches(100_000, 64)
        (12, 128)
    """
    return max(1, min(math.ceil(n_train / global_batch), math.ceil(samples / global_batch)))


class PreciseBN(keras.callbacks.Callback):
    """Recompute BN statistics over training batches before every validation (see the module docstring).

    Args:
        dataset: a repeated ``tf.data.Dataset`` of un-augmented training batches
            (``tfkit.data.build_dataset(..., mode="eval").repeat()``); one
            iterator is kept for the whole fit (no per-epoch iterator teardown).
        max_batches: batches per pass (:func:`precise_bn_batches`).
    """

    def __init__(self, dataset: Any, max_batches: int):
        super().__init__()
        self.dataset = dataset
        self.max_batches = int(max_batches)
        self.seconds: list[float] = []
        self._it: Any = None
        self._forward: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._forward = TrainModeForward(self.model)

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._it is None:
            self._it = iter(self.dataset)
        if self._forward is None:
            self._forward = TrainModeForward(self.model)
        t0 = time.perf_counter()
        n = recompute_statistics(self.model, self._it, self.max_batches, self._forward)
        if n == 0 and trainable_batchnorms(self.model):
            raise TfkitError("train.precise_bn: the training folds yielded no batch for the BatchNorm statistics pass")
        self.seconds.append(time.perf_counter() - t0)
