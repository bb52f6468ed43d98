"""tfkit report for multi-label, regression and distribution runs (on OOF frames
written by hand, so no training is needed), and multi-channel display helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from tfkit.config import load_config, save_config
from tfkit.report import report
from tfkit.report_targets import multilabel_table, pr_curve, worst_rows
from tfkit.show import to_rgb
from tfkit.targets import oof_frame
from tfkit.utils import write_csv, write_json


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(0, 2**31 - 1))
def test_pr_curve_matches_sklearn(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0] = 1
    s = np.round(rng.random(n), 1)
    prec, rec, thr = pr_curve(y, s)
    ref_p, ref_r, ref_t = skm.precision_recall_curve(y, s)
    # sklearn: increasing thresholds plus the (1, 0) end point; ours: decreasing, no end point
    np.testing.assert_allclose(prec, ref_p[:-1][::-1])
    np.testing.assert_allclose(rec, ref_r[:-1][::-1])
    np.testing.assert_allclose(thr, ref_t[::-1])


def _fake_run(tmp_path, task, manifest, index, proba, metrics):
    run = tmp_path / f"run_{task}"
    run.mkdir()
    cfg = load_config(None, [f"model.task={task}"])
    save_config(cfg, run / "config.yaml")
    write_json(run / "manifest.json", manifest)
    names = manifest.get("targets") if task != "multilabel" else manifest["classes"]
    oof = oof_frame(index, proba, names, task)
    write_csv(run / "oof.csv", oof)
    write_json(run / "cv.json", {"metrics": metrics, "primary": next(iter(metrics)), "task": task})
    return run, oof


def test_multilabel_report(tmp_path):
    rng = np.random.default_rng(0)
    names = ["haze", "road", "water"]
    y = (rng.random((60, 3)) < 0.4).astype(float)
    p = np.clip(y * 0.5 + rng.random((60, 3)) * 0.5, 0, 1)
    index = pd.DataFrame({"id": [f"i{k}" for k in range(60)], "fold": np.arange(60) % 3,
                          **{f"y_{n}": y[:, j] for j, n in enumerate(names)}})
    run, oof = _fake_run(tmp_path, "multilabel", {"task": "multilabel", "classes": names}, index, p,
                         {"f2_tuned": 0.8, "auc": 0.9})
    write_json(run / "thresholds.json", {"task": "multilabel", "f2": [0.3, 0.4, 0.5]})
    path = report(run, fmt="md")
    text = path.read_text()
    assert "Precision-recall per class" in text and "cross-fitted" in text
    out = path.parent
    assert (out / "pr_curves.png").stat().st_size > 1000
    table = pd.read_csv(out / "per_class.csv")
    assert table["class"].tolist() == names and table["f2 threshold"].tolist() == [0.3, 0.4, 0.5]
    assert table["ap"].tolist() == pytest.approx([skm.average_precision_score(y[:, j], p[:, j]) for j in range(3)])
    worst = pd.read_csv(out / "top_losses.csv")
    bce = -(y * np.log(p.clip(1e-12)) + (1 - y) * np.log((1 - p).clip(1e-12))).sum(1)
    assert worst["id"].iloc[0] == f"i{int(np.argmax(bce))}" and len(worst) == 60


@pytest.mark.parametrize("task", ["regression", "distribution"])
def test_regression_and_distribution_reports(tmp_path, task):
    rng = np.random.default_rng(1)
    if task == "regression":
        names = ["pawpularity"]
        y = rng.uniform(1, 100, (40, 1))
        p = y + rng.normal(0, 10, (40, 1))
    else:
        names = [str(i) for i in range(1, 6)]
        y = rng.integers(0, 20, (40, 5)).astype(float) + 1
        p = rng.dirichlet(np.ones(5), 40)
    index = pd.DataFrame({"id": [f"i{k}" for k in range(40)], "fold": np.arange(40) % 2,
                          **{f"y_{n}": y[:, j] for j, n in enumerate(names)}})
    run, _ = _fake_run(tmp_path, task, {"task": "regression", "targets": names, "classes": []}, index, p,
                       {"rmse": 10.0})
    out = report(run, fmt="md").parent
    assert (out / "regression.png").stat().st_size > 1000
    table = pd.read_csv(out / "per_target.csv")
    if task == "regression":
        assert table["rmse"].iloc[0] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)))
        assert pd.read_csv(out / "top_losses.csv")["id"].iloc[0] == f"i{int(np.argmax(np.abs(p - y)))}"
    else:
        assert table["target"].tolist() == ["mean bin"]


def test_worst_rows_and_multilabel_table_edge_cases():
    frame = pd.DataFrame({"id": ["a", "b", "c"], "fold": [0, 0, 1]})
    got = worst_rows(frame, np.array([[1.0, 0], [0, 0], [0, 1]]), np.array([[0.9, 0.1], [0.1, 0.8], [0.5, 0.5]]),
                     "multilabel", 2)
    assert got["id"].tolist() == ["b", "c"]
    t = multilabel_table(np.array([[0, 1], [0, 1]]), np.array([[0.2, 0.9], [0.7, 0.8]]), ["never", "always"], {})
    assert np.isnan(t["ap"].iloc[0]) and t["support"].tolist() == [0, 2]


def test_to_rgb_keeps_what_it_can():
    x = np.random.default_rng(0).random((2, 4, 4, 4))
    np.testing.assert_array_equal(to_rgb(x), x[..., :3])
    g = x[..., :1]
    np.testing.assert_array_equal(to_rgb(g), np.repeat(g, 3, -1))
    two = to_rgb(x[..., :2])
    np.testing.assert_array_equal(two[..., :2], x[..., :2])
    assert np.all(two[..., 2] == 0)
