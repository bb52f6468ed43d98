"""Occlusion and label mixing: cutout, GridMask, mixup and cutmix, as masks built
from coordinate comparisons (no scatter, static shapes)."""

from __future__ import annotations

import math
from typing import Any

from tfkit.augment.backend import Ops
from tfkit.augment.draws import Rng
from tfkit.augment.plan import OP_IDS
from tfkit.config import AugmentConfig

__all__ = ["box_mask", "random_box", "cutout", "gridmask", "mix", "MIX_ID"]

MIX_ID = 13  # random stream of mixup / cutmix


def box_mask(ops: Ops, y0: Any, y1: Any, x0: Any, x1: Any, out: int) -> Any:
    """bool [B, out, out]: y0 <= row < y1 and x0 <= col < x1, per image."""
    g = ops.range(out)
    rows = (g[None, :] >= y0[:, None]) & (g[None, :] < y1[:, None])
    cols = (g[None, :] >= x0[:, None]) & (g[None, :] < x1[:, None])
    return rows[:, :, None] & cols[:, None, :]


def random_box(ops: Ops, rng: Rng, op: int, b: Any, side_h: Any, side_w: Any, out: int, sub: int) -> tuple:
    """Integer boxes of the given sides (int32 [B]) centred uniformly in the image, clipped to it."""
    cy = ops.cast(ops.floor(rng.uniform(op, [b], 0.0, float(out), sub)), "int32")
    cx = ops.cast(ops.floor(rng.uniform(op, [b], 0.0, float(out), sub + 1)), "int32")
    y0, x0 = ops.clip(cy - side_h // 2, 0, out), ops.clip(cx - side_w // 2, 0, out)
    y1 = ops.clip(cy - side_h // 2 + side_h, 0, out)
    x1 = ops.clip(cx - side_w // 2 + side_w, 0, out)
    return y0, y1, x0, x1


def cutout(ops: Ops, x: Any, cfg: AugmentConfig, rng: Rng, on: Any, grouped: bool) -> Any:
    """``cutout_count`` square holes per image (zeros). The first box uses ``on``;
    each further box has its own coin, or ``on`` too when cutout is a ``one_of`` member."""
    b, out = ops.batch(x), int(x.shape[1])
    op = OP_IDS["cutout"]
    side = ops.full([b], int(round(cfg.cutout_size * out)), "int32")
    keep = None
    for i in range(cfg.cutout_count):
        box_on = on if i == 0 or grouped else rng.unit(op, [b], 200 + i) < cfg.cutout_p
        s = ops.where(box_on, side, 0)
        hole = box_mask(ops, *random_box(ops, rng, op, b, s, s, out, 10 * i + 1), out)
        keep = ~hole if keep is None else keep & ~hole
    return x * ops.cast(keep, "float32")[..., None]


def gridmask(ops: Ops, x: Any, cfg: AugmentConfig, rng: Rng, on: Any) -> Any:
    """GridMask (Chen et al. 2020): drop squares of side ``ratio * d`` on a grid of
    unit ``d`` (drawn in ``gridmask_size`` of the side), randomly offset and rotated."""
    b, out = ops.batch(x), int(x.shape[1])
    op = OP_IDS["gridmask"]
    d = rng.uniform(op, [b], cfg.gridmask_size[0], cfg.gridmask_size[1], 1) * float(out)
    ox, oy = rng.unit(op, [b], 2) * d, rng.unit(op, [b], 3) * d
    g = ops.range(out, "float32") + (0.5 - out / 2.0)
    gx, gy = g[None, None, :], g[None, :, None]
    if cfg.gridmask_rotate > 0:
        theta = rng.uniform(op, [b], -cfg.gridmask_rotate, cfg.gridmask_rotate, 4) * (math.pi / 180.0)
        c, s = ops.cos(theta)[:, None, None], ops.sin(theta)[:, None, None]
        u, v = c * gx + s * gy, c * gy - s * gx
    else:
        u, v = gx, gy  # [1, 1, S] and [1, S, 1]: the comparisons below broadcast to [B, S, S]
    d3 = d[:, None, None]
    side = cfg.gridmask_ratio * d3
    drop = (ops.floormod(u + ox[:, None, None], d3) < side) & (ops.floormod(v + oy[:, None, None], d3) < side)
    drop = drop & on[:, None, None]
    return x * ops.cast(~drop, "float32")[..., None]


def mix(ops: Ops, x: Any, labels: Any, cfg: AugmentConfig, rng: Rng) -> tuple[Any, Any]:
    """Mixup or cutmix (at most one per image) with a partner image of the same
    batch (the batch rolled by a random shift); labels get the same weights.

    Returns:
        ``(images, labels)``, labels float32.
    """
    b, out = ops.batch(x), int(x.shape[1])
    labels = ops.cast(labels, "float32")
    others = ops.maximum(b - 1, 1)
    shift = 1 + ops.cast(ops.floor(rng.unit(MIX_ID, [], 1) * ops.cast(others, "float32")), "int32")
    shift = ops.minimum(shift, others)
    xp, yp = ops.roll(x, shift, 0), ops.roll(labels, shift, 0)
    u = rng.unit(MIX_ID, [b], 2)
    weight = ops.zeros([b])  # weight of the partner
    if cfg.mixup_p > 0:
        lam = rng.beta(MIX_ID, [b], cfg.mixup_alpha, 3)
        w_mix = ops.where(u < cfg.mixup_p, 1.0 - lam, 0.0)
        x = ops.clip(x * (1.0 - w_mix)[:, None, None, None] + xp * w_mix[:, None, None, None], 0.0, 1.0)
        weight = weight + w_mix
    if cfg.cutmix_p > 0:
        cut_on = (u >= cfg.mixup_p) & (u < cfg.mixup_p + cfg.cutmix_p)
        lam = rng.beta(MIX_ID, [b], cfg.cutmix_alpha, 4)
        side = ops.cast(ops.floor(float(out) * ops.sqrt(1.0 - lam) + 0.5), "int32")
        side = ops.where(cut_on, side, 0)
        y0, y1, x0, x1 = random_box(ops, rng, MIX_ID, b, side, side, out, 5)
        x = ops.where(box_mask(ops, y0, y1, x0, x1, out)[..., None], xp, x)
        # The label weight is the pasted area exactly (the box is clipped to the image).
        weight = weight + ops.cast((y1 - y0) * (x1 - x0), "float32") / float(out * out)
    w = weight[:, None]
    return x, labels * (1.0 - w) + yp * w
