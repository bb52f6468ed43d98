"""Deterministic views of a batch: the dihedral group, flips, and five / ten crops
(test-time augmentation)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tfkit.augment.backend import Ops, ops_for
from tfkit.augment.geometry import pixel_matrix, resample
from tfkit.utils import TfkitError

__all__ = ["dihedral", "dihedral_inverse", "tta_views", "crop_views", "VIEW_MODES", "MAX_VIEWS", "CROP_FRACTION"]

VIEW_MODES = ("dihedral", "flips", "five_crop", "ten_crop")
# five_crop: the full image, then the centre and the four corner crops; ten_crop: those
# six and their horizontal mirrors. View 0 is always the untouched image.
MAX_VIEWS = {"dihedral": 8, "flips": 4, "five_crop": 6, "ten_crop": 12}
CROP_FRACTION = 0.875  # side of a crop / side of the image (224 of 256, as in torchvision's evaluation)
# Crop centres in centred coordinates, in units of (1 - fraction): full, centre, TL, TR, BL, BR.
_CROPS = ((None, None), (0, 0), (-1, -1), (1, -1), (-1, 1), (1, 1))


def dihedral(images: Any, k: int) -> Any:
    """The k-th symmetry of the square: ``k % 4`` quarter turns counter-clockwise,
    after a transpose when ``k >= 4``. ``k = 0`` is the identity.

    Args:
        images: ``[B, H, W, C]`` (square for k in {1, 3, 4..7} to keep the shape);
            a TensorFlow tensor or a JAX array.
        k: static int in 0..7.

    Returns:
        The transformed batch (same dtype, exact: only reversals and transposes).

    Example:
        >>> import tensorflow as tf
        >>> x = tf.random.uniform([1, 4, 4, 3])
        >>> bool(tf.reduce_all(dihedral(dihedral(x, 1), dihedral_inverse(1)) == x))
        True
    """
    ops = ops_for(images)
    k = int(k)
    if not 0 <= k <= 7:
        raise TfkitError(f"dihedral: k must be in 0..7, got {k}")
    if k >= 4:
        images = ops.transpose(images, [0, 2, 1, 3])
    for _ in range(k % 4):  # one quarter turn counter-clockwise
        images = ops.flip(ops.transpose(images, [0, 2, 1, 3]), [1])
    return images


def dihedral_inverse(k: int) -> int:
    """Index of the inverse of :func:`dihedral`'s k-th symmetry.

    Args:
        k: int in 0..7.

    Returns:
        j with ``dihedral(dihedral(x, k), j) == x``.

    Example:
        >>> dihedral_inverse(1), dihedral_inverse(5)
        (3, 5)
    """
    return (4 - k) % 4 if k < 4 else k  # the four reflections are their own inverse


def _crop(ops: Ops, images: Any, cx: int, cy: int, fraction: float, interpolation: str) -> Any:
    """One crop of side ``fraction`` centred at (cx, cy) * (1 - fraction), resized back."""
    b, h, w = ops.batch(images), int(images.shape[1]), int(images.shape[2])
    f, off = fraction, 1.0 - fraction
    m = np.array([[[f, 0, cx * off], [0, f, cy * off], [0, 0, 1]]], np.float32)
    mb = ops.broadcast_to(ops.const(m), [b, 3, 3])
    x = resample(ops, images, pixel_matrix(ops, mb, (h, w), w), w, interpolation, "nearest", 0.0)
    if ops.dtype(images) == "uint8":
        return ops.cast(ops.clip(ops.floor(x + 0.5), 0.0, 255.0), "uint8")
    return x


def crop_views(images: Any, n_views: int, mirrored: bool, fraction: float = CROP_FRACTION,
               interpolation: str = "nearest") -> list[Any]:
    """The full image, the centre crop and the four corner crops (each resized back
    to the image size), then, when ``mirrored``, the horizontal mirrors of those six.

    Args:
        images: square ``[B, S, S, C]``.
        n_views: how many of those views to return (1..6, or 1..12 when mirrored).
        mirrored: add the mirrors (ten-crop).
        fraction: crop side / image side.
        interpolation: "nearest" or "bilinear".

    Returns:
        A list of ``n_views`` batches shaped like ``images``.
    """
    ops = ops_for(images)
    if int(images.shape[1]) != int(images.shape[2]):
        raise TfkitError(f"crop views: expected square images, got {int(images.shape[1])}x{int(images.shape[2])}")
    views = []
    for i in range(n_views):
        cx, cy = _CROPS[i % 6]
        v = images if cx is None else _crop(ops, images, cx, cy, fraction, interpolation)
        views.append(ops.flip(v, [2]) if i >= 6 and mirrored else v)
    return views


def tta_views(images: Any, n_views: int, mode: str = "dihedral", interpolation: str = "nearest",
              crop_fraction: float = CROP_FRACTION) -> Any:
    """Deterministic test-time views of a batch, stacked on a new first axis.

    Args:
        images: ``[B, H, W, C]`` (square for dihedral views beyond 2 and for crops);
            a TensorFlow tensor or a JAX array.
        n_views: number of views (see :data:`MAX_VIEWS`).
        mode: "dihedral" (view k is ``dihedral(images, k)``), "flips" (identity,
            horizontal flip, vertical flip, both), "five_crop" (the full image,
            then the centre and four corner crops of side ``crop_fraction``,
            resized back) or "ten_crop" (those six, then their horizontal mirrors).
        interpolation: resampling of the crops.
        crop_fraction: crop side / image side.

    Returns:
        ``[n_views, B, H, W, C]``; view 0 is always the identity.

    Example:
        >>> import tensorflow as tf
        >>> tta_views(tf.zeros([2, 8, 8, 3]), 4, "flips").shape
        TensorShape([4, 2, 8, 8, 3])
    """
    if mode not in VIEW_MODES:
        raise TfkitError(f"tta_views: mode must be one of {', '.join(VIEW_MODES)}, got {mode!r}")
    if not 1 <= n_views <= MAX_VIEWS[mode]:
        raise TfkitError(f"tta_views: {mode} mode has 1..{MAX_VIEWS[mode]} views, got {n_views}")
    if not 0.0 < crop_fraction <= 1.0:
        raise TfkitError(f"tta_views: crop_fraction must be in (0, 1], got {crop_fraction}")
    ops = ops_for(images)
    if mode == "dihedral":
        views = [dihedral(images, k) for k in range(n_views)]
    elif mode == "flips":
        flips = [[], [2], [1], [1, 2]]
        views = [ops.flip(images, axes) if axes else images for axes in flips[:n_views]]
    else:
        views = crop_views(images, n_views, mode == "ten_crop", crop_fraction, interpolation)
    return ops.stack(views, 0)
