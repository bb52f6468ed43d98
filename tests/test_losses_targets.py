"""Losses for multi-label, regression and distribution targets (tfkit.losses):
properties of the asymmetric loss and the earth mover's distance, the factory per task."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.config import TrainConfig
from tfkit.losses import AsymmetricLoss, EarthMoverDistance, create_loss
from tfkit.utils import TfkitError

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def multilabel_batch(draw, soft=False):
    b, c = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    y = rng.random((b, c)) if soft else rng.integers(0, 2, (b, c)).astype(np.float64)
    p = rng.random((b, c))
    return y.astype(np.float32), p.astype(np.float32)


@st.composite
def histograms(draw):
    b, k = draw(st.integers(1, 6)), draw(st.integers(2, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    counts = rng.integers(0, 20, (b, k)).astype(np.float32)
    counts[:, 0] += 1  # no empty histogram
    return counts, rng.dirichlet(np.ones(k), b).astype(np.float32)


def per_example(loss, y, p):
    return keras.ops.convert_to_numpy(loss.call(keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(p)))


@SETTINGS
@given(multilabel_batch(soft=True))
def test_asl_without_focusing_or_clip_is_binary_crossentropy(data):
    y, p = data
    asl = per_example(AsymmetricLoss(gamma_pos=0, gamma_neg=0, clip=0), y, p)
    bce = keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(y, p))
    np.testing.assert_allclose(asl, bce, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(multilabel_batch(), st.floats(0, 5), st.floats(0, 6), st.floats(0, 0.3))
def test_asl_is_non_negative_and_at_most_bce(data, g_pos, g_neg, clip):
    y, p = data
    asl = per_example(AsymmetricLoss(gamma_pos=g_pos, gamma_neg=g_neg, clip=clip), y, p)
    bce = keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(y, p))
    assert np.all(asl >= 0) and np.all(np.isfinite(asl))
    # focusing weights are <= 1 and the clip only lowers a negative's probability
    assert np.all(asl <= bce + 1e-5)


@SETTINGS
@given(multilabel_batch(), st.floats(0, 4), st.floats(0, 6), st.floats(0, 0.3))
def test_asl_zero_at_perfect_prediction(data, g_pos, g_neg, clip):
    y, _ = data
    asl = per_example(AsymmetricLoss(gamma_pos=g_pos, gamma_neg=g_neg, clip=clip), y, y)
    assert np.all(asl < 1e-5)


def test_asl_clip_ignores_easy_negatives_and_gradients_are_finite():
    y = np.zeros((1, 3), np.float32)
    p = np.array([[0.01, 0.04, 0.3]], np.float32)
    out = per_example(AsymmetricLoss(gamma_pos=0, gamma_neg=0, clip=0.05), y, p)
    # only the 0.3 negative counts, shifted to 0.25
    assert out[0] == pytest.approx(-np.log(1 - 0.25) / 3, rel=1e-5)
    import tensorflow as tf

    for g in (0.0, 0.5, 4.0):
        x = tf.Variable(np.array([[0.0, 0.02, 1.0, 0.5]], np.float32))
        with tf.GradientTape() as tape:
            val = AsymmetricLoss(gamma_pos=g, gamma_neg=g, clip=0.05)(np.array([[1, 0, 1, 0]], np.float32), x)
        assert np.all(np.isfinite(tape.gradient(val, x).numpy())), g


@SETTINGS
@given(histograms())
def test_emd_properties(data):
    counts, p = data
    emd = EarthMoverDistance()
    dist = counts / counts.sum(1, keepdims=True)
    # identical distributions (counts or normalised) cost ~0; any other is positive and symmetric
    assert np.all(per_example(emd, counts, dist) < 1e-5)
    d1, d2 = per_example(emd, dist, p), per_example(emd, p, dist)
    assert np.all(d1 >= 0) and np.all(d1 <= 1 + 1e-6)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-6)
    # r=1 is the L1 distance of the CDFs over the bin count (Wasserstein-1 / K for unit bins)
    from scipy.stats import wasserstein_distance

    k = counts.shape[1]
    ref = [wasserstein_distance(np.arange(k), np.arange(k), dist[i], p[i]) / k for i in range(len(p))]
    np.testing.assert_allclose(per_example(EarthMoverDistance(r=1), dist, p), ref, rtol=1e-4, atol=1e-6)


def test_emd_knows_bins_are_ordered_and_trains():
    y = np.array([[0, 0, 1, 0, 0]], np.float32)
    near = np.array([[0, 1, 0, 0, 0]], np.float32)
    far = np.array([[1, 0, 0, 0, 0]], np.float32)
    emd = EarthMoverDistance()
    assert float(emd(y, near)) < float(emd(y, far))
    # cross-entropy cannot tell them apart
    ce = keras.losses.CategoricalCrossentropy()
    assert float(ce(y, near)) == pytest.approx(float(ce(y, far)))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(5, activation="softmax")])
    model.compile("adam", EarthMoverDistance())
    x = np.random.default_rng(0).random((16, 2)).astype(np.float32)
    hist = model.fit(x, np.repeat(y, 16, 0), epochs=3, batch_size=8, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))


@pytest.mark.parametrize("loss", [AsymmetricLoss(gamma_pos=1, gamma_neg=3, clip=0.1, label_smoothing=0.1),
                                  EarthMoverDistance(r=1.5)])
def test_new_losses_serialise(loss):
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()
    y = np.array([[1.0, 0.0, 1.0]], np.float32)
    p = np.array([[0.7, 0.2, 0.6]], np.float32)
    assert float(again(y, p)) == pytest.approx(float(loss(y, p)))


def test_create_loss_for_new_tasks():
    assert isinstance(create_loss(TrainConfig(), "multilabel", 4), keras.losses.BinaryCrossentropy)
    asl = create_loss(TrainConfig(loss="asl", asl_gamma_neg=2, asl_clip=0.0), "multilabel", 4)
    assert isinstance(asl, AsymmetricLoss) and asl.gamma_neg == 2 and asl.clip == 0
    assert isinstance(create_loss(TrainConfig(loss="focal"), "multilabel", 4), keras.losses.BinaryFocalCrossentropy)
    assert isinstance(create_loss(TrainConfig(), "regression", 1), keras.losses.MeanSquaredError)
    assert isinstance(create_loss(TrainConfig(loss="mae"), "regression", 1), keras.losses.MeanAbsoluteError)
    huber = create_loss(TrainConfig(loss="huber", huber_delta=2.5), "regression", 1)
    # 0.5 * 2.5^2 + 2.5 * (3 - 2.5): quadratic up to delta, linear after
    assert isinstance(huber, keras.losses.Huber) and float(huber([[0.0]], [[3.0]])) == pytest.approx(4.375)
    assert isinstance(create_loss(TrainConfig(), "distribution", 10), EarthMoverDistance)
    assert isinstance(create_loss(TrainConfig(loss="crossentropy"), "distribution", 10),
                      keras.losses.CategoricalCrossentropy)
    with pytest.raises(TfkitError, match=r"loss=asl does not fit task multiclass \(asl is for binary, multilabel\)"):
        create_loss(TrainConfig(loss="asl"), "multiclass", 3)
    with pytest.raises(TfkitError, match="emd does not fit task regression"):
        create_loss(TrainConfig(loss="emd"), "regression", 1)
    with pytest.raises(TfkitError, match="huber_delta"):
        create_loss(TrainConfig(loss="huber", huber_delta=0), "regression", 1)
    with pytest.raises(TfkitError, match="gammas must be >= 0"):
        create_loss(TrainConfig(loss="asl", asl_gamma_neg=-1), "multilabel", 3)
