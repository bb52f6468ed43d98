"""tfkit.models: factory, heads per task, per-family preprocessing, GeM,
metadata branch, weights files, safe-mode save/load round trip."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkit.config import ModelConfig
from tfkit.models import (
    GeMPooling2D,
    Preprocess,
    create_model,
    list_models,
    model_from_config,
    preprocess_mode,
    resolve_task,
)
from tfkit.utils import TfkitError

RNG = np.random.default_rng(0)


def _images(n=3, size=32):
    return RNG.random((n, size, size, 3), dtype=np.float32)


def test_list_models_covers_contract_names():
    names = set(list_models())
    expected = {"small_cnn", "resnet50", "resnet50v2", "convnext_tiny", "convnext_small", "convnext_base",
                "mobilenetv3_small", "mobilenetv3_large", "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l"}
    expected |= {f"efficientnet_b{i}" for i in range(8)} | {f"efficientnetv2_b{i}" for i in range(4)}
    assert expected <= names
    assert list_models() == sorted(names)


@pytest.mark.parametrize(
    "task,classes,units",
    [("multiclass", 5, 5), ("binary", 2, 1), ("multilabel", 4, 4), ("regression", 1, 1)],
)
def test_heads_per_task(task, classes, units):
    model = create_model("small_cnn", classes, 32, task=task, width=8, dropout=0.0)
    assert model.output_shape == (None, units)
    assert [t.name for t in model.inputs] == ["image"]
    out = model.get_layer("output")
    assert out.activation.__name__ == {"multiclass": "softmax", "binary": "sigmoid",
                                      "multilabel": "sigmoid", "regression": "linear"}[task]
    p = model.predict(_images(), verbose=0)
    assert p.dtype == np.float32 and p.shape == (3, units)
    if task == "multiclass":
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    elif task in ("binary", "multilabel"):
        assert np.all((p > 0) & (p < 1))


def test_auto_task_resolution():
    assert resolve_task("auto", 2) == "binary"
    assert resolve_task("auto", 7) == "multiclass"
    with pytest.raises(TfkitError, match="unknown task"):
        resolve_task("ordinal-ish", 3)
    with pytest.raises(TfkitError, match="at least 2"):
        resolve_task("multiclass", 1)


def test_metadata_branch_changes_predictions_and_names_inputs():
    model = create_model("small_cnn", 3, 32, meta_dim=4, meta_units=(8,), width=8, dropout=0.0)
    assert [t.name for t in model.inputs] == ["image", "meta"]
    img = _images(2)
    m0 = np.zeros((2, 4), np.float32)
    m1 = np.full((2, 4), 3.0, np.float32)
    p0 = model.predict({"image": img, "meta": m0}, verbose=0)
    p1 = model.predict({"image": img, "meta": m1}, verbose=0)
    assert not np.allclose(p0, p1)
    assert model.get_layer("concat") is not None


def test_backbone_is_nested_layer_named_backbone():
    model = create_model("small_cnn", 10, 32, width=8)
    bb = model.get_layer("backbone")
    assert isinstance(bb, keras.Model) and len(bb.layers) > 5
    bb.trainable = False
    assert all(not w.trainable for w in bb.weights)
    assert model.get_layer("output").trainable


def test_gem_matches_formula_and_p1_is_average():
    x = RNG.random((2, 5, 5, 3), dtype=np.float32) + 0.1
    gem = GeMPooling2D(p=3.0)
    got = keras.ops.convert_to_numpy(gem(x))
    want = np.mean(x**3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    avg = keras.ops.convert_to_numpy(GeMPooling2D(p=1.0)(x))
    np.testing.assert_allclose(avg, x.mean(axis=(1, 2)), rtol=1e-5)
    assert gem.trainable_weights and gem.trainable_weights[0].name == "p"


@pytest.mark.parametrize(
    "name,module",
    [
        ("resnet50", "resnet50"),
        ("resnet50v2", "resnet_v2"),
        ("efficientnet_b3", "efficientnet"),
        ("efficientnetv2_s", "efficientnet_v2"),
        ("convnext_tiny", "convnext"),
        ("mobilenetv3_small", "mobilenet_v3"),
    ],
)
def test_preprocessing_matches_keras_preprocess_input(name, module):
    """Our in-model rescaling of [0, 1] images equals keras' documented
    preprocess_input applied to the same images in [0, 255] (for families whose
    graph normalises, preprocess_input is a pass-through and 0..255 is expected)."""
    x = _images(2, 8)
    ours = keras.ops.convert_to_numpy(Preprocess(preprocess_mode(name))(x))
    ref = getattr(keras.applications, module).preprocess_input(x.copy() * 255.0)
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-5, atol=1e-3)


def test_efficientnet_b0_builds_at_32px_and_normalises_inside():
    model = create_model("efficientnet_b0", 4, 32, weights=None, pooling="gem", head_units=(16,))
    bb = model.get_layer("backbone")
    kinds = [type(layer).__name__ for layer in bb.layers[:4]]
    assert "Rescaling" in kinds and "Normalization" in kinds  # expects 0..255 input
    p = model.predict(_images(2), verbose=0)
    assert p.shape == (2, 4)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)


def test_output_is_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = create_model("small_cnn", 3, 32, width=8, pooling="gem")
        assert model.get_layer("backbone").layers[1].compute_dtype == "float16"
        p = model(_images(2), training=False)
        assert keras.backend.standardize_dtype(p.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_save_load_round_trip_safe_mode(tmp_path):
    model = create_model("small_cnn", 3, 32, meta_dim=2, pooling="gem", head_units=(8,), width=8)
    x = {"image": _images(4), "meta": RNG.random((4, 2), dtype=np.float32)}
    p = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), p)
    assert loaded.get_layer("backbone") is not None


def test_local_weights_files(tmp_path):
    src = create_model("small_cnn", 3, 32, width=8)
    bb = src.get_layer("backbone")
    # Perturb so the weights differ from a fresh initialisation.
    bb.set_weights([w + 0.5 for w in bb.get_weights()])
    wfile = tmp_path / "bb.weights.h5"
    bb.save_weights(wfile)
    kfile = tmp_path / "full.keras"
    src.save(kfile)
    for path in (wfile, kfile):
        dst = create_model("small_cnn", 5, 32, width=8, weights=str(path))
        for a, b in zip(dst.get_layer("backbone").get_weights(), bb.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(TfkitError, match="file not found"):
        create_model("small_cnn", 3, 32, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(TfkitError, match="another architecture"):
        create_model("small_cnn", 3, 32, width=16, weights=str(kfile))


def test_errors_are_one_line_tfkit_errors():
    with pytest.raises(TfkitError, match="unknown model 'resnet51'"):
        create_model("resnet51", 3, 32)
    with pytest.raises(TfkitError, match="pooling"):
        create_model("small_cnn", 3, 32, pooling="median")
    with pytest.raises(TfkitError, match="no ImageNet weights"):
        create_model("small_cnn", 3, 32, weights="imagenet")
    with pytest.raises(TfkitError, match="dropout"):
        create_model("small_cnn", 3, 32, dropout=1.5)


def test_model_from_config():
    cfg = ModelConfig(name="small_cnn", width=8, pooling="max", head_units=[16], task="auto")
    model = model_from_config(cfg, num_classes=2, image_size=32)
    assert model.output_shape == (None, 1)  # auto + 2 classes -> binary
    assert model.get_layer("head_dense0").units == 16
    model = model_from_config(cfg, num_classes=4, image_size=32, task="multilabel", meta_dim=3)
    assert model.output_shape == (None, 4) and len(model.inputs) == 2
