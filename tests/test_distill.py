"""tfkit.distill: teacher soft targets from OOF predictions (never from a model that saw the row),
pseudo-labelled test rows in every fold's training stream and in none of its validation streams,
the config's ranges, and the refusals."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.config import load_config
from tfkit.data import build_dataset, read_index
from tfkit.distill import check_distill_config, mix_targets, prepare_targets, temper
from tfkit.manifest import Manifest
from tfkit.run import RunFolder
from tfkit.train import train
from tfkit.utils import TfkitError

TINY = ["data.image_size=32", "data.batch_size=16", "model.name=small_cnn", "model.width=8", "train.epochs=1",
        "train.verbose=0", "train.warmup_epochs=0", "train.mixed_precision='off'", "train.metrics=[accuracy]"]
N_TEST = 30


def cfg_(*extra: str):
    return load_config(None, [*TINY, *extra])


@pytest.fixture(scope="module")
def teacher(small_records, tmp_path_factory) -> Path:
    """A 3-fold teacher run on the 60-digit records (one epoch: its predictions only need to differ by fold)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(cfg_("model.width=12"), small_records, out)
    return out


@pytest.fixture(scope="module")
def test_records(digits_dir, small_records, tmp_path_factory) -> Path:
    """30 held-out digits as test records (with their true labels, which pseudo-labelling must ignore)."""
    from tfkit.records import build_records

    root = tmp_path_factory.mktemp("pseudo_test")
    pd.read_csv(digits_dir / "test.csv", dtype={"id": str}).head(N_TEST).to_csv(root / "test.csv", index=False)
    build_records(csv=root / "test.csv", images=digits_dir / "images", out=root / "records", size=32, split="test",
                  classes_from=small_records / "manifest.json", workers=1, progress=False)
    return root / "records"


@pytest.fixture(scope="module")
def submission(test_records, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A submission in tfkit predict's layout: every third row confident (0.97), the rest not (max 0.5)."""
    idx = read_index(test_records)
    rng = np.random.default_rng(0)
    proba = np.full([len(idx), 10], 0.5 / 9)
    cls = rng.integers(0, 10, len(idx))  # deliberately NOT the true labels
    proba[np.arange(len(idx)), cls] = 0.5
    confident = np.arange(len(idx)) % 3 == 0
    proba[confident] = 0.03 / 9
    proba[confident, cls[confident]] = 0.97
    sub = pd.DataFrame(proba, columns=[str(c) for c in range(10)])
    sub.insert(0, "id", idx["id"].to_numpy())
    path = tmp_path_factory.mktemp("sub") / "submission.csv"
    sub.to_csv(path, index=False)
    return path, sub.assign(pseudo=cls, confident=confident)


def _train_stream(records, cfg, fold, targets, n_folds=3):
    """One pass of fold ``fold``'s training stream: ids and targets, unaugmented and in a fixed order
    (batches of one: training drops the last partial batch)."""
    folds = [f for f in range(n_folds) if f != fold]
    ds = build_dataset(str(records), cfg, folds=folds, mode="train", augment=False, repeat=False, batch_size=1,
                       deterministic=True, with_ids=True, targets=targets.for_fold(fold))
    ids, ys = [], []
    for _, y, i in ds:
        ids += [s.decode() for s in i.numpy()]
        ys.append(y.numpy())
    return ids, np.concatenate(ys)


def _eval_stream(records, cfg, fold):
    ds = build_dataset(str(records), cfg, folds=[fold], mode="eval", with_ids=True)
    ids, ys = [], []
    for _, y, i in ds:
        ids += [s.decode() for s in i.numpy()]
        ys.append(y.numpy())
    return ids, np.concatenate(ys)


# --------------------------------------------------------------------------- config and maths


@pytest.mark.parametrize("key,value,match", [
    ("teacher_weight", "1.5", "train.teacher_weight"), ("teacher_weight", "-0.1", "train.teacher_weight"),
    ("temperature", "0", "train.temperature"), ("temperature", "-2", "train.temperature"),
    ("pseudo_threshold", "0", "train.pseudo_threshold"), ("pseudo_threshold", "1.01", "train.pseudo_threshold"),
    ("pseudo", "sub.csv", "needs train.pseudo_records"), ("pseudo_records", "rec", "needs train.pseudo"),
])
def test_config_ranges_are_one_line_errors(key, value, match):
    with pytest.raises(TfkitError, match=match) as e:
        check_distill_config(load_config(None, [f"train.{key}={value}"]).train)
    assert "\n" not in str(e.value)


def test_config_edges_accepted():
    t = load_config(None, ["train.teacher_weight=0", "train.temperature=0.5", "train.pseudo_threshold=1",
                           "train.pseudo=s.csv", "train.pseudo_records=r"]).train
    check_distill_config(t, "multiclass")
    assert (t.teacher_weight, t.temperature, t.pseudo_threshold) == (0.0, 0.5, 1.0)
    check_distill_config(load_config(None, ["train.teacher_weight=1", "train.teacher=r"]).train, "binary")
    with pytest.raises(TfkitError, match="supported for binary and multiclass tasks, the run's task is regression"):
        check_distill_config(load_config(None, ["train.teacher=r"]).train, "regression")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6), st.floats(0.2, 5.0))
