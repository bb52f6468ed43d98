"""Geometry: every geometric op of an image folded into ONE 3x3 matrix, and one
resampling pass over the batch.

Why: ``ImageProjectiveTransformV3`` and ``CropAndResize`` have no XLA kernel,
and separate passes per op cost a full read and write of the batch each.
Dihedral symmetry, flips, random resized crop, affine, RandAugment's geometric
ops and the resize to the output size compose into one matrix per image; the
output pixel grid is mapped through it, the fill mode is applied to the
integer source coordinates, and ONE flat gather reads the pixels (all
channels at once, whatever their number).

Matrices are multiplied with explicit sums of products (:func:`matmul`), not a
backend ``matmul``: the same float operations in the same order on TensorFlow
and JAX, so both sample the same source pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tfkit.augment.backend import Ops
from tfkit.augment.draws import Rng
from tfkit.augment.plan import OP_IDS
from tfkit.augment.randaugment import RandAugmentDraw
from tfkit.config import AugmentConfig

__all__ = ["D4", "matmul", "geometry_matrix", "pixel_matrix", "fill", "resample"]

# The 8 symmetries of the square as 3x3 maps of centred (x, y, 1) coordinates.
# Index k matches tfkit.augment.dihedral: k % 4 quarter turns, after a transpose when k >= 4.
_D2 = [[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],
       [[0, 1], [1, 0]], [[1, 0], [0, -1]], [[0, -1], [-1, 0]], [[-1, 0], [0, 1]]]
D4 = np.array([np.pad(np.array(d, np.float32), [[0, 1], [0, 1]]) + np.diag([0, 0, 1]).astype(np.float32)
               for d in _D2], np.float32)


def matmul(ops: Ops, a: Any, b: Any) -> Any:
    """Batched ``a @ b`` for small static matrices ``[B|1, n, k] @ [B|1, k, m]``,
    as explicit sums in a fixed order (identical rounding on every backend)."""
    n, k, m = int(a.shape[-2]), int(a.shape[-1]), int(b.shape[-1])
    rows = []
    for i in range(n):
        cols = []
        for j in range(m):
            acc = a[:, i, 0] * b[:, 0, j]
            for t in range(1, k):
                acc = acc + a[:, i, t] * b[:, t, j]
            cols.append(acc)
        rows.append(ops.stack(cols, -1))
    return ops.stack(rows, -2)


def _mat(ops: Ops, b: Any, a00: Any, a01: Any, a02: Any, a10: Any, a11: Any, a12: Any) -> Any:
    zeros, ones = ops.zeros([b]), ops.ones([b])
    row = [ops.stack([a00, a01, a02], -1), ops.stack([a10, a11, a12], -1), ops.stack([zeros, zeros, ones], -1)]
    return ops.stack(row, -2)


def _then(ops: Ops, m: Any, t: Any) -> Any:
    """``t @ m`` (``t`` applied after ``m`` on output coordinates); ``m`` None = identity."""
    return t if m is None else matmul(ops, t, m)


def _affine(ops: Ops, cfg: AugmentConfig, rng: Rng, b: Any, on: Any) -> Any:
    on = ops.cast(on, "float32")
    u = lambda lo, hi, sub: rng.uniform(OP_IDS["affine"], [b], lo, hi, sub) * on  # noqa: E731
    deg = math.pi / 180.0
    theta = u(-cfg.rotate, cfg.rotate, 1) * deg
    shear = ops.tan(u(-cfg.shear, cfg.shear, 2) * deg)
    # zoom > 1 magnifies: the output samples a smaller source window.
    inv_zoom = 1.0 / (1.0 + u(-cfg.zoom, cfg.zoom, 3))
    tx = u(-2 * cfg.shift, 2 * cfg.shift, 4)  # the side is 2 units
    ty = u(-2 * cfg.shift, 2 * cfg.shift, 5)
    c, s = ops.cos(theta) * inv_zoom, ops.sin(theta) * inv_zoom
    # rotation @ shear(x += shear * y) @ scale, then shift
    return _mat(ops, b, c, c * shear - s, tx, s, s * shear + c, ty)


def _crop(ops: Ops, cfg: AugmentConfig, rng: Rng, b: Any, on: Any) -> Any:
    op = OP_IDS["crop"]
    area = rng.uniform(op, [b], cfg.crop_scale[0], cfg.crop_scale[1], 1)
    r = ops.exp(rng.uniform(op, [b], math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), 2))
    wf = ops.where(on, ops.minimum(ops.sqrt(area * r), 1.0), 1.0)
    hf = ops.where(on, ops.minimum(ops.sqrt(area / r), 1.0), 1.0)
    cx = rng.uniform(op, [b], -1.0, 1.0, 3) * (1.0 - wf)
    cy = rng.uniform(op, [b], -1.0, 1.0, 4) * (1.0 - hf)
    zeros = ops.zeros([b])
    return _mat(ops, b, wf, zeros, cx, zeros, hf, cy)


def _randaugment(ops: Ops, ra: RandAugmentDraw, b: Any) -> Any:
    """RandAugment's translate @ rotate @ shear_x @ shear_y (identity where not drawn)."""
    zeros, ones = ops.zeros([b]), ops.ones([b])
    m = None
    if ra.shear_y is not None:
        m = _mat(ops, b, ones, zeros, zeros, ra.shear_y, ones, zeros)
    if ra.shear_x is not None:
        m = _then(ops, m, _mat(ops, b, ones, ra.shear_x, zeros, zeros, ones, zeros))
    if ra.theta is not None:
        c, s = ops.cos(ra.theta), ops.sin(ra.theta)
        m = _then(ops, m, _mat(ops, b, c, -s, zeros, s, c, zeros))
    if ra.tx is not None or ra.ty is not None:
        tx = zeros if ra.tx is None else ra.tx
        ty = zeros if ra.ty is None else ra.ty
        m = _then(ops, m, _mat(ops, b, ones, zeros, tx, zeros, ones, ty))
    return m


