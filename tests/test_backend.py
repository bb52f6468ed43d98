"""tfkit.backend: which Keras backend `auto` means, the errors for missing or
conflicting backends, the CLI setting KERAS_BACKEND before Keras is imported,
and the backend-neutral gradient."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfkit import backend as B
from tfkit.cli import main
from tfkit.utils import TfkitError


def _no_tpu(monkeypatch):
    monkeypatch.setattr(B.glob, "glob", lambda pattern: [])


def test_auto_is_tensorflow_on_cpu(monkeypatch):
    _no_tpu(monkeypatch)
    assert B.detect_backend({}) == "tensorflow"
    assert B.resolve_backend("auto", environ={}) == "tensorflow"


def test_auto_honours_keras_backend_variable(monkeypatch):
    _no_tpu(monkeypatch)
    assert B.resolve_backend("auto", environ={"KERAS_BACKEND": "jax"}) == "jax"
    with pytest.raises(TfkitError, match="KERAS_BACKEND=torch: tfkit runs on tensorflow or jax"):
        B.resolve_backend("auto", environ={"KERAS_BACKEND": "torch"})


def test_tpu_vm_with_cpu_tensorflow_means_jax(monkeypatch):
    # Kaggle's TPU image: tensorflow-cpu cannot see the chips, JAX can.
    monkeypatch.setattr(B.glob, "glob", lambda pattern: ["/dev/accel0"] if "accel" in pattern else [])
    monkeypatch.setattr(B, "tensorflow_tpu_build", lambda: False)
    assert B.tpu_attached({}) and B.detect_backend({}) == "jax"
    # the same VM with a TPU build of TensorFlow keeps TensorFlow (TPUStrategy)
    monkeypatch.setattr(B, "tensorflow_tpu_build", lambda: True)
    assert B.detect_backend({}) == "tensorflow"


def test_tpu_variables_mark_a_tpu_vm(monkeypatch):
    _no_tpu(monkeypatch)
    assert not B.tpu_attached({})
    assert B.tpu_attached({"TPU_ACCELERATOR_TYPE": "v5litepod-8"})


def test_unknown_and_missing_backends_are_one_line_errors(monkeypatch):
    with pytest.raises(TfkitError, match=r"--backend: unknown backend 'torch' \(expected one of: auto, tensorflow, jax\)"):
        B.resolve_backend("torch", "--backend")
    monkeypatch.setattr(B, "installed", lambda name: name != "jax")
    with pytest.raises(TfkitError, match=r"train.backend=jax: the jax backend is not installed \(pip install 'tfkit-vision\[jax\]'"):
        B.resolve_backend("jax")


def test_select_after_keras_import_accepts_auto_and_refuses_a_switch():
    # This pytest process imported Keras on TensorFlow.
    assert keras.backend.backend() == "tensorflow"
    assert B.select_backend("auto") == "tensorflow"
    assert B.select_backend("tensorflow") == "tensorflow"
    with pytest.raises(TfkitError, match="train.backend=jax: Keras already runs on tensorflow in this process"):
        B.select_backend("jax")


def test_cli_backend_conflict_exits_2_with_one_line(tmp_path, capsys):
    rc = main(["train", "--backend", "jax", "--records", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("tfkit: error: --backend=jax: Keras already runs on tensorflow")


def test_cli_missing_backend_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(B, "installed", lambda name: False)
    monkeypatch.delitem(sys.modules, "keras")  # as in a fresh `tfkit` process
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    rc = main(["predict", "--backend", "jax", "--run", str(tmp_path), "--records", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "the jax backend is not installed" in err and "\n" not in err
    assert os.environ.get("KERAS_BACKEND") is None  # nothing selected


def test_gradient_on_tensorflow_matches_the_analytic_one():
    x = np.array([[1.0, -2.0], [0.5, 3.0]], "float32")
    grad, aux = B.gradient(lambda t: (keras.ops.sum(t ** 3), keras.ops.sum(t)), x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grad), 3 * x ** 2, rtol=1e-6)
    assert float(aux) == pytest.approx(2.5)


# Several CLI commands in one JAX process (a JAX start-up costs ~20 s on 2 cores): argv lists as JSON.
CLI_SEQUENCE = textwrap.dedent(
    """
    import json, sys
    from tfkit.cli import main
    rcs = [main(argv) for argv in json.loads(sys.argv[1])]
    import keras
    print("RESULT", json.dumps({"rcs": rcs, "backend": keras.backend.backend()}))
    """
)


def test_backend_flag_then_show_lr_find_and_demo_run_on_jax_over_two_devices(small_records, jax_env, tmp_path):
    # No KERAS_BACKEND: the first command's --backend jax selects JAX before anything imports Keras.
    env = {k: v for k, v in jax_env.items() if k != "KERAS_BACKEND"}
    tiny = ["data.image_size=16", "data.batch_size=8", "model.width=4"]
    argvs = [["show", "--backend", "jax", "--records", str(small_records), "--out", str(tmp_path / "show"),
              "--n", "2", "--draws", "1"],
             ["lr-find", "--backend", "jax", "--records", str(small_records), "--out", str(tmp_path / "lr"),
              "--steps", "12", "--max-lr", "0.01", "--set", *tiny],
             ["demo", "--quick", "--backend", "jax", "--out", str(tmp_path / "demo")]]
    proc = subprocess.run([sys.executable, "-c", CLI_SEQUENCE, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=900, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    assert json.loads(lines[-1][7:]) == {"rcs": [0, 0, 0], "backend": "jax"}
    assert (tmp_path / "show" / "augment_grid.png").is_file()
    sweep = __import__("pandas").read_csv(tmp_path / "lr" / "lr_find.csv")
    assert len(sweep) == 12 and sweep["lr"].is_monotonic_increasing and np.isfinite(sweep["loss"]).any()
    assert (tmp_path / "lr" / "lr_find.png").is_file() and "suggest" in proc.stdout.lower()
    demo = tmp_path / "demo"
    done = json.loads((demo / "run" / "fold0" / "done.json").read_text())
    assert done["runtime"]["backend"] == "jax" and done["replicas"] == 2
    for rel in ("submission.csv", "run/cv.json", "run/report/report.html", "run/fold1/model.keras"):
        assert (demo / rel).is_file(), rel
    assert "held-out test accuracy" in proc.stdout
