"""`tfkit demo --quick` end to end through the CLI."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys

import numpy as np
import pandas as pd

from test_quiet import NOISE, _clean_env
from tfkit.cli import main
from tfkit.utils import read_json


def test_demo_quick_via_cli(tmp_path, capsys):
    # The real command in a new user's environment (no TF_CPP_MIN_LOG_LEVEL): it also shows that the
    # demo prints no TensorFlow C++ start-up line and no retracing warning (tests/test_quiet.py).
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "tfkit", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True, env=_clean_env(), timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout
    assert not NOISE.search(text + res.stderr), NOISE.search(text + res.stderr).group(0) + "\n" + res.stderr[-3000:]
    assert "CV accuracy" in text and "held-out test accuracy" in text
    for rel in ("run/cv.json", "run/cv_tta.json", "run/oof_tta.csv", "run/report/report.html",
                "run/report/confusion_matrix.png", "records/train/manifest.json", "records/test/manifest.json",
                "run/fold0/model.keras", "run/fold1/model.keras"):
        assert (out / rel).is_file(), rel
        assert str(out / rel.split("/")[0]) in text
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str})
    test = pd.read_csv(out / "test_quick.csv", dtype={"id": str})
    classes = [str(c) for c in read_json(out / "run" / "manifest.json")["classes"]]
    assert list(sub.columns) == ["id", *classes]
    assert sorted(sub["id"]) == sorted(test["id"])
    np.testing.assert_allclose(sub[classes].sum(1), 1.0, atol=1e-5)
    # the printed held-out score is the submission's accuracy against test.csv
    truth = test.set_index("id").loc[sub["id"], "label"].astype(str).to_numpy()
    acc = np.mean(np.asarray(classes)[sub[classes].to_numpy().argmax(1)] == truth)
    assert f"held-out test accuracy ({len(sub)} images, 2-fold ensemble + TTA): {acc:.4f}" in text
    # refusing to overwrite is a one-line CLI error (checked before anything heavy is imported)
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_demo_multilabel_and_regression_quick(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["demo", "--quick", "--task", "multilabel", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CV f2_samples_tuned" in text and "held-out test f2_samples_tuned" in text
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str}, keep_default_na=False)
    classes = read_json(out / "run" / "manifest.json")["classes"]
    assert list(sub.columns) == ["id", "tags"]
    assert all(set(t.split()) <= set(classes) for t in sub["tags"])
    assert (out / "run" / "thresholds.json").is_file() and (out / "run" / "report" / "pr_curves.png").is_file()

    out = tmp_path / "rg"
    assert main(["demo", "--quick", "--task", "regression", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CV rmse" in text and "held-out test rmse" in text
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert list(sub.columns) == ["id", "value"] and sub["value"].between(0, 9).all()
    assert (out / "run" / "report" / "regression.png").is_file()
    cv = read_json(out / "run" / "cv.json")
    assert {"rmse", "qwk_tuned", "pearson"} <= set(cv["metrics"])
