"""TTA fold-ensemble predictor: every average is checked against a manual numpy computation
of the same models on explicitly transformed inputs."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tfkit.config import PredictConfig, load_config, save_config
from tfkit.models import create_model
from tfkit.predict import (
    fold_weights,
    list_images,
    make_tta_step,
    predict,
    predict_proba,
    submission_frame,
)
from tfkit.utils import TfkitError, write_json

SIZE = 16
CLASSES = ["a", "b", "c"]


def _model(seed: int, num_classes: int = 3, task: str = "multiclass", meta_dim: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return create_model("small_cnn", num_classes, SIZE, task=task, width=4, meta_dim=meta_dim, dropout=0.0)


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3), dtype=np.float32)


def _ds(x, batch: int = 4):
    return tf.data.Dataset.from_tensor_slices(x).batch(batch)


def _dihedral_np(x: np.ndarray) -> list[np.ndarray]:
    rots = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    return rots + [np.flip(r, axis=2) for r in rots]


def _flips_np(x: np.ndarray) -> list[np.ndarray]:
    return [x, np.flip(x, 2), np.flip(x, 1), np.flip(np.flip(x, 1), 2)]


def _p(model, x) -> np.ndarray:
    return model.predict(x, verbose=0).astype(np.float64)


def test_identity_view_equals_plain_predict():
    model, x = _model(0), _images(7)
    got = predict_proba([model], _ds(x), n_views=1, progress=False)
    np.testing.assert_allclose(got, _p(model, x), atol=1e-5)


@pytest.mark.parametrize("mode,views_np", [("dihedral", _dihedral_np), ("flips", _flips_np)])
def test_tta_mean_equals_manual_average(mode, views_np):
    model, x = _model(1), _images(6)
    views = views_np(x)
    manual = np.mean([_p(model, np.ascontiguousarray(v)) for v in views], axis=0)
    got = predict_proba([model], _ds(x, 4), n_views=len(views), mode=mode, progress=False)
    np.testing.assert_allclose(got, manual, atol=1e-5)
    # the model is not symmetric, so TTA really changed something
    assert np.abs(got - _p(model, x)).max() > 1e-4


def test_tta_geometric_mean_multiclass_and_binary():
    x = _images(5)
    model = _model(2)
    logs = np.mean([np.log(np.clip(_p(model, np.ascontiguousarray(v)), 1e-7, 1 - 1e-7)) for v in _dihedral_np(x)], 0)
    manual = np.exp(logs) / np.exp(logs).sum(1, keepdims=True)
    got = predict_proba([model], _ds(x), n_views=8, mode="dihedral", average="gmean", progress=False)
    np.testing.assert_allclose(got, manual, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)

    binary = _model(3, num_classes=2, task="binary")
    ps = [np.clip(_p(binary, np.ascontiguousarray(v)), 1e-7, 1 - 1e-7) for v in _flips_np(x)]
    gp = np.exp(np.mean(np.log(ps), 0))
    gq = np.exp(np.mean(np.log(1 - np.array(ps)), 0))
    got = predict_proba([binary], _ds(x), n_views=4, mode="flips", average="gmean", task="binary", progress=False)
    np.testing.assert_allclose(got, gp / (gp + gq), atol=1e-5)


def test_metadata_is_shared_by_every_view():
    model = _model(4, meta_dim=3)
    x = _images(5)
    meta = np.random.default_rng(1).random((5, 3), dtype=np.float32)
    manual = np.mean(
        [model.predict({"image": np.ascontiguousarray(v), "meta": meta}, verbose=0) for v in _flips_np(x)], 0
    )
    ds = tf.data.Dataset.from_tensor_slices({"image": x, "meta": meta}).batch(2)
    got = predict_proba([model], ds, n_views=4, mode="flips", progress=False)
    np.testing.assert_allclose(got, manual, atol=1e-5)


def test_all_views_go_through_each_model_in_one_call():
    import keras

    calls = []

    class Counting(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x, training=False):
            calls.append(x.shape)  # python side effect: runs once per call while tracing
            return self.inner(x, training=training)

    models = [Counting(_model(5)), Counting(_model(6))]
    step = make_tta_step(models, n_views=8, mode="dihedral")
    tta, plain = step(tf.constant(_images(3)), tf.constant([0, 0]))
    assert len(calls) == 2  # one call per model, carrying all 8 views
    assert tta.shape == plain.shape == (2, 3, 3)


def test_fold_weights_equal_and_cv(tmp_path):
    write_json(tmp_path / "cv.json", {
        "primary": "accuracy", "metrics": {"accuracy": 0.75},
        "folds": {"0": {"accuracy": 0.6, "log_loss": 0.5}, "1": {"accuracy": 0.9, "log_loss": 0.25}},
    })
    np.testing.assert_allclose(fold_weights(tmp_path, [0, 1], "equal"), [0.5, 0.5])
    w = fold_weights(tmp_path, [0, 1], "cv")
    np.testing.assert_allclose(w, [0.4, 0.6])
    models, x = [_model(7), _model(8)], _images(6)
    manual = w[0] * _p(models[0], x) + w[1] * _p(models[1], x)
    got = predict_proba(models, _ds(x), n_views=1, weights=w, progress=False)
    np.testing.assert_allclose(got, manual, atol=1e-5)
    equal = predict_proba(models, _ds(x), n_views=1, progress=False)
    np.testing.assert_allclose(equal, (_p(models[0], x) + _p(models[1], x)) / 2, atol=1e-5)
    # a loss-like primary metric weights by 1 / score
    cv = json.loads((tmp_path / "cv.json").read_text())
    cv["primary"] = "log_loss"
    write_json(tmp_path / "cv.json", cv)
    np.testing.assert_allclose(fold_weights(tmp_path, [0, 1], "cv"), [1 / 3, 2 / 3])
    with pytest.raises(TfkitError, match="fold 2"):
        fold_weights(tmp_path, [0, 2], "cv")


def test_augment_mode_is_seeded_and_view0_is_identity():
    model, x = _model(9), _images(4)
    cfg = load_config(None, ["augment.preset=digits"])
    kw = dict(mode="augment", augment_cfg=cfg.augment, progress=False)
    a = predict_proba([model], _ds(x), n_views=3, seed=1, **kw)
    b = predict_proba([model], _ds(x), n_views=3, seed=1, **kw)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - _p(model, x)).max() > 1e-5
    _, _, plain = predict_proba([model], _ds(x), n_views=3, seed=1, per_model=True, **kw)
    np.testing.assert_allclose(plain[0], _p(model, x), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 7])
def test_augment_views_do_not_depend_on_how_many_devices_share_a_batch(seed):
    # A run predicted on 1 device (batches of 4) and on 2 devices (global batches of 8 = 2 x 4, the
    # last one padded) gets the same views per image: each block of 4 rows is seeded by its place
    # in the stream, not by the batch that carries it.
    model, x = _model(9), _images(10, seed)
    cfg = load_config(None, ["augment.preset=digits"])
    kw = dict(n_views=3, mode="augment", augment_cfg=cfg.augment, seed=seed, progress=False, seed_rows=4)
    one = predict_proba([model], _ds(x, 4), **kw)
    two = predict_proba([model], _ds(x, 8), **kw)
    np.testing.assert_allclose(one, two, atol=1e-6)
    # without blocks, the draws follow the batch: the same images get other views
    other = predict_proba([model], _ds(x, 8), **{**kw, "seed_rows": None})
    assert np.abs(other - one).max() > 1e-5


def test_bad_options_are_one_line_errors():
    model = _model(10)
    with pytest.raises(TfkitError, match="predict.tta=9"):
        make_tta_step([model], 9, "dihedral")
    with pytest.raises(TfkitError, match="predict.average"):
        make_tta_step([model], 2, "dihedral", average="median")
    with pytest.raises(TfkitError, match="predict.tta_mode"):
        make_tta_step([model], 2, "rot")


# --------------------------------------------------------------------------- run folders


def _make_run(root, n_folds: int = 2, **over):
    """A run folder as tfkit.train writes it (config, manifest, finished folds, cv.json)."""
    cfg = load_config(None, [f"data.image_size={SIZE}", "data.batch_size=4", "model.width=4", *over.get("sets", [])])
    save_config(cfg, root / "config.yaml")
    write_json(root / "manifest.json", {"classes": CLASSES, "task": "multiclass", "split": "train"})
    models = []
    for k in range(n_folds):
        m = _model(20 + k)
        (root / f"fold{k}").mkdir(parents=True)
        m.save(root / f"fold{k}" / "model.keras")
        write_json(root / f"fold{k}" / "done.json", {"fold": k})
        models.append(m)
    write_json(root / "cv.json", {"primary": "accuracy", "metrics": {}, "folds": {str(k): {"accuracy": 0.5 + 0.1 * k} for k in range(n_folds)}})
    return models


def _write_images(folder, rng):
    folder.mkdir()
    arrays = {}
    specs = [("img_b", "png", "RGB", 20), ("img_a", "jpg", "RGB", 16), ("img_c", "png", "L", 24),
             ("img_d", "png", "RGBA", 12), ("img_e", "bmp", "RGB", 16)]
    for name, ext, mode, side in specs:
        shape = (side, side + 4) if mode == "L" else (side, side + 4, len(mode))
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr, mode).save(folder / f"{name}.{ext}", quality=95)
        arrays[name] = folder / f"{name}.{ext}"
    (folder / "notes.txt").write_text("not an image")
    return arrays


def _load_np(path) -> np.ndarray:
    """What the pipeline should feed the model: antialiased resize, uint8 rounding, [0, 1]."""
    img = np.asarray(Image.open(path).convert("RGB"))
    img = tf.image.resize(img, [SIZE, SIZE], antialias=True).numpy()
    return np.clip(np.round(img), 0, 255).astype(np.float32) / 255.0


def _manual_folder(models, paths, weights=None):
    x = np.stack([_load_np(p) for p in paths])
    w = weights if weights is not None else [1 / len(models)] * len(models)
    return sum(wk * _p(m, x) for wk, m in zip(w, models))


def test_predict_images_folder_writes_a_valid_submission(tmp_path):
    run = tmp_path / "run"
    models = _make_run(run)
    files = _write_images(tmp_path / "imgs", np.random.default_rng(0))
    out = tmp_path / "sub.csv"
    frame = predict(run, out, images=tmp_path / "imgs", progress=False)
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub.columns) == ["id", *CLASSES]
    assert sub["id"].tolist() == sorted(files) == frame["id"].tolist()
    np.testing.assert_allclose(sub[CLASSES].sum(1), 1.0, atol=1e-5)
    manual = _manual_folder(models, [files[i] for i in sorted(files)])
    # JPEG decoders differ by a grey level at most between PIL and TF
    np.testing.assert_allclose(sub[CLASSES].to_numpy(), manual, atol=2e-2)
    png_rows = [i for i, k in enumerate(sorted(files)) if files[k].suffix in (".png", ".bmp")]
    np.testing.assert_allclose(sub[CLASSES].to_numpy()[png_rows], manual[png_rows], atol=1e-5)


def test_predict_images_with_csv_order_tta_and_cv_weights(tmp_path):
    run = tmp_path / "run"
    models = _make_run(run)
    files = _write_images(tmp_path / "imgs", np.random.default_rng(1))
    order = ["img_d", "img_b", "img_c"]
    pd.DataFrame({"image_id": order, "other": [1, 2, 3]}).to_csv(tmp_path / "ss.csv", index=False)
    sub = predict(
        run, tmp_path / "sub.csv", images=tmp_path / "imgs", csv=tmp_path / "ss.csv", tta=4,
        overrides=["predict.tta_mode=flips", "predict.fold_weights=cv", "predict.id_column=image_id",
                   "predict.label_columns=[p0,p1,p2]"],
        progress=False,
    )
    assert list(sub.columns) == ["image_id", "p0", "p1", "p2"]
    assert sub["image_id"].tolist() == order
    x = np.stack([_load_np(files[i]) for i in order])
    w = [0.5 / 1.1, 0.6 / 1.1]
    manual = sum(wk * np.mean([_p(m, np.ascontiguousarray(v)) for v in _flips_np(x)], 0) for wk, m in zip(w, models))
    np.testing.assert_allclose(sub[["p0", "p1", "p2"]].to_numpy(), manual, atol=1e-5)


def test_images_folder_errors(tmp_path):
    _write_images(tmp_path / "imgs", np.random.default_rng(2))
    pd.DataFrame({"id": ["img_a", "nope"]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(TfkitError, match="line 3: no image named nope"):
        list_images(tmp_path / "imgs", tmp_path / "a.csv")
    pd.DataFrame({"id": ["x"], "path": ["../secret.png"]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(TfkitError, match="leaves the images folder"):
        list_images(tmp_path / "imgs", tmp_path / "b.csv")
    with pytest.raises(TfkitError, match="exactly one of"):
        predict(tmp_path, "x.csv")


def test_submission_frame_formats():
    out = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    f = submission_frame(["x", "y"], out, CLASSES, "multiclass", PredictConfig(output="label"))
    assert f.to_dict("list") == {"id": ["x", "y"], "label": ["b", "a"]}
    f = submission_frame(["x"], np.array([[0.8]]), ["benign", "malignant"], "binary", PredictConfig(label_columns=["target"]))
    assert f.to_dict("list") == {"id": ["x"], "target": [0.8]}
    f = submission_frame(["x"], np.array([[0.8]]), ["0", "1"], "binary", PredictConfig())
    assert list(f.columns) == ["id", "1"]
    f = submission_frame(["x"], np.array([[0.8]]), ["0", "1"], "binary", PredictConfig(label_columns=["n", "p"]))
    np.testing.assert_allclose(f[["n", "p"]].to_numpy(), [[0.2, 0.8]])
    with pytest.raises(TfkitError, match="expected 3 names"):
        submission_frame(["x", "y"], out, CLASSES, "multiclass", PredictConfig(label_columns=["p"]))
