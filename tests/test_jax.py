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
TTA = ["predict.tta=1", "predict.tta_mode=flips"]  # TODO 4 views once augment is backend-neutral


def run_jax(env: dict, script: str, *args: str, timeout: int = 600) -> dict:
    """Run ``script`` on JAX in a subprocess; returns the JSON it printed after ``RESULT``."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def tf_run(small_records, tmp_path_factory) -> Path:
    """Two folds of a tiny run trained on TensorFlow."""
    from tfkit.train import train

    run = tmp_path_factory.mktemp("tf_run") / "run"
    train(load_config(None, TINY + TTA), small_records, run, folds=[0, 1])
    return run


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
    predict(run, out / "sub_jax.csv", records=records, progress=False)
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
    print("RESULT", json.dumps({"info": runtime_info()}))
"""


@pytest.fixture(scope="module")
def jax_side(tf_run, small_records, jax_env, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("jax_side")
    np.save(out / "x.npy", np.random.default_rng(5).random((20, 16, 16, 3), dtype=np.float32))
    return out, run_jax(jax_env, JAX_SIDE, str(tf_run), str(small_records), str(out))


def test_jax_side_ran_on_two_jax_devices(jax_side):
    _, result = jax_side
    assert result["info"]["backend"] == "jax" and result["info"]["devices"] == 2


def test_tensorflow_run_predicts_the_same_on_jax(tf_run, small_records, jax_side, tmp_path):
    from tfkit.predict import predict

    out, _ = jax_side
    predict(tf_run, tmp_path / "sub_tf.csv", records=small_records, progress=False)
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
