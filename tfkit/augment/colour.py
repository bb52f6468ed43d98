"""Colour: hue, saturation, contrast, brightness and the /255 folded into ONE
per-image transform ``y = M x + o``.

On RGB images M is 3x3: hue is a rotation about the grey axis, saturation a
lerp to luma, contrast a lerp to the image's mean luma, brightness an offset;
RandAugment's saturation / contrast / brightness factors fold in exactly
(saturation and contrast lerps compose by multiplying their factors, since
both keep luma and mean luma). On images with C != 3 channels only
brightness (additive, and RandAugment's multiplicative factor) applies, to
every channel: the others need RGB (see :mod:`tfkit.augment.plan`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tfkit.augment.backend import Ops, ops_for
from tfkit.augment.draws import Rng
from tfkit.augment.geometry import matmul
from tfkit.augment.plan import OP_IDS
from tfkit.augment.randaugment import RandAugmentDraw
from tfkit.config import AugmentConfig

__all__ = ["LUMA", "hue_matrix", "colour_runs", "apply_colour"]

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights; they sum to 1, so saturation keeps luma
_COLOUR_OPS = ("hue", "saturation", "contrast", "brightness")


def hue_matrix(theta: Any, ops: Ops | None = None) -> Any:
    """RGB rotation by ``theta`` radians about the grey axis (a hue shift), [B] -> [B, 3, 3].

    Args:
        theta: angles in radians; 2*pi is a full turn (the identity).
        ops: backend namespace (default: from ``theta``'s type).

    Returns:
        float32 [B, 3, 3]; grey stays grey.

    Example:
        >>> import tensorflow as tf
        >>> hue_matrix(tf.constant([0.0])).numpy()[0].round(6).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    ops = ops or ops_for(theta)
    c, s = ops.cos(theta)[:, None, None], ops.sin(theta)[:, None, None]
    k = 1.0 / math.sqrt(3.0)
    kkt = ops.const(np.full([1, 3, 3], 1.0 / 3.0, np.float32))
    cross = ops.const([[[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]]])
    return c * ops.const(np.eye(3, dtype=np.float32)[None]) + (1.0 - c) * kkt + s * cross


def colour_runs(masks: dict, ra: RandAugmentDraw | None) -> bool:
    """Whether any op of the colour transform runs on this batch."""
    ra_on = ra is not None and any(v is not None for v in (ra.brightness, ra.saturation, ra.contrast))
    return ra_on or any(n in masks for n in _COLOUR_OPS)


def _factor(rng: Rng, name: str, b: Any, mag: float, on: Any, ops: Ops) -> Any:
    return 1.0 + rng.uniform(OP_IDS[name], [b], -mag, mag, 1) * ops.cast(on, "float32")


def _rgb_matrix(ops: Ops, cfg: AugmentConfig, masks: dict, rng: Rng, images: Any, b: Any, scale: float,
                ra: RandAugmentDraw | None) -> tuple[Any, Any]:
    """``M`` [B, 3, 3] (input units -> [0, 1]) and ``o`` [B, 3], in the order hue,
    saturation, scale, contrast, brightness."""
    m = ops.broadcast_to(ops.const(np.eye(3, dtype=np.float32)[None]), [b, 3, 3])
    if "hue" in masks:
        on = ops.cast(masks["hue"], "float32")
        m = hue_matrix(rng.uniform(OP_IDS["hue"], [b], -cfg.hue, cfg.hue, 1) * (2.0 * math.pi) * on, ops)
    s = _factor(rng, "saturation", b, cfg.saturation, masks["saturation"], ops) if "saturation" in masks else None
    if ra is not None and ra.saturation is not None:
        s = ra.saturation if s is None else s * ra.saturation
    if s is not None:
        luma = ops.const(np.broadcast_to(np.array(LUMA, np.float32)[None, None, :], [1, 3, 3]).copy())
        eye = ops.const(np.eye(3, dtype=np.float32)[None])
        m = matmul(ops, s[:, None, None] * eye + (1.0 - s)[:, None, None] * luma, m)
    m = m * scale
    offset = ops.zeros([b, 3])
    c = _factor(rng, "contrast", b, cfg.contrast, masks["contrast"], ops) if "contrast" in masks else None
    if ra is not None and ra.contrast is not None:
        c = ra.contrast if c is None else c * ra.contrast
    if c is not None:
        # The mean from a strided subsample of the input (~64x64 points): a full
        # pass over the batch would cost as much as the colour transform itself.
        h, w = int(images.shape[1]), int(images.shape[2])
        sub = images[:, :: max(1, h // 64), :: max(1, w // 64), :]
        mean_rgb = ops.mean(ops.cast(sub, "float32"), [1, 2])  # [B, 3], input units
        grey = ops.sum(matmul(ops, m, mean_rgb[:, :, None])[:, :, 0] * ops.const(LUMA), -1)  # sat keeps luma
        m = m * c[:, None, None]
        offset = offset + ((1.0 - c) * grey)[:, None]
    return m, offset


def _gain_offset(ops: Ops, cfg: AugmentConfig, masks: dict, rng: Rng, b: Any,
                 ra: RandAugmentDraw | None) -> tuple[Any, Any]:
    """Brightness as a per-image ``(gain, offset)`` [B] pair, for any channel count."""
    gain, offset = ops.ones([b]), ops.zeros([b])
    if "brightness" in masks:
        on = ops.cast(masks["brightness"], "float32")
        offset = rng.uniform(OP_IDS["brightness"], [b], -cfg.brightness, cfg.brightness, 1) * on
    if ra is not None and ra.brightness is not None:  # PIL's Brightness: a blend with black
        gain, offset = gain * ra.brightness, offset * ra.brightness
    return gain, offset


def apply_colour(ops: Ops, cfg: AugmentConfig, masks: dict, rng: Rng, images: Any, x: Any, scale: float,
                 ra: RandAugmentDraw | None) -> Any:
    """Apply the per-image colour transform to the resampled batch ``x`` (input units).

    Args:
        ops: backend namespace.
        cfg: the augment config.
        masks: op name -> bool [B] for the ops that run.
        rng: the batch's random draws.
        images: the input batch (contrast's mean luma is measured on it).
        x: float32 ``[B, S, S, C]`` in the input's units.
        scale: input units -> [0, 1] (1/255 for uint8).
        ra: RandAugment's draws, or None.

    Returns:
        float32 ``[B, S, S, C]`` on the [0, 1] scale, not yet clipped.
    """
    b = ops.batch(x)
    gain, offset = _gain_offset(ops, cfg, masks, rng, b, ra)
    channels = int(x.shape[-1])
    if channels != 3 or not any(n in masks for n in ("hue", "saturation", "contrast")) and (
            ra is None or ra.saturation is None and ra.contrast is None):
        gain, offset = ops.materialize(gain * scale), ops.materialize(offset)
        return x * gain[:, None, None, None] + offset[:, None, None, None]
    m, o = _rgb_matrix(ops, cfg, masks, rng, images, b, scale, ra)
    m, o = ops.materialize(m * gain[:, None, None]), ops.materialize(o * gain[:, None] + offset[:, None])
    # Three broadcast multiply-adds (input channel c times column c of M): XLA fuses
    # them with the gather and the clip into one loop; faster than einsum or stack.
    cm = m[:, None, None]  # [B, 1, 1, 3 out, 3 in]
    return x[..., 0:1] * cm[..., 0] + x[..., 1:2] * cm[..., 1] + x[..., 2:3] * cm[..., 2] + o[:, None, None]
