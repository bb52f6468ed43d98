"""Distribution strategy and mixed precision, detected from the hardware.

TPU (``TPUClusterResolver``: Kaggle/Colab TPU VMs) -> ``TPUStrategy``;
several GPUs -> ``MirroredStrategy``; one GPU or CPU -> the default strategy.
Mixed precision ``auto`` is bfloat16 on TPU, float16 on GPU and off on CPU
(float16 on CPU is slower than float32). Build and compile models inside
``strategy.scope()``; the global batch is ``batch_size * replicas(strategy)``.

Example:
    >>> strategy = get_strategy()
    >>> policy = set_mixed_precision("auto", strategy)
    >>> with strategy.scope():  # doctest: +SKIP
    ...     model = create_model("small_cnn", 10, 32)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import tensorflow as tf

from tfkit.utils import TfkitError

log = logging.getLogger(__name__)

PRECISION_MODES = {"auto": None, "off": "float32", "float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def _tpu_resolver() -> Any | None:
    """A TPU cluster resolver, or None when there is no TPU.

    Tries the TPU named by the environment (Colab, Kaggle's TPU v3-8 nodes,
    ``TPU_NAME``), then a TPU attached to this VM (``tpu="local"``: TPU VMs).
    """
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver()
    except (ValueError, RuntimeError, tf.errors.NotFoundError, ImportError):
        pass
    if os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        try:
            return tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        except (ValueError, RuntimeError, tf.errors.NotFoundError, ImportError):
            return None
    return None


def _logical_devices(kind: str) -> list[str]:
    return [d.name for d in tf.config.list_logical_devices(kind)]


def _make_tpu_strategy(resolver: Any) -> tf.distribute.Strategy:
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _make_mirrored(devices: Sequence[str]) -> tf.distribute.Strategy:
    return tf.distribute.MirroredStrategy(devices=list(devices))


def get_strategy(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The best strategy for this machine.

    Args:
        devices: force a ``MirroredStrategy`` over these devices (e.g.
            ``["/cpu:0", "/cpu:1"]`` after splitting the CPU into logical
            devices); ``None`` detects.

    Returns:
        ``TPUStrategy`` on a TPU, ``MirroredStrategy`` over all GPUs when there
        are several, else the default strategy (one replica).

    Example:
        >>> replicas(get_strategy())
        1
    """
    if devices:
        return _make_mirrored(devices)
    resolver = _tpu_resolver()
    if resolver is not None:
        try:
            strategy = _make_tpu_strategy(resolver)
            log.info("TPU strategy, %d replicas", strategy.num_replicas_in_sync)
            return strategy
        except Exception as e:  # a stale or busy TPU must not stop a CPU/GPU run
            log.warning("TPU found but could not be initialised (%s); falling back", e)
    gpus = _logical_devices("GPU")
    if len(gpus) > 1:
        return _make_mirrored(gpus)
    return tf.distribute.get_strategy()


def replicas(strategy: tf.distribute.Strategy | None = None) -> int:
    """Replicas in sync (1 for the default strategy).

    Example:
        >>> replicas()
        1
    """
    return int((strategy or tf.distribute.get_strategy()).num_replicas_in_sync)


def accelerator(strategy: tf.distribute.Strategy | None = None) -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: what ``strategy`` (or this machine) computes on.

    Example:
        >>> accelerator() in ("tpu", "gpu", "cpu")
        True
    """
    strategy = strategy or tf.distribute.get_strategy()
    if "TPU" in type(strategy).__name__:
        return "tpu"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        devs = [d.upper() for d in strategy.extended.worker_devices]
        return "gpu" if any("GPU" in d for d in devs) else "cpu"
    return "gpu" if _logical_devices("GPU") else "cpu"


def set_mixed_precision(mode: str = "auto", strategy: tf.distribute.Strategy | None = None) -> str:
    """Set Keras' global dtype policy.

    Args:
        mode: ``auto`` (bfloat16 on TPU, float16 on GPU, float32 on CPU),
            ``off`` / ``float32``, ``float16``, ``bfloat16``.
        strategy: the strategy models will be built under (for ``auto``).

    Returns:
        The policy name set: ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``.

    Raises:
        TfkitError: an unknown mode.

    Example:
        >>> set_mixed_precision("off")
        'float32'
    """
    import keras

    if mode not in PRECISION_MODES:
        raise TfkitError(f"train.mixed_precision: unknown mode {mode!r} (expected one of: {', '.join(PRECISION_MODES)})")
    policy = PRECISION_MODES[mode]
    if policy is None:
        policy = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16", "cpu": "float32"}[accelerator(strategy)]
    keras.mixed_precision.set_global_policy(policy)
    return policy
