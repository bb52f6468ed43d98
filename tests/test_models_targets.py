"""tfkit.models for multi-label, regression, distribution and multi-channel
inputs: heads, bounded outputs, channel widening of 3-channel weights, per-channel preprocessing."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.config import ModelConfig
from tfkit.models import (
    OutputRange,
    Preprocess,
    build_backbone,
    create_model,
    model_from_config,
    widen_channels,
)
from tfkit.utils import TfkitError

RNG = np.random.default_rng(0)


def _images(n=3, size=32, c=3):
    return RNG.random((n, size, size, c), dtype=np.float32)


def test_distribution_and_multi_target_regression_heads():
    dist = create_model("small_cnn", 10, 32, task="distribution", width=8)
    assert dist.get_layer("output").activation.__name__ == "softmax"
    np.testing.assert_allclose(dist.predict(_images(), verbose=0).sum(1), 1.0, rtol=1e-5)
    reg = create_model("small_cnn", 0, 32, task="regression", n_targets=3, width=8)
    assert reg.output_shape == (None, 3) and reg.get_layer("output").activation.__name__ == "linear"
    with pytest.raises(TfkitError, match="needs at least 2 bins"):
        create_model("small_cnn", 1, 32, task="distribution", width=8)


@settings(max_examples=20, deadline=None)
@given(st.floats(-1e3, 1e3), st.floats(0.01, 1e3), st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=8))
def test_output_range_stays_inside(low, span, logits):
    out = keras.ops.convert_to_numpy(OutputRange(low, low + span)(np.array([logits], np.float32)))
    assert np.all(out >= np.float32(low)) and np.all(out <= np.float32(low + span))


def test_bounded_regression_model_round_trips(tmp_path):
    model = model_from_config(ModelConfig(width=8, output_range=[1.0, 100.0], channel_mean=[0.2, 0.3, 0.1, 0.5],
                                          channel_std=[0.1, 0.2, 0.05, 0.3]), 0, 32, task="regression",
                              channels=4, n_targets=1)
    x = _images(4, c=4) * 50 - 25  # far outside [0, 1]: the head still bounds it
    p = model.predict(x, verbose=0)
    assert p.shape == (4, 1) and np.all((p >= 1) & (p <= 100))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), p)
    with pytest.raises(TfkitError, match="output_range bounds regression outputs; the task is multilabel"):
        create_model("small_cnn", 3, 32, task="multilabel", output_range=[0, 1], width=8)
    with pytest.raises(TfkitError, match="low < high"):
        create_model("small_cnn", 0, 32, task="regression", output_range=[5, 5], width=8)


def test_preprocess_channels():
    x = _images(2, 4, c=4)
    caffe = keras.ops.convert_to_numpy(Preprocess("caffe")(x))
    bgr_mean = np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(caffe[..., :3], x[..., 2::-1] * 255 - bgr_mean, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(caffe[..., 3], x[..., 3] * 255 - bgr_mean.mean(), rtol=1e-5, atol=1e-3)
    # standardisation maps the data's per-channel statistics onto ImageNet's
    data = RNG.normal([0.1, 0.6, 0.3, 0.05], [0.02, 0.1, 0.05, 0.01], (50000, 4)).astype(np.float32)
    layer = Preprocess("identity", mean=data.mean(0).tolist(), std=data.std(0).tolist())
    out = keras.ops.convert_to_numpy(layer(data[:, None, None, :]))[:, 0, 0]
    np.testing.assert_allclose(out.mean(0), [0.485, 0.456, 0.406, (0.485 + 0.456 + 0.406) / 3], atol=1e-3)
    np.testing.assert_allclose(out.std(0), [0.229, 0.224, 0.225, (0.229 + 0.224 + 0.225) / 3], rtol=1e-2)
    with pytest.raises(TfkitError, match="4 values for 3-channel images"):
        Preprocess("tf", mean=[0.1] * 4, std=[0.1] * 4)(_images(1, 4))
    with pytest.raises(TfkitError, match="give both"):
        Preprocess("tf", mean=[0.1] * 3)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_widen_channels_properties(c, axis, seed):
    shape = [2, 2, 2, 2]
    shape[axis] = 3
    w = np.random.default_rng(seed).normal(size=shape)
    out = widen_channels(w, c, axis)
    assert out.shape[axis] == c
    if c >= 3:
        np.testing.assert_array_equal(np.take(out, [0, 1, 2], axis), w)
        for k in range(3, c):
            np.testing.assert_allclose(np.take(out, k, axis), w.mean(axis))
    else:  # a kernel: the channels together respond like RGB did to a grey image
        np.testing.assert_allclose(out.sum(axis), w.sum(axis))


def _first_conv(model):
    bb = model.get_layer("backbone")
    return keras.Model(bb.inputs[0], bb.get_layer("s0_conv0").output)


@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
def test_pretrained_three_channel_weights_widened(tmp_path, fmt):
    src = create_model("small_cnn", 3, 32, width=8)
    bb = src.get_layer("backbone")
    bb.set_weights([w + RNG.normal(0, 0.3, w.shape).astype(w.dtype) for w in bb.get_weights()])
    path = tmp_path / f"src.{fmt}"
    bb.save_weights(path) if fmt == "weights.h5" else src.save(path)
    rgbx = create_model("small_cnn", 3, 32, width=8, channels=4, weights=str(path))
    k_src = bb.get_layer("s0_conv0").get_weights()[0]
    k_dst = rgbx.get_layer("backbone").get_layer("s0_conv0").get_weights()[0]
    assert k_dst.shape == (3, 3, 4, 8)
    np.testing.assert_array_equal(k_dst[:, :, :3], k_src)
    np.testing.assert_allclose(k_dst[:, :, 3], k_src.mean(2), rtol=1e-6)
    for a, b in zip(bb.get_weights()[1:], rgbx.get_layer("backbone").get_weights()[1:]):
        np.testing.assert_array_equal(a, b)
    # grey: one channel responds to a grey image as the RGB model did to the same grey in RGB
    grey = create_model("small_cnn", 3, 32, width=8, channels=1, weights=str(path))
    g = _images(2, c=1)
    np.testing.assert_allclose(_first_conv(grey)(g), _first_conv(src)(np.repeat(g, 3, -1)), rtol=1e-4, atol=1e-5)
    # a C-channel checkpoint loads into a C-channel model as it is
    ck = tmp_path / "rgbx.keras"
    rgbx.save(ck)
    again = create_model("small_cnn", 3, 32, width=8, channels=4, weights=str(ck))
    for a, b in zip(again.get_layer("backbone").get_weights(), rgbx.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_widening_a_keras_application_with_input_normalisation(tmp_path):
    src = build_backbone("efficientnet_b0", 32)
    norm = next(layer for layer in src.layers if isinstance(layer, keras.layers.Normalization))
    mean, var, count = norm.get_weights()
    norm.set_weights([np.array([0.4, 0.5, 0.6], np.float32), np.array([0.1, 0.2, 0.3], np.float32), count])
    path = tmp_path / "b0.weights.h5"
    src.save_weights(path)
    dst = build_backbone("efficientnet_b0", 32, weights=str(path), channels=4)
    dnorm = next(layer for layer in dst.layers if isinstance(layer, keras.layers.Normalization))
    np.testing.assert_allclose(dnorm.get_weights()[0], [0.4, 0.5, 0.6, 0.5], rtol=1e-6)
    np.testing.assert_allclose(dnorm.get_weights()[1], [0.1, 0.2, 0.3, 0.2], rtol=1e-6)
    assert dst(np.zeros((1, 32, 32, 4), np.float32)).shape[-1] == src.output_shape[-1]


def test_efficientnetv2_builds_under_the_backbone_name():
    bb = build_backbone("efficientnetv2_b0", 32)
    assert bb.name == "backbone" and bb.output_shape[-1] == 1280
