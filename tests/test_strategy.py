"""tfkit.strategy: detection logic with faked devices, mixed-precision policy
selection, and a real 2-replica MirroredStrategy run on 2 logical CPUs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
import sys
import textwrap

import keras
import pytest
import tensorflow as tf

from tfkit import strategy as S
from tfkit.utils import TfkitError


@pytest.fixture(autouse=True)
def _reset_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


class FakeTPUStrategy:
    num_replicas_in_sync = 8


def test_cpu_gives_default_strategy(monkeypatch):
    monkeypatch.setattr(S, "_tpu_resolver", lambda: None)
    monkeypatch.setattr(S, "_logical_devices", lambda kind: [])
    s = S.get_strategy()
    assert s is tf.distribute.get_strategy() and S.replicas(s) == 1
    assert S.accelerator(s) == "cpu"
    assert S.set_mixed_precision("auto", s) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_one_gpu_default_strategy_float16(monkeypatch):
    monkeypatch.setattr(S, "_tpu_resolver", lambda: None)
    monkeypatch.setattr(S, "_logical_devices", lambda kind: ["/device:GPU:0"] if kind == "GPU" else [])
    monkeypatch.setattr(S, "_make_mirrored", lambda d: pytest.fail("one GPU must not mirror"))
    s = S.get_strategy()
    assert s is tf.distribute.get_strategy()
    assert S.set_mixed_precision("auto", s) == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"


def test_several_gpus_mirror_over_all(monkeypatch):
    calls = []
    gpus = ["/device:GPU:0", "/device:GPU:1", "/device:GPU:2"]
    monkeypatch.setattr(S, "_tpu_resolver", lambda: None)
    monkeypatch.setattr(S, "_logical_devices", lambda kind: gpus if kind == "GPU" else [])
    monkeypatch.setattr(S, "_make_mirrored", lambda d: calls.append(list(d)) or "mirrored")
    assert S.get_strategy() == "mirrored"
    assert calls == [gpus]


def test_tpu_preferred_and_bfloat16(monkeypatch):
    monkeypatch.setattr(S, "_tpu_resolver", lambda: "resolver")
    monkeypatch.setattr(S, "_make_tpu_strategy", lambda r: FakeTPUStrategy())
    monkeypatch.setattr(S, "_logical_devices", lambda kind: ["/device:GPU:0", "/device:GPU:1"])
    s = S.get_strategy()
    assert isinstance(s, FakeTPUStrategy) and S.replicas(s) == 8
    assert S.accelerator(s) == "tpu"
    assert S.set_mixed_precision("auto", s) == "mixed_bfloat16"


def test_tpu_failure_falls_back(monkeypatch):
    def broken(resolver):
        raise RuntimeError("TPU already in use")

    monkeypatch.setattr(S, "_tpu_resolver", lambda: "resolver")
    monkeypatch.setattr(S, "_make_tpu_strategy", broken)
    monkeypatch.setattr(S, "_logical_devices", lambda kind: [])
    assert S.get_strategy() is tf.distribute.get_strategy()


def test_no_tpu_on_this_machine():
    assert S._tpu_resolver() is None


def test_explicit_precision_modes():
    assert S.set_mixed_precision("off") == "float32"
    assert S.set_mixed_precision("float16") == "mixed_float16"
    assert S.set_mixed_precision("bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    with pytest.raises(TfkitError, match="unknown mode 'fp8'"):
        S.set_mixed_precision("fp8")


SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import tensorflow as tf
    # Must come before any TF op: split the CPU into 2 logical devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np, keras
    from tfkit.strategy import get_strategy, replicas, accelerator, set_mixed_precision
    from tfkit.models import create_model
    from tfkit.losses import create_loss
    from tfkit.metrics import keras_metrics
    from tfkit.scheduler import create_schedule
    from tfkit.config import TrainConfig

    strategy = get_strategy(devices=["/cpu:0", "/cpu:1"])
    policy = set_mixed_precision("auto", strategy)
    n_rep = replicas(strategy)
    cfg = TrainConfig(epochs=1, schedule="cosine", warmup_epochs=0)
    with strategy.scope():
        model = create_model("small_cnn", 3, 16, width=4, pooling="gem")
        model.compile(keras.optimizers.AdamW(create_schedule(cfg, 4)), create_loss(cfg, "multiclass", 3),
                      metrics=keras_metrics(["accuracy", "qwk"], "multiclass", 3))
    rng = np.random.default_rng(0)
    x = rng.random((32, 16, 16, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 32)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(4 * n_rep, drop_remainder=True)
    hist = model.fit(ds, steps_per_epoch=4, epochs=1, verbose=0)
    pred = model.predict(x, batch_size=8, verbose=0)
    print("RESULT", json.dumps({
        "replicas": n_rep, "kind": type(strategy).__name__, "accelerator": accelerator(strategy),
        "policy": policy, "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)), "pred_shape": list(pred.shape),
        "row_sums_ok": bool(np.allclose(pred.sum(1), 1.0, atol=1e-5)),
        "loss_finite": bool(np.isfinite(hist.history["loss"][0])), "has_qwk": "qwk" in hist.history,
    }))
    """
)


