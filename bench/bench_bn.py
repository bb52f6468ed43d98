"""BatchNorm statistics on a small real set: validated/saved models vs a full statistics recompute.

A few hundred of the embedded digits (real scans; 45 per class by default),
K-fold trained with ``small_cnn`` (BatchNorm after every conv) at ~10 steps an
epoch. For each way of keeping the BN statistics the script reports

* OOF accuracy of the saved fold models, as tfkit reports it (cv.json);
* OOF accuracy of the same models after a full recompute of their BN
  statistics over their training folds (every batch, un-augmented): what the
  weights are worth;
* median seconds of a training epoch and of the precise-BN pass, and their ratio.

Modes: ``off`` (Keras's moving averages, momentum 0.99), ``momentum`` (the
alternative: BN momentum set from the steps per epoch so that 1% of the moving
average comes from before the epoch, ``0.01 ** (1 / steps)``), ``precise``
(``train.precise_bn: on``: the statistics recomputed before every validation).
``auto`` picks ``precise`` at these step counts (see ``tfkit.batchnorm``).

Usage:
    python bench/bench_bn.py [--per-class 45] [--epochs 12] [--modes off,momentum,precise] [--seeds 42]

Runs vary with the machine's load: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_records(work: Path, per_class: int, size: int, folds: int) -> Path:
    """A class-balanced subset of the exported digits as fold-sharded records."""
    import pandas as pd

    from tfkit.datasets import export_dataset
    from tfkit.records import build_records

    data = work / "digits"
    if not (data / "train.csv").is_file():
        export_dataset("digits", data, test_size=0.2, seed=42)
    train = pd.read_csv(data / "train.csv", dtype={"id": str})
    subset = train.groupby("label", group_keys=False).head(per_class)
    csv = work / f"digits_{per_class}.csv"
    subset.to_csv(csv, index=False)
    out = work / f"records_{per_class}_{size}_{folds}"
    if not (out / "manifest.json").is_file():
        build_records(csv=csv, images=data / "images", out=out, size=size, n_folds=folds, seed=42, workers=1,
                      progress=False, overwrite=True)
    return out


def momentum_callback(steps: int):
    """A callback that sets every trainable BN layer's momentum from the steps per epoch."""
    import keras

    from tfkit.batchnorm import STALE_SHARE, trainable_batchnorms

    class StepMomentum(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # before the train function is traced
            for layer in trainable_batchnorms(self.model):
                layer.momentum = STALE_SHARE ** (1.0 / steps)

    return StepMomentum()


def recomputed_oof(run: Path, records: Path, cfg) -> float:
    """OOF accuracy of the run's saved models after a full BN recompute over their training folds."""
    import numpy as np

    from tfkit import data as tfdata
    from tfkit.batchnorm import recompute_statistics
    from tfkit.manifest import Manifest
    from tfkit.models import load_model, predict_array
    from tfkit.records import load_manifest

    manifest = Manifest.from_dict(load_manifest(records))
    correct = total = 0
    for k in range(manifest.n_folds):
        model = load_model(run / f"fold{k}" / "model.keras")
        others = [f for f in range(manifest.n_folds) if f != k]
        every = tfdata.build_dataset(records, cfg, folds=others, mode="eval", manifest=manifest)
        recompute_statistics(model, every, max_batches=10**9)
        index = tfdata.read_index(records, folds=[k], manifest=manifest)
        proba = predict_array(model, tfdata.build_dataset(records, cfg, folds=[k], mode="predict", manifest=manifest))
        correct += int((proba.argmax(1) == index["label"].to_numpy()).sum())
        total += len(index)
    return correct / total


def run_mode(mode: str, records: Path, work: Path, overrides: list[str], seed: int) -> dict:
    import numpy as np
    import pandas as pd

    from tfkit.config import load_config
    from tfkit.data import steps_per_epoch
    from tfkit.run import RunFolder
    from tfkit.train import train

    cfg = load_config(None, [*overrides, f"train.seed={seed}",
                             f"train.precise_bn={'on' if mode == 'precise' else 'off'}"])
    from tfkit.manifest import Manifest
    from tfkit.records import load_manifest

    n_folds = Manifest.from_dict(load_manifest(records)).n_folds
    steps = steps_per_epoch(records, list(range(1, n_folds)), cfg.data.batch_size)
    tag = hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:8]  # one run folder per configuration
    out = work / f"run_{mode}_{seed}_{tag}"
    t0 = time.time()
    cv = train(cfg, records, out, callbacks=[momentum_callback(steps)] if mode == "momentum" else ())
    seconds = time.time() - t0
    folder = RunFolder(out)
    epoch_s = float(np.median(pd.concat(folder.histories().values())["time_s"]))
    passes = [folder.done(k)["precise_bn"]["seconds_per_pass"] for k in folder.finished_folds()]
    bn_s = float(np.median([p for p in passes if p is not None])) if any(p is not None for p in passes) else 0.0
    return dict(mode=mode, seed=seed, steps=steps, oof=cv["metrics"]["accuracy"],
                recomputed=recomputed_oof(out, records, cfg), epoch_s=epoch_s, bn_s=bn_s, total_s=seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=45, help="images per class (default 45: 450 images)")
    p.add_argument("--size", type=int, default=32, help="stored and model image side (default 32)")
    p.add_argument("--folds", type=int, default=4, help="folds (default 4: ~10 steps an epoch at batch 32)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--modes", default="off,momentum,precise")
    p.add_argument("--seeds", default="42", help="comma-separated training seeds")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = p.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_bn_"))
    work.mkdir(parents=True, exist_ok=True)
    records = make_records(work, args.per_class, args.size, args.folds)
    overrides = [f"data.image_size={args.size}", "data.batch_size=32", f"train.epochs={args.epochs}", "train.lr=0.003",
                 "model.width=32", "train.verbose=0", "train.mixed_precision=off", *args.overrides]
    rows = [run_mode(m, records, work, overrides, int(s)) for s in args.seeds.split(",") for m in args.modes.split(",")]
    print(f"\n{args.per_class * 10} digits, {args.folds} folds, {rows[0]['steps']} steps/epoch, {args.epochs} epochs, "
          f"small_cnn w32 at {args.size} px")
    print(f"{'mode':>9} {'seed':>5} {'OOF acc':>8} {'recomputed':>10} {'gap':>7} {'epoch_s':>8} {'bn_pass_s':>9} "
          f"{'bn/epoch':>8} {'total_s':>8}   (epoch_s: median epoch incl. validation and the BN pass)")
    for r in rows:
        print(f"{r['mode']:>9} {r['seed']:>5} {r['oof']:>8.4f} {r['recomputed']:>10.4f} {r['recomputed'] - r['oof']:>7.4f} "
              f"{r['epoch_s']:>8.2f} {r['bn_s']:>9.3f} {r['bn_s'] / r['epoch_s']:>8.2f} {r['total_s']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
