"""Evaluation report on a real (tiny) trained run, plus the predictor on test records and
OOF-with-TTA against the training pipeline."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfkit.models import create_model
from tfkit.report import gradcam, last_conv_layer, per_class_table, reliability, report, top_losses
from tfkit.utils import TfkitError, read_json

# tiny_run (tests/conftest.py): a 3-fold run of conftest.TINY_RUN on small_records, this module's copy.


def test_report_writes_every_file(tiny_run, small_records, tmp_path):
    oof = pd.read_csv(tiny_run / "oof.csv", dtype={"id": str})
    path = report(tiny_run, out=tmp_path / "rep", n_worst=6, records=small_records)
    assert path == tmp_path / "rep" / "report.html"
    for name in ("confusion_matrix.png", "calibration.png", "per_class.csv", "top_losses.csv",
                 "top_losses.png", "gradcam.png", "calibration.csv"):
        f = tmp_path / "rep" / name
        assert f.is_file() and f.stat().st_size > 0, name
    page = path.read_text()
    for png in ("confusion_matrix.png", "calibration.png", "top_losses.png", "gradcam.png"):
        assert f"src='{png}'" in page
    worst = pd.read_csv(tmp_path / "rep" / "top_losses.csv", dtype={"id": str})
    classes = [str(c) for c in read_json(tiny_run / "manifest.json")["classes"]]
    proba = oof[[f"p_{c}" for c in classes]].to_numpy()
    wrong = oof["label"].to_numpy() != proba.argmax(1)
    assert len(worst) == wrong.sum()
    assert set(worst["id"]) == set(oof["id"][wrong])
    assert worst["loss"].is_monotonic_decreasing
    per = pd.read_csv(tmp_path / "rep" / "per_class.csv")
    assert per["support"].iloc[: len(classes)].sum() == len(oof)
    # markdown flavour and explicit Grad-CAM ids
    md = report(tiny_run, out=tmp_path / "md", records=small_records, fmt="md", gradcam_ids=[oof["id"][0]])
    assert md.name == "report.md" and "![Grad-CAM](gradcam.png)" in md.read_text()
    with pytest.raises(TfkitError, match=r"--gradcam: id\(s\) not in the run's oof.csv"):
        report(tiny_run, out=tmp_path / "bad", records=small_records, gradcam_ids=["nope"])


def test_numbers_of_the_report():
    labels = np.array([0, 0, 1, 1, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    table = per_class_table(labels, proba.argmax(1), ["a", "b", "c"])
    np.testing.assert_allclose(table["precision"][:3], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(table["recall"][:3], [0.5, 0.5, 1.0])
    oof = pd.DataFrame({"id": list("vwxyz"), "fold": 0, "label": labels})
    worst = top_losses(oof, proba, ["a", "b", "c"])
    assert worst["id"].tolist() == ["w", "y"]  # p_label 0.2 (loss 1.61) then 0.3 (1.20)
    bins, ece = reliability(proba, labels, n_bins=10)
    conf, correct = proba.max(1), (proba.argmax(1) == labels)
    manual = sum(abs(correct[m].mean() - conf[m].mean()) * m.sum() / 5
                 for m in [np.isclose(conf, 0.9), np.isclose(conf, 0.7), np.isclose(conf, 0.8), np.isclose(conf, 0.6)])
    assert ece == pytest.approx(manual)
    assert bins["count"].sum() == 5


def test_gradcam_matches_manual_split_model():
    import keras

    keras.utils.set_random_seed(0)
    model = create_model("small_cnn", 3, 16, width=4, dropout=0.0)
    x = tf.random.stateless_uniform([3, 16, 16, 3], [1, 2])
    layer = last_conv_layer(model)
    backbone = model.get_layer("backbone")
    assert layer.name == backbone.layers[-1].name  # small_cnn ends on its last conv block
    cls = [0, 2, 1]
    cams, proba = gradcam(model, x, cls)
    np.testing.assert_allclose(proba, model(x).numpy(), atol=1e-6)
    # manual Grad-CAM: features = backbone(preprocess(x)); head = GAP -> dense softmax
    feats = backbone(model.get_layer("preprocess")(x))
    with tf.GradientTape() as tape:
        tape.watch(feats)
        p = model.get_layer("output")(model.get_layer("pool")(feats))
        score = tf.gather(p, cls, axis=1, batch_dims=1)
    g = tape.gradient(score, feats)
    cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, (1, 2), keepdims=True) * feats, -1)).numpy()
    cam = cam / np.maximum(cam.max((1, 2), keepdims=True), 1e-12)
    assert cams.shape == (3, 4, 4)
    np.testing.assert_allclose(cams, cam, atol=1e-5)
    assert cams.min() >= 0 and cams.max() <= 1


def test_predict_records_and_oof_tta(tiny_run, small_records, tmp_path):
    from tfkit.data import read_index
    from tfkit.predict import oof_tta, predict

    out = tmp_path / "sub.csv"
    sub = predict(tiny_run, out, records=small_records, tta=2, overrides=["predict.tta_mode=flips"], progress=False)
    index = read_index(str(small_records))
    written = pd.read_csv(out, dtype={"id": str})
    classes = [str(c) for c in read_json(tiny_run / "manifest.json")["classes"]]
    assert list(written.columns) == ["id", *classes]
    assert written["id"].tolist() == index["id"].tolist()
    np.testing.assert_allclose(written[classes].sum(1), 1.0, atol=1e-5)
    acc = float(np.mean(written[classes].to_numpy().argmax(1) == index["label"].to_numpy()))
    assert sub.attrs["metrics"]["accuracy"] == pytest.approx(acc)

    res = oof_tta(tiny_run, small_records, tta=1, progress=False)
    cv = read_json(tiny_run / "cv.json")
    # one view: the recomputed OOF reproduces training's own OOF score
    for k, v in cv["metrics"].items():
        assert res["no_tta"][k] == pytest.approx(v, abs=1e-4), k
        assert res["tta"][k] == pytest.approx(v, abs=1e-4), k
    res = oof_tta(tiny_run, small_records, tta=4, overrides=["predict.tta_mode=flips"], progress=False)
    assert res["no_tta"]["accuracy"] == pytest.approx(cv["metrics"]["accuracy"], abs=1e-6)
    assert (tiny_run / "oof_tta.csv").is_file() and read_json(tiny_run / "cv_tta.json")["n_views"] == 4
    oof = pd.read_csv(tiny_run / "oof_tta.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(pd.read_csv(tiny_run / "oof.csv", dtype={"id": str})["id"])


def test_oof_tta_refuses_records_the_run_was_not_trained_on(tiny_run, small_records, tmp_path):
    from tfkit.cli import main
    from tfkit.predict import oof_tta
    from tfkit.records import load_manifest

    m = load_manifest(str(small_records))
    other = tmp_path / "other"
    shutil.copytree(small_records, other)
    # the same images with another fold seed: fold k's model has seen some of fold k's new rows
    m["folds"] = dict(m["folds"], seed=m["folds"]["seed"] + 1)
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TfkitError, match="not the records the run was trained on"):
        oof_tta(tiny_run, other, tta=1, progress=False)
    assert main(["predict", "--run", str(tiny_run), "--records", str(small_records), "--oof",
                 "--out", str(tmp_path / "x.csv")]) == 2  # --out means nothing with --oof


@pytest.mark.parametrize("n_classes, name_len", [(2, 1), (10, 3), (40, 12)])
def test_confusion_title_clears_its_colour_bar(n_classes, name_len):
    from tfkit.report import confusion_figure
    from tfkit.utils import pyplot

    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 300)
    pred = np.where(rng.random(300) < 0.7, labels, rng.integers(0, n_classes, 300))
    classes = [f"{'c' * (name_len - 1)}{k}" for k in range(n_classes)]
    fig = confusion_figure(labels, pred, classes)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    matrix, bar = fig.axes
    for ax in (matrix, bar):  # the title is above both: no pixel in common
        box = ax.get_tightbbox(renderer)
        assert title.y0 >= box.y1 - 0.5, (n_classes, title, box)
    assert fig._suptitle.get_text().startswith("Confusion matrix (OOF)")
    pyplot().close(fig)
