"""Label-noise cleaning on the digits with labels flipped on purpose: how much of the
flipped set does ``tfkit clean`` find, and how much of its list is really flipped?

Exports the embedded digits, flips a known share of the training labels to another
class (seeded), builds records and trains a small K-fold run on the noisy labels,
then lists, at several thresholds, the images whose out-of-fold prediction is
another class with at least that probability. Prints per threshold: images
flagged, flipped among them, precision (flipped / flagged) and recall (flagged
flipped / all flipped). With ``--retrain`` it also rebuilds the records with
``--exclude`` the list at ``--clean-threshold``, trains again and compares the
held-out test accuracy (test labels are clean) of both runs side by side.

Usage:
    python bench/bench_clean.py [--rate 0.1] [--epochs 8] [--retrain] [--work DIR] [--set key=value]

Label smoothing is off by default here: with smoothing s over C classes a
prediction's probability cannot exceed 1 - s + s/C (0.91 for the digits config's
0.1), so a 0.9 threshold would flag almost nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = Path(__file__).resolve().parents[1] / "tfkit" / "configs" / "digits.yaml"
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def flip_labels(train_csv: Path, out_csv: Path, rate: float, seed: int) -> set[str]:
    """Write ``out_csv`` with ``rate`` of the labels moved to another class; return the flipped ids."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(train_csv, dtype={"id": str})
    rng = np.random.default_rng(seed)
    n_classes = frame["label"].nunique()
    flipped = rng.choice(len(frame), int(round(rate * len(frame))), replace=False)
    shift = rng.integers(1, n_classes, flipped.size)
    frame.loc[flipped, "label"] = (frame.loc[flipped, "label"].to_numpy() + shift) % n_classes
    frame.to_csv(out_csv, index=False)
    return set(frame["id"].iloc[flipped])


def precision_recall(view, flipped: set[str]) -> list[dict]:
    """Flagged, flipped among them, precision and recall at each threshold."""
    from tfkit.clean import flag_noisy

    rows = []
    for t in THRESHOLDS:
        ids = set(flag_noisy(view, t)["id"])
        hit = len(ids & flipped)
        rows.append(dict(threshold=t, flagged=len(ids), flipped_found=hit,
                         precision=hit / len(ids) if ids else float("nan"), recall=hit / len(flipped)))
    return rows


def held_out(run: Path, test_records: Path) -> dict:
    """Held-out metrics of a run's fold ensemble on the (clean) test records."""
    from tfkit.predict import predict

    return predict(run, out=None, records=test_records, tta=1, progress=False).attrs["metrics"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=0.1, help="share of training labels flipped (default 0.1)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the flips")
    p.add_argument("--retrain", action="store_true", help="also train on the cleaned records and compare test accuracy")
    p.add_argument("--clean-threshold", type=float, default=0.9, help="threshold of the cleaned rebuild (default 0.9)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = p.parse_args(argv)

    from tfkit.clean import clean
    from tfkit.config import load_config
    from tfkit.datasets import export_dataset
    from tfkit.records import build_records
    from tfkit.run_view import read_run
    from tfkit.train import train

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_clean_"))
    t0 = time.time()
    data = export_dataset("digits", work / "digits", overwrite=True)
    flipped = flip_labels(data["train_csv"], work / "train_noisy.csv", args.rate, args.seed)
    common = dict(images=data["images"], size=16, progress=False)
    build_records(csv=work / "train_noisy.csv", out=work / "records", overwrite=True, **common)
    build_records(csv=data["test_csv"], out=work / "records_test", split="test", overwrite=True,
                  classes_from=work / "records" / "manifest.json", **common)
    cfg = load_config(CONFIG, [f"train.epochs={args.epochs}", "model.width=16", "data.batch_size=16",
                               "train.label_smoothing=0.0", "train.verbose=0", *args.overrides])
    cv = train(cfg, work / "records", work / "run_noisy")
    view = read_run(work / "run_noisy")
    print(f"\n{len(flipped)} of {len(view.oof)} training labels flipped ({args.rate:.0%}, seed {args.seed}); "
          f"OOF accuracy against the noisy labels {cv['metrics']['accuracy']:.4f}")
    print(f"{'threshold':>9} {'flagged':>8} {'flipped':>8} {'precision':>10} {'recall':>8}")
    for r in precision_recall(view, flipped):
        print(f"{r['threshold']:>9.2f} {r['flagged']:>8d} {r['flipped_found']:>8d} {r['precision']:>10.3f} {r['recall']:>8.3f}")
    if args.retrain:
        clean(work / "run_noisy", work / "clean", threshold=args.clean_threshold, overwrite=True)
        build_records(csv=work / "train_noisy.csv", out=work / "records_clean", overwrite=True,
                      exclude=work / "clean" / "flagged.csv", **common)
        train(cfg, work / "records_clean", work / "run_clean")
        noisy, cleaned = held_out(work / "run_noisy", work / "records_test"), \
            held_out(work / "run_clean", work / "records_test")
        print(f"held-out test set (clean labels); training images {len(view.oof)} noisy -> "
              f"{len(read_run(work / 'run_clean').oof)} cleaned at {args.clean_threshold}")
        for name in ("accuracy", "log_loss"):
            print(f"  {name:<9} noisy {noisy[name]:.4f}  cleaned {cleaned[name]:.4f}  ratio {cleaned[name] / noisy[name]:.4f}")
    print(f"wall time {time.time() - t0:.0f} s, work folder {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
