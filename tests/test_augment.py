"""Tests of tfkit.augment: XLA compilation, exact identities, dihedral group,
colour algebra, label mixing, determinism and per-image randomness."""

from __future__ import annotations

import dataclasses
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tfkit import augment as A  # noqa: E402
from tfkit.augment import geometry as G  # noqa: E402
from tfkit.config import AUGMENT_PRESETS, AugmentConfig  # noqa: E402
from tfkit.utils import TfkitError  # noqa: E402

TF = A.ops_for(backend="tensorflow")

# One config per op, each with probability 1 and a real magnitude.
OPS = {
    "dihedral": dict(dihedral_p=1.0),
    "hflip": dict(hflip_p=1.0),
    "vflip": dict(vflip_p=1.0),
    "crop": dict(crop_p=1.0, crop_scale=[0.3, 0.8]),
    "affine_reflect": dict(affine_p=1.0, rotate=30.0, shear=10.0, zoom=0.2, shift=0.2, fill_mode="reflect"),
    "affine_wrap": dict(affine_p=1.0, rotate=30.0, shift=0.2, fill_mode="wrap"),
    "affine_nearest": dict(affine_p=1.0, rotate=30.0, shift=0.2, fill_mode="nearest"),
    "affine_constant": dict(affine_p=1.0, rotate=30.0, shift=0.2, fill_mode="constant", fill_value=0.5),
    "bilinear": dict(affine_p=1.0, rotate=20.0, interpolation="bilinear"),
    "hue": dict(hue_p=1.0, hue=0.3),
    "saturation": dict(saturation_p=1.0, saturation=0.5),
    "contrast": dict(contrast_p=1.0, contrast=0.5),
    "brightness": dict(brightness_p=1.0, brightness=0.3),
    "noise": dict(noise_p=1.0, noise_std=0.1),
    "blur": dict(blur_p=1.0, blur_sigma=1.5),
    "cutout": dict(cutout_p=1.0, cutout_count=2, cutout_size=0.3),
    "mixup": dict(mixup_p=1.0, mixup_alpha=0.4),
    "cutmix": dict(cutmix_p=1.0, cutmix_alpha=1.0),
    "gamma": dict(gamma_p=1.0, gamma=0.5),
    "posterize": dict(posterize_p=1.0, posterize_bits=1),
    "solarize": dict(solarize_p=1.0, solarize=0.8),
    "equalize": dict(equalize_p=0.5),
    "sharpness": dict(sharpness_p=1.0, sharpness=0.9),
    "gridmask": dict(gridmask_p=1.0, gridmask_ratio=0.4, gridmask_rotate=45.0),
    "randaugment": dict(randaugment_n=2, randaugment_m=9.0, randaugment_p=1.0),
    "one_of": dict(one_of=["blur", "solarize", "affine"], one_of_p=1.0, blur_sigma=1.5, solarize=0.8, rotate=30.0),
}
# The same ops with their magnitude zeroed (probability still 1): must be the identity.
ZERO_MAG = {
    "affine": dict(affine_p=1.0),
    "hue": dict(hue_p=1.0, hue=0.0),
    "saturation": dict(saturation_p=1.0),
    "contrast": dict(contrast_p=1.0),
    "brightness": dict(brightness_p=1.0),
    "noise": dict(noise_p=1.0, noise_std=0.0),
    "blur": dict(blur_p=1.0, blur_sigma=0.0),
    "cutout": dict(cutout_p=1.0, cutout_size=0.0),
    "crop": dict(crop_p=1.0, crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0]),
    "gamma": dict(gamma_p=1.0, gamma=0.0),
    "posterize": dict(posterize_p=1.0, posterize_bits=8),
    "solarize": dict(solarize_p=1.0, solarize=0.0),
    "sharpness": dict(sharpness_p=1.0, sharpness=0.0),
    "gridmask": dict(gridmask_p=1.0, gridmask_ratio=0.0),
    # equalize and autocontrast have no magnitude (as in the paper): left out of this pool
    "randaugment": dict(randaugment_n=5, randaugment_m=0.0, randaugment_ops=[
        "identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "saturation",
        "contrast", "sharpness", "posterize", "solarize"]),
    "one_of": dict(one_of=["blur", "solarize", "affine"], one_of_p=1.0),
}


def _images(b=4, h=32, w=32, seed=0, dtype=tf.uint8):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(b, h, w, 3), dtype=np.uint8)
    return tf.constant(x) if dtype == tf.uint8 else tf.constant(x.astype(np.float32) / 255.0)


def _labels(b=4, c=3):
    return tf.one_hot(np.arange(b) % c, c)


# Every op of OPS, grouped so each group is one XLA compilation (keeps the file fast).
XLA_GROUPS = [
    ["dihedral", "hflip", "vflip", "crop", "affine_reflect"],
    ["affine_wrap", "hue", "saturation"],
    ["affine_nearest", "contrast", "brightness"],
    ["affine_constant", "bilinear", "noise"],
    ["blur", "cutout", "mixup"],
    ["cutmix", "gamma", "posterize", "solarize"],
    ["equalize", "sharpness", "gridmask"],
    ["randaugment"],
    ["one_of"],
]


def test_xla_groups_cover_every_op():
    assert sorted(sum(XLA_GROUPS, [])) == sorted(OPS)


