"""Distribution over devices and mixed precision, detected from the hardware, on either backend.

On TensorFlow: TPU (``TPUClusterResolver``: TPU nodes, TPU VMs with a TPU
build of TensorFlow) -> ``TPUStrategy``; several GPUs -> ``MirroredStrategy``;
one GPU or CPU -> the default strategy. On JAX (:mod:`tfkit.backend` picks it
on TPU VMs whose TensorFlow cannot see the chips): a :class:`JaxStrategy`
that holds ``keras.distribution.DataParallel`` over all local devices (TPU
chips, GPUs, or forced host devices) when there are several. Both answer the
same questions (``scope()``, ``num_replicas_in_sync``), so training code is
the same on both. Mixed precision ``auto`` is bfloat16 on TPU, float16 on GPU
and off on CPU (float16 on CPU is slower than float32). Build and compile
models inside ``strategy.scope()``; the global batch is
``batch_size * replicas(strategy)``.

Example::

    strategy = get_strategy()
    policy = set_mixed_precision("auto", strategy)
    with strategy.scope():
        model = create_model("small_cnn", 10, 32)
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from typing import Any, ContextManager, Sequence

from tfkit.utils import TfkitError

log = logging.getLogger(__name__)

PRECISION_MODES = {"auto": None, "off": "float32", "float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


# --------------------------------------------------------------------------- TensorFlow


def _tpu_resolver() -> Any | None:
    """A TPU cluster resolver, or None when TensorFlow sees no TPU.

    Tries the TPU named by the environment (Colab, TPU nodes, ``TPU_NAME``),
    then a TPU attached to this VM (``tpu="local"``: TPU VMs with a TPU build
    of TensorFlow; Kaggle's ``tensorflow-cpu`` finds none and tfkit runs there on JAX).
    """
    import tensorflow as tf

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
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices(kind)]


def _make_tpu_strategy(resolver: Any) -> Any:
    import tensorflow as tf

    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _make_mirrored(devices: Sequence[str]) -> Any:
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=list(devices))


def _tf_strategy(devices: Sequence[str] | None) -> Any:
    import tensorflow as tf

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


# --------------------------------------------------------------------------- JAX


class JaxStrategy:
    """What tfkit's training asks of a ``tf.distribute`` strategy, on JAX.

    With several devices it sets ``keras.distribution.DataParallel`` as the
    process's distribution (Keras' JAX trainer reads it when ``fit`` and
    ``predict`` run, not only at build time): variables are replicated and
    every batch is split over the devices, so the global batch must divide
    by :attr:`num_replicas_in_sync` (tfkit pads eval and predict batches to
    one static size). With one device it sets nothing.

    Args:
        devices: Keras device names (``"tpu:0"``, ``"cpu:1"``), all of one platform.

    Example::

        JaxStrategy(["tpu:0", "tpu:1"]).num_replicas_in_sync   # 2 (on JAX)
    """

    def __init__(self, devices: Sequence[str]) -> None:
        import keras

        if not devices:
            raise TfkitError("JaxStrategy: no devices given")
        self.devices = [str(d) for d in devices]
        self.platform = self.devices[0].split(":")[0].lower()
        self.num_replicas_in_sync = len(self.devices)
        self.distribution = None
        if self.num_replicas_in_sync > 1:
            self.distribution = keras.distribution.DataParallel(devices=self.devices)
            keras.distribution.set_distribution(self.distribution)

    def scope(self) -> ContextManager[Any]:
        """The distribution's scope (a no-op on one device), like ``tf.distribute.Strategy.scope``."""
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"JaxStrategy({self.num_replicas_in_sync} x {self.platform})"


def _jax_devices() -> list[str]:
    import keras

    return list(keras.distribution.list_devices())


def _hide_gpus_from_tensorflow() -> None:
    """Keep TensorFlow (there to run ``tf.data``) off the GPUs JAX computes on.

    TensorFlow maps most of every visible GPU's memory when it first touches
    one; beside JAX that leaves JAX out of memory. It must run before
    TensorFlow's first op; later it raises and is ignored (TensorFlow is then
    already using whatever it uses).
    """
    try:
        import tensorflow as tf
    except ImportError:
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass


