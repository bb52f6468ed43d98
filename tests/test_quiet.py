"""Quiet output: no TensorFlow C++ start-up lines, no retracing warnings, `--verbose` shows everything.

The end-to-end checks run the real CLI in a subprocess whose environment has no
``TF_CPP_MIN_LOG_LEVEL`` (what a new user has).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tfkit.quiet import held_stderr, is_startup_noise

ROOT = Path(__file__).resolve().parents[1]
# What must never reach a user without --verbose.
NOISE = re.compile(r"absl|oneDNN|cpu_feature_guard|retracing|^[IWE]\d{4} ", re.M)


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFKIT_QUIET_TF_LOG", "TFKIT_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _py(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(**env),
                          timeout=600)


def test_startup_noise_patterns():
    assert is_startup_noise("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    assert is_startup_noise("I0000 00:00:1796218391.312143    7673 port.cc:153] oneDNN custom operations are on.\n")
    assert is_startup_noise("I0000 00:00:1796218391.353527    7673 cpu_feature_guard.cc:227] This TensorFlow binary\n")
    assert is_startup_noise("2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not\n")
    # errors and Python output are never held back
    assert not is_startup_noise("E0000 00:00:1.0  1 op_kernel.cc:1] Something failed\n")
    assert not is_startup_noise("Traceback (most recent call last):\n")
    assert not is_startup_noise("tfkit: error: train.lr: expected a number\n")


def test_held_stderr_replays_everything_but_the_chatter(capfd):
    with held_stderr():
        os.write(2, b"I0000 00:00:1.5  7673 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"a real message\n")
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err
    # (pytest's sys.stderr bypasses fd 2, so only the set of lines is compared)
    assert sorted(err.splitlines()) == ["a real message", "from python"]


def test_import_is_quiet_and_verbose_shows_everything():
    # find_spec first: a mere lookup (tfkit.records does one) must not use up the quiet import.
    code = ("import importlib.util, sys, tfkit; importlib.util.find_spec('tensorflow'); import tensorflow; "
            "print(type(tensorflow.__spec__.loader).__name__, file=sys.stderr)")
    quiet = _py(code)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "SourceFileLoader\n"  # nothing else, and the module keeps its real loader
    loud = _py(code, TFKIT_VERBOSE="1")
    assert any(is_startup_noise(line) for line in loud.stderr.splitlines()), loud.stderr
    # A level chosen by the user is theirs: tfkit then holds nothing back.
    own = _py(code, TF_CPP_MIN_LOG_LEVEL="0")
    assert any(is_startup_noise(line) for line in own.stderr.splitlines()), own.stderr


def test_train_via_cli_prints_no_tensorflow_chatter(small_records, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tfkit", "train", "--records", str(small_records), "--out", str(out),
           "--set", "train.epochs=1", "data.image_size=16", "data.batch_size=8", "train.verbose=0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=900)
    assert res.returncode == 0, res.stderr
    assert "CV accuracy" in res.stdout
    text = res.stdout + res.stderr
    assert not NOISE.search(text), NOISE.search(text).group(0) + "\n" + text[-3000:]
    assert res.stderr == "", res.stderr


# `tfkit demo` is checked for chatter by tests/test_demo.py::test_demo_quick_via_cli, which runs it the same way.


_EVERY_LOGGED_METRIC = """
import tfkit  # first, as the CLI: tfkit sets TF_CPP_MIN_LOG_LEVEL=2 and holds TensorFlow's start-up lines
import numpy as np, tensorflow as tf
from tfkit.metrics import TASK_METRICS, keras_metrics
for task, c in (("binary", 1), ("multiclass", 4), ("multilabel", 4), ("regression", 1), ("distribution", 4)):
    metrics = keras_metrics(list(TASK_METRICS[task]) + ["pearson", "emd"], task, 5 if task == "regression" else c)
    y = tf.constant(np.eye(c, dtype="float32")[np.arange(6) % c] if c > 1 else np.arange(6.0)[:, None] % 2)
    step = tf.function(lambda y, p: [m.update_state(y, p) for m in metrics] and [m.result() for m in metrics])
    print(task, [round(float(v), 3) for v in step(y, tf.ones_like(y) * 0.3)])
"""


def test_no_logged_metric_makes_onednn_print_an_error_line():
    # keras.metrics.AUC's multi-label path (once tfkit's streaming mAP) made oneDNN print
    # "E0000 ... oneDNN supports DT_BOOL only on platforms with AVX-512" in every multi-label run: an
    # ERROR-level C++ line that TF_CPP_MIN_LOG_LEVEL=2 (tfkit's default) lets through. Every metric a
    # run of any task logs runs here, in a graph, as in training.
    res = _py(_EVERY_LOGGED_METRIC)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(res.stdout.splitlines()) == 5
    # (this script's own tf.function per task may warn about retracing: only C++ lines are asked about)
    assert not re.search(r"absl|oneDNN|^[IWE]\d{4} ", res.stderr, re.M), res.stderr[-3000:]
