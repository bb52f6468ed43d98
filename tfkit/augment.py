"""Batched, XLA-compilable image augmentation with per-image random parameters.

Why this design: augmenting one image at a time in a ``map`` before ``batch``
starves an accelerator, and ``ImageProjectiveTransformV3``/``CropAndResize``
have no XLA kernel. Here every geometric op of an image (dihedral symmetry,
flips, random resized crop, affine, and the resize to the output size) is
composed into ONE 3x3 matrix, and the whole batch is resampled ONCE: the
output pixel grid is mapped through each image's matrix, the fill mode is
applied to the integer source coordinates, and one flat ``tf.gather`` reads
the (uint8) pixels. Hue, saturation, contrast, brightness and the /255 are
folded into ONE per-image 3x4 colour matrix. Cutout, cutmix and the constant
fill are masks built from coordinate comparisons. Ops whose probability is 0
are skipped at trace time, so a disabled op costs nothing and is exactly the
identity.

Randomness is stateless: every parameter is drawn from the shape-[2] ``seed``
(one independent stream per op), so the same seed gives the same batch
whatever the number of ``tf.data`` workers.

Example:
    >>> cfg = AugmentConfig(hflip_p=0.5, hue_p=0.5, hue=0.05)
    >>> x = tf.zeros([8, 64, 64, 3], tf.uint8)
    >>> y = tf.one_hot(tf.range(8) % 2, 2)
    >>> xa, ya = augment_batch(x, y, cfg, 48, seed=[1, 2])
    >>> xa.shape, xa.dtype
    (TensorShape([8, 48, 48, 3]), tf.float32)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfkit.config import AugmentConfig
from tfkit.utils import TfkitError

__all__ = [
    "augment_batch",
    "resize_batch",
    "batch_augmenter",
    "dihedral",
    "dihedral_inverse",
    "tta_views",
    "check_augment_config",
    "Augment",
    "FILL_MODES",
    "INTERPOLATIONS",
]

FILL_MODES = ("reflect", "wrap", "nearest", "constant")
INTERPOLATIONS = ("nearest", "bilinear")
# Philox explicitly: "auto_select" picks a different generator under XLA, and the
# same seed must give the same batch on the host and inside a jit-compiled step.
_ALG = "philox"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights; they sum to 1, so saturation keeps luma

# One independent random stream per op: enabling one op never changes another's draws.
_OP_DIHEDRAL, _OP_HFLIP, _OP_VFLIP, _OP_CROP, _OP_AFFINE = 1, 2, 3, 4, 5
_OP_HUE, _OP_SAT, _OP_CONTRAST, _OP_BRIGHT = 6, 7, 8, 9
_OP_NOISE, _OP_BLUR, _OP_CUTOUT, _OP_MIX = 10, 11, 12, 13

# The 8 symmetries of the square as 2x2 maps of centred (x, y) coordinates.
# Index k matches :func:`dihedral`: k % 4 quarter turns, after a transpose when k >= 4.
_D4 = np.array(
    [
        [[1, 0], [0, 1]],
        [[0, -1], [1, 0]],
        [[-1, 0], [0, -1]],
        [[0, 1], [-1, 0]],
        [[0, 1], [1, 0]],
        [[1, 0], [0, -1]],
        [[0, -1], [-1, 0]],
        [[-1, 0], [0, 1]],
    ],
    np.float32,
)


# --------------------------------------------------------------------------- config


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
    if cfg.fill_mode not in FILL_MODES:
        raise TfkitError(f"augment.fill_mode: expected one of {', '.join(FILL_MODES)}, got {cfg.fill_mode!r}")
    if cfg.interpolation not in INTERPOLATIONS:
        raise TfkitError(
            f"augment.interpolation: expected one of {', '.join(INTERPOLATIONS)}, got {cfg.interpolation!r}"
        )
    if cfg.mixup_p + cfg.cutmix_p > 1.0 + 1e-9:
        raise TfkitError(
            f"augment.mixup_p + augment.cutmix_p: each image gets at most one, so the sum must be <= 1, "
            f"got {cfg.mixup_p} + {cfg.cutmix_p}"
        )
    lo, hi = (list(cfg.crop_scale) + [None, None])[:2]
    if len(cfg.crop_scale) != 2 or not 0.0 < lo <= hi <= 1.0:
        raise TfkitError(f"augment.crop_scale: expected [min, max] with 0 < min <= max <= 1, got {cfg.crop_scale}")
    if len(cfg.crop_ratio) != 2 or not 0.0 < cfg.crop_ratio[0] <= cfg.crop_ratio[1]:
        raise TfkitError(f"augment.crop_ratio: expected [min, max] with 0 < min <= max, got {cfg.crop_ratio}")
    for name in ("rotate", "shear", "zoom", "shift", "hue", "saturation", "contrast", "brightness",
                 "noise_std", "blur_sigma", "mixup_alpha", "cutmix_alpha"):
        if getattr(cfg, name) < 0:
            raise TfkitError(f"augment.{name}: expected a non-negative magnitude, got {getattr(cfg, name)}")
    if cfg.zoom >= 1.0:
        raise TfkitError(f"augment.zoom: expected a relative zoom < 1 (range [1-zoom, 1+zoom]), got {cfg.zoom}")
    if abs(cfg.shear) >= 80.0:
        raise TfkitError(f"augment.shear: expected degrees < 80, got {cfg.shear}")
    if cfg.mixup_p > 0 and cfg.mixup_alpha <= 0 or cfg.cutmix_p > 0 and cfg.cutmix_alpha <= 0:
        raise TfkitError("augment.mixup_alpha / cutmix_alpha: expected > 0 when the op is on")
    if cfg.cutout_count < 1 or not 0.0 <= cfg.cutout_size <= 1.0:
        raise TfkitError(
            f"augment.cutout_count/cutout_size: expected count >= 1 and size in [0, 1], "
            f"got {cfg.cutout_count}, {cfg.cutout_size}"
        )
    if not 0.0 <= cfg.fill_value <= 1.0:
        raise TfkitError(f"augment.fill_value: expected a value in [0, 1], got {cfg.fill_value}")


# --------------------------------------------------------------------------- random draws


def _seed(seed: Any) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise TfkitError(f"augment seed: expected an int tensor of shape [2], got shape {seed.shape}")
    return seed


def _uniform(seed: tf.Tensor, op: int, shape: Sequence[Any], lo: float = 0.0, hi: float = 1.0, sub: int = 0):
    s = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(seed, op, alg=_ALG), sub, alg=_ALG)
    return lo + (hi - lo) * _unit(shape, s)


def _unit(shape: Any, seed: tf.Tensor) -> tf.Tensor:
    """Uniform [0, 1) from Philox integer draws. The float variant of the stateless
    op converts bits differently under XLA; the integer one matches bit for bit, so
    the host pipeline and a jit-compiled train step draw identical parameters."""
    bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=1 << 24, dtype=tf.int32, alg=_ALG)
    return tf.cast(bits, tf.float32) * (1.0 / (1 << 24))


def _normal(shape: Any, seed: tf.Tensor) -> tf.Tensor:
    """Standard normal by Box-Muller from :func:`_unit` (same on host and under XLA)."""
    u1 = _unit(shape, tf.random.experimental.stateless_fold_in(seed, 1, alg=_ALG))
    u2 = _unit(shape, tf.random.experimental.stateless_fold_in(seed, 2, alg=_ALG))
    return tf.sqrt(-2.0 * tf.math.log1p(-u1)) * tf.cos((2.0 * math.pi) * u2)


def _active(seed: tf.Tensor, op: int, b: tf.Tensor, p: float) -> tf.Tensor:
    """Per-image coin with probability ``p``: bool [B]."""
    return _uniform(seed, op, [b], sub=99) < p


def _gamma(seed: tf.Tensor, shape: Sequence[Any], alpha: float, tries: int = 12) -> tf.Tensor:
    """Gamma(alpha, 1) samples by Marsaglia-Tsang with a fixed number of tries.

    ``stateless_gamma`` has no XLA kernel, so rejection sampling is vectorised:
    draw ``tries`` candidates and keep the first accepted (acceptance >= 95% each,
    so a miss has probability < 1e-15; a miss returns the mode).
    """
    a = alpha + 1.0 if alpha < 1.0 else alpha  # alpha < 1: boost, then scale by U^(1/alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    s1, s2, s3 = (tf.random.experimental.stateless_fold_in(seed, i, alg=_ALG) for i in (1, 2, 3))
    z = _normal(list(shape) + [tries], s1)
    u = tf.maximum(_unit(list(shape) + [tries], s2), 1e-12)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (tf.math.log(u) < 0.5 * z * z + d - d * v + d * tf.math.log(tf.maximum(v, 1e-30)))
    first = tf.argmax(tf.cast(ok, tf.int32), axis=-1, output_type=tf.int32)
    val = tf.gather(d * v, first[..., None], batch_dims=len(shape))[..., 0]
    val = tf.where(tf.reduce_any(ok, axis=-1), val, d)
    if alpha < 1.0:
        val = val * tf.maximum(_unit(shape, s3), 1e-12) ** (1.0 / alpha)
    return val


def _beta(seed: tf.Tensor, shape: Sequence[Any], alpha: float) -> tf.Tensor:
    """Beta(alpha, alpha) samples that compile under XLA."""
    x = _gamma(tf.random.experimental.stateless_fold_in(seed, 11, alg=_ALG), shape, alpha)
    y = _gamma(tf.random.experimental.stateless_fold_in(seed, 12, alg=_ALG), shape, alpha)
    total = x + y
    return tf.where(total > 0, x / tf.maximum(total, 1e-30), 0.5)


# --------------------------------------------------------------------------- geometry


def _geometry_on(cfg: AugmentConfig) -> bool:
    affine = cfg.affine_p > 0 and (cfg.rotate > 0 or cfg.shear > 0 or cfg.zoom > 0 or cfg.shift > 0)
    return affine or cfg.dihedral_p > 0 or cfg.hflip_p > 0 or cfg.vflip_p > 0 or cfg.crop_p > 0


def _geometry_matrix(cfg: AugmentConfig, b: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Per-image 3x3 maps from centred output coordinates in [-1, 1] to centred
    source coordinates in [-1, 1]: source = Dihedral @ Flips @ Crop @ Affine @ output."""
    eye = tf.eye(3, batch_shape=[b])
    m = eye
    zeros, ones = tf.zeros([b]), tf.ones([b])

    def mat(a00, a01, a02, a10, a11, a12):
        return tf.stack([tf.stack([a00, a01, a02], -1), tf.stack([a10, a11, a12], -1),
                         tf.stack([zeros, zeros, ones], -1)], -2)

    if cfg.affine_p > 0 and (cfg.rotate > 0 or cfg.shear > 0 or cfg.zoom > 0 or cfg.shift > 0):
        on = tf.cast(_active(seed, _OP_AFFINE, b, cfg.affine_p), tf.float32)
        deg = math.pi / 180.0
        theta = _uniform(seed, _OP_AFFINE, [b], -cfg.rotate, cfg.rotate, 1) * deg * on
        shear = tf.tan(_uniform(seed, _OP_AFFINE, [b], -cfg.shear, cfg.shear, 2) * deg * on)
        # zoom > 1 magnifies: the output samples a smaller source window.
        inv_zoom = 1.0 / (1.0 + _uniform(seed, _OP_AFFINE, [b], -cfg.zoom, cfg.zoom, 3) * on)
        tx = _uniform(seed, _OP_AFFINE, [b], -2 * cfg.shift, 2 * cfg.shift, 4) * on  # side = 2 units
        ty = _uniform(seed, _OP_AFFINE, [b], -2 * cfg.shift, 2 * cfg.shift, 5) * on
        c, s = tf.cos(theta) * inv_zoom, tf.sin(theta) * inv_zoom
        # rotation @ shear(x += shear * y) @ scale, then shift
        m = mat(c, c * shear - s, tx, s, s * shear + c, ty)
    if cfg.crop_p > 0:
        on = _active(seed, _OP_CROP, b, cfg.crop_p)
        area = _uniform(seed, _OP_CROP, [b], cfg.crop_scale[0], cfg.crop_scale[1], 1)
        log_r = _uniform(seed, _OP_CROP, [b], math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), 2)
        r = tf.exp(log_r)
        wf = tf.where(on, tf.minimum(tf.sqrt(area * r), 1.0), 1.0)
        hf = tf.where(on, tf.minimum(tf.sqrt(area / r), 1.0), 1.0)
        cx = _uniform(seed, _OP_CROP, [b], -1.0, 1.0, 3) * (1.0 - wf)
        cy = _uniform(seed, _OP_CROP, [b], -1.0, 1.0, 4) * (1.0 - hf)
        m = tf.matmul(mat(wf, zeros, cx, zeros, hf, cy), m)
    if cfg.hflip_p > 0 or cfg.vflip_p > 0:
        sx = ones if cfg.hflip_p <= 0 else tf.where(_active(seed, _OP_HFLIP, b, cfg.hflip_p), -1.0, 1.0)
        sy = ones if cfg.vflip_p <= 0 else tf.where(_active(seed, _OP_VFLIP, b, cfg.vflip_p), -1.0, 1.0)
        m = m * tf.stack([sx, sy, ones], -1)[:, :, None]  # diag(sx, sy, 1) @ m
    if cfg.dihedral_p > 0:
        k = tf.cast(tf.floor(_uniform(seed, _OP_DIHEDRAL, [b], 0.0, 8.0, 1)), tf.int32)
        k = tf.where(_active(seed, _OP_DIHEDRAL, b, cfg.dihedral_p), tf.minimum(k, 7), 0)
        d2 = tf.gather(tf.constant(_D4), k)
        d3 = tf.pad(d2, [[0, 0], [0, 1], [0, 1]]) + tf.pad(tf.ones([b, 1, 1]), [[0, 0], [2, 0], [2, 0]])
        m = tf.matmul(d3, m)
    return m


