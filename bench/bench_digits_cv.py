"""5-fold CV accuracy of tfkit's default digits config vs scikit-learn's RBF SVC, same folds.

Exports the embedded digits dataset, builds fold-sharded records, trains every
fold with ``tfkit/configs/digits.yaml`` and scores an RBF SVC (C=10, gamma
"scale", raw 8x8 pixels) on exactly the same train split and fold assignment
(the records' ``folds.csv``). Prints both CV accuracies and the wall time.

Usage:
    python bench/bench_digits_cv.py [--quick] [--work DIR] [--size 32] [--set train.epochs=20] [--backend jax]
                                    [--cross-check]

Quality bar (issue 4): CV accuracy >= 0.99 within 10 minutes on 2 CPU cores.

``--cross-check`` then TTA-predicts the held-out test images with ``tfkit
predict`` on the backend that trained the run and again on the other backend
(each in its own process, as a user would), and prints the held-out accuracy of
both and the largest difference between their probabilities (issue 12: within
1e-3).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

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


def _predict(backend: str, run: Path, test_records: Path, out: Path, tta: int, mode: str):
    """``tfkit predict`` in its own process (as a user runs it); returns the submission and its seconds."""
    import subprocess

    import pandas as pd

    t0 = time.time()
    subprocess.run([sys.executable, "-m", "tfkit", "predict", "--backend", backend, "--run", str(run),
                    "--records", str(test_records), "--tta", str(tta), "--set", f"predict.tta_mode={mode}",
                    "--out", str(out)], check=True)
    return pd.read_csv(out, dtype={"id": str}).set_index("id").sort_index(), time.time() - t0


def cross_check(data_dir: Path, records: Path, run: Path, trained_on: str, size: int, tta: int = 4) -> float:
    """TTA-predict the held-out images on the training backend and on the other; print accuracy and gap.

    Both use ``predict.tta_mode=auto``: for digits (no flips in training: a 6 is
    not a 9) that is seeded passes of the training augmentation, drawn per block
    of one device's batch with counter-based draws that are equal on both
    backends, so the two predictions may differ only by float rounding.

    Returns:
        The largest absolute difference between the two backends' probabilities.
    """
    import numpy as np
    import pandas as pd

    from tfkit.records import build_records

    test_records = run.parent / "test_records"
    build_records(data_dir / "test.csv", data_dir / "images", test_records, size=size, split="test",
                  classes_from=records / "manifest.json", overwrite=True, progress=False)
    truth = pd.read_csv(data_dir / "test.csv", dtype={"id": str}).set_index("id")["label"].astype(str)
    subs = []
    for backend in (trained_on, "tensorflow" if trained_on == "jax" else "jax"):
        probs, seconds = _predict(backend, run, test_records, run.parent / f"submission_{backend}.csv", tta, "auto")
        acc = float((probs.columns[probs.to_numpy().argmax(1)] == truth.loc[probs.index].to_numpy()).mean())
        print(f"TTA x{tta} on {backend}: held-out accuracy {acc:.4f} on {len(probs)} images ({seconds:.1f} s)")
        subs.append((backend, probs))
    (k1, a), (k2, b) = subs
    gap = float(np.abs(a.to_numpy() - b.loc[a.index].to_numpy()).max())
    print(f"max |p_{k1} - p_{k2}| over {a.shape[0]} images x {a.shape[1]} classes: {gap:.2e} "
          f"(bar 1e-3: {'PASS' if gap < 1e-3 else 'FAIL'})")
    return gap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 epochs, 2 folds: a smoke test, not the figure")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--size", type=int, default=16, help="records image side (default 16; the scans are 8x8)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    p.add_argument("--backend", choices=["auto", "tensorflow", "jax"], default="auto",
                   help="Keras backend (JAX over several host devices: XLA_FLAGS=--xla_force_host_platform_device_count=2)")
    p.add_argument("--cross-check", action="store_true",
                   help="then TTA-predict the test images on both backends and compare (within 1e-3)")
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
    if args.cross_check:
        from tfkit.backend import current_backend

        cross_check(data, records, run, current_backend(), args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
