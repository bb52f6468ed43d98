"""Per-image RandAugment (Cubuk et al. 2020): N ops drawn for EACH image, magnitude M.

Why per image: Keras' ``RandAugment`` layer draws its ops once per batch, so a
whole batch shares one policy. Here every image draws its own N distinct ops
(the N smallest of K uniform keys, so no sort is needed) and a random sign per
op; ops it did not draw get their identity parameter (angle 0, factor 1, ...).
Nothing is applied op by op: the geometric draws fold into the batch's one
warp matrix, brightness / saturation / contrast into its colour transform, and
the point ops and sharpness run once over the batch with per-image parameters.
So an image's ops are applied in the kit's fixed order (geometry, colour, point
ops, sharpness) rather than in the drawn order; each op is what the paper
defines, and the cost does not grow with N.

Magnitudes follow timm's "increasing" levels (M / 10 of the maximum, random
sign where the op has a direction): rotate 30 degrees, shear 0.3, translate
0.45 of the side, brightness / saturation ("color") / contrast / sharpness
factors 1 +- 0.9, posterize down to 4 bits, solarize threshold down to 0;
equalize, autocontrast and identity have no magnitude. M = 0 makes every op
with a magnitude the identity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tfkit.augment.backend import Ops
from tfkit.augment.draws import Rng
from tfkit.config import AugmentConfig

__all__ = ["RANDAUGMENT_OPS", "RGB_ONLY", "RandAugmentDraw", "draw_randaugment", "selected_ops", "OP_ID"]

RANDAUGMENT_OPS = ("identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness",
                   "saturation", "contrast", "sharpness", "posterize", "solarize", "equalize", "autocontrast")
RGB_ONLY = ("saturation", "contrast")  # lerps to the luma of RGB: skipped for C != 3
OP_ID = 21  # random stream of the selection, signs and coins
_NO_MAGNITUDE = ("identity", "equalize", "autocontrast")
_MAX = {"rotate": 30.0 * math.pi / 180.0, "shear_x": 0.3, "shear_y": 0.3, "translate_x": 0.9, "translate_y": 0.9,
        "brightness": 0.9, "saturation": 0.9, "contrast": 0.9, "sharpness": 0.9, "posterize": 4.0, "solarize": 1.0}


@dataclasses.dataclass
class RandAugmentDraw:
    """Per-image parameters of one batch; None where the op is not in the pool
    (or has zero magnitude), so it costs nothing at trace time."""

    theta: Any = None  # rotation, radians
    shear_x: Any = None
    shear_y: Any = None
    tx: Any = None  # translation in centred units (the side is 2)
    ty: Any = None
    brightness: Any = None  # multiplicative factors (1 = identity)
    saturation: Any = None
    contrast: Any = None
    sharpness: Any = None
    posterize: Any = None  # int32 bits removed (0 = identity)
    solarize: Any = None  # threshold; values above it are inverted (2 = identity)
    equalize: Any = None  # bool masks
    autocontrast: Any = None

    @property
    def geometric(self) -> bool:
        return any(v is not None for v in (self.theta, self.shear_x, self.shear_y, self.tx, self.ty))


def selected_ops(ops: Ops, cfg: AugmentConfig, rng: Rng, b: Any) -> Any:
    """Which of the K ops of ``cfg.randaugment_ops`` each image applies.

    Args:
        ops: backend namespace.
        cfg: the augment config (``randaugment_n``, ``randaugment_p``).
        rng: the batch's random draws.
        b: batch size.

    Returns:
        bool ``[B, K]``: op j is one of the image's N distinct draws (the N smallest
        of K uniform keys; ties by index) and passed its ``randaugment_p`` coin.
    """
    k = len(cfg.randaugment_ops)
    keys = rng.unit(OP_ID, [b, k], 1)
    earlier = ops.const([[i < j for j in range(k)] for i in range(k)], "bool")[None]
    before = (keys[:, :, None] < keys[:, None, :]) | ((keys[:, :, None] == keys[:, None, :]) & earlier)
    rank = ops.sum(ops.cast(before, "int32"), 1)  # rank[b, j] = how many keys come before j's
    on = rank < cfg.randaugment_n
    if cfg.randaugment_p < 1.0:
        on = on & (rng.unit(OP_ID, [b, k], 2) < cfg.randaugment_p)
    return on


def draw_randaugment(ops: Ops, cfg: AugmentConfig, rng: Rng, b: Any, channels: int) -> RandAugmentDraw | None:
    """Draw RandAugment's per-image parameters for a batch.

    Args:
        ops: backend namespace.
        cfg: the augment config (``randaugment_*`` keys).
        rng: the batch's random draws.
        b: batch size.
        channels: image channels; saturation and contrast need 3 (else skipped).

    Returns:
        The draws, or None when RandAugment is off (``randaugment_n == 0``).
    """
    if cfg.randaugment_n <= 0 or cfg.randaugment_p <= 0:
        return None
    on = selected_ops(ops, cfg, rng, b)
    sign = ops.where(rng.unit(OP_ID, [b, len(cfg.randaugment_ops)], 3) < 0.5, -1.0, 1.0)
    level = cfg.randaugment_m / 10.0
    draw = RandAugmentDraw()
    for j, name in enumerate(cfg.randaugment_ops):
        if name == "identity" or (name in RGB_ONLY and channels != 3):
            continue
        if name not in _NO_MAGNITUDE and level == 0:
            continue  # zero magnitude: exactly the identity, skipped at trace time
        mask = on[:, j]
        if name in ("equalize", "autocontrast"):
            setattr(draw, name, mask)
        elif name == "posterize":
            draw.posterize = ops.where(mask, int(round(_MAX[name] * level)), 0)
        elif name == "solarize":
            draw.solarize = ops.where(mask, 1.0 - level, 2.0)
        elif name in ("brightness", "saturation", "contrast", "sharpness"):
            setattr(draw, name, ops.where(mask, 1.0 + sign[:, j] * (_MAX[name] * level), 1.0))
        else:
            field = {"rotate": "theta", "translate_x": "tx", "translate_y": "ty"}.get(name, name)
            setattr(draw, field, ops.where(mask, sign[:, j] * (_MAX[name] * level), 0.0))
    return draw
