"""The batch pipeline: :func:`augment_batch`, :func:`resize_batch` and the compiled
``tf.data`` map function :func:`batch_augmenter`."""

from __future__ import annotations

from typing import Any

from tfkit.augment.backend import Ops, ops_for
from tfkit.augment.checks import INTERPOLATIONS, check_augment_config
from tfkit.augment.colour import apply_colour, colour_runs
from tfkit.augment.draws import Rng
from tfkit.augment.geometry import geometry_matrix, pixel_matrix, resample
from tfkit.augment.masks import cutout, gridmask, mix
from tfkit.augment.pixel import apply_point_ops, noise
from tfkit.augment.plan import OP_IDS, op_masks
from tfkit.augment.randaugment import RandAugmentDraw, draw_randaugment
from tfkit.config import AugmentConfig
from tfkit.utils import TfkitError

__all__ = ["augment_batch", "resize_batch", "batch_augmenter", "check_images"]

_POINT_OPS = ("gamma", "posterize", "solarize", "equalize", "sharpness", "blur")


def check_images(ops: Ops, images: Any, name: str) -> Any:
    """The batch as an array of ``ops``; refuse a shape or dtype the ops cannot take.

    Args:
        ops: backend namespace.
        images: ``[B, H, W, C]`` uint8 or float32 with static H, W, C.
        name: the calling function, for the message.

    Returns:
        The batch as a backend array.

    Raises:
        TfkitError: wrong rank, unknown H/W/C, or another dtype.
    """
    images = images if ops.is_array(images) else ops.asarray(images)
    shape = list(images.shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise TfkitError(f"{name}: expected images [B, H, W, C] with static H, W and C, got shape {tuple(shape)}")
    if ops.dtype(images) not in ("uint8", "float32"):
        raise TfkitError(f"{name}: expected uint8 or float32 images, got {ops.dtype(images)}")
    return images


def _scale(ops: Ops, images: Any) -> float:
    return 1.0 / 255.0 if ops.dtype(images) == "uint8" else 1.0


def resize_batch(images: Any, out_size: int, interpolation: str = "nearest", backend: str | None = None) -> Any:
    """Resize a batch to ``out_size`` with the same resampler as :func:`augment_batch`.

    Eval and predict use this so they resample exactly like training does with
    every augmentation off. With ``out_size`` equal to the input size it is the
    exact identity (plus the uint8 -> [0, 1] conversion).

    Args:
        images: uint8 (0..255) or float32 ([0, 1]) ``[B, H, W, C]``, static H, W, C.
        out_size: side of the square output.
        interpolation: "nearest" (one gather) or "bilinear" (four).
        backend: "tensorflow" | "jax"; default from the array type.

    Returns:
        float32 ``[B, out_size, out_size, C]`` in [0, 1].

    Example:
        >>> import tensorflow as tf
        >>> resize_batch(tf.zeros([2, 64, 48, 3], tf.uint8), 32).shape
        TensorShape([2, 32, 32, 3])
    """
    ops = ops_for(images, backend)
    images = check_images(ops, images, "resize_batch")
    if interpolation not in INTERPOLATIONS:
        raise TfkitError(f"resize_batch: interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    out, scale = int(out_size), _scale(ops, images)
    if images.shape[1] == out and images.shape[2] == out:
        return ops.cast(images, "float32") * scale
    x = resample(ops, images, None, out, interpolation, "nearest", 0.0) * scale
    return ops.clip(x, 0.0, 1.0) if interpolation == "bilinear" else x


def _point_runs(masks: dict, ra: RandAugmentDraw | None) -> bool:
    ra_on = ra is not None and any(getattr(ra, k) is not None for k in
                                   ("autocontrast", "equalize", "posterize", "solarize", "sharpness"))
    return ra_on or any(n in masks for n in _POINT_OPS)


def _warp(ops: Ops, images: Any, cfg: AugmentConfig, masks: dict, rng: Rng, out: int, ra: Any) -> Any:
    """Geometry + resize in one resampling pass (float32, input units)."""
    h, w = int(images.shape[1]), int(images.shape[2])
    m = geometry_matrix(ops, cfg, masks, rng, ops.batch(images), ra)
    if m is not None:
        m = ops.materialize(pixel_matrix(ops, m, (h, w), out))  # once per image, not per pixel
        return resample(ops, images, m, out, cfg.interpolation, cfg.fill_mode, cfg.fill_value)
    if h == out and w == out:
        return ops.cast(images, "float32")
    return resample(ops, images, None, out, cfg.interpolation, "nearest", 0.0)


def augment_batch(images: Any, labels: Any, cfg: AugmentConfig, out_size: int, seed: Any,
                  backend: str | None = None) -> tuple[Any, Any]:
    """Augment a batch with per-image random parameters, then resize to ``out_size``.

    Order: geometry (dihedral, flips, random resized crop, affine, RandAugment's
    geometric ops, resize) in one resampling pass; colour (hue, saturation,
    contrast, brightness) as one per-image transform; clip; gamma, autocontrast,
    posterize, solarize, sharpness, blur, equalize; noise; clip to [0, 1];
    cutout, GridMask; mixup/cutmix. Ops with probability 0 (or zero magnitude)
    are skipped at trace time and are exactly the identity. Compiles under
    ``tf.function(jit_compile=True)`` and ``jax.jit``; the same seed gives the same
    batch on both backends (within float rounding).

    Args:
        images: uint8 (0..255) or float32 ([0, 1]) ``[B, H, W, C]`` with static H, W, C;
            a ``tf.Tensor`` (or NumPy) runs TensorFlow ops, a ``jax.Array`` JAX ops.
            Hue, saturation and contrast need C = 3 (skipped otherwise, logged once).
        labels: float ``[B, K]`` targets (one-hot / probabilities / multi-hot), mixed
            by mixup/cutmix; may be None when mixup and cutmix are off.
        cfg: the augment section of the config.
        out_size: side of the square output.
        seed: int shape-[2] seed (tensor, array or list); same seed -> same batch.
        backend: "tensorflow" | "jax"; default from the type of ``images``.

    Returns:
        ``(images, labels)``: float32 ``[B, out_size, out_size, C]`` in [0, 1], and
        the labels (float32 when mixed, else unchanged).

    Raises:
        TfkitError: bad config value, image shape/dtype, or seed shape.

    Example:
        >>> import tensorflow as tf
        >>> cfg = AugmentConfig(dihedral_p=1.0, cutmix_p=0.5)
        >>> x, y = augment_batch(tf.zeros([4, 40, 40, 3], tf.uint8), tf.one_hot([0, 1, 2, 0], 3), cfg, 32, [0, 1])
        >>> x.shape, y.shape
        (TensorShape([4, 32, 32, 3]), TensorShape([4, 3]))
    """
    check_augment_config(cfg)
    ops = ops_for(images, backend)
    images = check_images(ops, images, "augment_batch")
    rng = Rng(ops, seed)
    b, channels = ops.batch(images), int(images.shape[-1])
    masks = op_masks(ops, cfg, rng, b, channels)
    ra = draw_randaugment(ops, cfg, rng, b, channels)
    x = _warp(ops, images, cfg, masks, rng, int(out_size), ra)
    scale = _scale(ops, images)
    clip = cfg.interpolation == "bilinear" or cfg.fill_value != 0.0 and scale == 1.0
    if colour_runs(masks, ra):
        x, clip = apply_colour(ops, cfg, masks, rng, images, x, scale, ra), True
    elif scale != 1.0:
        x = x * scale
    if _point_runs(masks, ra):
        x = ops.clip(x, 0.0, 1.0) if clip else x  # the point ops map [0, 1] to itself
        x = apply_point_ops(ops, cfg, masks, rng, x, ra)
        clip = "sharpness" in masks or ra is not None and ra.sharpness is not None
    if "noise" in masks:
        on = ops.cast(masks["noise"], "float32")
        x, clip = noise(ops, x, rng.uniform(OP_IDS["noise"], [b], 0.0, cfg.noise_std, 1) * on, rng), True
    if clip:
        x = ops.clip(x, 0.0, 1.0)
    if "cutout" in masks:
        x = cutout(ops, x, cfg, rng, masks["cutout"], grouped="cutout" in cfg.one_of)
    if "gridmask" in masks:
        x = gridmask(ops, x, cfg, rng, masks["gridmask"])
    if cfg.mixup_p > 0 or cfg.cutmix_p > 0:
        if labels is None:
            raise TfkitError("augment_batch: mixup/cutmix need labels, got None")
        x, labels = mix(ops, x, labels, cfg, rng)
    return x, labels


def batch_augmenter(cfg: AugmentConfig | None, out_size: int, jit_compile: bool = True):
    """A compiled ``fn(images, labels, seed) -> (images, labels)`` for a ``tf.data`` map over batches.

    On the host, XLA fuses the coordinate arithmetic, the gather, the colour
    transform and the masks into a few loops: 2-4x faster than the same graph
    without XLA (``bench/bench_pipeline.py``). ``cfg=None`` gives the eval path
    (:func:`resize_batch`, labels passed through). TensorFlow ops always: ``tf.data``
    runs TensorFlow whatever Keras' backend.

    Args:
        cfg: the augment section, or None for resizing only.
        out_size: side of the output images.
        jit_compile: compile with XLA (True) or run as a plain graph.

    Returns:
        A ``tf.function`` taking uint8/float32 images ``[B, H, W, C]``, labels (or None)
        and a shape-[2] int seed.

    Example:
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> fn = batch_augmenter(AugmentConfig(hflip_p=0.5), 32)
        >>> images, labels = fn(np.zeros((2, 40, 40, 3), np.uint8), None, tf.constant([42, 0], tf.int64))
        >>> images.shape.as_list(), labels
        ([2, 32, 32, 3], None)

        In a pipeline, the batch index makes each batch's seed::

            ds = batches.enumerate().map(
                lambda i, b: fn(b[0], b[1], tf.stack([tf.constant(42, tf.int64), i])))
    """
    import tensorflow as tf

    if cfg is not None:
        check_augment_config(cfg)
    if jit_compile:
        from tfkit.quiet import first_xla_compile

        first_xla_compile()  # TF 2.20 would print a C++ line at the pipeline's first compilation

    # autograph=False: the ops are backend-neutral (no Python branch on a tensor, as
    # JAX requires), so AutoGraph's source rewrite would only cost time: ~2.5 s per
    # dataset built, measured on a 2-fold tiny training.
    @tf.function(jit_compile=jit_compile, autograph=False)
    def fn(images, labels, seed):
        if cfg is None:
            return resize_batch(images, out_size, backend="tensorflow"), labels
        return augment_batch(images, labels, cfg, out_size, seed, backend="tensorflow")

    return fn