@pytest.mark.parametrize("group", XLA_GROUPS, ids=["+".join(g) for g in XLA_GROUPS])
def test_every_op_compiles_with_xla_and_host_tf_equals_device_jax(group):
    kw = {}
    for name in group:
        kw.update(OPS[name])
    if "mixup" in group:
        kw["mixup_p"] = 0.5
    cfg = AugmentConfig(**kw)
    x, y = _images(4, 40, 48), _labels(4)
    fn = tf.function(lambda x, y, s: A.augment_batch(x, y, cfg, 32, s), jit_compile=True)
    xa, ya = fn(x, y, tf.constant([3, 4]))
    traced = fn.get_concrete_function(
        tf.TensorSpec([4, 40, 48, 3], tf.uint8), tf.TensorSpec([4, 3]), tf.TensorSpec([2], tf.int32))
    assert traced.structured_outputs[0].shape.as_list() == [4, 32, 32, 3]
    assert xa.dtype == tf.float32 and xa.shape == (4, 32, 32, 3)
    assert float(tf.reduce_min(xa)) >= 0.0 and float(tf.reduce_max(xa)) <= 1.0
    # The same seed draws the same parameters on the host and under XLA.
    xh, yh = A.augment_batch(x, y, cfg, 32, [3, 4])
    np.testing.assert_allclose(xa.numpy(), xh.numpy(), atol=1e-5)
    np.testing.assert_allclose(ya.numpy(), yh.numpy(), atol=1e-6)
    # ... and on the device under JAX (jax.jit, jax.numpy ops, an int32 seed).
    xj, yj = _jax_augment(x, y, cfg, 32, [3, 4])
    np.testing.assert_allclose(xj, xa.numpy(), atol=1e-4)
    np.testing.assert_allclose(yj, ya.numpy(), atol=1e-5)


def _jax_augment(x, y, cfg, out, seed):
    """augment_batch compiled by jax.jit on JAX arrays; NumPy results."""
    import jax
    import jax.numpy as jnp

    fn = jax.jit(lambda x, y, s: A.augment_batch(x, y, cfg, out, s))
    xj, yj = fn(jnp.asarray(np.asarray(x)), None if y is None else jnp.asarray(np.asarray(y)),
                jnp.asarray(seed, jnp.int32))
    assert isinstance(xj, jax.Array)
    return np.asarray(xj), None if yj is None else np.asarray(yj)


@pytest.mark.parametrize("preset", ["lesion"])
def test_full_presets_host_tf_equals_device_jax(preset):
    # A whole preset plus mixing and RandAugment, float input, int64 host seed (as tf.data
    # passes it) against an int32 device seed of the same value.
    cfg = AugmentConfig(**AUGMENT_PRESETS[preset], mixup_p=0.3, cutmix_p=0.3, randaugment_n=1)
    x, y = _images(8, 36, 36, seed=6, dtype=tf.float32), _labels(8)
    fn = tf.function(lambda x, y, s: A.augment_batch(x, y, cfg, 32, s), jit_compile=True)
    xa, ya = fn(x, y, tf.constant([11, 2**31 - 5], tf.int64))
    xj, yj = _jax_augment(x, y, cfg, 32, [11, 2**31 - 5])
    np.testing.assert_allclose(xj, xa.numpy(), atol=1e-4)
    np.testing.assert_allclose(yj, ya.numpy(), atol=1e-5)


def test_resize_and_tta_compile_with_xla():
    x = _images(2, 32, 32)
    r = tf.function(lambda x: A.resize_batch(x, 24, "bilinear"), jit_compile=True)(x)
    v = tf.function(lambda x: A.tta_views(x, 8, "dihedral"), jit_compile=True)(x)
    assert r.shape == (2, 24, 24, 3) and v.shape == (8, 2, 32, 32, 3)


