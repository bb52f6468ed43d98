"""BatchNorm statistics that match the weights: the statistics pass, precise BN in training,
frozen backbones, several replicas and the JAX backend."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from tfkit.batchnorm import precise_bn_enabled, recompute_statistics, trainable_batchnorms
from tfkit.config import load_config
from tfkit.models import model_from_config

ROOT = Path(__file__).resolve().parents[1]


def _bn_net(dim: int = 3) -> keras.Model:
    inp = keras.Input((dim,))
    x = keras.layers.Dense(4, kernel_initializer="glorot_uniform", name="dense")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inp, keras.layers.Dense(2, name="out")(x))


def test_statistics_are_the_mean_of_the_batch_statistics():
    rng = np.random.default_rng(0)
    net = _bn_net()
    batches = [rng.normal(3.0, 2.0, (8, 3)).astype("float32") for _ in range(5)] + [rng.normal(size=(3, 3)).astype("float32")]
    n = recompute_statistics(net, batches, max_batches=100)
    assert n == 5  # the short last batch is skipped (one static shape)
    dense = net.get_layer("dense")
    h = [np.asarray(dense(b)) for b in batches[:5]]
    bn = net.get_layer("bn")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean([x.mean(0) for x in h], 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean([x.var(0) for x in h], 0), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99  # restored
    assert recompute_statistics(net, iter(batches), max_batches=2) == 2


def test_frozen_backbone_batchnorm_stays_in_inference_mode():
    cfg = load_config(None, ["model.width=8", "model.dropout=0"])
    model = model_from_config(cfg.model, 3, 16, "multiclass")
    backbone = model.get_layer("backbone")
    backbone.trainable = False  # what train.freeze_epochs does
    x = np.random.default_rng(1).random((8, 16, 16, 3)).astype("float32")
    before = [np.asarray(v) for v in backbone.non_trainable_weights]
    # training=True keeps a frozen backbone's BN on its moving statistics (Keras transfer-learning guide)
    np.testing.assert_allclose(np.asarray(model(x, training=True)), np.asarray(model(x, training=False)), atol=1e-6)
    assert trainable_batchnorms(model) == []  # the precise-BN pass leaves them alone
    assert recompute_statistics(model, [x, x], 10) == 0
    for a, b in zip(before, backbone.non_trainable_weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_statistics_pass_reads_unpadded_training_batches(small_records):
    # Validation batches are padded with zero rows to one static shape; the statistics pass must not
    # see those rows: it reads the training folds unpadded and skips each pass's short last batch.
    from tfkit.fold_setup import FoldSetup
    from tfkit.train import _precise_bn

    cfg = load_config(None, ["data.image_size=16", "data.batch_size=16", "model.width=4", "train.precise_bn=on"])
    setup = FoldSetup.create(cfg, small_records, fold=0)
    n_train = setup.count(setup.train_folds)
    assert n_train % 16 and setup.count([0]) % 16  # both end with a partial batch
    callback = _precise_bn(setup, setup.build_model(16), 16, steps=n_train // 16)
    one_pass = list(callback.dataset.take(-(-n_train // 16)))
    assert [len(b) for b in one_pass] == [2] * len(one_pass)  # (x, y): no row mask
    assert [int(b[1].shape[0]) for b in one_pass] == [16] * (n_train // 16) + [n_train % 16]
    val = list(setup.dataset(16, "eval", folds=[0]))
    assert {int(b[1].shape[0]) for b in val} == {16} and sum(float(b[2].numpy().sum()) for b in val) == setup.count([0])


def test_auto_switch_follows_the_stale_share():
    assert precise_bn_enabled("auto", 10, 0.99) and precise_bn_enabled("auto", 458, 0.99)
    assert not precise_bn_enabled("auto", 459, 0.99) and not precise_bn_enabled("auto", 50, 0.9)


@pytest.fixture(scope="module")
def bn_records(digits_dir, tmp_path_factory):
    """200 real digit scans at 16 px, 2 folds: 100 training images, 10 steps an epoch at batch 10."""
    from tfkit.records import build_records

    train = pd.read_csv(digits_dir / "train.csv", dtype={"id": str})
    work = tmp_path_factory.mktemp("bn_records")
    train.groupby("label", group_keys=False).head(20).to_csv(work / "d200.csv", index=False)
    build_records(csv=work / "d200.csv", images=digits_dir / "images", out=work / "rec", size=16, n_folds=2, seed=42,
                  workers=1, progress=False)
    return work / "rec"


def _oof_and_recomputed(records: Path, out: Path, *extra: str) -> tuple[float, float, dict]:
    from tfkit import data as tfdata
    from tfkit.models import load_model, predict_array
    from tfkit.run import RunFolder
    from tfkit.train import train

    cfg = load_config(None, ["data.image_size=16", "data.batch_size=10", "model.width=16", "train.epochs=4",
                             "train.lr=0.003", "train.verbose=0", "train.mixed_precision=off", *extra])
    cv = train(cfg, records, out, folds=[0])
    model = load_model(out / "fold0" / "model.keras")
    recompute_statistics(model, tfdata.build_dataset(records, cfg, folds=[1], mode="eval"), max_batches=10**6)
    labels = tfdata.read_index(records, folds=[0])["label"].to_numpy()
    proba = predict_array(model, tfdata.build_dataset(records, cfg, folds=[0], mode="predict"))
    return cv["metrics"]["accuracy"], float(np.mean(proba.argmax(1) == labels)), RunFolder(out).done(0)


def test_few_steps_per_epoch_validate_like_a_full_recompute(bn_records, tmp_path):
    # The default (auto = precise BN at 10 steps an epoch), with and without EMA weights:
    for extra in ((), ("train.ema=0.9",)):
        acc, recomputed, done = _oof_and_recomputed(bn_records, tmp_path / f"auto{len(extra)}", *extra)
        assert abs(acc - recomputed) <= 0.03, (extra, acc, recomputed)
        assert done["precise_bn"]["passes"] == 4 and done["precise_bn"]["batches"] == 10
    assert recomputed > 0.5  # the weights did learn: the comparison is not between two chance levels
    # Keras's moving averages alone (off) validate the same kind of weights far below what they are worth.
    acc, recomputed, done = _oof_and_recomputed(bn_records, tmp_path / "off", "train.precise_bn=off")
    assert recomputed - acc > 0.1, (acc, recomputed)
    assert done["precise_bn"]["passes"] == 0


def _run_py(code: str, *args: str, **env: str) -> dict:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


_PASS = """
import json, numpy as np, keras
from tfkit.batchnorm import recompute_statistics
rng = np.random.default_rng(0)
batches = [rng.normal(2.0, 3.0, (8, 16, 16, 3)).astype("float32") for _ in range(4)]
def net():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
"""


def test_statistics_pass_on_two_replicas_matches_one_device():
    code = _PASS + """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
