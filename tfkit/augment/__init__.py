"""Batched, XLA-compilable image augmentation with per-image random parameters,
on TensorFlow (host, ``tf.data``) and JAX (device, inside the train step).

Why this design: augmenting one image at a time in a ``map`` before ``batch``
starves an accelerator, and ``ImageProjectiveTransformV3``/``CropAndResize``
have no XLA kernel. Here every geometric op of an image (dihedral symmetry,
flips, random resized crop, affine, RandAugment's geometric ops, and the resize
to the output size) is composed into ONE 3x3 matrix, and the whole batch is
resampled ONCE (:mod:`~tfkit.augment.geometry`): the output pixel grid is
mapped through each image's matrix, the fill mode is applied to the integer
source coordinates, and one flat gather reads the (uint8) pixels of every
channel. Hue, saturation, contrast, brightness and the /255 are folded into
ONE per-image colour transform (:mod:`~tfkit.augment.colour`). Gamma,
posterize, solarize, equalize, sharpness and blur run once over the batch with
per-image parameters (:mod:`~tfkit.augment.pixel`); cutout, GridMask, cutmix
and the constant fill are masks built from coordinate comparisons
(:mod:`~tfkit.augment.masks`). Ops whose probability is 0 are skipped at trace
time, so a disabled op costs nothing and is exactly the identity.
``augment.one_of`` picks one op per image from a group and ``randaugment_n``
draws N ops per image (:mod:`~tfkit.augment.plan`,
:mod:`~tfkit.augment.randaugment`).

Backends: every op is written once against a small array namespace
(:mod:`~tfkit.augment.backend`), bound to TensorFlow for ``tf.data`` and to
``jax.numpy`` for a JAX train step; the choice follows the array type.
Randomness is a counter-based integer hash of (seed, op, image index)
(:mod:`~tfkit.augment.draws`), identical on both, so the same shape-[2] seed
gives the same batch on the host and on the device (within float rounding),
whatever the number of ``tf.data`` workers.

Channels: images may have any number of channels C; geometric, point and
occlusion ops apply to all of them; hue, saturation and contrast need RGB and
are skipped for C != 3, with a message logged once.

Example:
    >>> import tensorflow as tf
    >>> from tfkit.config import AugmentConfig
    >>> cfg = AugmentConfig(hflip_p=0.5, hue_p=0.5, hue=0.05)
    >>> x = tf.zeros([8, 64, 64, 3], tf.uint8)
    >>> y = tf.one_hot(tf.range(8) % 2, 2)
    >>> xa, ya = augment_batch(x, y, cfg, 48, seed=[1, 2])
    >>> xa.shape, xa.dtype
    (TensorShape([8, 48, 48, 3]), tf.float32)
"""

from tfkit.augment.backend import BACKENDS, ops_for
from tfkit.augment.batch import augment_batch, batch_augmenter, resize_batch
from tfkit.augment.checks import FILL_MODES, INTERPOLATIONS, check_augment_config
from tfkit.augment.colour import hue_matrix
from tfkit.augment.layer import Augment
from tfkit.augment.plan import RGB_OPS, enabled_ops
from tfkit.augment.randaugment import RANDAUGMENT_OPS
from tfkit.augment.views import CROP_FRACTION, MAX_VIEWS, VIEW_MODES, dihedral, dihedral_inverse, tta_views

__all__ = [
    "augment_batch",
    "resize_batch",
    "batch_augmenter",
    "dihedral",
    "dihedral_inverse",
    "tta_views",
    "check_augment_config",
    "hue_matrix",
    "enabled_ops",
    "ops_for",
    "Augment",
    "FILL_MODES",
    "INTERPOLATIONS",
    "BACKENDS",
    "RGB_OPS",
    "RANDAUGMENT_OPS",
    "VIEW_MODES",
    "MAX_VIEWS",
    "CROP_FRACTION",
]