def test_dihedral_eight_distinct_symmetries_each_invertible():
    x = _images(1, 16, 16, seed=1)
    views = [A.dihedral(x, k).numpy() for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    ref = x.numpy()[0]
    expected = [np.rot90(ref, k) for k in range(4)] + [np.rot90(ref.transpose(1, 0, 2), k) for k in range(4)]
    for k in range(8):
        np.testing.assert_array_equal(views[k][0], expected[k])
        back = A.dihedral(tf.constant(views[k]), A.dihedral_inverse(k))
        np.testing.assert_array_equal(back.numpy(), x.numpy())
    with pytest.raises(TfkitError, match="0..7"):
        A.dihedral(x, 8)


def test_random_dihedral_in_augment_batch_is_an_exact_symmetry_and_covers_all_eight():
    x = tf.repeat(_images(1, 16, 16, seed=2), 64, axis=0)
    out, _ = A.augment_batch(x, None, AugmentConfig(dihedral_p=1.0), 16, [0, 9])
    views = {A.dihedral(x[:1], k).numpy().tobytes(): k for k in range(8)}
    # Nearest resampling through the folded matrix reproduces the symmetry bit for bit.
    got = [views.get((np.round(o * 255).astype(np.uint8))[None].tobytes()) for o in out.numpy()]
    assert None not in got
    assert set(got) == set(range(8))


def test_dihedral_matrices_match_dihedral_index():
    # The k-th matrix of the folded resampler is exactly dihedral(., k).
    x = _images(2, 12, 12, seed=5)
    for k in range(8):
        m = G.pixel_matrix(TF, tf.constant(np.stack([G.D4[k]] * 2)), (12, 12), 12)
        out = G.resample(TF, x, m, 12, "nearest", "reflect", 0.0)
        np.testing.assert_array_equal(out.numpy(), tf.cast(A.dihedral(x, k), tf.float32).numpy(), err_msg=f"k={k}")


def test_tta_views_flips():
    x = _images(2, 8, 8)
    v = A.tta_views(x, 4, "flips").numpy()
    np.testing.assert_array_equal(v[0], x.numpy())
    np.testing.assert_array_equal(v[1], x.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(v[2], x.numpy()[:, ::-1])
    np.testing.assert_array_equal(v[3], x.numpy()[:, ::-1, ::-1])
    with pytest.raises(TfkitError):
        A.tta_views(x, 5, "flips")


@pytest.mark.parametrize("name", sorted(OPS))
def test_probability_zero_is_exact_identity(name):
    off = {k: (0.0 if k.endswith("_p") else v) for k, v in OPS[name].items()}
    x, y = _images(3, 32, 32), _labels(3)
    xa, ya = A.augment_batch(x, y, AugmentConfig(**off), 32, [1, 1])
    np.testing.assert_array_equal(xa.numpy(), tf.cast(x, tf.float32).numpy() * np.float32(1 / 255))
    np.testing.assert_array_equal(ya.numpy(), y.numpy())


@pytest.mark.parametrize("name", sorted(ZERO_MAG))
def test_zero_magnitude_is_exact_identity(name):
    x = _images(3, 32, 32)
    xa, _ = A.augment_batch(x, None, AugmentConfig(**ZERO_MAG[name]), 32, [1, 1])
    np.testing.assert_array_equal(np.round(xa.numpy() * 255), x.numpy().astype(np.float32))


def test_resize_same_size_is_identity_and_resize_is_augment_identity():
    xf = _images(2, 32, 32, dtype=tf.float32)
    np.testing.assert_array_equal(A.resize_batch(xf, 32).numpy(), xf.numpy())
    x = _images(2, 40, 56)
    r = A.resize_batch(x, 24)
    a, _ = A.augment_batch(x, None, AugmentConfig(), 24, [5, 5])
    np.testing.assert_array_equal(r.numpy(), a.numpy())
    # Nearest upsampling by 2 repeats each pixel exactly.
    up = A.resize_batch(x[:, :12, :12], 24).numpy()
    np.testing.assert_array_equal(np.round(up * 255)[:, ::2, ::2], x.numpy()[:, :12, :12])
    # Bilinear keeps a constant image constant.
    c = A.resize_batch(tf.fill([1, 20, 30, 3], tf.constant(77, tf.uint8)), 16, "bilinear").numpy()
    np.testing.assert_allclose(c, 77 / 255, atol=1e-6)


def test_hue_full_turn_is_identity_and_grey_stays_grey():
    np.testing.assert_allclose(A.hue_matrix(tf.constant([2 * math.pi, 0.0])).numpy(), np.stack([np.eye(3)] * 2),
                               atol=1e-6)
    m = A.hue_matrix(tf.constant([1.0])).numpy()[0]
    np.testing.assert_allclose(m @ np.ones(3), np.ones(3), atol=1e-6)  # grey axis fixed
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-6)  # a rotation
    # In augment_batch, the largest shift (0.5 turn) twice is a full turn: rotations compose.
    half = A.hue_matrix(tf.constant([math.pi])).numpy()[0]
    np.testing.assert_allclose(half @ half, np.eye(3), atol=1e-6)


def test_colour_ops_match_their_definitions():
    x = _images(8, 16, 16, seed=3, dtype=tf.float32)
    out, _ = A.augment_batch(x, None, AugmentConfig(saturation_p=1.0, saturation=0.9), 16, [2, 3])
    luma = np.tensordot(x.numpy(), [0.299, 0.587, 0.114], axes=([3], [0]))
    # Saturation keeps luma where nothing clipped.
    out_luma = np.tensordot(out.numpy(), [0.299, 0.587, 0.114], axes=([3], [0]))
    ok = (out.numpy() > 0).all(-1) & (out.numpy() < 1).all(-1)
    np.testing.assert_allclose(out_luma[ok], luma[ok], atol=1e-5)
    out, _ = A.augment_batch(x, None, AugmentConfig(brightness_p=1.0, brightness=0.2), 16, [2, 3])
    delta = out.numpy() - x.numpy()
    inside = (out.numpy() > 0) & (out.numpy() < 1)
    for i in range(8):  # one constant shift per image
        d = delta[i][inside[i]]
        assert d.max() - d.min() < 1e-5 and abs(d.mean()) <= 0.2 + 1e-6


def test_fill_modes_match_numpy_pad():
    n = 5
    i = tf.range(-12, 17)
    padded = {"reflect": "symmetric", "wrap": "wrap", "nearest": "edge"}
    base = np.arange(n)
    for mode, np_mode in padded.items():
        ref = np.pad(base, 12, mode=np_mode)[: len(i)]
        np.testing.assert_array_equal(G.fill(TF, i, n, mode).numpy(), ref)


def test_constant_fill_uses_fill_value():
    x = tf.zeros([8, 32, 32, 3], tf.uint8)
    cfg = AugmentConfig(affine_p=1.0, rotate=45.0, zoom=0.5 - 1e-3, fill_mode="constant", fill_value=1.0)
    out, _ = A.augment_batch(x, None, dataclasses.replace(cfg, zoom=0.0), 32, [0, 1])
    # A 45-degree rotation of a square leaves its corners outside the source.
    assert (out.numpy()[:, 0, 0] == 1.0).any() and (out.numpy() == 0.0).any()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset=st.sampled_from(sorted(AUGMENT_PRESETS)), s0=st.integers(0, 2**31 - 1), s1=st.integers(0, 2**31 - 1),
       h=st.integers(8, 40), w=st.integers(8, 40), out=st.integers(4, 36), floats=st.booleans())
