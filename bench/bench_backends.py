"""Keras on JAX vs TensorFlow: training steps/s and first-step (compile) time, side by side.

Same model (tfkit's ``small_cnn`` and ``efficientnet_b0``, random weights), same synthetic
data, same batch, ``jit_compile=True``, AdamW + cross-entropy, on each backend in its own
process (Keras fixes its backend at import). The input is ``tf.data`` (host), as in
tfkit; where TensorFlow is not installed (GPU machines with JAX only) the batches come
from NumPy, and the table says so.

    python bench/bench_backends.py                       # CPU, both models
    python bench/bench_backends.py --models small_cnn --steps 40
    python bench/bench_backends.py --device gpu          # the GPU(s), when there are

Figures: ``first step`` is the wall time of the first training step (tracing + XLA
compilation + one step); ``steps/s`` is measured over the following steps, each
synchronised by reading its loss. Runs vary 15-25% on a shared machine: compare the
ratios of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

MODELS = {"small_cnn": dict(width=32), "efficientnet_b0": {}}


def worker(args: argparse.Namespace) -> dict:
    """One backend, one model: build, compile, time the steps (runs in a subprocess)."""
    import keras
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tfkit.models import create_model

    keras.utils.set_random_seed(0)
    model = create_model(args.model, 10, args.size, dropout=0.0, **MODELS[args.model])
    model.compile(keras.optimizers.AdamW(1e-3), "categorical_crossentropy", jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch * 4, args.size, args.size, 3), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, args.batch * 4)]
    feed = "tf.data"
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        if keras.backend.backend() == "jax":
            tf.config.set_visible_devices([], "GPU")  # TensorFlow only feeds: keep it off the GPU
        data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(args.batch, drop_remainder=True).prefetch(2)
    else:
        feed = "NumPy (no TensorFlow)"

        def batches():
            i = 0
            while True:
                j = (i % 4) * args.batch
                yield x[j:j + args.batch], y[j:j + args.batch]
                i += 1

        data = batches()

    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            times.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step (JAX dispatches asynchronously)
            times.append(time.perf_counter())

    model.fit(data, steps_per_epoch=args.steps + 1, epochs=1, verbose=0, callbacks=[Clock()])
    steps = np.diff(times)
    return {
        "backend": keras.backend.backend(), "model": args.model, "feed": feed, "device": _device(keras),
        "first_step_s": float(steps[0]), "steps_per_s": float(len(steps[1:]) / steps[1:].sum()),
    }


def _device(keras) -> str:
    if keras.backend.backend() == "jax":
        import jax

        devs = jax.devices()
        return f"{len(devs)} x {devs[0].platform}"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"{len(gpus)} x gpu" if gpus else "cpu"


def run_one(backend: str, model: str, args: argparse.Namespace) -> dict | None:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if args.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--size", str(args.size), "--batch",
           str(args.batch), "--steps", str(args.steps[model] if isinstance(args.steps, dict) else args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"  {backend} {model}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument("--batch", type=int, default=32, help="batch (default 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps after the first (default 30 small_cnn, 6 efficientnet_b0)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="cpu (default) or the GPU(s)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="small_cnn", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.steps = args.steps or 10
        print("RESULT " + json.dumps(worker(args)))
        return
    args.steps = {"small_cnn": args.steps or 30, "efficientnet_b0": args.steps or 6}
    backends = [b for b in ("tensorflow", "jax") if importlib.util.find_spec(b) is not None]
    print(f"size {args.size}, batch {args.batch}, device {args.device}; backends: {', '.join(backends)}")
    print(f"{'model':<16} {'backend':<11} {'device':<9} {'feed':<22} {'first step s':>12} {'steps/s':>8}")
    for model in args.models:
        got = {b: run_one(b, model, args) for b in backends}
        for b, r in got.items():
            if r:
                print(f"{model:<16} {b:<11} {r['device']:<9} {r['feed']:<22} {r['first_step_s']:>12.1f} {r['steps_per_s']:>8.2f}")
        if got.get("tensorflow") and got.get("jax"):
            tf_r, jx = got["tensorflow"], got["jax"]
            print(f"{model:<16} {'jax / tf':<11} {'':<9} {'':<22} {jx['first_step_s'] / tf_r['first_step_s']:>11.2f}x "
                  f"{jx['steps_per_s'] / tf_r['steps_per_s']:>7.2f}x")


if __name__ == "__main__":
    main()