def test_mirrored_strategy_two_logical_cpus_fit_and_predict():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["replicas"] == 2 and r["kind"] == "MirroredStrategy"
    assert r["accelerator"] == "cpu" and r["policy"] == "float32"
    assert r["iterations"] == 4  # 4 global steps of 8 examples, each split across 2 replicas
    assert r["pred_shape"] == [32, 3] and r["row_sums_ok"]
    assert r["loss_finite"] and r["has_qwk"]


JAX_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, keras, tensorflow as tf
    from tfkit.strategy import JaxStrategy, get_strategy, replicas, accelerator, set_mixed_precision, runtime_info
    from tfkit.models import create_model
    from tfkit.losses import create_loss
    from tfkit.metrics import keras_metrics
    from tfkit.scheduler import create_schedule
    from tfkit.config import TrainConfig

    strategy = get_strategy()
    policy = set_mixed_precision("auto", strategy)
    n_rep = replicas(strategy)
    cfg = TrainConfig(epochs=1, schedule="cosine", warmup_epochs=0)
    with strategy.scope():
        model = create_model("small_cnn", 3, 16, width=4, pooling="gem")
        model.compile(keras.optimizers.AdamW(create_schedule(cfg, 4)), create_loss(cfg, "multiclass", 3),
                      metrics=keras_metrics(["accuracy", "qwk"], "multiclass", 3))
    rng = np.random.default_rng(0)
    x = rng.random((32, 16, 16, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 32)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(4 * n_rep, drop_remainder=True)
    hist = model.fit(ds, steps_per_epoch=4, epochs=1, verbose=0)
    pred = model.predict(x, batch_size=8, verbose=0)
    kernel = model.get_layer("output").kernel.value
    print("RESULT", json.dumps({
        "replicas": n_rep, "jax": isinstance(strategy, JaxStrategy), "accelerator": accelerator(strategy),
        "policy": policy, "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "pred_shape": list(pred.shape), "row_sums_ok": bool(np.allclose(pred.sum(1), 1.0, atol=1e-5)),
        "loss_finite": bool(np.isfinite(hist.history["loss"][0])), "has_qwk": "qwk" in hist.history,
        "kernel_devices": len(kernel.sharding.device_set), "replicated": bool(kernel.sharding.is_fully_replicated),
        "info": runtime_info(strategy),
    }))
    """
)


def test_jax_data_parallel_two_host_devices_fit_and_predict():
    # The JAX counterpart of the MirroredStrategy test: Keras picks its backend
    # at import and XLA its host device count at JAX's import, so a subprocess.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="jax",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip())
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["replicas"] == 2 and r["jax"] and r["accelerator"] == "cpu" and r["policy"] == "float32"
    assert r["iterations"] == 4  # 4 global steps of 8 examples, each split across 2 devices
    assert r["kernel_devices"] == 2 and r["replicated"]  # weights live on both devices
    assert r["pred_shape"] == [32, 3] and r["row_sums_ok"]
    assert r["loss_finite"] and r["has_qwk"]
    info = r["info"]
    assert info["backend"] == "jax" and info["devices"] == 2 and info["accelerator"] == "cpu"
    assert info["versions"]["jax"] == jax_version() and info["versions"]["keras"] == keras.__version__


def jax_version():
    import importlib.metadata

    return importlib.metadata.version("jax")


def test_runtime_info_on_tensorflow():
    info = S.runtime_info()
    assert info["backend"] == "tensorflow" and info["devices"] == 1 and info["accelerator"] == "cpu"
    assert info["versions"]["tensorflow"] == tf.__version__ and info["mixed_precision"] == "float32"