def _pixel_matrix(m: tf.Tensor, in_hw: tuple[int, int], out: int) -> tf.Tensor:
    """Fold pixel <-> centred-coordinate conversions into ``m``: output pixel
    (x, y, 1) -> source pixel (x, y). Pixel centres sit at integer indices, so
    the identity map with equal sizes is exactly the identity on indices."""
    h, w = in_hw
    p_out = np.array([[2.0 / out, 0, 1.0 / out - 1], [0, 2.0 / out, 1.0 / out - 1], [0, 0, 1]], np.float64)
    p_in = np.array([[w / 2.0, 0, (w - 1) / 2.0], [0, h / 2.0, (h - 1) / 2.0]], np.float64)
    return tf.matmul(tf.matmul(tf.constant(p_in, tf.float32), m), tf.constant(p_out, tf.float32))


def _fill(i: tf.Tensor, n: int, mode: str) -> tf.Tensor:
    """Map integer source coordinates outside [0, n) back inside, per fill mode."""
    if mode == "reflect":  # d c b a | a b c d | d c b a
        i = tf.math.floormod(i, 2 * n)
        return tf.where(i >= n, 2 * n - 1 - i, i)
    if mode == "wrap":
        return tf.math.floormod(i, n)
    return tf.clip_by_value(i, 0, n - 1)  # nearest; constant masks the clipped ones later