def test_random_parameters_keep_range_shape_and_dtype(preset, s0, s1, h, w, out, floats):
    kw = {**AUGMENT_PRESETS[preset], "noise_p": 0.5, "noise_std": 0.2, "blur_p": 0.3, "blur_sigma": 1.0,
          "mixup_p": 0.3, "cutmix_p": 0.3}
    cfg = AugmentConfig(**kw)
    x = _images(3, h, w, seed=s0 % 100, dtype=tf.float32 if floats else tf.uint8)
    xa, ya = A.augment_batch(x, _labels(3), cfg, out, [s0, s1])
    assert xa.shape == (3, out, out, 3) and xa.dtype == tf.float32
    assert np.isfinite(xa.numpy()).all()
    assert xa.numpy().min() >= 0.0 and xa.numpy().max() <= 1.0
    np.testing.assert_allclose(ya.numpy().sum(1), 1.0, atol=1e-6)
    assert ya.numpy().min() >= 0.0


# Ops with a continuous parameter: nearly every copy differs. Discrete ones: at least
# this many of their settings show up among 16 copies (dihedral: 8 symmetries, expected
# 6.9; posterize: 8 bit depths; equalize at p=0.5: on or off).
DISCRETE = {"dihedral": 5, "posterize": 4, "equalize": 2}


@pytest.mark.parametrize("name", ["affine_reflect", "crop", "hue", "contrast", "brightness", "cutout", "noise",
                                  "blur", "dihedral", "gamma", "posterize", "solarize", "equalize", "sharpness",
                                  "gridmask", "randaugment", "one_of"])
def test_different_images_get_different_parameters(name):
    n = 16 if name in DISCRETE else 8
    x = tf.repeat(_images(1, 32, 32, seed=4), n, axis=0)  # n copies of one image
    out, _ = A.augment_batch(x, None, AugmentConfig(**OPS[name]), 32, [7, 7])
    distinct = {o.tobytes() for o in out.numpy()}
    need = DISCRETE.get(name, 6)
    assert len(distinct) >= need, f"{name}: only {len(distinct)} distinct results for {n} images"


def test_same_seed_same_batch_different_seed_different():
    cfg = AugmentConfig(**AUGMENT_PRESETS["lesion"], mixup_p=0.5)
    x, y = _images(4), _labels(4)
    a = A.augment_batch(x, y, cfg, 24, [1, 2])
    b = A.augment_batch(x, y, cfg, 24, tf.constant([1, 2], tf.int64))
    c = A.augment_batch(x, y, cfg, 24, [1, 3])
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def _distinct_constant_images(b, size):
    # Image i is the constant 10*(i+1): every pixel says which image it came from.
    vals = (10 * (np.arange(b) + 1)).astype(np.uint8)
    return tf.constant(np.broadcast_to(vals[:, None, None, None], (b, size, size, 3)).copy()), vals


def test_cutmix_label_weight_equals_pasted_area_exactly():
    b, size = 16, 32
    x, vals = _distinct_constant_images(b, size)
    y = tf.one_hot(np.arange(b), b)  # label i for image i
    out, ym = A.augment_batch(x, y, AugmentConfig(cutmix_p=1.0, cutmix_alpha=1.0), size, [4, 2])
    pix = np.round(out.numpy()[..., 0] * 255).astype(int)
    ym = ym.numpy()
    np.testing.assert_allclose(ym.sum(1), 1.0, atol=1e-6)
    assert ym.min() >= 0
    mixed = 0
    for i in range(b):
        own = (pix[i] == vals[i]).mean()
        assert ym[i, i] == pytest.approx(own, abs=1e-6)
        others = [j for j in range(b) if j != i and ym[i, j] > 0]
        for j in others:  # the partner's label mass is its pixel share
            assert ym[i, j] == pytest.approx((pix[i] == vals[j]).mean(), abs=1e-6)
        mixed += own < 1
    assert mixed >= b // 2


def test_mixup_labels_match_image_weights():
    b, size = 8, 8
    x, vals = _distinct_constant_images(b, size)
    y = tf.one_hot(np.arange(b), b)
    out, ym = A.augment_batch(x, y, AugmentConfig(mixup_p=1.0, mixup_alpha=0.5), size, [9, 1])
    ym = ym.numpy()
    np.testing.assert_allclose(ym.sum(1), 1.0, atol=1e-6)
    assert ym.min() >= 0
    # pixel value = sum_j w_ij * val_j, with the label weights w
    expected = ym @ (vals.astype(np.float64) / 255)
    np.testing.assert_allclose(out.numpy()[:, 0, 0, 0], expected, atol=1e-5)
    assert (ym.max(1) < 1).sum() >= b // 2


