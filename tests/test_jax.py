"""Keras on JAX, checked against TensorFlow.

Keras fixes its backend when first imported, and this pytest process runs on
TensorFlow: each JAX side runs as one script in a subprocess (KERAS_BACKEND=jax,
2 forced host devices, see the ``jax_env`` fixture) that writes its results to
files; the tests here compute the same on TensorFlow and compare. A JAX process
costs ~20 s of imports and compilation on 2 cores, so one script does several jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pandas as pd
import pytest

from tfkit.config import load_config
from tfkit.models import create_model

TINY = ["data.image_size=16", "data.batch_size=16", "model.width=4", "train.epochs=1", "train.verbose=0",
        "train.mixed_precision=\"off\"", "train.warmup_epochs=0"]
TTA = ["predict.tta=4", "predict.tta_mode=flips"]


def run_jax(env: dict, script: str, *args: str, timeout: int = 1500) -> dict:
    """Run ``script`` on JAX in a subprocess; returns the JSON it printed after ``RESULT``."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(lines[-1][len("RESULT "):])


# One optimizer step of tfkit's TrainingModel on the same batch from the same weights, per backend.
STEP_VARIANTS = {
    # SGD with Nesterov momentum, label smoothing, class-weight-like sample weights, layer-wise LR
    "plain": dict(train=["train.optimizer=sgd", "train.lr=0.1", "train.label_smoothing=0.1",
                         "train.layer_lr_decay=0.5", "train.layer_lr_groups=2"], policy="float32"),
    # SAM, focal loss, gradient clipping, AdamW
    "sam": dict(train=["train.sam_rho=0.05", "train.loss=focal", "train.clip_norm=0.5", "train.lr=0.01"],
                policy="float32"),
    # float16 with dynamic loss scaling (Keras wraps the optimizer in a LossScaleOptimizer)
    "float16": dict(train=["train.optimizer=sgd", "train.lr=0.1"], policy="mixed_float16"),
    # on-device augmentation (data.augment_on=device): the same seed gives the same batch on both backends
    "device_augment": dict(train=["train.optimizer=sgd", "train.lr=0.1", "augment.preset=digits",
                                  "augment.hflip_p=0.5", "augment.cutmix_p=0.3"], policy="float32"),
}