def _resample(images: tf.Tensor, m: tf.Tensor | None, out: int, interpolation: str,
              fill_mode: str, fill_value: float) -> tf.Tensor:
    """Resample ``images`` [B, H, W, 3] through per-image pixel matrices ``m`` [B, 2, 3]
    (None: the plain resize). Returns float32 in the input's units (0..255 for uint8)."""
    h, w = int(images.shape[1]), int(images.shape[2])
    b = tf.shape(images)[0]
    grid = tf.range(out, dtype=tf.float32)
    if m is None:  # separable: the resize maps rows and columns independently
        xs = (grid + 0.5) * (w / out) - 0.5
        ys = (grid + 0.5) * (h / out) - 0.5
        x = tf.broadcast_to(xs[None, None, :], [b, out, out])
        y = tf.broadcast_to(ys[None, :, None], [b, out, out])
    else:
        gx, gy = grid[None, None, :], grid[None, :, None]
        x = m[:, 0, 0, None, None] * gx + m[:, 0, 1, None, None] * gy + m[:, 0, 2, None, None]
        y = m[:, 1, 0, None, None] * gx + m[:, 1, 1, None, None] * gy + m[:, 1, 2, None, None]
    flat = tf.reshape(images, [-1, images.shape[-1]])
    base = (tf.range(b) * (h * w))[:, None, None]

    def read(xi, yi):
        xf, yf = _fill(xi, w, fill_mode), _fill(yi, h, fill_mode)
        px = tf.cast(tf.gather(flat, base + yf * w + xf), tf.float32)
        if fill_mode == "constant":
            inside = (xi == xf) & (yi == yf)
            scale = 255.0 if images.dtype == tf.uint8 else 1.0
            px = tf.where(inside[..., None], px, fill_value * scale)
        return px

    if interpolation == "nearest":
        return read(tf.cast(tf.floor(x + 0.5), tf.int32), tf.cast(tf.floor(y + 0.5), tf.int32))
    x0f, y0f = tf.floor(x), tf.floor(y)
    fx, fy = (x - x0f)[..., None], (y - y0f)[..., None]
    x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
    top = read(x0, y0) * (1 - fx) + read(x0 + 1, y0) * fx
    bottom = read(x0, y0 + 1) * (1 - fx) + read(x0 + 1, y0 + 1) * fx
    return top * (1 - fy) + bottom * fy


