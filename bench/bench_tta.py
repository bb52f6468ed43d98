"""TTA throughput: images/s of the fold-ensemble predictor with 1 view and with 8 views.

All 8 dihedral views of a batch go through the model in one forward pass, so
the per-image cost of 8 views should stay at or below 8.5x one view (decode,
batching and Python overheads are paid once per batch, not per view).

    python bench/bench_tta.py [--quick] [--n 2048] [--size 64] [--batch 64] [--repeats 5]

Prints a table (median images/s over repeats, measured side by side in
alternation) and the ratio of per-image cost 8 views / 1 view.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small setting (seconds)")
    ap.add_argument("--n", type=int, default=2048, help="images per pass")
    ap.add_argument("--size", type=int, default=64, help="image side")
    ap.add_argument("--batch", type=int, default=64, help="images per batch before TTA")
    ap.add_argument("--width", type=int, default=16, help="small_cnn width")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        args.n, args.size, args.repeats, args.width = 256, 32, 3, 8

    import keras
    import numpy as np
    import tensorflow as tf

    from tfkit.models import create_model
    from tfkit.predict import predict_proba

    keras.utils.set_random_seed(0)
    model = create_model("small_cnn", 10, args.size, width=args.width)
    images = np.random.default_rng(0).random((args.n, args.size, args.size, 3), dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(args.batch).cache().prefetch(tf.data.AUTOTUNE)
    views = (1, 8)
    for v in views:  # warm-up: trace the tf.function, fill the cache
        predict_proba([model], ds.take(2), n_views=v, progress=False)
    times: dict[int, list[float]] = {v: [] for v in views}
    for _ in range(args.repeats):
        for v in views:  # alternate so machine noise hits both alike
            t = time.perf_counter()
            predict_proba([model], ds, n_views=v, progress=False)
            times[v].append(time.perf_counter() - t)
    med = {v: statistics.median(times[v]) for v in views}
    print(f"TTA throughput: small_cnn width {args.width}, {args.n} images {args.size}px, batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'views':>5} {'images/s':>10} {'view-images/s':>14} {'s/pass':>8}")
    for v in views:
        print(f"{v:>5} {args.n / med[v]:>10.1f} {args.n * v / med[v]:>14.1f} {med[v]:>8.3f}")
    ratio = med[8] / med[1]
    print(f"per-image cost 8 views / 1 view: {ratio:.2f}x (target <= 8.5x): {'OK' if ratio <= 8.5 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
