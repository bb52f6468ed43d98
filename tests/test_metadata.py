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


# --- categorical embeddings (model.meta_categorical: embedding) -----------------------------------------------


@given(st.integers(1, 5000))
def test_embedding_width_rule_of_thumb(n):
    from tfkit.metadata import embedding_size

    d = embedding_size(n)
    assert d == max(1, min(50, (n + 1) // 2)) and 1 <= d <= 50
    assert embedding_size(n + 1) >= d  # never shrinks with more categories


@given(st.lists(st.integers(-1, 3), min_size=1, max_size=30), st.lists(st.integers(-1, 3), min_size=1, max_size=30))
@settings(max_examples=30, deadline=None)
def test_embedding_lookup_rows_come_from_the_training_vocabulary(train_sites, other_sites):
    from tfkit.metadata import encoded_width, embedding_size

    rows = pd.DataFrame({"age": np.zeros(len(train_sites)), "site": train_sites})
    enc = fit_encoding(rows, ["age", "site"], MANIFEST, categorical="embedding")
    site = enc["columns"][1]
    seen = sorted({s for s in train_sites if s >= 0})
    assert site["index"] == seen and site["embed_dim"] == embedding_size(len(seen) + 1)
    layer = MetadataEncoder(enc)
    other = pd.DataFrame({"age": np.zeros(len(other_sites)), "site": other_sites})
    out = np.asarray(layer(other[["age", "site"]].to_numpy(np.float32)))
    assert out.shape == (len(other), encoded_width(enc)) == (len(other), 2 + site["embed_dim"])
    table = np.asarray(layer.embeddings[0].embeddings)
    assert table.shape == (len(seen) + 1, site["embed_dim"])
    # each row looks up its training category; missing and never-seen-in-training share row 0
    rows_ref = encode(other, enc)[:, 2].astype(int)
    expected = [seen.index(s) + 1 if s in seen else 0 for s in other_sites]
    assert rows_ref.tolist() == expected
    np.testing.assert_array_equal(out[:, 2:], table[expected])


def test_embedding_model_saves_loads_in_safe_mode_and_trains(tmp_path):
    import keras

    from tfkit.models import create_model

    rng = np.random.default_rng(0)
    n = 64
    rows = pd.DataFrame({"age": rng.normal(40, 10, n), "site": rng.integers(-1, 4, n)})
    enc = fit_encoding(rows, ["age", "site"], MANIFEST, categorical="embedding")
    model = create_model("small_cnn", 2, 16, task="multiclass", width=4, metadata=enc, meta_units=(4,), dropout=0.0)
    table = model.get_layer("meta_encoder").embeddings[0]
    x = {"image": rng.random((n, 16, 16, 3), dtype=np.float32), "meta": rows.to_numpy(np.float32)}
    y = (rows["site"].to_numpy() >= 2).astype(int)  # the label lives in the category only
    model.compile("adam", "sparse_categorical_crossentropy")
    before = np.asarray(table.embeddings).copy()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not np.allclose(np.asarray(table.embeddings), before)  # the table is learned
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.get_layer("meta_encoder").encoding == model.get_layer("meta_encoder").encoding


def test_embedding_run_trains_and_predicts_through_the_cli(small_records, tmp_path):
    from tfkit.cli import main
    from tfkit.run import RunFolder

    out = tmp_path / "run"
    assert main(["train", "--records", str(small_records), "--out", str(out), "--folds", "0", "--set",
                 "data.metadata=[age, site]", "model.meta_categorical=embedding", "data.image_size=16",
                 "data.batch_size=8", "model.width=8", "train.epochs=1", "train.verbose=0",
                 "train.warmup_epochs=0"]) == 0
    saved = read_json(out / "fold0" / "metadata.json")
    site = saved["columns"][1]
    train_sites = set(read_index(small_records, folds=[1, 2], extra=True)["site"].dropna())
    vocab = load_manifest(small_records)["metadata"]["site"]["vocab"]
    assert site["encoding"] == "embedding" and site["vocab"] == [v for v in vocab if v in train_sites]
    encoder = RunFolder(out).load_model(0).get_layer("meta_encoder")
    assert np.asarray(encoder.embeddings[0].embeddings).shape == (len(site["index"]) + 1, site["embed_dim"])
    assert main(["predict", "--run", str(out), "--records", str(small_records), "--oof", "--tta", "1"]) == 0


def test_unknown_categorical_mode_is_one_line(small_records, tmp_path, capsys):
    from tfkit.cli import main

    rc = main(["train", "--records", str(small_records), "--out", str(tmp_path / "run"), "--set",
               "model.meta_categorical=hash"])
    assert rc == 2 and not (tmp_path / "run").exists()
    assert "model.meta_categorical: expected one of onehot, embedding, got 'hash'" in capsys.readouterr().err
