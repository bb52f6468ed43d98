"""Validation of the ``augment`` config section: one-line errors naming the key,
raised before anything is traced."""

from __future__ import annotations

import dataclasses

from tfkit.augment.plan import GROUPABLE
from tfkit.augment.randaugment import RANDAUGMENT_OPS
from tfkit.config import AugmentConfig
from tfkit.utils import TfkitError

__all__ = ["check_augment_config", "FILL_MODES", "INTERPOLATIONS"]

FILL_MODES = ("reflect", "wrap", "nearest", "constant")
INTERPOLATIONS = ("nearest", "bilinear")
_MAGNITUDES = ("rotate", "shear", "zoom", "shift", "hue", "saturation", "contrast", "brightness", "noise_std",
               "blur_sigma", "mixup_alpha", "cutmix_alpha", "gamma", "solarize", "sharpness", "gridmask_rotate")


def _range(cfg: AugmentConfig, key: str, lo: float, hi: float, what: str) -> None:
    v = getattr(cfg, key)
    if not lo <= v <= hi:
        raise TfkitError(f"augment.{key}: expected {what}, got {v}")


def _names(cfg: AugmentConfig, key: str, allowed: tuple[str, ...]) -> None:
    names = getattr(cfg, key)
    for n in names:
        if n not in allowed:
            raise TfkitError(f"augment.{key}: unknown op {n!r} (expected some of: {', '.join(allowed)})")
    if len(set(names)) != len(names):
        raise TfkitError(f"augment.{key}: an op is listed twice: {names}")


def _check_geometry(cfg: AugmentConfig) -> None:
    if cfg.fill_mode not in FILL_MODES:
        raise TfkitError(f"augment.fill_mode: expected one of {', '.join(FILL_MODES)}, got {cfg.fill_mode!r}")
    if cfg.interpolation not in INTERPOLATIONS:
        raise TfkitError(
            f"augment.interpolation: expected one of {', '.join(INTERPOLATIONS)}, got {cfg.interpolation!r}")
    lo, hi = (list(cfg.crop_scale) + [None, None])[:2]
    if len(cfg.crop_scale) != 2 or not 0.0 < lo <= hi <= 1.0:
        raise TfkitError(f"augment.crop_scale: expected [min, max] with 0 < min <= max <= 1, got {cfg.crop_scale}")
    if len(cfg.crop_ratio) != 2 or not 0.0 < cfg.crop_ratio[0] <= cfg.crop_ratio[1]:
        raise TfkitError(f"augment.crop_ratio: expected [min, max] with 0 < min <= max, got {cfg.crop_ratio}")
    if cfg.zoom >= 1.0:
        raise TfkitError(f"augment.zoom: expected a relative zoom < 1 (range [1-zoom, 1+zoom]), got {cfg.zoom}")
    if abs(cfg.shear) >= 80.0:
        raise TfkitError(f"augment.shear: expected degrees < 80, got {cfg.shear}")


def _check_occlusion(cfg: AugmentConfig) -> None:
    if cfg.mixup_p + cfg.cutmix_p > 1.0 + 1e-9:
        raise TfkitError(
            f"augment.mixup_p + augment.cutmix_p: each image gets at most one, so the sum must be <= 1, "
            f"got {cfg.mixup_p} + {cfg.cutmix_p}")
    if cfg.mixup_p > 0 and cfg.mixup_alpha <= 0 or cfg.cutmix_p > 0 and cfg.cutmix_alpha <= 0:
        raise TfkitError("augment.mixup_alpha / cutmix_alpha: expected > 0 when the op is on")
    if cfg.cutout_count < 1 or not 0.0 <= cfg.cutout_size <= 1.0:
        raise TfkitError(f"augment.cutout_count/cutout_size: expected count >= 1 and size in [0, 1], "
                         f"got {cfg.cutout_count}, {cfg.cutout_size}")
    _range(cfg, "fill_value", 0.0, 1.0, "a value in [0, 1]")
    _range(cfg, "gridmask_ratio", 0.0, 0.999, "a fraction of the grid unit in [0, 1)")
    lo, hi = (list(cfg.gridmask_size) + [None, None])[:2]
    if len(cfg.gridmask_size) != 2 or not 0.0 < lo <= hi <= 1.0:
        raise TfkitError(f"augment.gridmask_size: expected [min, max] with 0 < min <= max <= 1, "
                         f"got {cfg.gridmask_size}")


def _check_policies(cfg: AugmentConfig) -> None:
    _range(cfg, "gamma", 0.0, 0.999, "a magnitude in [0, 1) (exponent in [1 - g, 1 + g])")
    _range(cfg, "solarize", 0.0, 1.0, "a magnitude in [0, 1]")
    _range(cfg, "sharpness", 0.0, 1.0, "a magnitude in [0, 1] (factor in [1 - s, 1 + s])")
    if not 1 <= cfg.posterize_bits <= 8:
        raise TfkitError(f"augment.posterize_bits: expected bits in 1..8 (8 = identity), got {cfg.posterize_bits}")
    _names(cfg, "one_of", GROUPABLE)
    if cfg.one_of_p > 0 and not cfg.one_of:
        raise TfkitError("augment.one_of_p: > 0 needs the ops to choose from in augment.one_of")
    _names(cfg, "randaugment_ops", RANDAUGMENT_OPS)
    if not 0 <= cfg.randaugment_n <= len(cfg.randaugment_ops):
        raise TfkitError(f"augment.randaugment_n: expected 0..{len(cfg.randaugment_ops)} "
                         f"(the number of randaugment_ops), got {cfg.randaugment_n}")
    _range(cfg, "randaugment_m", 0.0, 10.0, "a magnitude on the 0..10 scale")


def check_augment_config(cfg: AugmentConfig) -> None:
    """Validate an :class:`AugmentConfig`; raise a one-line :class:`TfkitError` on a bad value.

    Args:
        cfg: the augment section of the config.

    Returns:
        None.

    Example:
        >>> check_augment_config(AugmentConfig(hflip_p=0.5))
    """
    for f in dataclasses.fields(cfg):
        if f.name.endswith("_p"):
            p = getattr(cfg, f.name)
            if not 0.0 <= p <= 1.0:
                raise TfkitError(f"augment.{f.name}: expected a probability in [0, 1], got {p}")
    for name in _MAGNITUDES:
        if getattr(cfg, name) < 0:
            raise TfkitError(f"augment.{name}: expected a non-negative magnitude, got {getattr(cfg, name)}")
    _check_geometry(cfg)
    _check_occlusion(cfg)
    _check_policies(cfg)
