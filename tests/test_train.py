"""K-fold training: OOF/cv.json consistency, fold isolation, resume, phases, SAM, layer LR, lr_find."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from tfkit.config import config_to_dict, load_config
from tfkit.data import read_index
from tfkit.metrics import compute_metrics
from tfkit.records import load_manifest
from tfkit.lr_find import lr_find
from tfkit.optim import layer_multipliers, lr_scaled
from tfkit.train import phases, recompute_cv, train, train_fold
from tfkit.train_step import TrainingModel
from tfkit.utils import TfkitError

TINY = [
    "data.image_size=32", "data.batch_size=32", "model.name=small_cnn", "model.width=8",
    "train.epochs=1", "train.verbose=0", "train.warmup_epochs=0", "train.mixed_precision='off'",
]


def tiny_cfg(*extra: str):
    return load_config(None, [*TINY, *extra])


@pytest.fixture(scope="module")
def run2(digits_records, tmp_path_factory):
    """Folds 0 and 1 trained for one epoch (the other folds untouched)."""
    out = tmp_path_factory.mktemp("run2")
    cfg = tiny_cfg("train.schedule=onecycle")
    cv = train(cfg, digits_records, out, folds=[0, 1])
    return out, cfg, cv


def test_run_folder_and_cv_recomputable(run2, digits_records):
    out, cfg, cv = run2
    for name in ("config.yaml", "manifest.json", "oof.csv", "cv.json", "curves.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("fold*")) == ["fold0", "fold1"]
    for k in (0, 1):
        d = out / f"fold{k}"
        assert (d / "model.keras").is_file() and (d / "history.csv").is_file() and (d / "done.json").is_file()
        assert not (d / "resume").exists()
        assert any((d / "logs").rglob("*tfevents*"))
        m = keras.saving.load_model(d / "model.keras", safe_mode=True, compile=False)
        assert m.output_shape == (None, 10)
    # cv.json equals the metrics recomputed independently from oof.csv
    stored = json.loads((out / "cv.json").read_text())
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    classes = load_manifest(digits_records)["classes"]
    proba = oof[[f"p_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-4)
    # the run keeps its concrete metrics (train.metrics None -> the task's defaults) in config.yaml
    names = load_config(out / "config.yaml").train.metrics
    again = compute_metrics(oof["label"].to_numpy(), proba, "multiclass", names=names, num_classes=10)
    assert set(again) == set(stored["metrics"]) and "accuracy" in again and "qwk" not in again
    for k, v in again.items():
        assert stored["metrics"][k] == pytest.approx(float(v), rel=1e-9, abs=1e-12)
    assert stored == cv
    assert recompute_cv(out)["metrics"] == stored["metrics"]
    for k in ("0", "1"):
        part = oof[oof["fold"] == int(k)]
        acc = float(np.mean(part[[f"p_{c}" for c in classes]].to_numpy().argmax(1) == part["label"].to_numpy()))
        assert stored["folds"][k]["accuracy"] == pytest.approx(acc)
    assert stored["primary"] == "accuracy" and stored["n_folds_trained"] == 2
    for k in ("0", "1"):
        # Validation ran on batches padded to one static shape (a fold of ~287 rows in batches of 32)
        # with the padded rows masked: the logged scores are the saved model's on exactly the fold.
        hist = pd.read_csv(out / f"fold{k}" / "history.csv")
        assert hist["val_accuracy"].iloc[-1] == pytest.approx(stored["folds"][k]["accuracy"], abs=1e-6)
        for logged in ("val_log_loss", "val_loss"):  # no label smoothing: the loss is the log loss
            assert hist[logged].iloc[-1] == pytest.approx(stored["folds"][k]["log_loss"], abs=1e-4)


def test_validation_ids_are_exactly_the_fold(run2, digits_records):
    out, _, _ = run2
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    manifest = load_manifest(digits_records)
    n_folds = manifest["folds"]["n_folds"]
    for k in (0, 1):
        val = read_index(digits_records, folds=[k])
        train_ids = set(read_index(digits_records, folds=[f for f in range(n_folds) if f != k])["id"])
        got = oof[oof["fold"] == k]
        assert list(got["id"]) == list(val["id"])
        assert list(got["label"]) == list(val["label"])
        assert not set(got["id"]) & train_ids
        assert json.loads((out / f"fold{k}" / "done.json").read_text())["n_train"] == len(train_ids)
    assert not oof["id"].duplicated().any()


def test_config_saved_and_rerun_skips(run2, digits_records):
    out, cfg, cv = run2
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # the run keeps the config it trained with: metrics and monitor resolved for the task
    from tfkit.checks import resolve_run_config
    from tfkit.manifest import Manifest

    resolved = resolve_run_config(cfg, Manifest.from_dict(load_manifest(digits_records)))
    assert saved == json.loads(json.dumps(config_to_dict(resolved)))
    assert load_config(out / "config.yaml").train.schedule == "onecycle"
    mtime = (out / "fold0" / "done.json").stat().st_mtime_ns
    assert train(cfg, digits_records, out, folds=[0]) ["folds"].keys() == cv["folds"].keys()
    assert (out / "fold0" / "done.json").stat().st_mtime_ns == mtime
    with pytest.raises(TfkitError, match="another config"):
        train(tiny_cfg("train.lr=0.5"), digits_records, out, folds=[0])
    with pytest.raises(TfkitError, match="do not exist"):
        train(cfg, digits_records, out, folds=[7])


class Boom(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill")


def test_resume_after_interruption_with_phases(digits_records, tmp_path):
    """freeze 1 epoch, then 2 epochs at 40 px, EMA, device augmentation; killed after epoch 1."""
    from tfkit.scheduler import create_schedule
    from tfkit.data import steps_per_epoch
    from tfkit.strategy import get_strategy

    cfg = tiny_cfg("train.epochs=3", "train.freeze_epochs=1", "train.progressive=[[1, 40]]", "train.ema=0.9",
                   "data.augment_on=device", "augment.preset=digits", "train.schedule=cosine",
                   "train.layer_lr_decay=0.5")
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, digits_records, 2, tmp_path, callbacks=[Boom()])
    state = json.loads((tmp_path / "fold2" / "resume" / "state.json").read_text())
    assert state["epoch"] == 1 and not (tmp_path / "fold2" / "done.json").exists()
    summary = train_fold(cfg, digits_records, 2, tmp_path)
    assert summary["resumed_from_epoch"] == 1 and summary["epochs_run"] == 3
    hist = pd.read_csv(tmp_path / "fold2" / "history.csv")
    assert list(hist["epoch"]) == [0, 1, 2]
    assert list(hist["image_size"]) == [32, 40, 40]
    steps = steps_per_epoch(digits_records, [0, 1, 3, 4], 32)
    sched = create_schedule(cfg.train, steps, 3)
    expected = [float(sched(steps * (e + 1))) for e in range(3)]
    np.testing.assert_allclose(hist["lr"], expected, rtol=1e-5)
    assert summary["replicas"] == get_strategy().num_replicas_in_sync
    m = keras.saving.load_model(tmp_path / "fold2" / "model.keras", safe_mode=True, compile=False)
    assert m.input_shape[1] == summary["image_size"]


def test_phases_cut():
    cfg = load_config(None, ["train.epochs=5", "train.freeze_epochs=1", "train.progressive=[[3, 48]]",
                             "data.image_size=32"])
    got = [(p["start"], p["end"], p["size"], p["frozen"]) for p in phases(cfg)]
    assert got == [(0, 1, 32, True), (1, 3, 32, False), (3, 5, 48, False)]


def _tiny_dense():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(5, activation="tanh")(inp))
    return keras.Model(inp, out)


def test_sam_step_matches_manual_formula_and_differs_from_plain():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(16) % 3]
    lr, rho = 0.1, 0.05
    loss_fn = keras.losses.CategoricalCrossentropy()

    ref = _tiny_dense()
    w0 = [v.numpy() for v in ref.trainable_variables]
    with tf.GradientTape() as t:
        loss = loss_fn(y, ref(x))
    g = t.gradient(loss, ref.trainable_variables)
    norm = tf.linalg.global_norm(g)
    for v, gi in zip(ref.trainable_variables, g):
        v.assign_add(rho * gi / norm)
    with tf.GradientTape() as t:
        loss2 = loss_fn(y, ref(x))
    g2 = t.gradient(loss2, ref.trainable_variables)
    expected = [w - lr * gi.numpy() for w, gi in zip(w0, g2)]

    results = {}
    for r in (0.0, rho):
        w = TrainingModel(_tiny_dense(), sam_rho=r)
        w.compile(optimizer=keras.optimizers.SGD(lr), loss=loss_fn)
        w.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        results[r] = [v.numpy() for v in w.trainable_variables]
    for a, b in zip(results[rho], expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(results[rho], results[0.0]))


def test_layer_lr_multipliers_scale_each_update():
    from tfkit.models import create_model

    m = create_model("small_cnn", 10, 32, width=8)
    mult = layer_multipliers(m, 0.5, 3)
    backbone_paths = {v.path for v in m.get_layer("backbone").weights}
    assert set(mult) <= backbone_paths and mult
    assert min(mult.values()) == pytest.approx(0.5 ** 3) and max(mult.values()) == pytest.approx(0.5)
    var = keras.Variable(np.zeros(3, "float32"), name="w")
    other = keras.Variable(np.zeros(3, "float32"), name="u")
    opt = lr_scaled(keras.optimizers.Adam)(learning_rate=0.1, lr_multipliers={var.path: 0.25})
    opt.apply([tf.ones(3), tf.ones(3)], [var, other])
    # Adam's first step moves by lr whatever the gradient's scale, so the factor shows directly.
    np.testing.assert_allclose(var.numpy(), -0.025, rtol=1e-3)
    np.testing.assert_allclose(other.numpy(), -0.1, rtol=1e-3)


def test_lr_find_via_cli(digits_records, tmp_path, capsys):
    from tfkit.cli import main

    rc = main(["lr-find", "--records", str(digits_records), "--out", str(tmp_path), "--steps", "15",
               "--min-lr", "1e-5", "--max-lr", "10", *sum((["--set", s] for s in TINY), [])])
    assert rc == 0
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    table = pd.read_csv(tmp_path / "lr_find.csv")
    assert 3 <= len(table) <= 15 and table["lr"].is_monotonic_increasing
    assert "suggested lr" in capsys.readouterr().out
    res = lr_find(tiny_cfg(), digits_records, tmp_path / "again", min_lr=1e-4, max_lr=1, steps=12)
    assert np.isfinite(res["suggested_lr"]) and 1e-4 <= res["suggested_lr"] <= 1
    assert res["steps_run"] <= 12 and Path(res["png"]).is_file()
    with pytest.raises(TfkitError, match="min-lr"):
        lr_find(tiny_cfg(), digits_records, tmp_path, min_lr=1.0, max_lr=0.1)


# --------------------------------------------------------------------------- SWA

# precise BN off: with it, every epoch-end snapshot already holds BN statistics recomputed for its own
# weights, so "SWA recomputed the statistics instead of averaging them" could not be told apart
# (the SWA pass itself is checked exactly below; precise BN has its own tests in test_batchnorm.py)
SWA_TINY = ["data.batch_size=8", "model.width=4", "train.epochs=3", "train.swa_epochs=2", "train.schedule=cosine",
            "train.precise_bn=off"]


class Capture(keras.callbacks.Callback):
    """Weights of the trained model at each epoch end (after tfkit's callbacks: EMA swapped in)."""

    def __init__(self):
        super().__init__()
        self.snaps: list[tuple[int, list[np.ndarray]]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.snaps.append((epoch, [keras.ops.convert_to_numpy(v) for v in self.model.net.weights]))


def _is_bn_stat(path: str) -> bool:
    return "moving_mean" in path or "moving_variance" in path


def _assert_swa_weights(model, snaps):
    mean = [np.mean([s[i] for s in snaps], axis=0) for i in range(len(snaps[0]))]
    bn_differs = []
    for v, m in zip(model.weights, mean):
        got = keras.ops.convert_to_numpy(v)
        if _is_bn_stat(v.path):
            bn_differs.append(not np.allclose(got, m, rtol=1e-3, atol=1e-5))
        else:
            np.testing.assert_allclose(got, m, rtol=1e-6, atol=1e-7, err_msg=v.path)
    assert bn_differs and all(bn_differs)  # every BN statistic was recomputed, not averaged


def test_swa_with_ema_two_folds(small_records, tmp_path):
    """SWA of the EMA weights of the last 2 of 3 epochs; BN recomputed; OOF and cv.json from the SWA model."""
    from tfkit.data import build_dataset

    cfg = tiny_cfg(*SWA_TINY, "train.ema=0.9")
    cap = Capture()
    cv = train(cfg, small_records, tmp_path, folds=[0, 1], callbacks=[cap])
    assert [e for e, _ in cap.snaps] == [0, 1, 2, 0, 1, 2]
    oof = pd.read_csv(tmp_path / "oof.csv", dtype={"id": str})
    classes = load_manifest(small_records)["classes"]
    for k in (0, 1):
        d = tmp_path / f"fold{k}"
        model = keras.saving.load_model(d / "model.keras", safe_mode=True, compile=False)
        _assert_swa_weights(model, [w for _, w in cap.snaps[3 * k + 1: 3 * k + 3]])
        # BN statistics = exact mean over the training folds' batches of the batch statistics (first BN layer).
        bb = model.get_layer("backbone")
        conv, bn = bb.get_layer("s0_conv0"), bb.get_layer("s0_bn0")
        ds = build_dataset(small_records, cfg, folds=[f for f in range(3) if f != k], mode="eval", batch_size=8)
        feats = [conv(x).numpy() for x, _ in ds]
        np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([f.mean((0, 1, 2)) for f in feats], 0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([f.var((0, 1, 2)) for f in feats], 0), rtol=1e-3, atol=1e-6)
        # OOF rows are the SWA model's predictions; the best-epoch checkpoint is kept and scored too.
        val = build_dataset(small_records, cfg, folds=[k], mode="predict", batch_size=8)
        part = oof[oof["fold"] == k]
        np.testing.assert_allclose(part[[f"p_{c}" for c in classes]].to_numpy(), model.predict(val, verbose=0), atol=1e-5)
        done = json.loads((d / "done.json").read_text())
        assert done["swa"]["count"] == 2 and done["swa"]["epochs"] == [1, 2] and done["swa"]["bn_batches"] >= 2
        assert set(done["swa"]["best_checkpoint_metrics"]) == set(done["metrics"])
        assert (d / "best.keras").is_file() and not (d / "resume").exists()
        assert cv["folds"][str(k)]["swa"]["count"] == 2
    stored = json.loads((tmp_path / "cv.json").read_text())
    assert recompute_cv(tmp_path)["metrics"] == stored["metrics"]
    proba = oof[[f"p_{c}" for c in classes]].to_numpy()
    names = load_config(tmp_path / "config.yaml").train.metrics
    again = compute_metrics(oof["label"].to_numpy(), proba, "multiclass", names=names, num_classes=10)
    for name, v in again.items():
        assert stored["metrics"][name] == pytest.approx(float(v), rel=1e-9, abs=1e-12)


def test_swa_resume_after_kill_mid_window(small_records, tmp_path):
    """Killed after the first averaged epoch: the resumed average includes it (saved with the state)."""

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated kill")

    cfg = tiny_cfg(*SWA_TINY)
    first, second = Capture(), Capture()
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, small_records, 0, tmp_path, callbacks=[first, Kill()])
    state = json.loads((tmp_path / "fold0" / "resume" / "state.json").read_text())
    assert state["epoch"] == 2 and state["swa"] == {"start": 1, "count": 1, "epochs": [1]}
    summary = train_fold(cfg, small_records, 0, tmp_path, callbacks=[second])
    assert summary["resumed_from_epoch"] == 2 and [e for e, _ in second.snaps] == [2]
    assert summary["swa"]["epochs"] == [1, 2]
    model = keras.saving.load_model(tmp_path / "fold0" / "model.keras", safe_mode=True, compile=False)
    _assert_swa_weights(model, [first.snaps[1][1], second.snaps[0][1]])


def test_swa_epochs_validated(small_records, tmp_path):
    with pytest.raises(TfkitError, match="swa_epochs"):
        train_fold(tiny_cfg(*SWA_TINY, "train.swa_epochs=4"), small_records, 0, tmp_path)


_DETERMINISTIC_RUNS = r"""
import sys
from pathlib import Path
from tfkit.config import load_config
from tfkit.train import train
records, out = sys.argv[1:3]
cfg = load_config(None, ["data.image_size=32", "data.batch_size=8", "model.name=small_cnn", "model.width=4",
                         "train.epochs=2", "train.verbose=0", "train.warmup_epochs=0", "augment.preset=digits",
                         "train.deterministic=true"])
for k in range(2):
    train(cfg, records, Path(out) / f"run{k}", folds=[0])
"""


def test_deterministic_training_gives_identical_oof(small_records, tmp_path):
    # A subprocess: op determinism is a process-wide switch. The second run follows the first in the
    # same process, so any state the first leaves behind (seed generators, traced functions) is tested too.
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", _DETERMINISTIC_RUNS, str(small_records), str(tmp_path)], check=True,
                   capture_output=True)
    outs = [pd.read_csv(tmp_path / f"run{k}" / "oof.csv") for k in range(2)]
    pd.testing.assert_frame_equal(outs[0], outs[1])  # bit-identical probabilities, not just close