def test_mixing_without_labels_and_bad_configs_raise():
    x = _images(2)
    with pytest.raises(TfkitError, match="labels"):
        A.augment_batch(x, None, AugmentConfig(mixup_p=0.5), 32, [0, 0])
    bad = [dict(hflip_p=1.5), dict(fill_mode="mirror"), dict(interpolation="cubic"), dict(mixup_p=0.7, cutmix_p=0.6),
           dict(crop_scale=[0.8, 0.2]), dict(zoom=1.2), dict(rotate=-1.0), dict(one_of=["hflip", "nope"]),
           dict(one_of=["blur", "blur"]), dict(one_of_p=0.5), dict(randaugment_n=15), dict(randaugment_m=11.0),
           dict(randaugment_ops=["rotate", "zoom"]), dict(posterize_bits=0), dict(gamma=1.0), dict(solarize=1.5),
           dict(sharpness=1.5), dict(gridmask_size=[0.5, 0.2]), dict(gridmask_ratio=1.0), dict(randaugment_p=2.0)]
    for kw in bad:
        with pytest.raises(TfkitError, match="augment"):
            A.augment_batch(x, None, AugmentConfig(**kw), 32, [0, 0])
    with pytest.raises(TfkitError, match="shape"):
        A.augment_batch(x, None, AugmentConfig(), 32, [0, 0, 1])
    with pytest.raises(TfkitError, match="uint8 or float32"):
        A.resize_batch(tf.zeros([1, 4, 4, 3], tf.int32), 4)


def test_augment_layer_fresh_draws_xla_and_serialization(tmp_path):
    cfg = AugmentConfig(affine_p=1.0, rotate=30.0, hue_p=1.0, hue=0.2)
    layer = A.Augment(cfg, 24, seed=3)
    x = _images(2, 32, 32)
    step = tf.function(lambda x: layer(x, training=True), jit_compile=True)
    a, b = step(x).numpy(), step(x).numpy()
    assert a.shape == (2, 24, 24, 3) and not np.array_equal(a, b)  # the counter advances
    assert int(layer.counter.numpy()) == 2
    np.testing.assert_array_equal(layer(x, training=False).numpy(), A.resize_batch(x, 24).numpy())
    xi, yi = layer((x, _labels(2)), training=True)
    assert xi.shape == (2, 24, 24, 3) and yi.shape == (2, 3)
    # Round trip through a saved model (safe_mode).
    inp = keras.Input((32, 32, 3))
    model = keras.Model(inp, A.Augment(cfg, 24, seed=3)(inp))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    restored = [l for l in loaded.layers if isinstance(l, A.Augment)][0]
    assert restored.cfg == cfg and restored.out_size == 24
    xf = tf.cast(x, tf.float32) / 255.0
    np.testing.assert_allclose(loaded(xf, training=False).numpy(), A.resize_batch(xf, 24).numpy())


def test_batch_augmenter_in_tf_data_is_worker_count_independent():
    x, y = _images(8, 32, 32), _labels(8)
    cfg = AugmentConfig(**AUGMENT_PRESETS["lesion"])
    fn = A.batch_augmenter(cfg, 24)

    def run(workers):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).enumerate()
        ds = ds.map(lambda i, b: fn(b[0], b[1], tf.stack([tf.constant(5, tf.int64), i])),
                    num_parallel_calls=workers, deterministic=True)
        return np.concatenate([b[0] for b in ds.as_numpy_iterator()])

    one, two = run(1), run(2)
    assert one.shape == (8, 24, 24, 3)
    np.testing.assert_array_equal(one, two)
    # Batch i of the pipeline is exactly augment_batch with seed [5, i].
    ref, _ = A.augment_batch(x[2:4], y[2:4], cfg, 24, [5, 1])
    np.testing.assert_allclose(one[2:4], ref.numpy(), atol=1e-6)
    eval_fn = A.batch_augmenter(None, 24)
    np.testing.assert_array_equal(eval_fn(x, y, [0, 0])[0].numpy(), A.resize_batch(x, 24).numpy())


# --------------------------------------------------------------------------- backends and draws


def test_counter_hash_draws_are_uniform_independent_and_identical_on_both_backends():
    import jax.numpy as jnp

    from tfkit.augment.draws import Rng

    jx = A.ops_for(backend="jax")
    for seed in ([0, 0], [5, 17], [2**31 - 1, 123456]):
        t, j = Rng(TF, tf.constant(seed, tf.int64)), Rng(jx, jnp.asarray(seed, jnp.int32))
        for op, shape in ((1, [7]), (9, [3, 5]), (21, [])):
            np.testing.assert_array_equal(t.bits(op, shape, 2).numpy(), np.asarray(j.bits(op, shape, 2)))
        np.testing.assert_allclose(t.normal(10, [50]).numpy(), np.asarray(j.normal(10, [50])), atol=1e-5)
    u = Rng(TF, [3, 4]).unit(1, [65536]).numpy()
    counts = np.bincount((u * 16).astype(int), minlength=16)
    chi2 = ((counts - 4096.0) ** 2 / 4096.0).sum()
    assert chi2 < 50, chi2  # 15 degrees of freedom: p < 1e-5 for a fair generator
    v = Rng(TF, [3, 4]).unit(2, [65536]).numpy()  # another op's stream
    w = Rng(TF, [3, 5]).unit(1, [65536]).numpy()  # the next batch
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.02 and abs(np.corrcoef(u, w)[0, 1]) < 0.02
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbouring images