def _jax_strategy(devices: Sequence[str] | None) -> JaxStrategy:
    found = list(devices) if devices else _jax_devices()
    if found and found[0].split(":")[0].lower() != "cpu":
        _hide_gpus_from_tensorflow()
    return JaxStrategy(found)


# --------------------------------------------------------------------------- both


def get_strategy(devices: Sequence[str] | None = None) -> Any:
    """The best way to spread training over this machine's devices, on Keras' backend.

    Args:
        devices: force these devices: on TensorFlow a ``MirroredStrategy`` over
            e.g. ``["/cpu:0", "/cpu:1"]`` (after splitting the CPU into logical
            devices); on JAX a :class:`JaxStrategy` over e.g. ``["cpu:0", "cpu:1"]``.
            ``None`` detects.

    Returns:
        TensorFlow: ``TPUStrategy`` on a TPU it sees, ``MirroredStrategy`` over
        all GPUs when there are several, else the default strategy (one
        replica). JAX: a :class:`JaxStrategy` over every local device.

    Example:
        >>> replicas(get_strategy())
        1
    """
    if _keras_backend() == "jax":
        return _jax_strategy(devices)
    return _tf_strategy(devices)


def replicas(strategy: Any = None) -> int:
    """Replicas in sync (1 for the default strategy).

    Example:
        >>> replicas()
        1
    """
    if strategy is None:
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
    return int(strategy.num_replicas_in_sync)


def gradient_replicas(strategy: Any) -> int:
    """Replicas that each compute their own gradient: a TensorFlow strategy's replicas;
    1 for a :class:`JaxStrategy`, whose one SPMD program computes the global gradient
    (so SAM's perturbation is the same as on one device)."""
    return 1 if isinstance(strategy, JaxStrategy) else replicas(strategy)


def accelerator(strategy: Any = None) -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: what ``strategy`` (or this machine) computes on.

    Example:
        >>> accelerator() in ("tpu", "gpu", "cpu")
        True
    """
    if isinstance(strategy, JaxStrategy):
        return strategy.platform
    if strategy is None and _keras_backend() == "jax":
        return _jax_devices()[0].split(":")[0].lower()
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if "TPU" in type(strategy).__name__:
        return "tpu"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        devs = [d.upper() for d in strategy.extended.worker_devices]
        return "gpu" if any("GPU" in d for d in devs) else "cpu"
    return "gpu" if _logical_devices("GPU") else "cpu"


def _version(module: str) -> str | None:
    """A library's version if it is installed (read from its metadata, not imported)."""
    import importlib.metadata

    for dist in {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-tpu")}.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtime_info(strategy: Any = None) -> dict[str, Any]:
    """What a run computed on: backend, devices and library versions (written to ``RUN/env.json``).

    Args:
        strategy: the strategy training used (default: the current one).

    Returns:
        ``{"backend", "accelerator", "devices", "mixed_precision", "python", "platform", "versions": {...}}``.

    Example:
        >>> runtime_info()["devices"]
        1
    """
    import keras

    from tfkit import __version__

    if strategy is None and _keras_backend() == "jax":
        devices = _jax_devices()  # describe them without setting a distribution
        acc, count = devices[0].split(":")[0].lower(), len(devices)
    else:
        acc, count = accelerator(strategy), replicas(strategy)
    return {
        "backend": keras.backend.backend(),
        "accelerator": acc,
        "devices": count,
        "mixed_precision": keras.mixed_precision.global_policy().name,
        "python": platform.python_version(),
        "platform": sys.platform,
        "versions": {name: _version(name) for name in ("keras", "tensorflow", "jax", "jaxlib", "numpy")}
        | {"tfkit": __version__},
    }


def set_mixed_precision(mode: str = "auto", strategy: Any = None) -> str:
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
