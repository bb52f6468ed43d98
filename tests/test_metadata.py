"""Metadata without leaks: encodings fitted on a fold's training rows, stored with the fold model."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfkit.config import load_config
from tfkit.data import read_index
from tfkit.fold_setup import FoldSetup
from tfkit.metadata import MetadataEncoder, encode, fit_encoding
from tfkit.records import build_records, load_manifest
from tfkit.utils import read_json

MANIFEST = {"metadata": {"age": {"kind": "numeric"}, "site": {"kind": "categorical", "vocab": ["a", "b", "c", "d"]}}}


@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(-1e3, 1e3)), st.integers(-1, 3)), min_size=1, max_size=40))
@settings(max_examples=40, deadline=None)
def test_layer_equals_numpy_reference(values):
    rows = pd.DataFrame({"age": [np.nan if a is None else a for a, _ in values], "site": [s for _, s in values]})
    enc = fit_encoding(rows, ["age", "site"], MANIFEST)
    ref = encode(rows, enc)
    raw = rows[["age", "site"]].to_numpy(np.float32)
    got = np.asarray(MetadataEncoder(enc)(raw))
    # The layer works in float32 (records store float32): allow a few float32 steps of the values, in std units.
    known = rows.age.dropna().abs()
    tol = 1e-4 + (4 * float(np.spacing(np.float32(known.max()))) / enc["columns"][0]["std"] if len(known) else 0.0)
    np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=0, atol=tol)
    np.testing.assert_array_equal(got[:, 1:], ref[:, 1:])
    assert np.isfinite(got).all()
    # a missing value is the training mean plus an indicator, never silently the mean alone
    np.testing.assert_array_equal(got[:, 1], rows.age.isna().to_numpy(np.float32))
    assert enc["columns"][0]["missing"] == int(rows.age.isna().sum())


def _build(frame: pd.DataFrame, images: Path, out: Path) -> Path:
    csv = out.with_suffix(".csv")
    frame.to_csv(csv, index=False)
    build_records(csv=csv, images=images, out=out, group_col="group", meta_cols=["age", "site"], size=16,
                  n_folds=3, seed=42, workers=1, progress=False)
    return out


def _training_inputs(records: Path, fold: int) -> tuple[pd.Series, np.ndarray, dict]:
    cfg = load_config(None, ["data.metadata=[age, site]", "data.image_size=16", "train.mixed_precision=off"])
    setup = FoldSetup.create(cfg, records, fold)
    rows = read_index(records, folds=setup.train_folds, manifest=setup.manifest, extra=True).sort_values("id")
    return rows["id"].reset_index(drop=True), encode(rows.reset_index(drop=True), setup.metadata), setup.metadata


@pytest.fixture(scope="module")
def baseline(small_csv, digits_dir, tmp_path_factory):
    frame = pd.read_csv(small_csv, dtype={"id": str, "site": str}, keep_default_na=False)
    rec = _build(frame, digits_dir / "images", tmp_path_factory.mktemp("meta_base") / "rec")
    folds = pd.read_csv(rec / "folds.csv", dtype={"id": str}).set_index("id")["fold"]
    return frame, folds, _training_inputs(rec, 0)


@given(st.data())
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_validation_fold_metadata_never_reaches_its_training_inputs(baseline, digits_dir, data):
    frame, folds, (ids, inputs, encoding) = baseline
    changed = frame.copy()
    val = changed["id"].map(folds).to_numpy() == 0
    n = int(val.sum())
    ages = data.draw(st.lists(st.one_of(st.just(""), st.floats(-1e4, 1e4).map(lambda v: f"{v:.3f}")),
                              min_size=n, max_size=n))
    sites = data.draw(st.lists(st.sampled_from(["head", "torso", "leg", "", "arm", "aaa", "zzz"]), min_size=n, max_size=n))
    changed.loc[val, "age"] = ages
    changed.loc[val, "site"] = sites
    with tempfile.TemporaryDirectory() as tmp:
        rec = _build(changed, digits_dir / "images", Path(tmp) / "rec")
        new_ids, new_inputs, new_encoding = _training_inputs(rec, 0)
    assert new_ids.equals(ids)  # the same training rows (folds do not depend on metadata)
    np.testing.assert_array_equal(new_inputs, inputs)
    for old, new in zip(encoding["columns"], new_encoding["columns"]):
        for key in ("mean", "std", "missing", "vocab"):
            assert old.get(key) == new.get(key), key


def test_fold_model_carries_its_own_encoding_and_predicts(small_records, tmp_path, capsys):
    from tfkit.predict import oof_tta
    from tfkit.run import RunFolder
    from tfkit.train import train

    out = tmp_path / "run"
    cfg = load_config(None, ["data.metadata=[age, site]", "data.image_size=16", "data.batch_size=8", "model.width=8",
                             "train.epochs=1", "train.verbose=0", "train.warmup_epochs=0", "train.mixed_precision=off"])
    train(cfg, small_records, out, folds=[0])
    saved = read_json(out / "fold0" / "metadata.json")
    train_rows = read_index(small_records, folds=[1, 2], extra=True)
    age = saved["columns"][0]
    assert age["missing"] == int(train_rows.age.isna().sum()) > 0
    assert age["mean"] == pytest.approx(train_rows.age.mean())  # the training rows', not the manifest's
    assert age["mean"] != pytest.approx(load_manifest(small_records)["metadata"]["age"]["mean"])
    assert f"fold 0: metadata fitted on {len(train_rows)} training rows; missing: age {age['missing']}" in capsys.readouterr().out
    model = RunFolder(out).load_model(0)
    assert model.get_layer("meta_encoder").encoding == saved  # stored with the fold model
    result = oof_tta(out, small_records, tta=1, progress=False)  # predict applies the fold's own encoding
    assert 0.0 <= result["no_tta"]["accuracy"] <= 1.0