# --------------------------------------------------------------------------- new ops against their definitions


def _pil_per_image(x, fn):
    from PIL import Image

    return np.stack([np.asarray(fn(Image.fromarray(im))) for im in x])


def _skewed_images(b=4, size=32, seed=0):
    # Low-contrast, skewed levels: equalize and autocontrast have real work to do.
    rng = np.random.default_rng(seed)
    return (40 + 90 * rng.beta(2, 5, size=(b, size, size, 3))).astype(np.uint8)


def test_point_ops_match_pil():
    from PIL import ImageEnhance, ImageOps

    from tfkit.augment import pixel as P

    x8 = _skewed_images()
    x = tf.constant(x8.astype(np.float32) / 255.0)
    on = tf.constant([True, True, False, True])
    got = np.round(P.equalize(TF, x, on).numpy() * 255)
    ref = _pil_per_image(x8, ImageOps.equalize)
    np.testing.assert_array_equal(got[on.numpy()], ref[on.numpy()])
    np.testing.assert_array_equal(got[2], x8[2])  # off: unchanged
    for bits in (1, 3, 6):
        got = P.posterize(TF, x, tf.fill([4], 8 - bits)).numpy() * 255
        np.testing.assert_allclose(got, _pil_per_image(x8, lambda im: ImageOps.posterize(im, bits)), atol=1e-3)
    for level in (60, 90):  # PIL inverts levels >= threshold
        got = P.solarize(TF, x, tf.fill([4], (level - 0.5) / 255)).numpy() * 255
        np.testing.assert_allclose(got, _pil_per_image(x8, lambda im: ImageOps.solarize(im, level)), atol=1e-3)
    got = P.autocontrast(TF, x, tf.fill([4], True)).numpy() * 255
    np.testing.assert_allclose(got, _pil_per_image(x8, ImageOps.autocontrast), atol=1.0 + 1e-3)
    for f in (0.0, 0.5, 1.7):  # PIL rounds the smoothed image and the blend to uint8
        got = np.clip(P.sharpen(TF, x, tf.fill([4], f)).numpy(), 0, 1) * 255
        ref = _pil_per_image(x8, lambda im: ImageEnhance.Sharpness(im).enhance(f))
        np.testing.assert_allclose(got, ref, atol=1.0 + abs(1 - f) * 0.5 + 1e-3)


def test_gamma_is_a_power_with_one_exponent_per_image():
    x = tf.constant(np.random.default_rng(1).uniform(0.1, 0.6, (6, 16, 16, 3)).astype(np.float32))
    out, _ = A.augment_batch(x, None, AugmentConfig(gamma_p=1.0, gamma=0.4), 16, [0, 3])
    g = np.log(out.numpy()) / np.log(x.numpy())
    per_image = g.reshape(6, -1)
    np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape), atol=1e-4)
    assert per_image.min() >= 0.6 - 1e-4 and per_image.max() <= 1.4 + 1e-4
    assert len(np.unique(np.round(per_image[:, 0], 4))) == 6


def test_gridmask_drops_squares_and_keeps_the_rest():
    x = tf.ones([8, 64, 64, 3], tf.float32)
    ratio = 0.5
    out, _ = A.augment_batch(x, None, AugmentConfig(gridmask_p=1.0, gridmask_ratio=ratio), 64, [1, 1])
    o = out.numpy()
    assert set(np.unique(o)) == {0.0, 1.0}
    assert (o == o[..., :1]).all()  # all channels dropped together
    dropped = (o[..., 0] == 0).mean(axis=(1, 2))
    # ratio^2 of each whole grid unit; partial units at the border move it a little
    assert ((dropped > 0.6 * ratio**2) & (dropped < 1.6 * ratio**2)).all(), dropped
    # Without rotation the holes are axis-aligned: each row is either clear or a
    # periodic run pattern, and a dropped pixel's row and column both hold drops.
    rows_with_drops = (o[..., 0] == 0).any(2)
    cols_with_drops = (o[..., 0] == 0).any(1)
    hole = o[..., 0] == 0
    assert (hole <= (rows_with_drops[:, :, None] & cols_with_drops[:, None, :])).all()
    assert (hole == (rows_with_drops[:, :, None] & cols_with_drops[:, None, :])).all()


def test_randaugment_draws_exactly_n_distinct_ops_per_image():
    from tfkit.augment.draws import Rng
    from tfkit.augment.randaugment import selected_ops

    cfg = AugmentConfig(randaugment_n=3)
    on = selected_ops(TF, cfg, Rng(TF, [4, 4]), 256).numpy()
    assert (on.sum(1) == 3).all()
    assert (on.sum(0) > 0).all()  # every op of the pool is drawn by some image
    assert len({r.tobytes() for r in on}) > 100  # the op sets vary per image
    half = selected_ops(TF, AugmentConfig(randaugment_n=3, randaugment_p=0.5), Rng(TF, [4, 4]), 256).numpy()
    assert 1.2 < half.sum(1).mean() < 1.8 and (half <= on).all()