def geometry_matrix(ops: Ops, cfg: AugmentConfig, masks: dict, rng: Rng, b: Any,
                    ra: RandAugmentDraw | None = None) -> Any:
    """Per-image 3x3 maps from centred output coordinates in [-1, 1] to centred source
    coordinates: source = Dihedral @ Flips @ Crop @ Affine @ RandAugment @ output.

    Args:
        ops: backend namespace.
        cfg: the augment config.
        masks: op name -> bool [B] for the ops that run (see :func:`tfkit.augment.plan.op_masks`).
        rng: the batch's random draws.
        b: batch size.
        ra: RandAugment's draws, or None.

    Returns:
        float32 ``[B, 3, 3]``, or None when no geometric op runs.
    """
    m = _randaugment(ops, ra, b) if ra is not None and ra.geometric else None
    if "affine" in masks:
        m = _then(ops, m, _affine(ops, cfg, rng, b, masks["affine"]))
    if "crop" in masks:
        m = _then(ops, m, _crop(ops, cfg, rng, b, masks["crop"]))
    if "hflip" in masks or "vflip" in masks:
        ones = ops.ones([b])
        sx = ops.where(masks["hflip"], -1.0, 1.0) if "hflip" in masks else ones
        sy = ops.where(masks["vflip"], -1.0, 1.0) if "vflip" in masks else ones
        if m is None:
            zeros = ops.zeros([b])
            m = _mat(ops, b, ones, zeros, zeros, zeros, ones, zeros)
        m = m * ops.stack([sx, sy, ones], -1)[:, :, None]  # diag(sx, sy, 1) @ m
    if "dihedral" in masks:
        k = ops.cast(ops.floor(rng.uniform(OP_IDS["dihedral"], [b], 0.0, 8.0, 1)), "int32")
        k = ops.where(masks["dihedral"], ops.minimum(k, 7), 0)
        m = _then(ops, m, ops.take(ops.const(D4), k))
    return m