def test_temper_is_a_distribution_keeping_the_order(raw, t):
    p = np.asarray(raw) + 1e-3
    p = (p / p.sum())[None]
    q = temper(p, t)
    assert q.sum() == pytest.approx(1.0, abs=1e-5) and (q > 0).all()
    # a monotone map of log p: the ranking of the classes never changes
    assert (np.diff(q[0][np.argsort(p[0])]) >= -1e-6).all()
    np.testing.assert_allclose(temper(p, 1.0), p, atol=1e-5)
    # equals p**(1/T), renormalised
    np.testing.assert_allclose(q, p ** (1 / t) / (p ** (1 / t)).sum(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- teacher


def test_each_teacher_target_comes_from_the_one_model_that_never_saw_the_row(teacher, small_records):
    cfg = cfg_("train.teacher=" + str(teacher), "train.teacher_weight=1", "train.temperature=1")
    targets = prepare_targets(cfg, small_records)
    run = RunFolder(teacher)
    index = read_index(str(small_records))
    q = dict(zip(targets.teacher["id"], targets.teacher["q"]))
    assert set(q) == set(index["id"])
    preds = {}
    for j in range(3):
        # teacher fold j's model trained on the other folds only, and predicted exactly fold j's rows
        done = run.done(j)
        assert done["fold"] == j and done["n_train"] == int((index["fold"] != j).sum())
        assert list(run.read_oof(j)["id"]) == list(index.loc[index["fold"] == j, "id"])
        x = build_dataset(str(small_records), cfg, mode="predict", augment=False)
        preds[j] = np.asarray(run.load_model(j).predict(x, verbose=0))
    for r, (rid, fold) in enumerate(zip(index["id"], index["fold"])):
        np.testing.assert_allclose(q[rid], preds[fold][r], atol=1e-4)  # the row's own fold model ...
    differs = [np.abs(preds[j] - preds[f]).max() for j in range(3) for f in range(3) if j != f]
    assert min(differs) > 1e-3  # ... and not another one (the fold models do disagree)


def test_student_trains_on_teacher_targets_and_validates_on_hard_labels(teacher, small_records):
    w, t = 0.7, 2.0
    cfg = cfg_("train.teacher=" + str(teacher), f"train.teacher_weight={w}", f"train.temperature={t}")
    targets = prepare_targets(cfg, small_records)
    index = read_index(str(small_records)).set_index("id")
    oof = RunFolder(teacher).read_oof().set_index("id")
    for k in range(3):
        view = targets.for_fold(k)
        assert not (view.teacher["fold"] == k).any()  # no fold-k row is even in the lookup table
        ids, ys = _train_stream(small_records, cfg, k, targets)
        assert sorted(ids) == sorted(index.index[index["fold"] != k])
        teacher_folds = oof.loc[ids, "fold"].to_numpy()
        assert (teacher_folds == index.loc[ids, "fold"].to_numpy()).all() and (teacher_folds != k).all()
        p = oof.loc[ids, [f"p_{c}" for c in range(10)]].to_numpy()
        hard = np.eye(10)[index.loc[ids, "label"].to_numpy()]
        np.testing.assert_allclose(ys, mix_targets(hard, temper(p, t), w), atol=1e-5)
        vids, vys = _eval_stream(small_records, cfg, k)
        assert set(vids) == set(index.index[index["fold"] == k])
        np.testing.assert_array_equal(vys, np.eye(10)[index.loc[vids, "label"].to_numpy()])


def test_mixup_mixes_the_soft_targets(teacher, small_records):
    cfg = cfg_("train.teacher=" + str(teacher), "train.teacher_weight=0.6", "augment.mixup_p=1",
               "augment.mixup_alpha=1")
    targets = prepare_targets(cfg, small_records)
    plain = {}
    ids0, ys0 = _train_stream(small_records, cfg, 0, targets)
    plain.update(zip(ids0, ys0))
    ds = build_dataset(str(small_records), cfg, folds=[1, 2], mode="train", repeat=False, deterministic=True,
                       with_ids=True, targets=targets.for_fold(0))
    checked = moved = 0
    for _, y, i in ds:
        own = np.stack([plain[s.decode()] for s in i.numpy()])
        y = y.numpy()
        np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
        for r in range(len(y)):
            # y_r = a * own_r + (1 - a) * own_j for some partner j of the same batch
            fits = []
            for j in range(len(y)):
                d = own[r] - own[j]
                a = float(np.dot(y[r] - own[j], d) / max(np.dot(d, d), 1e-12))
                fits.append(np.abs(a * own[r] + (1 - a) * own[j] - y[r]).max())
            assert min(fits) < 1e-4
            checked += 1
            moved += int(np.abs(y[r] - own[r]).max() > 1e-3)
    assert checked >= 32 and moved > checked // 2  # mixup did mix (the identity would fit trivially)


def test_teacher_mismatches_are_refused(teacher, small_records, tmp_path):
    base = cfg_("train.teacher=" + str(tmp_path / "t"))

    def copy_with(manifest_edit=None, oof_edit=None):
        shutil.rmtree(tmp_path / "t", ignore_errors=True)
        shutil.copytree(teacher, tmp_path / "t", ignore=shutil.ignore_patterns("*.keras", "logs"))
        run = RunFolder(tmp_path / "t")
        if manifest_edit:
            m = json.loads(run.manifest_path.read_text())
            manifest_edit(m)
            run.manifest_path.write_text(json.dumps(m))
        if oof_edit is not None:
            run.write_oof(oof_edit(run.read_oof()))

    copy_with(lambda m: m["folds"].update(seed=7))
    with pytest.raises(TfkitError, match=r"other records or folds \(folds.seed: teacher 7, records 42\)"):
        prepare_targets(base, small_records)
    copy_with(lambda m: m["shards"][0].update(sha256="0" * 64))
    with pytest.raises(TfkitError, match="checksum differs"):
        prepare_targets(base, small_records)
    copy_with(oof_edit=lambda o: o[o["fold"] != 2])
    with pytest.raises(TfkitError, match="no OOF prediction for id .* of fold 2"):
        prepare_targets(base, small_records)
    assert prepare_targets(base, small_records, folds=[2]).teacher["fold"].isin([0, 1]).all()  # fold 2 not needed
    copy_with(oof_edit=lambda o: o.assign(fold=np.where(o.index == 0, (o["fold"] + 1) % 3, o["fold"])))
    with pytest.raises(TfkitError, match="predicted by fold .* model but the records put it in fold"):
        prepare_targets(base, small_records)
    with pytest.raises(TfkitError, match="is the run being trained"):
        prepare_targets(cfg_("train.teacher=" + str(teacher)), small_records, out=teacher)
    with pytest.raises(TfkitError, match="run folder not found"):
        prepare_targets(cfg_("train.teacher=" + str(tmp_path / "nope")), small_records)


# --------------------------------------------------------------------------- pseudo-labels


def test_pseudo_rows_join_every_training_fold_and_no_validation(small_records, test_records, submission):
    path, sub = submission
    cfg = cfg_(f"train.pseudo={path}", f"train.pseudo_records={test_records}", "train.pseudo_threshold=0.9")
    targets = prepare_targets(cfg, small_records)
    confident = sub.loc[sub["confident"], "id"].tolist()
    assert sorted(targets.pseudo.ids) == sorted(confident) and 0 < len(confident) < N_TEST
    pseudo_label = dict(zip(sub["id"], sub["pseudo"]))
    index = read_index(str(small_records)).set_index("id")
    for k in range(3):
        ids, ys = _train_stream(small_records, cfg, k, targets)
        extra = [i for i in ids if i not in index.index]
        assert sorted(extra) == sorted(confident)  # exactly the confident test ids, each once
        assert sorted(set(ids) - set(extra)) == sorted(index.index[index["fold"] != k])
        for i, y in zip(ids, ys):
            want = pseudo_label[i] if i in pseudo_label else index.loc[i, "label"]
            np.testing.assert_array_equal(y, np.eye(10)[want])  # hard pseudo label, never the true test label
        vids, _ = _eval_stream(small_records, cfg, k)
        assert not set(vids) & set(sub["id"])


def test_pseudo_with_teacher_mixes_the_submission_probabilities(teacher, small_records, test_records, submission):
    path, sub = submission
    cfg = cfg_(f"train.teacher={teacher}", "train.teacher_weight=0.5", "train.temperature=1",
               f"train.pseudo={path}", f"train.pseudo_records={test_records}", "train.pseudo_threshold=0.9")
    targets = prepare_targets(cfg, small_records)
    ids, ys = _train_stream(small_records, cfg, 1, targets)
    rows = sub.set_index("id")
    seen = 0
    for i, y in zip(ids, ys):
        if i in rows.index:
            p = rows.loc[i, [str(c) for c in range(10)]].to_numpy(dtype=float)[None]
            np.testing.assert_allclose(y, mix_targets(np.eye(10)[[rows.loc[i, "pseudo"]]], p, 0.5)[0], atol=1e-5)
            seen += 1
    assert seen == int(sub["confident"].sum())


def test_pseudo_refusals(small_records, test_records, submission, small_csv, digits_dir, tmp_path):
    path, sub = submission
    ok = [f"train.pseudo_records={test_records}"]
    leaked = sub.drop(columns=["pseudo", "confident"]).copy()
    leaked.loc[0, "id"] = pd.read_csv(small_csv, dtype={"id": str})["id"][0]
    leaked.to_csv(tmp_path / "leak.csv", index=False)
    with pytest.raises(TfkitError, match="is in the training records and in the test data"):
        prepare_targets(cfg_(f"train.pseudo={tmp_path / 'leak.csv'}", *ok), small_records)
    # test records that hold a training image are refused too
    from tfkit.records import build_records

    pd.read_csv(small_csv, dtype={"id": str})[["id", "label"]].head(4).to_csv(tmp_path / "t.csv", index=False)
    build_records(csv=tmp_path / "t.csv", images=digits_dir / "images", out=tmp_path / "trec", size=32, split="test",
                  classes_from=small_records / "manifest.json", workers=1, progress=False)
    with pytest.raises(TfkitError, match="is in the training records and in the test data"):
        prepare_targets(cfg_(f"train.pseudo={path}", f"train.pseudo_records={tmp_path / 'trec'}"), small_records)
    sub.drop(columns=["pseudo", "confident", "3"]).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(TfkitError, match="no column '3'"):
        prepare_targets(cfg_(f"train.pseudo={tmp_path / 'cols.csv'}", *ok), small_records)
    bad = sub.drop(columns=["pseudo", "confident"]).copy()
    bad.loc[2, "5"] = 0.9
    bad.to_csv(tmp_path / "sum.csv", index=False)
    with pytest.raises(TfkitError, match=f"id {bad['id'][2]!r} has probabilities .* summing to 1"):
        prepare_targets(cfg_(f"train.pseudo={tmp_path / 'sum.csv'}", *ok), small_records)
    with pytest.raises(TfkitError, match="submission CSV not found"):
        prepare_targets(cfg_(f"train.pseudo={tmp_path / 'none.csv'}", *ok), small_records)
    with pytest.raises(TfkitError, match="supported for binary and multiclass"):
        prepare_targets(cfg_(f"train.pseudo={path}", *ok, "model.task=regression"), small_records)


def test_train_with_teacher_and_pseudo_end_to_end(teacher, small_records, test_records, submission, tmp_path):
    path, sub = submission
    out = tmp_path / "student"
    cfg = cfg_(f"train.teacher={teacher}", f"train.pseudo={path}", f"train.pseudo_records={test_records}",
               "train.pseudo_threshold=0.9")
    cv = train(cfg, small_records, out, folds=[0])
    done = RunFolder(out).done(0)
    assert done["n_pseudo"] == int(sub["confident"].sum())
    oof = RunFolder(out).read_oof()
    val = read_index(str(small_records), folds=[0])
    assert list(oof["id"]) == list(val["id"]) and list(oof["label"]) == list(val["label"])  # true labels
    assert 0.0 <= cv["metrics"]["accuracy"] <= 1.0
    assert Manifest.load(out).same_source(Manifest.load(teacher))


def test_binary_targets_mix_the_positive_probability():
    import tensorflow as tf

    from tfkit.distill import TrainTargets

    q = temper(np.array([[0.8, 0.2], [0.3, 0.7]]), 2.0)
    targets = TrainTargets(task="binary", num_classes=2, weight=0.25,
                           teacher=pd.DataFrame({"id": ["a", "b"], "fold": [0, 1], "q": list(q)}), pseudo=None)
    mix = targets.mixer()
    for ident, label, row in (("a", 1.0, q[0]), ("b", 0.0, q[1])):
        got = mix(tf.constant(ident), tf.constant([label])).numpy()
        np.testing.assert_allclose(got, [0.75 * label + 0.25 * row[1]], atol=1e-6)
    assert targets.for_fold(0).teacher["id"].tolist() == ["b"]


def test_cli_refuses_a_bad_teacher_in_one_line_before_writing(small_records, tmp_path, capsys):
    from tfkit.cli import main

    out = tmp_path / "student"
    rc = main(["train", "--records", str(small_records), "--out", str(out), "--set", "train.epochs=1",
               "--set", f"train.teacher={tmp_path / 'missing'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("tfkit: error: ") and "\n" not in err and "missing" in err
    assert not out.exists()
    rc = main(["train", "--records", str(small_records), "--out", str(out), "--set", "train.teacher_weight=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "tfkit: error: train.teacher_weight: expected a number in [0, 1], got 2.0"
    assert not out.exists()