def test_randaugment_magnitudes_per_op():
    x8 = _skewed_images(16, 16, seed=2)
    x = tf.constant(x8)
    ref = x8.astype(np.float32) / 255
    one = dict(randaugment_n=1, randaugment_m=10.0)
    out, _ = A.augment_batch(x, None, AugmentConfig(**one, randaugment_ops=["posterize"]), 16, [0, 1])
    np.testing.assert_array_equal(np.round(out.numpy() * 255) % 16, 0)  # level 10: 4 bits kept
    out, _ = A.augment_batch(x, None, AugmentConfig(**one, randaugment_ops=["solarize"]), 16, [0, 1])
    np.testing.assert_allclose(out.numpy(), 1.0 - ref, atol=1e-6)  # level 10: threshold 0
    half = dict(randaugment_n=1, randaugment_m=5.0, randaugment_ops=["brightness"])
    out, _ = A.augment_batch(x, None, AugmentConfig(**half), 16, [0, 1])
    factors = (out.numpy() / ref).reshape(16, -1)
    np.testing.assert_allclose(factors, np.broadcast_to(factors[:, :1], factors.shape), atol=1e-5)  # one per image
    assert set(np.round(factors[:, 0].astype(float), 4)) == {0.55, 1.45}  # ... 1 +- 0.9 * 5 / 10, both signs


def test_one_of_picks_exactly_one_member_with_their_weights():
    from tfkit.augment.draws import Rng
    from tfkit.augment.plan import enabled_ops, op_masks

    cfg = AugmentConfig(one_of=["blur", "noise", "cutout"], one_of_p=1.0, blur_sigma=1.0, noise_std=0.1,
                        blur_p=0.0, noise_p=0.3, cutout_p=0.1, hflip_p=0.5)
    masks = {k: v.numpy() for k, v in op_masks(TF, cfg, Rng(TF, [2, 2]), 4000, 3).items()}
    assert set(masks) == {"hflip", "noise", "cutout"}  # blur's weight 0 (another member has one)
    assert (masks["noise"].astype(int) + masks["cutout"] == 1).all()
    assert 2.6 < masks["noise"].sum() / masks["cutout"].sum() < 3.4  # weights 0.3 : 0.1
    some = {k: v.numpy() for k, v in op_masks(TF, AugmentConfig(**{**OPS["one_of"], "one_of_p": 0.4}),
                                              Rng(TF, [2, 2]), 4000, 3).items()}
    chosen = sum(m.astype(int) for m in some.values())
    assert chosen.max() == 1 and 0.37 < chosen.mean() < 0.43
    assert all(0.1 < m.mean() < 0.17 for m in some.values())  # equal weights when all are 0
    # A member never runs on its own coin, even with one_of_p = 0.
    assert enabled_ops(AugmentConfig(noise_p=1.0, noise_std=0.1, one_of=["noise", "blur"])) == []


# --------------------------------------------------------------------------- channels


GEOMETRY_AND_POINT = dict(dihedral_p=1.0, affine_p=1.0, rotate=25.0, crop_p=0.5, brightness_p=1.0,
                          brightness=0.2, gamma_p=0.5, gamma=0.3, posterize_p=0.5, posterize_bits=3,
                          equalize_p=0.5, sharpness_p=0.5, sharpness=0.5, blur_p=0.5, blur_sigma=1.0,
                          noise_p=0.0, cutout_p=0.5, gridmask_p=0.5, randaugment_n=2,
                          randaugment_ops=["rotate", "solarize", "brightness", "autocontrast"])


@pytest.mark.parametrize("channels", [1, 4, 6])
def test_every_channel_gets_the_same_geometric_and_point_ops(channels):
    rng = np.random.default_rng(channels)
    x = rng.integers(0, 256, size=(4, 24, 24, channels), dtype=np.uint8)
    cfg = AugmentConfig(**GEOMETRY_AND_POINT)
    out, _ = A.augment_batch(tf.constant(x), None, cfg, 20, [8, 1])
    assert out.shape == (4, 20, 20, channels)
    for c in range(channels):  # channel c alone gets exactly what it got inside the stack
        alone, _ = A.augment_batch(tf.constant(x[..., c:c + 1]), None, cfg, 20, [8, 1])
        np.testing.assert_allclose(out.numpy()[..., c], alone.numpy()[..., 0], atol=1e-6)


def test_colour_ops_skip_non_rgb_images_with_one_message(caplog):
    x = tf.constant(np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 5), dtype=np.uint8))
    colour = dict(hue_p=1.0, hue=0.2, saturation_p=1.0, saturation=0.5, contrast_p=1.0, contrast=0.4)
    geometry = dict(hflip_p=1.0, brightness_p=1.0, brightness=0.1)
    with caplog.at_level("WARNING", logger="tfkit.augment"):
        a, _ = A.augment_batch(x, None, AugmentConfig(**colour, **geometry), 16, [1, 2])
        A.augment_batch(x, None, AugmentConfig(**colour, **geometry), 16, [1, 3])
    b, _ = A.augment_batch(x, None, AugmentConfig(**geometry), 16, [1, 2])
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    msgs = [r.getMessage() for r in caplog.records if "need RGB" in r.getMessage()]
    assert len(msgs) == 1 and "hue, saturation, contrast" in msgs[0] and "5-channel" in msgs[0]
    # On RGB the same ops run.
    rgb = tf.constant(np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8))
    c, _ = A.augment_batch(rgb, None, AugmentConfig(**colour, **geometry), 16, [1, 2])
    d, _ = A.augment_batch(rgb, None, AugmentConfig(**geometry), 16, [1, 2])
    assert not np.allclose(c.numpy(), d.numpy())


