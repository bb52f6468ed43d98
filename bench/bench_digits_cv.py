"""5-fold CV accuracy of tfkit's default digits config vs scikit-learn's RBF SVC, same folds.

Exports the embedded digits dataset, builds fold-sharded records, trains every
fold with ``tfkit/configs/digits.yaml`` and scores an RBF SVC (C=10, gamma
"scale", raw 8x8 pixels) on exactly the same train split and fold assignment
(the records' ``folds.csv``). Prints both CV accuracies and the wall time.

Usage:
    python bench/bench_digits_cv.py [--quick] [--work DIR] [--size 32] [--set train.epochs=20] [--backend jax]

Quality bar (issue 4): CV accuracy >= 0.99 within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = Path(__file__).resolve().parents[1] / "tfkit" / "configs" / "digits.yaml"


def svc_cv(data_dir: Path, folds_csv: Path) -> tuple[float, float]:
    """RBF SVC 5-fold accuracy on the raw 8x8 pixels, with the records' folds."""
    import numpy as np
    import pandas as pd
    from PIL import Image
    from sklearn.svm import SVC

    train = pd.read_csv(data_dir / "train.csv", dtype={"id": str})
    folds = pd.read_csv(folds_csv, dtype={"id": str})
    frame = train.merge(folds, on="id", validate="one_to_one")
    x = np.stack([np.asarray(Image.open(data_dir / "images" / f"{i}.png"), dtype=np.float64).ravel() / 255.0
                  for i in frame["id"]])
    y = frame["label"].to_numpy()
    t0 = time.time()
    correct = 0
    for k in sorted(frame["fold"].unique()):
        tr, va = frame["fold"].to_numpy() != k, frame["fold"].to_numpy() == k
        correct += int((SVC(C=10, gamma="scale").fit(x[tr], y[tr]).predict(x[va]) == y[va]).sum())
    return correct / len(y), time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 epochs, 2 folds: a smoke test, not the figure")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--size", type=int, default=16, help="records image side (default 16; the scans are 8x8)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    p.add_argument("--backend", choices=["auto", "tensorflow", "jax"], default="auto",
                   help="Keras backend (JAX over several host devices: XLA_FLAGS=--xla_force_host_platform_device_count=2)")
    args = p.parse_args(argv)

    from tfkit.backend import select_backend

    args.overrides.append(f"train.backend={select_backend(args.backend, '--backend')}")  # before Keras' import

    from tfkit.config import load_config
    from tfkit.datasets import export_dataset
    from tfkit.records import build_records
    from tfkit.train import train

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_digits_"))
    data, records, run = work / "data", work / "records", work / "run"
    t0 = time.time()
    export_dataset("digits", data, overwrite=True)
    build_records(data / "train.csv", data / "images", records, size=args.size, n_folds=5, seed=42,
                  overwrite=True, progress=False)
    t_prep = time.time() - t0
    overrides = list(args.overrides)
    folds = None
    if args.quick:
        overrides.append("train.epochs=2")
        folds = [0, 1]
    cfg = load_config(CONFIG, overrides)
    t1 = time.time()
    cv = train(cfg, records, run, folds=folds)
    t_train = time.time() - t1
    svc_acc, t_svc = svc_cv(data, records / "folds.csv")
    acc = cv["metrics"]["accuracy"]
    print()
    print(f"{'method':<34} {'5-fold CV accuracy':>18} {'seconds':>9}")
    print(f"{'tfkit small_cnn (digits.yaml)':<34} {acc:>18.4f} {t_train:>9.1f}")
    print(f"{'sklearn SVC rbf C=10 (8x8 pixels)':<34} {svc_acc:>18.4f} {t_svc:>9.1f}")
    print(f"accuracy difference tfkit - SVC: {acc - svc_acc:+.4f}; export + records: {t_prep:.1f} s; "
          f"total wall: {time.time() - t0:.1f} s; folds trained: {cv['n_folds_trained']}/{cv['n_folds']}")
    if not args.quick:
        ok = acc >= 0.99 and t_train <= 600
        print(f"quality bar (accuracy >= 0.99, training <= 600 s): {'PASS' if ok else 'FAIL'}")
    print(f"run folder: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