def pixel_matrix(ops: Ops, m: Any, in_hw: tuple[int, int], out: int) -> Any:
    """Fold pixel <-> centred-coordinate conversions into ``m``: output pixel
    (x, y, 1) -> source pixel (x, y), ``[B, 2, 3]``. Pixel centres sit at integer
    indices, so the identity map with equal sizes is exactly the identity on indices."""
    h, w = in_hw
    p_out = np.array([[2.0 / out, 0, 1.0 / out - 1], [0, 2.0 / out, 1.0 / out - 1], [0, 0, 1]], np.float32)
    p_in = np.array([[w / 2.0, 0, (w - 1) / 2.0], [0, h / 2.0, (h - 1) / 2.0]], np.float32)
    return matmul(ops, matmul(ops, ops.const(p_in[None]), m), ops.const(p_out[None]))


def fill(ops: Ops, i: Any, n: int, mode: str) -> Any:
    """Map integer source coordinates outside [0, n) back inside, per fill mode."""
    if mode == "reflect":  # d c b a | a b c d | d c b a
        i = ops.floormod(i, 2 * n)
        return ops.where(i >= n, 2 * n - 1 - i, i)
    if mode == "wrap":
        return ops.floormod(i, n)
    return ops.clip(i, 0, n - 1)  # nearest; constant masks the clipped ones later


def resample(ops: Ops, images: Any, m: Any, out: int, interpolation: str, fill_mode: str,
             fill_value: float) -> Any:
    """Resample ``images`` ``[B, H, W, C]`` through per-image pixel matrices ``m``
    ``[B, 2, 3]`` (None: the plain resize).

    Returns:
        float32 ``[B, out, out, C]`` in the input's units (0..255 for uint8).
    """
    h, w, c = (int(d) for d in images.shape[1:])
    b = ops.batch(images)
    grid = ops.range(out, "float32")
    if m is None:  # separable: the resize maps rows and columns independently
        xs = (grid + 0.5) * (w / out) - 0.5
        ys = (grid + 0.5) * (h / out) - 0.5
        x = ops.broadcast_to(xs[None, None, :], [b, out, out])
        y = ops.broadcast_to(ys[None, :, None], [b, out, out])
    else:
        gx, gy = grid[None, None, :], grid[None, :, None]
        x = m[:, 0, 0, None, None] * gx + m[:, 0, 1, None, None] * gy + m[:, 0, 2, None, None]
        y = m[:, 1, 0, None, None] * gx + m[:, 1, 1, None, None] * gy + m[:, 1, 2, None, None]
    flat = ops.reshape(images, [-1, c])
    base = (ops.range(b) * (h * w))[:, None, None]
    fill_units = fill_value * (255.0 if ops.dtype(images) == "uint8" else 1.0)

    def read(xi: Any, yi: Any) -> Any:
        xf, yf = fill(ops, xi, w, fill_mode), fill(ops, yi, h, fill_mode)
        px = ops.cast(ops.take(flat, base + yf * w + xf), "float32")
        if fill_mode == "constant":
            inside = (xi == xf) & (yi == yf)
            px = ops.where(inside[..., None], px, fill_units)
        return px

    if interpolation == "nearest":
        return read(ops.cast(ops.floor(x + 0.5), "int32"), ops.cast(ops.floor(y + 0.5), "int32"))
    x0f, y0f = ops.floor(x), ops.floor(y)
    fx, fy = (x - x0f)[..., None], (y - y0f)[..., None]
    x0, y0 = ops.cast(x0f, "int32"), ops.cast(y0f, "int32")
    top = read(x0, y0) * (1 - fx) + read(x0 + 1, y0) * fx
    bottom = read(x0, y0 + 1) * (1 - fx) + read(x0 + 1, y0 + 1) * fx
    return top * (1 - fy) + bottom * fy
