"""Label-noise cleaning: exactly the confidently wrong OOF rows are flagged (a subset as the
threshold rises), the contact sheet and the cleaned CSV are written from the run's records
and CSV, and build-records --exclude equals a build of the CSV without the listed rows."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tfkit.clean import clean, flag_noisy
from tfkit.cli import main
from tfkit.records import build_records
from tfkit.run_view import read_run
from tfkit.utils import read_json


def _noisy_oof(records, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """OOF rows of the real records: mostly right, with known wrong rows of chosen confidence."""
    from tfkit.data import read_index

    index = read_index(str(records))
    classes = [str(c) for c in read_json(records / "manifest.json")["classes"]]
    rng = np.random.default_rng(seed)
    n, c = len(index), len(classes)
    labels = index["label"].to_numpy()
    pred = labels.copy()
    wrong = rng.choice(n, 12, replace=False)
    pred[wrong] = (labels[wrong] + 1 + rng.integers(0, c - 1, 12)) % c
    conf = rng.uniform(0.3, 0.99, n)
    p = np.full((n, c), 0.0)
    p[np.arange(n), pred] = conf
    rest = (1 - conf)[:, None] * rng.dirichlet(np.ones(c - 1), n)
    for i in range(n):
        p[i, [k for k in range(c) if k != pred[i]]] = rest[i]
    oof = index[["id", "fold", "label"]].copy()
    for j, name in enumerate(classes):
        oof[f"p_{name}"] = p[:, j]
    return oof, classes


@pytest.fixture(scope="module")
def noisy_run(small_records, tmp_path_factory, fake_run):
    oof, classes = _noisy_oof(small_records)
    return fake_run(tmp_path_factory.mktemp("noisy") / "run", oof, classes, overrides=["data.image_size=32"])


@settings(max_examples=20, deadline=None)
@given(st.floats(0.05, 1.0))
def test_flagged_rows_are_exactly_the_confidently_wrong(noisy_run, threshold):
    view = read_run(noisy_run)
    p = view.oof[view.value_columns].to_numpy()
    labels = view.oof["label"].to_numpy()
    expected = set(view.oof["id"][(p.argmax(1) != labels) & (p.max(1) >= threshold)])
    flagged = flag_noisy(view, threshold)
    assert set(flagged["id"]) == expected
    assert set(flag_noisy(view, min(1.0, threshold + 0.1))["id"]) <= expected  # stricter: a subset
    assert flagged["p_pred"].is_monotonic_decreasing or flagged["loss"].is_monotonic_decreasing
    assert (flagged["label"] != flagged["pred"]).all() and flagged["rank"].tolist() == list(range(1, len(flagged) + 1))


def test_clean_writes_list_sheet_and_csv_without_the_flagged(noisy_run, small_records, small_csv, tmp_path, capsys):
    out = tmp_path / "clean"
    assert main(["clean", "--run", str(noisy_run), "--out", str(out), "--threshold", "0.5", "--csv", str(small_csv),
                 "--records", str(small_records), "--max-images", "5"]) == 0
    flagged = pd.read_csv(out / "flagged.csv", dtype={"id": str})
    summary = read_json(out / "clean.json")
    assert summary["n_flagged"] == len(flagged) > 5 and summary["n_images"] == 60
    assert set(summary["files"]) == {"flagged.csv", "flagged.png", "small_clean.csv"}
    original = pd.read_csv(small_csv, dtype=str, keep_default_na=False)
    cleaned = pd.read_csv(out / "small_clean.csv", dtype=str, keep_default_na=False)
    assert len(cleaned) == 60 - len(flagged) and not set(cleaned["id"]) & set(flagged["id"])
    kept = original[~original["id"].isin(flagged["id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(cleaned, kept)  # every other row and value unchanged
    with Image.open(out / "flagged.png") as img:
        assert img.size[0] > 300 and img.size[1] > 100
    assert f"{len(flagged)} of 60" in capsys.readouterr().out


def test_clean_refuses_a_csv_without_the_flagged_ids(noisy_run, tmp_path, capsys):
    pd.DataFrame({"id": ["x", "y"], "label": [0, 1]}).to_csv(tmp_path / "other.csv", index=False)
    assert main(["clean", "--run", str(noisy_run), "--out", str(tmp_path / "o"), "--csv", str(tmp_path / "other.csv"),
                 "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in clean --csv" in err[0]
    assert main(["clean", "--run", str(noisy_run), "--out", str(tmp_path / "o"), "--threshold", "1.5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_build_records_exclude_equals_a_build_without_those_rows(small_csv, digits_dir, tmp_path, capsys):
    frame = pd.read_csv(small_csv, dtype=str, keep_default_na=False)
    dropped = frame["id"].iloc[[1, 7, 20, 33, 41, 58]]
    pd.DataFrame({"id": dropped, "note": "flipped"}).to_csv(tmp_path / "list.csv", index=False)
    frame[~frame["id"].isin(dropped)].to_csv(tmp_path / "kept.csv", index=False)
    common = dict(images=digits_dir / "images", group_col="group", size=16, n_folds=3, seed=42, workers=1, progress=False)
    a = build_records(csv=small_csv, out=tmp_path / "a", exclude=tmp_path / "list.csv", **common)
    b = build_records(csv=tmp_path / "kept.csv", out=tmp_path / "b", **common)
    assert a["n_examples"] == 54 and a["shards"] == b["shards"] and a["classes"] == b["classes"]
    assert a["source"]["exclude"] == str(tmp_path / "list.csv") and "exclude" not in b["source"]
    assert (tmp_path / "a" / "folds.csv").read_bytes() == (tmp_path / "b" / "folds.csv").read_bytes()
    pd.DataFrame({"id": ["digit_99999"]}).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["build-records", "--csv", str(small_csv), "--images", str(digits_dir / "images"), "--out",
                 str(tmp_path / "c"), "--exclude", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'digit_99999'" in err[0] and "--exclude" in err[0]
    assert not (tmp_path / "c").exists()
