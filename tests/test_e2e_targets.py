"""The five competition shapes of issue 14 through the CLI alone:
build-records -> train -> predict -> report (and show), on tiny slices of the
embedded digit datasets (16 px, small_cnn of width 4, 1 epoch, 2 folds).

Each test checks what the shape is about: tags after the OOF thresholds,
one probability column per 0/1 column, bounded regression values and QWK
cut points, distributions that sum to one, and channel-by-channel views.
``cv.json`` is recomputed from ``oof.csv`` for every shape.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfkit.cli import main
from tfkit.run import recompute_cv
from tfkit.utils import read_json

N_TRAIN, N_TEST = 48, 12
FAST = ["--set", "data.image_size=16", "--set", "data.batch_size=16", "--set", "train.epochs=1",
        "--set", "model.width=4", "--set", "train.verbose=0", "--set", "train.warmup_epochs=0"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three derived digit datasets, each cut to N_TRAIN train and N_TEST test rows."""
    out = {}
    for name in ("digits-multilabel", "digits-regression", "digits-channels"):
        root = tmp_path_factory.mktemp(name) / "data"
        assert main(["datasets", "export", name, "--out", str(root)]) == 0
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            pd.read_csv(root / f"{split}.csv", dtype={"id": str}).head(n).to_csv(root / f"{split}_small.csv", index=False)
        out[name] = root
    return out


def _records(root: Path, out: Path, *label_args: str) -> tuple[Path, Path]:
    train, test = out / "records", out / "test_records"
    common = ["--images", str(root / "images"), "--size", "16", "--workers", "1"]
    assert main(["build-records", "--csv", str(root / "train_small.csv"), "--out", str(train), "--folds", "2",
                 *common, *label_args]) == 0
    assert main(["build-records", "--csv", str(root / "test_small.csv"), "--out", str(test), "--split", "test",
                 "--classes-from", str(train / "manifest.json"), *common, *label_args]) == 0
    return train, test


def _train(records: Path, run: Path, *sets: str) -> dict:
    args = [x for s in sets for x in ("--set", s)]
    assert main(["train", "--records", str(records), "--out", str(run), *FAST, *args]) == 0
    cv = read_json(run / "cv.json")
    again = recompute_cv(run)["metrics"]  # cv.json is a function of oof.csv alone
    assert again.keys() == cv["metrics"].keys()
    for k, v in cv["metrics"].items():
        assert again[k] == pytest.approx(v, nan_ok=True), k
    return cv


def _predict(run: Path, test: Path, out: Path, *sets: str) -> pd.DataFrame:
    args = [x for s in sets for x in ("--set", s)]
    assert main(["predict", "--run", str(run), "--records", str(test), "--out", str(out), *args]) == 0
    return pd.read_csv(out, dtype={"id": str})


def _report(run: Path, *extra: str) -> Path:
    assert main(["report", "--run", str(run), "--format", "md", *extra]) == 0
    return run / "report"


@pytest.mark.parametrize("form", ["tags", "columns"])
def test_multilabel_tags_and_01_columns(exported, tmp_path, form):
    root = exported["digits-multilabel"]
    label = ["--label-col", "tags", "--label-sep", " "] if form == "tags" else \
        ["--label-cols", ",".join(f"d{k}" for k in range(10))]
    train, test = _records(root, tmp_path, *label)
    classes = read_json(train / "manifest.json")["classes"]
    run = tmp_path / "run"
    cv = _train(train, run, "train.metrics=[f2_samples_tuned,auc,map,f1_micro]", "train.loss=asl")
    assert {"f2_samples_tuned", "auc", "map", "f1_micro"} <= set(cv["metrics"]) and cv["task"] == "multilabel"
    saved = read_json(run / "thresholds.json")
    assert len(saved["f2"]) == len(classes)
    proba = _predict(run, test, tmp_path / "proba.csv")
    assert proba.columns.tolist() == ["id", *classes]
    tags = _predict(run, test, tmp_path / "tags.csv", "predict.output=label", "predict.label_columns=[tags]")
    # the tags are the classes whose probability reaches its OOF (F2) threshold
    expected = [" ".join(c for c, p, t in zip(classes, row, saved["f2"]) if p >= t)
                for row in proba[classes].to_numpy()]
    assert tags.columns.tolist() == ["id", "tags"] and tags["tags"].fillna("").tolist() == expected
    report = _report(run)
    assert (report / "pr_curves.png").is_file() and "Precision-recall per class" in (report / "report.md").read_text()
    assert pd.read_csv(report / "per_class.csv")["class"].astype(str).tolist() == classes


def test_regression_with_bounded_output_and_qwk_cut_points(exported, tmp_path):
    train, test = _records(exported["digits-regression"], tmp_path, "--target-cols", "value")
    run = tmp_path / "run"
    cv = _train(train, run, "train.metrics=[rmse,mae,pearson,spearman,qwk_tuned]", "model.output_range=[0,9]",
                "train.loss=huber")
    assert cv["task"] == "regression" and {"rmse", "qwk_tuned", "spearman"} <= set(cv["metrics"])
    assert len(read_json(run / "thresholds.json")["qwk"]) == 9  # grades 0..9
    sub = _predict(run, test, tmp_path / "sub.csv", "predict.tta=2")
    assert sub.columns.tolist() == ["id", "value"] and sub["value"].between(0, 9).all()
    oof = pd.read_csv(run / "oof.csv")
    assert {"y_value", "pred_value"} <= set(oof.columns)
    report = _report(run)
    assert (report / "regression.png").is_file() and (report / "per_target.csv").is_file()


def test_distribution_target(exported, tmp_path):
    train, test = _records(exported["digits-regression"], tmp_path, "--target-cols", "ink_top,ink_bottom")
    run = tmp_path / "run"
    cv = _train(train, run, "model.task=distribution", "train.metrics=[emd,rmse,pearson]")
    assert cv["task"] == "distribution" and cv["metrics"]["emd"] >= 0
    sub = _predict(run, test, tmp_path / "sub.csv", "predict.tta=4", "predict.average=gmean")
    np.testing.assert_allclose(sub[["ink_top", "ink_bottom"]].sum(1), 1.0, atol=1e-5)
    score = _predict(run, test, tmp_path / "score.csv", "predict.output=label")
    assert score.columns.tolist() == ["id", "score"] and score["score"].between(0, 1).all()
    assert (_report(run) / "regression.png").is_file()


def test_four_channel_images(exported, tmp_path):
    root = exported["digits-channels"]
    train, test = _records(root, tmp_path, "--label-col", "label", "--channels", "red,green,blue,yellow")
    assert main(["show", "--records", str(train), "--out", str(tmp_path / "show"), "--n", "3", "--draws", "1",
                 "--set", "data.image_size=16"]) == 0
    assert (tmp_path / "show" / "channels.png").is_file()
    run = tmp_path / "run"
    _train(train, run, "train.metrics=[accuracy,log_loss]")
    from tfkit.run import RunFolder

    assert RunFolder(run).load_model(0).input_shape == (None, 16, 16, 4)
    sub = _predict(run, test, tmp_path / "sub.csv", "predict.tta=2", "predict.output=label")
    assert sub["label"].astype(str).isin([str(k) for k in range(10)]).all()
    report = _report(run, "--records", str(train))
    assert (report / "channels.png").is_file() and (report / "top_losses.png").is_file()
