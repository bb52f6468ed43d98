"""Predicting multi-label, regression and distribution runs: TTA averages
(arithmetic for sigmoid and regression outputs, renormalised for
distributions) and every submission format, with the OOF thresholds reused."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from tfkit.config import PredictConfig
from tfkit.models import create_model
from tfkit.predict import predict_proba, submission_frame
from tfkit.utils import TfkitError

SIZE = 16


def _flips(x):
    return [x, np.flip(x, 2), np.flip(x, 1), np.flip(np.flip(x, 1), 2)]


def _ds(x):
    return tf.data.Dataset.from_tensor_slices(x).batch(4)


@pytest.mark.parametrize("task,outputs", [("multilabel", 4), ("regression", 2), ("distribution", 5)])
def test_tta_mean_is_arithmetic_per_output(task, outputs):
    import keras

    keras.utils.set_random_seed(0)
    model = create_model("small_cnn", outputs, SIZE, task=task, n_targets=outputs, width=4, dropout=0.0,
                         channels=4)
    x = np.random.default_rng(0).random((6, SIZE, SIZE, 4), dtype=np.float32)
    manual = np.mean([model.predict(np.ascontiguousarray(v), verbose=0) for v in _flips(x)], axis=0)
    got = predict_proba([model], _ds(x), n_views=4, mode="flips", task=task, progress=False)
    np.testing.assert_allclose(got, manual, atol=1e-5)
    assert got.shape == (6, outputs)
    if task == "distribution":
        g = predict_proba([model], _ds(x), n_views=4, mode="flips", average="gmean", task=task, progress=False)
        np.testing.assert_allclose(g.sum(1), 1.0, atol=1e-5)  # a distribution again, not per-bin sigmoids
    if task == "regression":
        with pytest.raises(TfkitError, match="gmean is undefined for regression"):
            predict_proba([model], _ds(x), n_views=4, mode="flips", average="gmean", task=task, progress=False)


def test_multilabel_submissions_use_the_oof_thresholds():
    names = ["haze", "road", "water"]
    p = np.array([[0.9, 0.35, 0.1], [0.2, 0.5, 0.25]])
    f = submission_frame(["a", "b"], p, names, "multilabel", PredictConfig())
    assert f.columns.tolist() == ["id", *names] and np.allclose(f[names].to_numpy(), p)
    saved = {"f1": [0.5, 0.3, 0.2], "f2": [0.1, 0.3, 0.3]}
    f = submission_frame(["a", "b"], p, names, "multilabel", PredictConfig(output="label"), thresholds=saved)
    assert f.to_dict("list") == {"id": ["a", "b"], "labels": ["haze road", "road water"]}  # f1: no primary
    f = submission_frame(["a", "b"], p, names, "multilabel", PredictConfig(output="label", label_columns=["tags"]),
                         thresholds=saved, primary="f2_samples_tuned")
    assert f.to_dict("list") == {"id": ["a", "b"], "tags": ["haze road", "haze road"]}
    f = submission_frame(["a", "b"], p, names, "multilabel", PredictConfig(output="label", threshold=0.6),
                         thresholds=saved)
    assert f["labels"].tolist() == ["haze", ""]
    f = submission_frame(["a", "b"], p, names, "multilabel", PredictConfig(output="label"))  # no thresholds: 0.5
    assert f["labels"].tolist() == ["haze", "road"]
    with pytest.raises(TfkitError, match="the run has no f2 thresholds"):
        submission_frame(["a"], p[:1], names, "multilabel", PredictConfig(output="label", threshold="f2"),
                         thresholds={"f1": [0.5] * 3})
    with pytest.raises(TfkitError, match="expected auto, f1, f2 or a number"):
        submission_frame(["a"], p[:1], names, "multilabel", PredictConfig(output="label", threshold="best"))


def test_regression_and_distribution_submissions():
    out = np.array([[31.5, 0.2], [77.0, 0.9]])
    f = submission_frame(["a", "b"], out, ["pawpularity", "cuteness"], "regression", PredictConfig())
    assert f.to_dict("list") == {"id": ["a", "b"], "pawpularity": [31.5, 77.0], "cuteness": [0.2, 0.9]}
    f = submission_frame(["a", "b"], out[:, :1], ["pawpularity"], "regression",
                         PredictConfig(output="label", label_columns=["Pawpularity"]))
    assert f.to_dict("list") == {"id": ["a", "b"], "Pawpularity": [31.5, 77.0]}  # values either way
    # regression on grades 0..4: the OOF cut points, else rounding
    grades = ["0", "1", "2", "3", "4"]
    raw = np.array([[0.4], [1.45], [3.7]])
    f = submission_frame(["a", "b", "c"], raw, grades, "regression", PredictConfig(output="label"),
                         thresholds={"qwk": [0.3, 1.4, 2.6, 3.8]})
    assert f["label"].tolist() == ["1", "2", "3"]
    f = submission_frame(["a", "b", "c"], raw, grades, "regression", PredictConfig(output="label"))
    assert f["label"].tolist() == ["0", "1", "4"]
    assert submission_frame(["a"], raw[:1], grades, "regression", PredictConfig()).columns.tolist() == ["id", "target"]
    bins = ["1", "2", "3"]
    dist = np.array([[0.2, 0.3, 0.5]])
    f = submission_frame(["a"], dist, bins, "distribution", PredictConfig())
    assert f.columns.tolist() == ["id", *bins]
    f = submission_frame(["a"], dist, bins, "distribution", PredictConfig(output="label"))
    assert f["score"].tolist() == pytest.approx([0.2 + 0.6 + 1.5])
