"""ArcFace head: the margin touches only the true class at training, inference is
softmax(scale * cos), gradients flow (also where Keras would clip the probability), the
layer and whole models round-trip in safe mode, tfkit's training step fits it, and the
layer trains on the JAX backend."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.config import load_config
from tfkit.heads import ArcFace, margin_forward
from tfkit.models import create_model, model_from_config
from tfkit.utils import TfkitError


def _cos_np(layer: ArcFace, f: np.ndarray) -> np.ndarray:
    w = np.asarray(layer.kernel)
    return np.clip((f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True)), -1, 1)


def _layer(units: int = 5, dim: int = 8, scale: float = 30.0, margin: float = 0.5, seed: int = 0) -> ArcFace:
    keras.utils.set_random_seed(seed)
    layer = ArcFace(units, scale=scale, margin=margin)
    layer.build((None, dim))
    return layer


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 1000), st.floats(0.0, 1.5), st.floats(1.0, 64.0))
def test_margin_only_on_the_true_class_and_inference_is_softmax_of_scaled_cosines(seed, margin, scale):
    layer = _layer(scale=scale, margin=margin, seed=seed)
    f = np.random.default_rng(seed).normal(size=(6, 8)).astype("float32")
    labels = np.random.default_rng(seed + 1).integers(0, 5, 6)
    cos = _cos_np(layer, f)
    logits = np.asarray(layer(f, labels=labels), dtype=np.float64)
    onehot = np.eye(5, dtype=bool)[labels]
    np.testing.assert_allclose(logits[~onehot], scale * cos[~onehot], rtol=1e-4, atol=1e-4)
    theta = np.arccos(cos[onehot])
    expected = np.where(theta + margin < math.pi, np.cos(theta + margin), cos[onehot] - margin * math.sin(margin))
    np.testing.assert_allclose(logits[onehot], scale * expected, rtol=1e-4, atol=2e-3 * scale)
    assert np.all(logits[onehot] <= scale * cos[onehot] + 1e-4)  # the margin only ever makes the target harder
    z = scale * cos
    soft = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(np.asarray(layer(f)), soft / soft.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    # class indices, one-hot targets and [B, 1] indices give the same logits
    np.testing.assert_allclose(np.asarray(layer(f, labels=np.eye(5, dtype="float32")[labels])), logits, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer(f, labels=labels[:, None])), logits, rtol=1e-6)


def test_zero_margin_is_plain_cosine_softmax():
    layer = _layer(margin=0.0)
    f = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    np.testing.assert_allclose(np.asarray(layer(f, labels=np.array([0, 1, 2, 3]))), 30.0 * _cos_np(layer, f),
                               rtol=1e-4, atol=1e-4)


def test_soft_targets_share_the_margin():
    layer = _layer(margin=0.4)
    f = np.random.default_rng(1).normal(size=(2, 8)).astype("float32")
    a, b = np.eye(5, dtype="float32")[[0, 0]], np.eye(5, dtype="float32")[[3, 3]]
    mixed = np.asarray(layer(f, labels=0.7 * a + 0.3 * b))
    np.testing.assert_allclose(mixed, 0.7 * np.asarray(layer(f, labels=a)) + 0.3 * np.asarray(layer(f, labels=b)),
                               rtol=1e-5, atol=1e-4)


def test_gradients_flow_and_are_finite_even_at_cos_plus_minus_one():
    layer = _layer(units=3, dim=3)
    layer.kernel.assign(np.eye(3, dtype="float32"))
    f = tf.Variable([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.3, 0.4, 0.5]])  # cos exactly 1 and -1 with class 0
    y = tf.constant([0, 0, 2])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, layer(f, labels=y), from_logits=True))
    gf, gw = tape.gradient(loss, [f, layer.kernel])
    assert np.isfinite(gf.numpy()).all() and np.isfinite(gw.numpy()).all()
    assert np.abs(gw.numpy()).sum() > 0 and np.abs(gf.numpy()[2]).sum() > 0


def test_training_loss_is_not_clipped_where_the_margin_probability_is_tiny():
    # the true class's margin probability is ~e-44, far under Keras's 1e-7 clip; a clipped
    # loss would be -log(1e-7) = 16.12 with no gradient to the true class.
    inputs = keras.Input((10,), name="image")
    model = keras.Model(inputs, ArcFace(10, scale=30.0, margin=0.5, dtype="float32", name="output")(inputs))
    model.get_layer("output").kernel.assign(np.eye(10, dtype="float32"))
    x = np.zeros((1, 10), "float32")
    x[0, 0] = 1.0  # cos 1 with class 0, 0 with the rest; the label is class 1
    y = np.eye(10, dtype="float32")[[1]]
    forward = margin_forward(model)
    ce = keras.losses.CategoricalCrossentropy()

    @tf.function
    def loss_and_grad(x, y):
        with tf.GradientTape() as tape:
            loss = ce(y, forward(x, y))
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = loss_and_grad(tf.constant(x), tf.constant(y))
    logits = 30.0 * np.array([1.0, -math.sin(0.5)] + [0.0] * 8)
    expected = -(logits[1] - np.log(np.exp(logits).sum()))
    assert float(loss) == pytest.approx(expected, rel=1e-4) and expected > 40
    assert np.abs(grads[0].numpy()).sum() > 0


@pytest.mark.parametrize("meta_dim", [0, 3])
def test_model_with_arcface_round_trips_in_safe_mode(tmp_path, meta_dim):
    model = create_model("small_cnn", 4, 16, width=4, head="arcface", arcface_scale=12.0, arcface_margin=0.2,
                         meta_dim=meta_dim)
    rng = np.random.default_rng(0)
    x = rng.random((3, 16, 16, 3), dtype=np.float32)
    x = {"image": x, "meta": rng.random((3, meta_dim), dtype=np.float32)} if meta_dim else x
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    head = loaded.get_layer("output")
    assert isinstance(head, ArcFace) and (head.units, head.scale, head.margin) == (4, 12.0, 0.2)
    assert ArcFace.from_config(head.get_config()).get_config() == head.get_config()
    np.testing.assert_allclose(np.asarray(model(x)).sum(1), 1.0, atol=1e-5)


def test_config_selects_the_head_and_bad_settings_fail_in_one_line():
    cfg = load_config(None, ["model.head=arcface", "model.arcface_margin=0.3", "model.width=4"])
    model = model_from_config(cfg.model, 5, 16, "multiclass")
    assert isinstance(model.get_layer("output"), ArcFace) and model.get_layer("output").margin == 0.3
    assert margin_forward(create_model("small_cnn", 5, 16, width=4)) is None
    with pytest.raises(TfkitError, match="model.task=multiclass"):
        create_model("small_cnn", 2, 16, task="binary", width=4, head="arcface")
    with pytest.raises(TfkitError, match="unknown head"):
        create_model("small_cnn", 3, 16, width=4, head="cosface")
    with pytest.raises(TfkitError, match="arcface_margin"):
        create_model("small_cnn", 3, 16, width=4, head="arcface", arcface_margin=2.0)


def test_tfkit_training_step_fits_an_arcface_model_with_metadata():
    from tfkit.losses import create_loss
    from tfkit.train_step import TrainingModel

    keras.utils.set_random_seed(0)
    model = create_model("small_cnn", 3, 16, width=4, head="arcface", meta_dim=2, arcface_scale=8.0)
    rng = np.random.default_rng(0)
    x = {"image": rng.random((8, 16, 16, 3), dtype=np.float32), "meta": rng.random((8, 2), dtype=np.float32)}
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    wrapper = TrainingModel(model)
    wrapper.compile(optimizer=keras.optimizers.Adam(1e-2), loss=create_loss(load_config(None).train, "multiclass", 3))
    before = [w.copy() for w in model.get_weights()]
    hist = wrapper.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat(), steps_per_epoch=2, epochs=1,
                       verbose=0, shuffle=False)
    assert np.isfinite(hist.history["loss"]).all()
    changed = {v.path for v, w in zip(model.weights, before) if not np.allclose(np.asarray(v), w)}
    assert any("output" in p for p in changed) and any("backbone" in p or "conv" in p for p in changed)
    assert any("meta_dense" in p for p in changed)  # the gradient reaches the metadata branch too
    # under the margin, the training loss exceeds the plain cosine-softmax loss of the same weights
    plain = float(keras.losses.categorical_crossentropy(y, model(x)).numpy().mean())
    margin = float(keras.losses.categorical_crossentropy(y, margin_forward(model)(x, y)).numpy().mean())
    assert margin > plain


def test_arcface_trains_and_round_trips_on_the_jax_backend(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, keras
        assert keras.backend.backend() == "jax"
        from tfkit.heads import ArcFace
        feats, labels = keras.Input((8,)), keras.Input((), dtype="int32")
        head = ArcFace(3, scale=16.0, margin=0.3, name="output")
        train = keras.Model([feats, labels], head(feats, labels=labels))
        train.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(16, 8)).astype("float32"), rng.integers(0, 3, 16)
        w0 = np.asarray(head.kernel).copy()
        h = train.fit([x, y], y, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(h.history["loss"]).all() and not np.allclose(np.asarray(head.kernel), w0)
        infer = keras.Model(feats, head(feats))
        infer.save(r"{tmp_path / 'j.keras'}")
        back = keras.saving.load_model(r"{tmp_path / 'j.keras'}", safe_mode=True)
        np.testing.assert_allclose(np.asarray(back(x)), np.asarray(infer(x)), atol=1e-6)
        np.testing.assert_allclose(np.asarray(infer(x)).sum(1), 1.0, atol=1e-5)
        print("jax ok")
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "jax ok" in done.stdout, done.stderr[-2000:]
