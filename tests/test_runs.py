"""Experiment table: one row per run with CV (and CV with TTA where measured), only the config
keys that differ, runs found at any depth, a real tfkit tune trial and an ensemble output
listed the same way, CSV + PNG written."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest

from tfkit.cli import main
from tfkit.ensemble import ensemble
from tfkit.runs import runs_table
from tfkit.utils import read_json, write_json

CLASSES = ["a", "b"]


def _oof(quality: float, seed: int, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    p1 = 1 / (1 + np.exp(-(quality * (2 * labels - 1) + rng.normal(size=n))))
    return pd.DataFrame({"id": [f"i{k:02d}" for k in range(n)], "fold": np.arange(n) % 3, "label": labels,
                         "p_a": 1 - p1, "p_b": p1})


@pytest.fixture()
def runs_dir(tmp_path, fake_run):
    root = tmp_path / "runs"
    acc = "train.metrics=[accuracy,log_loss]"  # a binary run's default primary is AUC
    fake_run(root / "small", _oof(0.5, 0), CLASSES, ["model.width=8", "train.epochs=3", acc], task="binary")
    wide = fake_run(root / "wide", _oof(3.0, 1), CLASSES, ["model.width=16", "train.epochs=3", acc], task="binary")
    write_json(wide / "cv_tta.json", {"n_views": 4, "mode": "dihedral", "average": "mean", "primary": "accuracy",
                                      "no_tta": read_json(wide / "cv.json")["metrics"],
                                      "tta": {"accuracy": 0.999, "log_loss": 0.05}})
    trial = fake_run(root / "tune" / "search" / "trial_00" / "run", _oof(1.5, 2), CLASSES,
                     ["model.width=8", "train.epochs=3", "train.lr=0.01", acc], task="binary", run_level=False)
    write_json(trial / "tfkit_trial.json", {"trial_id": "00", "score": 0.5, "seconds": 12.5, "epochs": 3})
    (root / "notes").mkdir()
    (root / ".blend.tmp-1-ab").mkdir()  # a half-written output is not listed
    return root


def test_table_rows_columns_and_files(runs_dir, tmp_path, capsys):
    table = runs_table([runs_dir], out=tmp_path / "table")
    assert table["run"].tolist()[0] == "wide" and set(table["run"]) == {"small", "wide", "tune/search/trial_00/run"}
    assert table["cv"].is_monotonic_decreasing and (table["metric"] == "accuracy").all()
    differing = [c for c in table.columns if "." in c]
    assert differing == ["model.width", "train.lr"]  # epochs and everything else are the same everywhere
    row = table.set_index("run")
    assert row.loc["wide", "cv_tta"] == 0.999 and row.loc["wide", "tta"] == "4 dihedral"
    assert np.isnan(row.loc["small", "cv_tta"]) and row.loc["small", "model"] == "small_cnn w8"
    trial = row.loc["tune/search/trial_00/run"]
    assert trial["kind"] == "trial" and trial["time_s"] == 12.5 and trial["folds"] == "3/3"
    assert trial["cv"] == pytest.approx(np.mean((_oof(1.5, 2)["p_b"] >= 0.5) == _oof(1.5, 2)["label"]))
    assert row.loc["small", "time_s"] == 4.5 and row.loc["small", "epochs"] == 3
    saved = pd.read_csv(tmp_path / "table" / "runs.csv")
    assert saved["run"].tolist() == table["run"].tolist()
    assert (tmp_path / "table" / "runs.png").read_bytes()[:4] == b"\x89PNG"
    assert "wide" in capsys.readouterr().out


def test_ensembles_are_rows_and_a_metric_can_be_chosen(runs_dir, tmp_path):
    ensemble([runs_dir / "small", runs_dir / "wide"], runs_dir / "blend", method="mean")
    table = runs_table([runs_dir / "small", runs_dir / "wide", runs_dir / "blend"], out=None, metric="log_loss")
    assert table["cv"].is_monotonic_increasing  # lower log loss first
    blend = table.set_index("run").loc["blend"]
    assert blend["kind"] == "ensemble" and blend["model"] == "mean of small, wide"
    assert blend["cv"] == pytest.approx(read_json(runs_dir / "blend" / "cv.json")["metrics"]["log_loss"])


def test_bad_folders_fail_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["runs", str(path), "--out", str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0]


def test_a_real_tune_search_lists_its_trials(small_records, tmp_path):
    from tfkit import tune as T
    from tfkit.config import load_config

    base = load_config(None, ["model.width=4", "data.image_size=16", "data.batch_size=16", "train.epochs=1",
                              "train.verbose=0", "train.mixed_precision='off'", "train.warmup_epochs=0"])
    T.tune(base, {"model.dropout": {"choice": [0.0, 0.3]}}, str(small_records), tmp_path / "tune", max_trials=2,
           objective="val_accuracy", fold=0, isolate=False)
    table = runs_table([tmp_path / "tune"], out=tmp_path / "t")
    trials = pd.read_csv(tmp_path / "tune" / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 2 and (table["kind"] == "trial").all() and (table["folds"] == "1/3").all()
    assert "model.dropout" in table.columns
    for _, t in trials.iterrows():
        row = table[table["run"].str.contains(f"trial_{t['trial_id']}")].iloc[0]
        assert row["model.dropout"] == t["model.dropout"]