# --------------------------------------------------------------------------- crop views (TTA)


def test_five_and_ten_crop_views():
    x = _images(2, 32, 32, seed=7)
    v = A.tta_views(x, 12, "ten_crop").numpy()
    assert v.shape == (12, 2, 32, 32, 3) and v.dtype == np.uint8
    np.testing.assert_array_equal(v[0], x.numpy())
    # Crop side 28 = 0.875 * 32: centre, then the corners, each resized back to 32.
    corners = [(2, 2), (0, 0), (0, 4), (4, 0), (4, 4)]  # (row, col) of each crop's top-left
    for i, (r, c) in enumerate(corners, start=1):
        ref = A.resize_batch(x[:, r:r + 28, c:c + 28], 32).numpy()
        np.testing.assert_array_equal(v[i], np.round(ref * 255).astype(np.uint8), err_msg=f"view {i}")
    np.testing.assert_array_equal(v[6:], v[:6, :, :, ::-1])  # ten_crop: the mirrors
    five = tf.function(lambda x: A.tta_views(x, 6, "five_crop"), jit_compile=True)(x).numpy()
    np.testing.assert_array_equal(five, v[:6])
    with pytest.raises(TfkitError, match="1..6"):
        A.tta_views(x, 7, "five_crop")


def test_predict_tta_step_with_crop_views():
    from tfkit.predict import MAX_VIEWS, check_tta, make_tta_step

    inp = keras.Input((16, 16, 3))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inp)))
    x = tf.constant(np.random.default_rng(3).uniform(size=(4, 16, 16, 3)).astype(np.float32))
    tta, plain = make_tta_step([model], 12, "ten_crop")(x, tf.constant([0, 0]))
    views = A.tta_views(x, 12, "ten_crop")
    expected = np.mean([model(views[i]).numpy() for i in range(12)], axis=0)
    np.testing.assert_allclose(tta.numpy()[0], expected, atol=1e-5)
    np.testing.assert_allclose(plain.numpy()[0], model(x).numpy(), atol=1e-6)
    with pytest.raises(TfkitError, match="five_crop"):
        check_tta(7, "five_crop", "mean")
    assert {k: v for k, v in MAX_VIEWS.items() if k in A.VIEW_MODES} == A.MAX_VIEWS


# --------------------------------------------------------------------------- the layer on JAX

_JAX_LAYER_SCRIPT = """
import json, os, sys
import numpy as np
import jax, keras
from tfkit import augment as A
from tfkit.config import AugmentConfig
assert keras.backend.backend() == "jax"
folder, cfg = sys.argv[1], AugmentConfig(**json.loads(sys.argv[2]))
x = np.load(folder + "/x.npy")
layer = A.Augment(cfg, 24, seed=3)
layer.build((2, 32, 32, 3))
# What a JAX train step does: a jitted stateless call that returns the advanced counter.
step = jax.jit(lambda nt, x: layer.stateless_call([], nt, x, training=True))
first, nt = step([v.value for v in layer.non_trainable_variables], x)  # counter 0
second, nt = step(nt, x)  # counter 1
inp = keras.Input((32, 32, 3))
keras.Model(inp, A.Augment(cfg, 24, seed=3)(inp)).save(folder + "/m.keras")
loaded = keras.saving.load_model(folder + "/m.keras", safe_mode=True)
plain = loaded(x.astype("float32") / 255.0, training=False)
np.savez(folder + "/out.npz", first=np.asarray(first), second=np.asarray(second), counter=int(nt[0]),
         plain=np.asarray(plain), jax_array=isinstance(second, jax.Array))
"""


def test_augment_layer_on_the_jax_backend_equals_tensorflow(tmp_path):
    import json
    import subprocess
    import sys

    # A few ops of each kind (the parity of every op is tested in-process above).
    cfg = AugmentConfig(dihedral_p=1.0, affine_p=0.8, rotate=30.0, hue_p=0.5, hue=0.1, equalize_p=0.5,
                        cutout_p=0.5, randaugment_n=1, randaugment_ops=["shear_x", "contrast", "posterize"])
    x = _images(2, 32, 32, seed=9).numpy()
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _JAX_LAYER_SCRIPT, str(tmp_path), json.dumps(dataclasses.asdict(cfg))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert bool(got["jax_array"]) and int(got["counter"]) == 2
    fn = tf.function(lambda x, s: A.augment_batch(x, None, cfg, 24, s)[0], jit_compile=True)
    np.testing.assert_allclose(got["first"], fn(tf.constant(x), tf.constant([3, 0])).numpy(), atol=1e-4)
    np.testing.assert_allclose(got["second"], fn(tf.constant(x), tf.constant([3, 1])).numpy(), atol=1e-4)
    np.testing.assert_allclose(got["plain"], A.resize_batch(tf.constant(x), 24).numpy(), atol=1e-6)
