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
from tfkit.config import AUGMENT_PRESETS, AugmentConfig  # noqa: E402
from tfkit.utils import TfkitError  # noqa: E402

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
    ["cutmix"],
]


def test_xla_groups_cover_every_op():
    assert sorted(sum(XLA_GROUPS, [])) == sorted(OPS)


@pytest.mark.parametrize("group", XLA_GROUPS, ids=["+".join(g) for g in XLA_GROUPS])
def test_every_op_compiles_with_xla_static_shape_and_matches_host(group):
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
        m = A._pixel_matrix(tf.constant(np.stack([np.pad(A._D4[k], [[0, 1], [0, 1]])] * 2) + np.diag([0, 0, 1])
                                        .astype(np.float32)), (12, 12), 12)
        out = A._resample(x, m, 12, "nearest", "reflect", 0.0)
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
        np.testing.assert_array_equal(A._fill(i, n, mode).numpy(), ref)


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


@pytest.mark.parametrize("name", ["affine_reflect", "crop", "hue", "contrast", "brightness", "cutout", "noise",
                                  "blur", "dihedral"])
def test_different_images_get_different_parameters(name):
    x = tf.repeat(_images(1, 32, 32, seed=4), 8, axis=0)  # eight copies of one image
    out, _ = A.augment_batch(x, None, AugmentConfig(**OPS[name]), 32, [7, 7])
    distinct = {o.tobytes() for o in out.numpy()}
    assert len(distinct) >= 6, f"{name}: only {len(distinct)} distinct results for 8 images"


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
           dict(crop_scale=[0.8, 0.2]), dict(zoom=1.2), dict(rotate=-1.0)]
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
