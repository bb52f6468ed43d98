"""Memory across tuning trials: RSS after each of >= 10 tiny trials, and the slope.

Runs ``tfkit.tune.tune`` (random search, one fold per trial, small_cnn width 4,
32 px, 1 epoch) on the embedded digits and reads the process RSS at the start
of every trial, for three variants side by side: each trial in its own
spawned process (``isolate=True``, the CLI default), in-process after
``clear_session()`` + ``gc`` (``isolate=False``), and with ``--control``
in-process without any cleanup.

Usage:
    python bench/bench_tune_memory.py [--quick] [--trials 12] [--control]

Prints one row per trial (RSS in MiB) and, per variant, the least-squares
slope in MiB/trial over the trials after the first two (warm-up: TF/XLA
caches fill once).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_records(root: Path, n_rows: int | None) -> Path:
    import pandas as pd

    from tfkit.datasets import export_dataset
    from tfkit.records import build_records

    export = root / "digits"
    export_dataset("digits", export, test_size=0.2, seed=42)
    csv = export / "train.csv"
    if n_rows:
        train = pd.read_csv(csv, dtype={"id": str})
        train.groupby("label", group_keys=False).head(n_rows // 10).to_csv(root / "subset.csv", index=False)
        csv = root / "subset.csv"
    out = root / "records"
    build_records(csv=csv, images=export / "images", out=out, size=32, n_folds=3, seed=42, workers=1,
                  progress=False)
    return out


def run(records: Path, out: Path, trials: int, variant: str) -> list[float]:
    """RSS of this (the searching) process at the start of each trial, then at the end."""
    from tfkit import tune as T
    from tfkit.config import load_config

    cfg = load_config(None, [
        "model.name=small_cnn", "model.width=4", "data.image_size=32", "data.batch_size=32", "train.epochs=1",
        "train.verbose=0", "train.mixed_precision='off'", "train.warmup_epochs=0",
    ])
    space = {"train.lr": {"min": 1e-3, "max": 1e-2, "log": True}, "model.dropout": {"min": 0.0, "max": 0.5},
             "model.width": {"min": 4, "max": 8, "step": 4}}
    samples: list[float] = []
    saved = {name: getattr(T, name) for name in ("_train_folds", "_run_isolated", "_release_memory")}
    hook = "_run_isolated" if variant == "isolated" else "_train_folds"

    def measured(*args, **kwargs):
        samples.append(rss_mib())
        return saved[hook](*args, **kwargs)

    setattr(T, hook, measured)
    if variant == "control":
        T._release_memory = lambda: None
    try:
        T.tune(cfg, space, records, out, tuner="random", max_trials=trials, objective="val_accuracy", fold=0,
               isolate=variant == "isolated")
    finally:
        for name, fn in saved.items():
            setattr(T, name, fn)
    samples.append(rss_mib())  # after the last trial's cleanup
    return samples


def slope(values: list[float]) -> float:
    import numpy as np

    y = np.asarray(values[2:], dtype=float)
    return float(np.polyfit(np.arange(len(y)), y, 1)[0]) if len(y) >= 2 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 digits instead of 1,437 (seconds per trial)")
    p.add_argument("--trials", type=int, default=12, help="trials per variant (>= 10)")
    p.add_argument("--control", action="store_true", help="also run in-process without any per-trial cleanup")
    args = p.parse_args(argv)
    if args.trials < 10:
        p.error("--trials must be at least 10")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.time()
        records = make_records(root, 200 if args.quick else None)
        variants = {"isolated": "process per trial", "in_process": "in-process, clear_session+gc"}
        if args.control:
            variants["control"] = "in-process, no clearing"
        results = {}
        for key, name in variants.items():
            results[name] = run(records, root / f"tune_{key}", args.trials, key)
        names = list(results)
        print(f"\nRSS (MiB) at the start of each trial; last row: after the search  [{time.time() - t0:.0f} s]")
        print("trial  " + "  ".join(f"{n:>24}" for n in names))
        for i in range(args.trials + 1):
            label = f"{i:>5}" if i < args.trials else "  end"
            print(label + "  " + "  ".join(f"{results[n][i]:>24.1f}" for n in names))
        for n in names:
            v = results[n]
            print(f"{n}: slope {slope(v[:-1]):+.2f} MiB/trial over trials 2..{args.trials - 1}; "
                  f"growth trial 2 -> end {v[-1] - v[2]:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
