"""Metrics fit the task: defaults by task, QWK only for classes declared ordinal, a monitor that fits."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from tfkit.checks import resolve_run_config
from tfkit.cli import main
from tfkit.config import load_config
from tfkit.metrics import DEFAULT_METRICS, resolve_metrics
from tfkit.run import RunFolder
from tfkit.train import train
from tfkit.utils import TfkitError, read_json

TINY = ["data.image_size=16", "data.batch_size=8", "model.width=8", "train.epochs=1", "train.verbose=0",
        "train.warmup_epochs=0", "train.mixed_precision=off"]
MULTI = {"task": "multiclass", "classes": ["0", "1", "2"], "folds": {"n_folds": 3}}


@pytest.mark.parametrize("manifest, metrics, monitor", [
    ({"task": "binary", "classes": ["benign", "malignant"]}, ["auc", "log_loss", "accuracy", "f1"], "val_auc"),
    (MULTI, ["accuracy", "log_loss", "f1", "auc"], "val_log_loss"),
    ({**MULTI, "ordinal": True}, ["qwk", "accuracy", "log_loss", "f1", "auc"], "val_qwk"),
    ({"task": "regression", "classes": ["0", "1", "2"]}, ["rmse", "mae", "pearson", "spearman"], "val_rmse"),
])
def test_defaults_follow_the_task(manifest, metrics, monitor):
    cfg = resolve_run_config(load_config(None), manifest)
    assert (cfg.train.metrics, cfg.train.monitor) == (metrics, monitor)
    assert "qwk" not in DEFAULT_METRICS[manifest["task"]]  # QWK never by default: only when declared ordinal


def test_config_declares_ordinal_and_explicit_choices_win():
    cfg = resolve_run_config(load_config(None, ["data.ordinal=true"]), MULTI)
    assert cfg.train.metrics[0] == "qwk" and cfg.train.monitor == "val_qwk"
    cfg = resolve_run_config(load_config(None, ["train.metrics=[f1, accuracy]", "train.monitor=val_accuracy"]), MULTI)
    assert (cfg.train.metrics, cfg.train.monitor) == (["f1", "accuracy"], "val_accuracy")
    # auto falls back to val_loss when the task's monitor metric is not logged
    assert resolve_metrics(["f1"], "auto", "multiclass", False) == (["f1"], "val_loss")


@pytest.mark.parametrize("overrides", [["train.metrics=[accuracy, qwk]"], ["train.monitor=val_qwk"]])
def test_qwk_on_unordered_classes_is_refused(overrides):
    with pytest.raises(TfkitError, match="qwk .* needs ordered classes; declare them with data.ordinal") as e:
        resolve_run_config(load_config(None, overrides), MULTI)
    assert "\n" not in str(e.value) and "0, 1, 2" in str(e.value)


def test_qwk_on_unordered_classes_via_cli_leaves_no_run(small_records, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--records", str(small_records), "--out", str(out), "--set", *TINY, "train.metrics=[qwk]"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("tfkit: error: train.metrics: qwk") and "\n" not in err
    assert not out.exists()


def test_cv_json_and_table_follow_the_metrics(small_records, tmp_path, capsys):
    # Ordinal classes: QWK is the headline, the monitor is val_qwk, and the printed table shows it.
    out = tmp_path / "ordinal"
    cv = train(load_config(None, [*TINY, "data.ordinal=true"]), small_records, out, folds=[0])
    assert list(cv["metrics"]) == ["qwk", "accuracy", "log_loss", "f1", "auc"] and cv["primary"] == "qwk"
    assert RunFolder(out).done(0)["monitor"] == "val_qwk"
    assert read_json(out / "cv.json")["metrics"] == cv["metrics"]
    head = capsys.readouterr().out.splitlines()[0].split()
    assert head[3:8] == ["qwk", "accuracy", "log_loss", "f1", "auc"]
    saved = load_config(out / "config.yaml")  # the run keeps the concrete names
    assert saved.train.metrics == list(cv["metrics"])
    assert saved.train.monitor == "val_qwk"


def test_build_records_ordinal_flag_is_recorded(small_csv, digits_dir, tmp_path):
    from tfkit.manifest import Manifest

    out = tmp_path / "rec"
    rc = main(["build-records", "--csv", str(small_csv), "--images", str(digits_dir / "images"), "--out", str(out),
               "--size", "16", "--folds", "3", "--workers", "1", "--ordinal"])
    assert rc == 0
    manifest = Manifest.load(out)
    assert manifest.ordinal and manifest["ordinal"] is True
    cfg = resolve_run_config(load_config(None), manifest)  # no data.ordinal needed: the records say so
    assert cfg.train.metrics[0] == "qwk" and cfg.train.monitor == "val_qwk"