one = net(); recompute_statistics(one, batches, 10)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = net()
two.set_weights(one.get_weights())  # the moving statistics are overwritten by the pass
n = recompute_statistics(two, batches, 10)
g = lambda m, v: np.asarray(getattr(m.get_layer("bn"), v)).tolist()
print(json.dumps({"n": n, "replicas": strategy.num_replicas_in_sync,
                  "mean": [g(one, "moving_mean"), g(two, "moving_mean")],
                  "var": [g(one, "moving_variance"), g(two, "moving_variance")]}))
"""
    r = _run_py(code)
    assert r["n"] == 4 and r["replicas"] == 2
    np.testing.assert_allclose(r["mean"][1], r["mean"][0], rtol=1e-4, atol=1e-4)
    # each replica normalises its half batch (as in training): variances agree up to the halves' spread
    np.testing.assert_allclose(r["var"][1], r["var"][0], rtol=0.15)


# One JAX process (a JAX start-up costs ~15 s on 2 cores) for both JAX checks below.
_JAX_CHECKS = _PASS + """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_batchnorm import _oof_and_recomputed
m = net(); n = recompute_statistics(m, batches, 10)
conv = m.get_layer("conv")
h = [np.asarray(conv(b)).reshape(-1, 4) for b in batches]
acc, rec, done = _oof_and_recomputed(Path(sys.argv[2]), Path(sys.argv[3]))
print(json.dumps({"backend": keras.backend.backend(), "n": n,
                  "got": np.asarray(m.get_layer("bn").moving_mean).tolist(),
                  "want": np.mean([x.mean(0) for x in h], 0).tolist(),
                  "acc": acc, "recomputed": rec, "passes": done["precise_bn"]["passes"]}))
"""


@pytest.fixture(scope="module")
def on_jax(bn_records, tmp_path_factory) -> dict:
    return _run_py(_JAX_CHECKS, str(ROOT / "tests"), str(bn_records), str(tmp_path_factory.mktemp("bn_jax") / "run"),
                   KERAS_BACKEND="jax")


def test_statistics_pass_on_jax(on_jax):
    r = on_jax
    assert r["backend"] == "jax" and r["n"] == 4
    np.testing.assert_allclose(r["got"], r["want"], rtol=1e-4, atol=1e-4)


def test_precise_bn_in_jax_training(on_jax):
    """On the JAX backend too, the saved model validates like a full statistics recompute."""
    r = on_jax
    assert r["backend"] == "jax" and r["passes"] == 4
    assert abs(r["acc"] - r["recomputed"]) <= 0.03, r