# --------------------------------------------------------------------------- colour


def _colour_on(cfg: AugmentConfig) -> bool:
    return any(p > 0 and mag > 0 for p, mag in ((cfg.hue_p, cfg.hue), (cfg.saturation_p, cfg.saturation),
                                                  (cfg.contrast_p, cfg.contrast),
                                                  (cfg.brightness_p, cfg.brightness)))


def _colour_matrix(cfg: AugmentConfig, images: tf.Tensor, b: tf.Tensor, seed: tf.Tensor, scale: float):
    """Per-image colour transform ``y = M x + o`` ([B, 3, 3], [B, 3]) folding, in order:
    hue (rotation about the grey axis), saturation (lerp to luma), contrast
    (lerp to the image's mean luma), brightness (add), and the ``scale`` to [0, 1]."""
    eye = tf.eye(3, batch_shape=[b])
    m = eye
    if cfg.hue_p > 0 and cfg.hue > 0:
        on = tf.cast(_active(seed, _OP_HUE, b, cfg.hue_p), tf.float32)
        theta = _uniform(seed, _OP_HUE, [b], -cfg.hue, cfg.hue, 1) * (2.0 * math.pi) * on
        m = hue_matrix(theta)
    if cfg.saturation_p > 0 and cfg.saturation > 0:
        on = tf.cast(_active(seed, _OP_SAT, b, cfg.saturation_p), tf.float32)
        s = 1.0 + _uniform(seed, _OP_SAT, [b], -cfg.saturation, cfg.saturation, 1) * on
        luma = tf.broadcast_to(tf.constant(_LUMA)[None, None, :], [1, 3, 3])
        sat = s[:, None, None] * eye + (1.0 - s)[:, None, None] * luma
        m = tf.matmul(sat, m)
    m = m * scale
    offset = tf.zeros([b, 3])
    if cfg.contrast_p > 0 and cfg.contrast > 0:
        on = tf.cast(_active(seed, _OP_CONTRAST, b, cfg.contrast_p), tf.float32)
        c = 1.0 + _uniform(seed, _OP_CONTRAST, [b], -cfg.contrast, cfg.contrast, 1) * on
        # The mean from a strided subsample of the input (~64x64 points): a full
        # pass over the batch would cost as much as the colour transform itself.
        h, w = int(images.shape[1]), int(images.shape[2])
        sub = images[:, :: max(1, h // 64), :: max(1, w // 64), :]
        mean_rgb = tf.reduce_mean(tf.cast(sub, tf.float32), axis=[1, 2])  # [B, 3], input units
        grey = tf.reduce_sum(tf.einsum("bij,bj->bi", m, mean_rgb) * tf.constant(_LUMA), -1)  # luma is kept by sat
        m = m * c[:, None, None]
        offset = offset + ((1.0 - c) * grey)[:, None]
    if cfg.brightness_p > 0 and cfg.brightness > 0:
        on = tf.cast(_active(seed, _OP_BRIGHT, b, cfg.brightness_p), tf.float32)
        offset = offset + (_uniform(seed, _OP_BRIGHT, [b], -cfg.brightness, cfg.brightness, 1) * on)[:, None]
    return m, offset


def hue_matrix(theta: tf.Tensor) -> tf.Tensor:
    """RGB rotation by ``theta`` radians about the grey axis (a hue shift), [B] -> [B, 3, 3].

    Args:
        theta: angles in radians; 2*pi is a full turn (the identity).

    Returns:
        float32 [B, 3, 3]; grey stays grey.

    Example:
        >>> hue_matrix(tf.constant([0.0])).numpy()[0].round(6).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    c, s = tf.cos(theta)[:, None, None], tf.sin(theta)[:, None, None]
    k = 1.0 / math.sqrt(3.0)
    kkt = tf.fill([1, 3, 3], 1.0 / 3.0)
    cross = tf.constant([[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]])[None]
    return c * tf.eye(3)[None] + (1.0 - c) * kkt + s * cross


# --------------------------------------------------------------------------- pixel ops


def _blur(x: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur with a per-image sigma in [0, blur_sigma]; images
    that draw no blur get a one-hot kernel (exactly the identity)."""
    b = tf.shape(x)[0]
    r = max(1, int(math.ceil(3.0 * cfg.blur_sigma)))
    on = tf.cast(_active(seed, _OP_BLUR, b, cfg.blur_p), tf.float32)
    sigma = tf.maximum(_uniform(seed, _OP_BLUR, [b], 0.0, cfg.blur_sigma, 1) * on, 1e-3)
    t = tf.range(-r, r + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    k = k / tf.reduce_sum(k, -1, keepdims=True)  # [B, 2r+1]
    n = int(x.shape[1])
    for axis in (1, 2):
        pad = [[0, 0]] * 4
        pad[axis] = [r, r]
        xp = tf.pad(x, pad, mode="SYMMETRIC" if r < n else "CONSTANT")
        shape = [-1, 1, 1, 1]
        acc = 0.0
        for i in range(2 * r + 1):
            sl = xp[:, i:i + n] if axis == 1 else xp[:, :, i:i + n]
            acc = acc + tf.reshape(k[:, i], shape) * sl
        x = acc
    return x


def _box_mask(y0, y1, x0, x1, out: int) -> tf.Tensor:
    """bool [B, out, out]: y0 <= row < y1 and x0 <= col < x1, per image."""
    g = tf.range(out)
    rows = (g[None, :] >= y0[:, None]) & (g[None, :] < y1[:, None])
    cols = (g[None, :] >= x0[:, None]) & (g[None, :] < x1[:, None])
    return rows[:, :, None] & cols[:, None, :]


def _random_box(seed: tf.Tensor, op: int, b: tf.Tensor, side_h, side_w, out: int, sub: int):
    """Integer boxes of the given sides (int32 [B]) centred uniformly in the image, clipped to it."""
    cy = tf.cast(tf.floor(_uniform(seed, op, [b], 0.0, float(out), sub)), tf.int32)
    cx = tf.cast(tf.floor(_uniform(seed, op, [b], 0.0, float(out), sub + 1)), tf.int32)
    y0, x0 = tf.clip_by_value(cy - side_h // 2, 0, out), tf.clip_by_value(cx - side_w // 2, 0, out)
    y1 = tf.clip_by_value(cy - side_h // 2 + side_h, 0, out)
    x1 = tf.clip_by_value(cx - side_w // 2 + side_w, 0, out)
    return y0, y1, x0, x1


def _cutout(x: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    b, out = tf.shape(x)[0], int(x.shape[1])
    side = tf.fill([b], int(round(cfg.cutout_size * out)))
    keep = tf.ones([b, out, out], tf.bool)
    for i in range(cfg.cutout_count):
        on = _active(seed, _OP_CUTOUT, b, cfg.cutout_p) if i == 0 else \
            _uniform(seed, _OP_CUTOUT, [b], sub=200 + i) < cfg.cutout_p
        s = tf.where(on, side, 0)
        keep = keep & ~_box_mask(*_random_box(seed, _OP_CUTOUT, b, s, s, out, 10 * i + 1), out)
    return x * tf.cast(keep, x.dtype)[..., None]


def _mix(x: tf.Tensor, labels: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor):
    """Mixup or cutmix (at most one per image) with a partner image of the same
    batch (the batch rolled by a random shift); labels get the same weights."""
    b, out = tf.shape(x)[0], int(x.shape[1])
    labels = tf.cast(labels, tf.float32)
    shift = 1 + tf.cast(tf.floor(_uniform(seed, _OP_MIX, [], 0.0, 1.0, 1) * tf.cast(tf.maximum(b - 1, 1), tf.float32)),
                        tf.int32)
    shift = tf.minimum(shift, tf.maximum(b - 1, 1))
    xp, yp = tf.roll(x, shift, axis=0), tf.roll(labels, shift, axis=0)
    u = _uniform(seed, _OP_MIX, [b], sub=2)
    weight = tf.zeros([b])  # weight of the partner
    if cfg.mixup_p > 0:
        lam = _beta(tf.random.experimental.stateless_fold_in(seed, _OP_MIX * 1000 + 3, alg=_ALG), [b], cfg.mixup_alpha)
        w_mix = tf.where(u < cfg.mixup_p, 1.0 - lam, 0.0)
        x = tf.clip_by_value(x * (1.0 - w_mix)[:, None, None, None] + xp * w_mix[:, None, None, None], 0.0, 1.0)
        weight = weight + w_mix
    if cfg.cutmix_p > 0:
        cut_on = (u >= cfg.mixup_p) & (u < cfg.mixup_p + cfg.cutmix_p)
        lam = _beta(tf.random.experimental.stateless_fold_in(seed, _OP_MIX * 1000 + 4, alg=_ALG), [b], cfg.cutmix_alpha)
        side = tf.cast(tf.round(float(out) * tf.sqrt(1.0 - lam)), tf.int32)
        side = tf.where(cut_on, side, 0)
        y0, y1, x0, x1 = _random_box(seed, _OP_MIX, b, side, side, out, 5)
        box = _box_mask(y0, y1, x0, x1, out)
        x = tf.where(box[..., None], xp, x)
        # The label weight is the pasted area exactly (the box is clipped to the image).
        area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / float(out * out)
        weight = weight + area
    w = weight[:, None]
    return x, labels * (1.0 - w) + yp * w


# --------------------------------------------------------------------------- public API


def _check_images(images: tf.Tensor, name: str) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[1] is None or images.shape[2] is None:
        raise TfkitError(f"{name}: expected images [B, H, W, C] with static H and W, got shape {images.shape}")
    if images.dtype not in (tf.uint8, tf.float32):
        raise TfkitError(f"{name}: expected uint8 or float32 images, got {images.dtype.name}")
    return images


def _scale(images: tf.Tensor) -> float:
    return 1.0 / 255.0 if images.dtype == tf.uint8 else 1.0


def resize_batch(images: tf.Tensor, out_size: int, interpolation: str = "nearest") -> tf.Tensor:
    """Resize a batch to ``out_size`` with the same resampler as :func:`augment_batch`.

    Eval and predict use this so they resample exactly like training does with
    every augmentation off. With ``out_size`` equal to the input size it is the
    exact identity (plus the uint8 -> [0, 1] conversion).

    Args:
        images: uint8 (0..255) or float32 ([0, 1]) ``[B, H, W, C]``, static H and W.
        out_size: side of the square output.
        interpolation: "nearest" (one gather) or "bilinear" (four).

    Returns:
        float32 ``[B, out_size, out_size, C]`` in [0, 1].

    Example:
        >>> resize_batch(tf.zeros([2, 64, 48, 3], tf.uint8), 32).shape
        TensorShape([2, 32, 32, 3])
    """
    images = _check_images(images, "resize_batch")
    if interpolation not in INTERPOLATIONS:
        raise TfkitError(f"resize_batch: interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    out = int(out_size)
    if images.shape[1] == out and images.shape[2] == out:
        return tf.cast(images, tf.float32) * _scale(images)
    x = _resample(images, None, out, interpolation, "nearest", 0.0)
    return tf.clip_by_value(x * _scale(images), 0.0, 1.0) if interpolation == "bilinear" else x * _scale(images)


def augment_batch(images: tf.Tensor, labels: tf.Tensor | None, cfg: AugmentConfig, out_size: int,
                  seed: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Augment a batch with per-image random parameters, then resize to ``out_size``.

    Geometry (dihedral, flips, random resized crop, affine, resize) is one
    resampling pass; colour (hue, saturation, contrast, brightness) one per-image
    3x4 transform; then blur, noise, clip to [0, 1], cutout, and mixup/cutmix.
    Ops with probability 0 (or zero magnitude) are skipped at trace time and are
    exactly the identity. Compiles under ``tf.function(jit_compile=True)``.

    Args:
        images: uint8 (0..255) or float32 ([0, 1]) ``[B, H, W, 3]`` with static H, W.
        labels: float ``[B, C]`` targets (one-hot / probabilities), mixed by
            mixup/cutmix; may be None when mixup and cutmix are off.
        cfg: the augment section of the config.
        out_size: side of the square output.
        seed: int shape-[2] seed (tensor or list); same seed -> same batch.

    Returns:
        ``(images, labels)``: float32 ``[B, out_size, out_size, 3]`` in [0, 1], and
        the labels (float32 when mixed, else unchanged).

    Raises:
        TfkitError: bad config value, image shape/dtype, or seed shape.

    Example:
        >>> cfg = AugmentConfig(dihedral_p=1.0, cutmix_p=0.5)
        >>> x, y = augment_batch(tf.zeros([4, 40, 40, 3], tf.uint8), tf.one_hot([0, 1, 2, 0], 3), cfg, 32, [0, 1])
        >>> x.shape, y.shape
        (TensorShape([4, 32, 32, 3]), TensorShape([4, 3]))
    """
    check_augment_config(cfg)
    images = _check_images(images, "augment_batch")
    seed = _seed(seed)
    out = int(out_size)
    scale = _scale(images)
    h, w = int(images.shape[1]), int(images.shape[2])
    b = tf.shape(images)[0]

    if _geometry_on(cfg):
        m = _pixel_matrix(_geometry_matrix(cfg, b, seed), (h, w), out)
        x = _resample(images, m, out, cfg.interpolation, cfg.fill_mode, cfg.fill_value)
    elif h == out and w == out:
        x = tf.cast(images, tf.float32)
    else:
        x = _resample(images, None, out, cfg.interpolation, "nearest", 0.0)
    clip = cfg.interpolation == "bilinear" or cfg.fill_value != 0.0 and images.dtype == tf.float32
    if _colour_on(cfg):
        cm, offset = _colour_matrix(cfg, images, b, seed, scale)
        # Three broadcast multiply-adds (input channel c times column c of M): XLA fuses
        # them with the gather and the clip into one loop; faster than einsum or stack.
        cm = cm[:, None, None]  # [B, 1, 1, 3 out, 3 in]
        x = x[..., 0:1] * cm[..., 0] + x[..., 1:2] * cm[..., 1] + x[..., 2:3] * cm[..., 2] + offset[:, None, None]
        clip = True
    elif scale != 1.0:
        x = x * scale
    if cfg.blur_p > 0 and cfg.blur_sigma > 0:
        x = _blur(x, cfg, seed)
    if cfg.noise_p > 0 and cfg.noise_std > 0:
        on = tf.cast(_active(seed, _OP_NOISE, b, cfg.noise_p), tf.float32)
        std = _uniform(seed, _OP_NOISE, [b], 0.0, cfg.noise_std, 1) * on
        noise = _normal(tf.shape(x), tf.random.experimental.stateless_fold_in(seed, _OP_NOISE, alg=_ALG))
        x = x + noise * std[:, None, None, None]
        clip = True
    if clip:
        x = tf.clip_by_value(x, 0.0, 1.0)
    if cfg.cutout_p > 0 and cfg.cutout_size > 0:
        x = _cutout(x, cfg, seed)
    if cfg.mixup_p > 0 or cfg.cutmix_p > 0:
        if labels is None:
            raise TfkitError("augment_batch: mixup/cutmix need labels, got None")
        x, labels = _mix(x, labels, cfg, seed)
    return x, labels


def batch_augmenter(cfg: AugmentConfig | None, out_size: int, jit_compile: bool = True):
    """A compiled ``fn(images, labels, seed) -> (images, labels)`` for a ``tf.data`` map over batches.

    On the host, XLA fuses the coordinate arithmetic, the gather, the colour
    transform and the masks into a few loops: 2-4x faster than the same graph
    without XLA (``bench/bench_pipeline.py``). ``cfg=None`` gives the eval path
    (:func:`resize_batch`, labels passed through).

    Args:
        cfg: the augment section, or None for resizing only.
        out_size: side of the output images.
        jit_compile: compile with XLA (True) or run as a plain graph.

    Returns:
        A ``tf.function`` taking uint8/float32 images ``[B, H, W, 3]``, labels (or None)
        and a shape-[2] int seed.

    Example:
        >>> fn = batch_augmenter(AugmentConfig(hflip_p=0.5), 32)
        >>> ds = batches.enumerate().map(  # doctest: +SKIP
        ...     lambda i, b: fn(b[0], b[1], tf.stack([tf.constant(42, tf.int64), i])))
    """
    if cfg is not None:
        check_augment_config(cfg)

    @tf.function(jit_compile=jit_compile)
    def fn(images, labels, seed):
        if cfg is None:
            return resize_batch(images, out_size), labels
        return augment_batch(images, labels, cfg, out_size, seed)

    return fn


def dihedral(images: tf.Tensor, k: int) -> tf.Tensor:
    """The k-th symmetry of the square: ``k % 4`` quarter turns counter-clockwise,
    after a transpose when ``k >= 4``. ``k = 0`` is the identity.

    Args:
        images: ``[B, H, W, C]`` (square for k in {1, 3, 4..7} to keep the shape).
        k: static int in 0..7.

    Returns:
        The transformed batch (same dtype, exact: only reversals and transposes).

    Example:
        >>> x = tf.random.uniform([1, 4, 4, 3])
        >>> bool(tf.reduce_all(dihedral(dihedral(x, 1), dihedral_inverse(1)) == x))
        True
    """
    k = int(k)
    if not 0 <= k <= 7:
        raise TfkitError(f"dihedral: k must be in 0..7, got {k}")
    if k >= 4:
        images = tf.transpose(images, [0, 2, 1, 3])
    for _ in range(k % 4):  # one quarter turn counter-clockwise
        images = tf.reverse(tf.transpose(images, [0, 2, 1, 3]), [1])
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


def tta_views(images: tf.Tensor, n_views: int, mode: str = "dihedral") -> tf.Tensor:
    """Deterministic test-time views of a batch, stacked on a new first axis.

    Args:
        images: ``[B, H, W, C]`` (square for dihedral views beyond 2).
        n_views: number of views (1..8 for "dihedral", 1..4 for "flips").
        mode: "dihedral" (view k is ``dihedral(images, k)``) or "flips"
            (identity, horizontal flip, vertical flip, both).

    Returns:
        ``[n_views, B, H, W, C]``; view 0 is always the identity.

    Example:
        >>> tta_views(tf.zeros([2, 8, 8, 3]), 4, "flips").shape
        TensorShape([4, 2, 8, 8, 3])
    """
    if mode == "dihedral":
        if not 1 <= n_views <= 8:
            raise TfkitError(f"tta_views: dihedral mode has 1..8 views, got {n_views}")
        views = [dihedral(images, k) for k in range(n_views)]
    elif mode == "flips":
        if not 1 <= n_views <= 4:
            raise TfkitError(f"tta_views: flips mode has 1..4 views, got {n_views}")
        flips = [[], [2], [1], [1, 2]]
        views = [tf.reverse(images, axes) if axes else images for axes in flips[:n_views]]
    else:
        raise TfkitError(f"tta_views: mode must be 'dihedral' or 'flips', got {mode!r}")
    return tf.stack(views, 0)


@keras.saving.register_keras_serializable(package="tfkit")
class Augment(keras.layers.Layer):
    """:func:`augment_batch` as a Keras layer, for augmenting on the accelerator
    (``data.augment_on: device``). Each training call draws a fresh seed
    ``[seed, counter]`` from a counter variable, so it compiles with XLA and
    never repeats a batch's draws; inference resizes only (:func:`resize_batch`).

    Args:
        cfg: :class:`AugmentConfig` (or its dict form).
        out_size: side of the output images.
        seed: base seed of the stream.

    Call args:
        inputs: images ``[B, H, W, 3]``, or ``(images, labels)`` to mix labels.
        training: augment when True, resize only otherwise.

    Returns:
        Images (or ``(images, labels)``), float32 in [0, 1].

    Example:
        >>> layer = Augment(AugmentConfig(hflip_p=0.5), 32, seed=1)
        >>> layer(tf.zeros([2, 32, 32, 3]), training=True).shape
        TensorShape([2, 32, 32, 3])
    """

    def __init__(self, cfg: AugmentConfig | dict, out_size: int, seed: int = 0, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")  # no autocast: runs in float32 under mixed precision
        super().__init__(**kwargs)
        self.cfg = AugmentConfig(**cfg) if isinstance(cfg, dict) else cfg
        check_augment_config(self.cfg)
        self.out_size = int(out_size)
        self.seed = int(seed)
        self.counter = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                       name="counter")

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        images, labels = (inputs if isinstance(inputs, (tuple, list)) else (inputs, None))
        if not training:
            x = resize_batch(images, self.out_size, self.cfg.interpolation)
            return (x, labels) if labels is not None else x
        step = self.counter.value
        self.counter.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        x, labels = augment_batch(images, labels, self.cfg, self.out_size, seed)
        return (x, labels) if isinstance(inputs, (tuple, list)) else x

    def compute_output_shape(self, input_shape: Any) -> Any:
        if isinstance(input_shape, (tuple, list)) and input_shape and isinstance(input_shape[0], (tuple, list)):
            return ((input_shape[0][0], self.out_size, self.out_size, input_shape[0][-1]), input_shape[1])
        return (input_shape[0], self.out_size, self.out_size, input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(cfg=dataclasses.asdict(self.cfg), out_size=self.out_size, seed=self.seed)
        return config
