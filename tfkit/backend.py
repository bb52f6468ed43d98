"""Which Keras backend computes: TensorFlow or JAX, chosen before Keras is imported.

Keras fixes its backend the first time ``keras`` is imported (from the
``KERAS_BACKEND`` variable), so the choice has to be made first:
:func:`select_backend` resolves ``train.backend`` / ``--backend`` and sets
``KERAS_BACKEND`` while Keras is not yet imported; once it is, it only checks
that the backend Keras runs on is the one asked for. ``tf.data`` feeds both
backends, so TensorFlow is needed either way (``tensorflow-cpu`` is enough
under JAX).

``auto`` resolves, cheaply and without importing either library:

* ``KERAS_BACKEND`` when the user set it (the user chose);
* **JAX** on a TPU VM whose TensorFlow is not a TPU build: Kaggle's TPU image
  ships ``tensorflow-cpu``, which cannot see the chips, so only JAX can use them;
* **TensorFlow** otherwise (CPU and GPUs): on CPU TensorFlow is the faster
  backend for small convnets (``bench/bench_backends.py``).

This module also holds the few primitives whose code differs per backend and
that more than one stage needs (the gradient of a function, for Grad-CAM).

Example:
    >>> resolve_backend("tensorflow")
    'tensorflow'
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import sys
from typing import Any, Callable, Mapping

from tfkit.utils import TfkitError

BACKENDS = ("auto", "tensorflow", "jax")
# what to install when a backend is missing (the TPU/GPU builds are the user's to pick)
_INSTALL_HINT = {
    "tensorflow": "pip install 'tfkit-vision[cpu]' (or tensorflow[and-cuda] on a GPU)",
    "jax": "pip install 'tfkit-vision[jax]' for CPU, or jax[tpu] / jax[cuda12] on an accelerator",
}
# TensorFlow distributions that can drive a TPU (tensorflow-cpu and plain tensorflow cannot on a TPU VM)
_TF_TPU_DISTRIBUTIONS = ("tensorflow-tpu",)


def installed(backend: str) -> bool:
    """Whether the library behind ``backend`` can be imported (looked up, not imported).

    Example:
        >>> installed("tensorflow")
        True
    """
    return importlib.util.find_spec(backend) is not None


def tpu_attached(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this machine is a TPU VM: TPU device files or the variables TPU VMs set.

    Args:
        environ: environment to read (default ``os.environ``).

    Returns:
        True on a TPU VM (Kaggle's and Colab's TPU v5e/v3 VMs, Cloud TPU VMs).
    """
    env = os.environ if environ is None else environ
    if env.get("TPU_ACCELERATOR_TYPE") or env.get("TPU_NAME") or env.get("COLAB_TPU_ADDR"):
        return True
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def gpu_attached(environ: Mapping[str, str] | None = None) -> bool:
    """Whether an NVIDIA GPU is visible to this process: its device files, unless
    ``CUDA_VISIBLE_DEVICES`` hides every GPU. Looked up without touching the GPU.

    Args:
        environ: environment to read (default ``os.environ``).

    Example:
        >>> gpu_attached({"CUDA_VISIBLE_DEVICES": "-1"})
        False
    """
    env = os.environ if environ is None else environ
    if env.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def tensorflow_tpu_build() -> bool:
    """Whether the installed TensorFlow is a TPU build (``tensorflow-tpu``)."""
    for dist in _TF_TPU_DISTRIBUTIONS:
        try:
            importlib.metadata.version(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def detect_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend ``auto`` means on this machine (see the module docstring).

    Args:
        environ: environment to read (default ``os.environ``).

    Returns:
        ``"tensorflow"`` or ``"jax"``.
    """
    env = os.environ if environ is None else environ
    if env.get("KERAS_BACKEND"):
        return env["KERAS_BACKEND"]
    if tpu_attached(env) and not tensorflow_tpu_build() and installed("jax"):
        return "jax"
    if installed("tensorflow") or not installed("jax"):
        return "tensorflow"
    return "jax"


def resolve_backend(requested: str = "auto", source: str = "train.backend",
                    environ: Mapping[str, str] | None = None) -> str:
    """Turn ``auto | tensorflow | jax`` into an installed backend's name.

    Args:
        requested: the backend asked for.
        source: the option it came from, named in errors.
        environ: environment to read (default ``os.environ``).

    Returns:
        ``"tensorflow"`` or ``"jax"``.

    Raises:
        TfkitError: an unknown name, ``KERAS_BACKEND`` naming a backend tfkit
            does not run on, or a backend that is not installed.
    """
    if requested not in BACKENDS:
        raise TfkitError(f"{source}: unknown backend {requested!r} (expected one of: {', '.join(BACKENDS)})")
    name = detect_backend(environ) if requested == "auto" else requested
    if name not in BACKENDS[1:]:
        raise TfkitError(f"KERAS_BACKEND={name}: tfkit runs on tensorflow or jax (unset it or set {source})")
    if not installed(name):
        raise TfkitError(f"{source}={requested}: the {name} backend is not installed ({_INSTALL_HINT[name]})")
    return name


def select_backend(requested: str = "auto", source: str = "train.backend") -> str:
    """Make Keras run on the requested backend; call it before Keras is imported.

    Before Keras' import this sets ``KERAS_BACKEND``. After it, ``auto``
    accepts the backend Keras already runs on, and an explicit request for
    another backend is an error: Keras cannot switch backends in a process.

    Args:
        requested: ``auto | tensorflow | jax``.
        source: the option it came from, named in errors.

    Returns:
        The backend Keras runs (or will run) on.

    Raises:
        TfkitError: see :func:`resolve_backend`, or Keras already runs on another backend.

    Example:
        >>> select_backend("auto") in ("tensorflow", "jax")
        True
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        current = keras.backend.backend()
        if requested in ("auto", current):
            return current
        resolve_backend(requested, source)  # an unknown or missing backend is the clearer message
        raise TfkitError(
            f"{source}={requested}: Keras already runs on {current} in this process (it picks its backend when "
            f"first imported); set KERAS_BACKEND={requested} before importing keras, or run tfkit in a new process")
    name = resolve_backend(requested, source)
    os.environ["KERAS_BACKEND"] = name
    return name


def current_backend() -> str:
    """The backend Keras runs on (imports Keras)."""
    import keras

    return keras.backend.backend()


def gradient(fn: Callable[[Any], tuple[Any, Any]], x: Any) -> tuple[Any, Any]:
    """Gradient of a scalar function, on whichever backend Keras runs.

    Args:
        fn: ``fn(x) -> (scalar, aux)``; written with ``keras.ops`` (or backend ops).
        x: the point, a backend tensor or NumPy array.

    Returns:
        ``(d scalar / d x, aux)``.

    Example:
        >>> import keras, numpy as np
        >>> g, _ = gradient(lambda x: (keras.ops.sum(x * x), None), np.ones(2, "float32"))
        >>> keras.ops.convert_to_numpy(g).tolist()
        [2.0, 2.0]
    """
    backend = current_backend()
    if backend == "jax":
        import jax

        (_, aux), grad = jax.value_and_grad(fn, has_aux=True)(jax.numpy.asarray(x))
        return grad, aux
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value, aux = fn(x)
        return tape.gradient(value, x), aux
    raise TfkitError(f"tfkit runs on tensorflow or jax, not on Keras' {backend} backend")
