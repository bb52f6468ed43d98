"""Augmentation alone, on both backends: img/s of ``augment_batch`` on one batch
already in memory (no decoding), side by side in ONE run, medians over rounds.

  tf-xla  the host path: ``tfkit.augment.batch_augmenter`` (TensorFlow ops, XLA)
  jax     the device path on JAX: ``jax.jit(augment_batch)`` on ``jax.Array``s
          (here on the CPU; on a TPU/GPU it runs on the accelerator)

Configs: the "lesion" preset (what ``bench_pipeline.py`` times), and that preset
plus the new ops (gamma, posterize, solarize, equalize, sharpness, GridMask,
RandAugment n=2). Also checks that both backends give the same batch.

Usage:
    python bench/bench_augment.py            # batch 64, 512 -> 384 px, 7 rounds
    python bench/bench_augment.py --quick    # batch 16, 256 -> 192 px, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfkit.augment import augment_batch, batch_augmenter  # noqa: E402
from tfkit.config import AUGMENT_PRESETS, AugmentConfig  # noqa: E402

CONFIGS = {
    "lesion": AugmentConfig(**AUGMENT_PRESETS["lesion"]),
    "lesion+new ops": AugmentConfig(
        **AUGMENT_PRESETS["lesion"], gamma_p=0.3, gamma=0.2, posterize_p=0.2, posterize_bits=4, solarize_p=0.2,
        solarize=0.3, equalize_p=0.2, sharpness_p=0.3, sharpness=0.5, gridmask_p=0.3, randaugment_n=2),
}


def _timer(fn, rounds: int, reps: int) -> list[float]:
    for _ in range(3):  # compile, then warm up (the first calls after a compile run slow)
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t) / reps)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    batch, size, out = (16, 256, 192) if args.quick else (64, 512, 384)
    rounds, reps = (3, 2) if args.quick else (7, 3)
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[np.arange(batch) % 10]
    xt, yt, xj, yj = tf.constant(x), tf.constant(y), jnp.asarray(x), jnp.asarray(y)
    print(f"tf {tf.__version__}, jax {jax.__version__} ({jax.default_backend()}), {os.cpu_count()} cpus; "
          f"batch {batch}, {size} -> {out} px, {rounds} rounds x {reps} batches")
    print("\n| config | tf-xla img/s | jax img/s | jax / tf | max abs diff |\n|---|---:|---:|---:|---:|")
    for name, cfg in CONFIGS.items():
        tf_fn = batch_augmenter(cfg, out)
        jax_fn = jax.jit(lambda x, y, s, cfg=cfg: augment_batch(x, y, cfg, out, s))
        seed_t, seed_j = tf.constant([1, 2], tf.int64), jnp.asarray([1, 2], jnp.int32)
        run_tf = lambda: tf_fn(xt, yt, seed_t)[0].numpy()  # noqa: E731
        run_jax = lambda: np.asarray(jax_fn(xj, yj, seed_j)[0])  # noqa: E731
        diff = float(np.abs(run_tf() - run_jax()).max())
        for _ in range(3):
            run_tf(), run_jax()
        t_tf, t_jax = [], []
        for _ in range(rounds):  # interleaved rounds: load changes hit both alike
            t_tf += _timer(run_tf, 1, reps)
            t_jax += _timer(run_jax, 1, reps)
        a, b = batch / statistics.median(t_tf), batch / statistics.median(t_jax)
        print(f"| {name} | {a:.0f} | {b:.0f} | {b / a:.2f} | {diff:.1e} |")
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