def step_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((8, 16, 16, 3), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    return x, y, rng.uniform(0.5, 2.0, 8).astype(np.float32)


def one_step(variant: str, init_weights: str) -> list[np.ndarray]:
    """The weights after one ``TrainingModel.train_on_batch`` from ``init_weights``, on this process' backend."""
    from tfkit.losses import create_loss
    from tfkit.optim import create_optimizer, layer_multipliers
    from tfkit.train_step import TrainingModel

    spec = STEP_VARIANTS[variant]
    cfg = load_config(None, spec["train"])
    t = cfg.train
    keras.mixed_precision.set_global_policy(spec["policy"])
    try:
        net = create_model("small_cnn", 3, 16, width=4, pooling="gem", dropout=0.0)
        net.load_weights(init_weights)
        augment = cfg.augment if variant == "device_augment" else None
        wrapper = TrainingModel(net, sam_rho=t.sam_rho, augment_cfg=augment, image_size=16, seed=5)
        wrapper.compile(optimizer=create_optimizer(t, t.lr, layer_multipliers(net, t.layer_lr_decay, t.layer_lr_groups)),
                        loss=create_loss(t, "multiclass", 3))
        x, y, sw = step_data()
        wrapper.train_on_batch(x, y, sample_weight=sw)
        return [keras.ops.convert_to_numpy(v) for v in net.weights]
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def tf_run(tiny_run) -> Path:
    """A tiny 3-fold run trained on TensorFlow (conftest's ``tiny_run``); both sides predict it with ``TTA``."""
    return tiny_run


JAX_SIDE = """
    import json, sys
    from pathlib import Path
    import keras, numpy as np
    from tfkit.predict import load_models, predict
    from tfkit.report import gradcam
    from tfkit.models import create_model
    from tfkit.strategy import runtime_info

    run, records, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    # 1. a run trained on TensorFlow: TTA fold-ensemble predictions, batches split over 2 devices
    predict(run, out / "sub_jax.csv", records=records, tta=4, overrides=["predict.tta_mode=flips"], progress=False)
    # 2. Grad-CAM of the fold-0 model
    x = np.load(out / "x.npy")
    (model,) = load_models(run, [0])
    cams, proba = gradcam(model, x, [i % 3 for i in range(len(x))])
    np.save(out / "cams_jax.npy", cams)
    np.save(out / "proba_jax.npy", proba)
    # 3. a model trained and saved on JAX, for TensorFlow to load
    keras.utils.set_random_seed(3)
    m = create_model("small_cnn", 3, 16, width=4, pooling="gem", dropout=0.0)
    m.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    rng = np.random.default_rng(0)
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]
    m.fit(x[:16], y, batch_size=8, epochs=1, verbose=0)
    m.save(out / "jax_model.keras")
    np.save(out / "jax_model_pred.npy", m.predict(x, batch_size=8, verbose=0))
    # 4. one train step per variant from the weights TensorFlow wrote
    sys.path.insert(0, sys.argv[4])
    from test_jax import STEP_VARIANTS, one_step
    for variant in STEP_VARIANTS:
        np.savez(out / f"step_{variant}.npz", *one_step(variant, str(out / "init.weights.h5")))
    print("RESULT", json.dumps({"info": runtime_info()}))
"""


@pytest.fixture(scope="module")
def jax_side(tf_run, small_records, jax_env, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("jax_side")
    np.save(out / "x.npy", np.random.default_rng(5).random((20, 16, 16, 3), dtype=np.float32))
    keras.utils.set_random_seed(11)
    create_model("small_cnn", 3, 16, width=4, pooling="gem", dropout=0.0).save_weights(out / "init.weights.h5")
    return out, run_jax(jax_env, JAX_SIDE, str(tf_run), str(small_records), str(out), str(Path(__file__).parent))


def test_jax_side_ran_on_two_jax_devices(jax_side):
    _, result = jax_side
    assert result["info"]["backend"] == "jax" and result["info"]["devices"] == 2


def test_tensorflow_run_predicts_the_same_on_jax(tf_run, small_records, jax_side, tmp_path):
    from tfkit.predict import predict

    out, _ = jax_side
    predict(tf_run, tmp_path / "sub_tf.csv", records=small_records, tta=4, overrides=["predict.tta_mode=flips"],
            progress=False)
    tf_sub = pd.read_csv(tmp_path / "sub_tf.csv", dtype={"id": str})
    jax_sub = pd.read_csv(out / "sub_jax.csv", dtype={"id": str})
    assert jax_sub["id"].tolist() == tf_sub["id"].tolist() and len(tf_sub) == 60  # 2 batches of 32, the last padded
    assert list(jax_sub.columns) == list(tf_sub.columns)
    np.testing.assert_allclose(jax_sub.iloc[:, 1:].to_numpy(), tf_sub.iloc[:, 1:].to_numpy(), atol=1e-3)


def test_gradcam_is_the_same_on_jax(tf_run, jax_side):
    from tfkit.predict import load_models
    from tfkit.report import gradcam

    out, _ = jax_side
    (model,) = load_models(tf_run, [0])
    cams, proba = gradcam(model, np.load(out / "x.npy"), [i % 3 for i in range(20)])
    assert cams.shape == (20, 4, 4) and cams.max() == pytest.approx(1.0)
    np.testing.assert_allclose(np.load(out / "proba_jax.npy"), proba, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "cams_jax.npy"), cams, atol=1e-3)


def test_model_saved_on_jax_predicts_the_same_on_tensorflow(jax_side):
    out, _ = jax_side
    model = keras.models.load_model(out / "jax_model.keras", compile=False, safe_mode=True)
    got = model.predict(np.load(out / "x.npy"), batch_size=8, verbose=0)
    np.testing.assert_allclose(got, np.load(out / "jax_model_pred.npy"), atol=1e-3)
    # trained on JAX (one SGD epoch): not the untrained model of the same seed
    keras.utils.set_random_seed(3)
    fresh = create_model("small_cnn", 3, 16, width=4, pooling="gem", dropout=0.0)
    assert np.abs(fresh.predict(np.load(out / "x.npy"), verbose=0) - got).max() > 1e-4


# Largest difference between the two backends' updates of a variable, relative to the update's size.
# float32 steps agree to ~1e-5 (SAM's second gradient and Adam's first step amplify rounding to ~2e-3);
# float16 convolutions accumulate differently on XLA and oneDNN (~5%), while a loss scale left in
# the gradients would be off by a factor of 2**15.
STEP_RTOL = {"plain": 1e-3, "sam": 1e-2, "float16": 0.1, "device_augment": 1e-3}


@pytest.mark.parametrize("variant", list(STEP_VARIANTS))
def test_train_step_gives_the_same_update_on_both_backends(variant, jax_side):
    out, _ = jax_side
    init = out / "init.weights.h5"
    tf_after = one_step(variant, str(init))
    saved = np.load(out / f"step_{variant}.npz")
    jax_after = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    fresh = create_model("small_cnn", 3, 16, width=4, pooling="gem", dropout=0.0)
    fresh.load_weights(init)
    before = [keras.ops.convert_to_numpy(v) for v in fresh.weights]
    assert len(jax_after) == len(tf_after) == len(before)
    moved = 0
    for b, t, j in zip(before, tf_after, jax_after):
        size = np.abs(t - b).max()
        assert np.abs((j - b) - (t - b)).max() <= STEP_RTOL[variant] * size + 1e-7
        moved += int(size > 1e-5)
    assert moved >= len(before) // 2  # the step really moved the weights (kernels, BN statistics, GeM p)


# Every training mechanic at once, on 2 devices: metadata branch (categorical embedding), SAM, EMA,
# SWA (+BN pass), freeze -> unfreeze, layer-wise LR, balanced class weights, focal loss with label smoothing, clipping, QWK,
# deterministic input; killed after epoch 1 (mid-phase) and resumed. Progressive resizing is the same
# phase code as freeze -> unfreeze (tests/test_train.py); another phase here costs another compilation.
EVERYTHING = TINY + ["train.epochs=3", "data.metadata=[age, site]", "model.meta_categorical=embedding",
                     "train.sam_rho=0.05", "train.ema=0.9", "train.swa_epochs=1", "train.freeze_epochs=1",
                     "train.layer_lr_decay=0.7", "train.class_weight=balanced", "train.loss=focal",
                     "train.label_smoothing=0.1", "train.clip_norm=1.0", "augment.preset=digits",
                     "train.deterministic=true", "train.backend=jax",
                     "train.metrics=[accuracy, auc, f1, log_loss, qwk]", "data.ordinal=true"] + TTA
SIMPLE = TINY + ["augment.preset=digits", "train.deterministic=true"]

JAX_TRAIN = """
    import json, sys
    from pathlib import Path
    import keras, numpy as np
    from tfkit.config import load_config
    from tfkit.train import train
    from tfkit.predict import predict
    from tfkit.callbacks import write_keras_model

    records, out = sys.argv[1], Path(sys.argv[2])
    everything, simple = json.loads(sys.argv[3]), json.loads(sys.argv[4])

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated kill")

    cfg = load_config(None, everything)
    try:
        train(cfg, records, out / "run", folds=[0], callbacks=[Kill()])
    except KeyboardInterrupt:
        pass
    killed_at = json.loads((out / "run" / "fold0" / "resume" / "state.json").read_text())["epoch"]
    cv = train(cfg, records, out / "run", folds=[0])
    predict(out / "run", out / "sub_jax.csv", records=records, progress=False)
    # determinism: the same seed twice gives the same bits
    for k in range(2):
        train(load_config(None, simple), records, out / f"det{k}", folds=[0])
    # Keras' EMA trap on JAX (fit, predict, then save the compiled model): tfkit saves the inner model
    from tfkit.models import create_model
    from tfkit.train_step import TrainingModel
    net = create_model("small_cnn", 3, 16, width=4)
    wrapper = TrainingModel(net)
    wrapper.compile(keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9), "categorical_crossentropy")
    x = np.random.default_rng(0).random((16, 16, 16, 3), dtype=np.float32)
    wrapper.fit(x, np.eye(3, dtype="float32")[np.arange(16) % 3], epochs=2, batch_size=8, verbose=0)
    wrapper.predict(x, batch_size=8, verbose=0)
    write_keras_model(net, out / "ema_inner.keras")
    print("RESULT", json.dumps({"killed_at": killed_at, "cv": cv["metrics"]}))
"""


@pytest.fixture(scope="module")
def jax_trained(small_records, jax_env, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("jax_trained")
    return out, run_jax(jax_env, JAX_TRAIN, str(small_records), str(out), json.dumps(EVERYTHING), json.dumps(SIMPLE))


def test_every_mechanic_trains_on_jax_and_resumes_after_a_kill(jax_trained):
    out, result = jax_trained
    fold = out / "run" / "fold0"
    done = json.loads((fold / "done.json").read_text())
    assert result["killed_at"] == 2 and done["resumed_from_epoch"] == 2 and done["epochs_run"] == 3
    hist = pd.read_csv(fold / "history.csv")
    assert list(hist["epoch"]) == [0, 1, 2] and list(hist["image_size"]) == [16, 16, 16]
    assert {"val_qwk", "val_auc", "val_loss"} <= set(hist.columns) and np.isfinite(hist["val_loss"]).all()
    assert done["swa"]["epochs"] == [2] and done["swa"]["bn_batches"] > 0 and (fold / "best.keras").is_file()
    assert done["runtime"]["backend"] == "jax" and done["runtime"]["devices"] == 2 == done["replicas"]
    assert done["runtime"]["versions"]["jax"] and done["runtime"]["versions"]["keras"] == keras.__version__
    assert set(result["cv"]) == {"accuracy", "auc", "f1", "log_loss", "qwk"}


def test_validation_on_padded_jax_batches_equals_the_saved_models_score(jax_trained):
    # 20 validation images in batches of 16 (8 per device): the last batch is padded with 12 zero rows
    # and masked. The metrics logged at the best epoch are those of best.keras (EMA weights), recomputed
    # with NumPy from its predictions on exactly the 20 real rows.
    out, _ = jax_trained
    done = json.loads((out / "run" / "fold0" / "done.json").read_text())
    assert done["n_val"] == 20
    hist = pd.read_csv(out / "run" / "fold0" / "history.csv").set_index("epoch")
    best = done["swa"]["best_checkpoint_metrics"]
    assert hist.loc[done["best_epoch"], "val_accuracy"] == pytest.approx(best["accuracy"], abs=1e-6)
    assert hist.loc[done["best_epoch"], "val_log_loss"] == pytest.approx(best["log_loss"], abs=1e-4)


def test_jax_trained_run_predicts_the_same_on_tensorflow(jax_trained, small_records, tmp_path):
    from tfkit.predict import predict

    out, _ = jax_trained
    predict(out / "run", tmp_path / "sub_tf.csv", records=small_records, progress=False)
    tf_sub = pd.read_csv(tmp_path / "sub_tf.csv", dtype={"id": str})
    jax_sub = pd.read_csv(out / "sub_jax.csv", dtype={"id": str})
    assert jax_sub["id"].tolist() == tf_sub["id"].tolist()
    np.testing.assert_allclose(jax_sub.iloc[:, 1:].to_numpy(), tf_sub.iloc[:, 1:].to_numpy(), atol=1e-3)


def test_deterministic_jax_training_repeats_bit_for_bit(jax_trained):
    out, _ = jax_trained
    a, b = (pd.read_csv(out / f"det{k}" / "oof.csv") for k in range(2))
    pd.testing.assert_frame_equal(a, b)


def test_ema_model_saved_after_fit_and_predict_on_jax_loads(jax_trained):
    out, _ = jax_trained
    model = keras.models.load_model(out / "ema_inner.keras", compile=False, safe_mode=True)
    assert model.output_shape == (None, 3)
