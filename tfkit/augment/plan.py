"""Which ops run on a batch, and on which images.

An op runs (is traced at all) when its probability or its ``one_of`` group can
pick it and its magnitude is non-zero; anything else is skipped at trace time,
so a disabled op costs nothing and is exactly the identity. For the ops that
run, :func:`op_masks` draws one bool per image: the op's own coin, or for
members of ``augment.one_of`` the group's per-image choice.

Channels: hue, saturation and contrast are defined on RGB (a rotation about
the grey axis, lerps to luma). On images with C != 3 channels they are skipped
and a message says so once per process; every other op works on all channels.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from tfkit.augment.backend import Ops
from tfkit.augment.draws import Rng
from tfkit.config import AugmentConfig

__all__ = ["OPS", "GROUPABLE", "RGB_OPS", "ONE_OF_ID", "enabled_ops", "op_masks", "rgb_skipped"]

_LOG = logging.getLogger("tfkit.augment")

# name -> (probability key, "has a non-zero magnitude"), in pipeline order.
OPS: dict[str, tuple[str, Callable[[AugmentConfig], bool]]] = {
    "dihedral": ("dihedral_p", lambda c: True),
    "hflip": ("hflip_p", lambda c: True),
    "vflip": ("vflip_p", lambda c: True),
    "crop": ("crop_p", lambda c: True),
    "affine": ("affine_p", lambda c: c.rotate > 0 or c.shear > 0 or c.zoom > 0 or c.shift > 0),
    "hue": ("hue_p", lambda c: c.hue > 0),
    "saturation": ("saturation_p", lambda c: c.saturation > 0),
    "contrast": ("contrast_p", lambda c: c.contrast > 0),
    "brightness": ("brightness_p", lambda c: c.brightness > 0),
    "gamma": ("gamma_p", lambda c: c.gamma > 0),
    "posterize": ("posterize_p", lambda c: c.posterize_bits < 8),
    "solarize": ("solarize_p", lambda c: c.solarize > 0),
    "equalize": ("equalize_p", lambda c: True),
    "sharpness": ("sharpness_p", lambda c: c.sharpness > 0),
    "blur": ("blur_p", lambda c: c.blur_sigma > 0),
    "noise": ("noise_p", lambda c: c.noise_std > 0),
    "cutout": ("cutout_p", lambda c: c.cutout_size > 0),
    "gridmask": ("gridmask_p", lambda c: c.gridmask_ratio > 0),
}
GROUPABLE = tuple(OPS)  # ops allowed in augment.one_of (mixup / cutmix already exclude each other)
RGB_OPS = ("hue", "saturation", "contrast")
# Random streams: one per op, so enabling one op never changes another's draws.
OP_IDS = {"dihedral": 1, "hflip": 2, "vflip": 3, "crop": 4, "affine": 5, "hue": 6, "saturation": 7,
          "contrast": 8, "brightness": 9, "noise": 10, "blur": 11, "cutout": 12, "gamma": 14, "posterize": 15,
          "solarize": 16, "equalize": 17, "sharpness": 18, "gridmask": 19}
ONE_OF_ID = 20
_LOGGED: set[str] = set()


def rgb_skipped(names: list[str], channels: int) -> None:
    """Say once per process that colour ops are skipped for ``channels``-channel images."""
    msg = (f"tfkit.augment: {', '.join(names)} need RGB images; skipped for these {channels}-channel images "
           f"(geometric, point and occlusion ops still apply to every channel)")
    if names and msg not in _LOGGED:
        _LOGGED.add(msg)
        _LOG.warning(msg)


def enabled_ops(cfg: AugmentConfig, channels: int = 3) -> list[str]:
    """Names of the ops that run on ``channels``-channel images, in pipeline order.

    Args:
        cfg: the augment config.
        channels: image channels (RGB-only ops drop out when != 3, logged once).

    Returns:
        The op names (a subset of :data:`OPS`).
    """
    group = set(n for n, w in zip(cfg.one_of, _weights(cfg)) if w > 0) if cfg.one_of_p > 0 else set()
    names = []
    for name, (p_key, has_magnitude) in OPS.items():
        p = getattr(cfg, p_key)
        if name in cfg.one_of:
            p = 1.0 if name in group else 0.0
        if p > 0 and has_magnitude(cfg):
            names.append(name)
    skipped = [n for n in names if n in RGB_OPS and channels != 3]
    rgb_skipped(skipped, channels)
    return [n for n in names if n not in skipped]


def _weights(cfg: AugmentConfig) -> list[float]:
    """Choice weights of the ``one_of`` members: their own probabilities, equal if all 0."""
    weights = [getattr(cfg, OPS[n][0]) for n in cfg.one_of]
    return weights if sum(weights) > 0 else [1.0] * len(weights)


def _one_of(ops: Ops, cfg: AugmentConfig, rng: Rng, b: Any) -> dict[str, Any]:
    """Per-image choice of exactly one member of ``cfg.one_of`` (with probability
    ``one_of_p``), weighted by :func:`_weights`."""
    weights = _weights(cfg)
    total = float(sum(weights))
    on = rng.coin(ONE_OF_ID, b, cfg.one_of_p)
    u = rng.unit(ONE_OF_ID, [b], 1) * total
    masks, lo = {}, 0.0
    last = max(i for i, w in enumerate(weights) if w > 0)
    for i, (name, w) in enumerate(zip(cfg.one_of, weights)):
        hi = total if i == last else lo + w  # the last chosen member closes the range exactly
        masks[name] = on & (u >= lo) & (u < hi)
        lo = hi
    return masks


def op_masks(ops: Ops, cfg: AugmentConfig, rng: Rng, b: Any, channels: int) -> dict[str, Any]:
    """Per-image on/off for every op that runs.

    Args:
        ops: backend namespace.
        cfg: the augment config.
        rng: the batch's random draws.
        b: batch size.
        channels: image channels.

    Returns:
        op name -> bool ``[B]``; ops that do not run are absent.
    """
    names = enabled_ops(cfg, channels)
    grouped = _one_of(ops, cfg, rng, b) if cfg.one_of and cfg.one_of_p > 0 else {}
    masks = {}
    for name in names:
        masks[name] = grouped[name] if name in grouped else rng.coin(OP_IDS[name], b, getattr(cfg, OPS[name][0]))
    return masks
