"""``tfkit demo``: the whole workflow, offline, on the embedded digits datasets.

Export the digit scans as PNGs -> build train and held-out test records ->
train the folds -> recompute the out-of-fold score with TTA -> predict the
held-out test set with every fold and TTA -> write the evaluation report ->
print the CV score, the held-out score and where every output is.

``task`` picks the dataset (:data:`DEMO_TASKS`):

* ``classification``: the 1,797 digit scans, 10 classes (the tuned digits config).
* ``multilabel``: 2x2 mosaics of scans tagged with the digits they show
  (``digits-multilabel``, Planet style): sigmoid head, binary cross-entropy,
  mean F2 over images with per-class thresholds fitted on the out-of-fold
  predictions; the submission is space-separated tags.
* ``regression``: each scan's digit as a number (``digits-regression``, APTOS
  style: an ordinal grade trained as regression): a bounded output, RMSE and
  QWK after cut points fitted on the out-of-fold predictions.

Example::

    from tfkit.demo import demo
    outputs = demo("demo", overwrite=True)
    outputs["submission"]   # PosixPath('demo/submission.csv')
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tfkit.utils import TfkitError, prepare_out_dir, write_csv

DIGITS_CONFIG = Path(__file__).parent / "configs" / "digits.yaml"
# Digits have an "up" (a 6 is not a 9): no dihedral or flip views. TTA instead
# averages seeded passes of the training augmentation (small affine, contrast).
DEMO_PREDICT = ["predict.tta=4", "predict.tta_mode=augment", "predict.average=mean"]
QUICK = [
    "data.image_size=16", "model.width=4", "train.epochs=1",
    "train.warmup_epochs=0", "train.verbose=0", "predict.tta=2",
]
QUICK_ROWS = (120, 40)  # train, test images of the quick subset


def quick_batch_size(n_replicas: int, train_rows: int = QUICK_ROWS[0] // 2 - 4) -> int:
    """Per-device batch of ``--quick``: 32, or less so that one global batch (per-device batch
    x replicas) fits in a training fold of the quick subset (60 rows, a few less when the
    stratified halves are uneven): on a TPU v5e-8 a global batch of 256 would not.

    Example:
        >>> quick_batch_size(1), quick_batch_size(2), quick_batch_size(8)
        (32, 28, 7)
    """
    return max(1, min(32, train_rows // n_replicas))


@dataclasses.dataclass(frozen=True)
class DemoTask:
    """One demo: which embedded dataset, how its labels are read, what changes in the digits config.

    Attributes:
        dataset: a :data:`tfkit.datasets.DATASETS` name.
        labels: :func:`tfkit.records.build_records` keyword arguments naming the label columns.
        overrides: ``--set`` overrides on top of ``configs/digits.yaml``.
        stratify: CSV column the quick subset takes in turn (None: the first rows).
    """

    dataset: str
    labels: dict
    overrides: tuple[str, ...] = ()
    stratify: str | None = "label"


DEMO_TASKS = {
    "classification": DemoTask("digits", {"label_col": "label"}),
    "multilabel": DemoTask(
        "digits-multilabel", {"label_col": "tags", "label_sep": " "},
        # The mosaics are 16x16 (four 8x8 scans): 32 px gives each digit the 16 px of the digits
        # demo. 359 mosaics: batches of 16 give 18 steps per epoch, enough updates for BatchNorm's
        # moving statistics (with the digits' 64, OOF mAP fell from 0.996 to 0.71).
        # Binary cross-entropy: the asymmetric loss (train.loss=asl) scored the same here
        # (OOF mean F2 with tuned thresholds 0.975 vs 0.978; README).
        ("data.image_size=32", "data.batch_size=16", "train.loss=crossentropy", "train.label_smoothing=0",
         "train.metrics=[f2_samples_tuned,f1_samples_tuned,map,auc,f2_samples]",
         "predict.output=label", "predict.label_columns=[tags]"),
        stratify=None,
    ),
    "regression": DemoTask(
        "digits-regression", {"label_col": None, "target_cols": ["value"]},
        ("model.task=regression", "model.output_range=[0,9]", "train.loss=huber", "train.label_smoothing=0",
         "train.metrics=[rmse,qwk_tuned,qwk,mae,pearson,spearman]", "train.monitor=val_loss"),
        stratify="value",
    ),
}


def _subset(csv: Path, n: int, out: Path, by: str | None = "label") -> Path:
    """The first ``n`` rows per the CSV's order, stratified by taking each value of ``by`` in turn."""
    frame = pd.read_csv(csv, dtype={"id": str})
    if by is None:
        write_csv(out, frame.head(n))
        return out
    per_class = max(1, n // frame[by].nunique())
    write_csv(out, frame.groupby(by, group_keys=False).head(per_class).sort_values("id"))
    return out


def demo(out: str | os.PathLike = "demo", overwrite: bool = False, quick: bool = False,
         task: str = "classification") -> dict[str, Any]:
    """Run export -> records -> 5-fold training -> TTA predictions -> report on the digits.

    Args:
        out: demo folder (created; a non-empty one needs ``overwrite``).
        overwrite: replace the contents of a non-empty ``out``.
        quick: tiny setting for smoke tests (a subset of the images, 2 folds,
            1 epoch of a 4-channel CNN): seconds, not a meaningful score.
        task: ``classification``, ``multilabel`` or ``regression`` (:data:`DEMO_TASKS`).

    Returns:
        ``{"cv": cv dict, "cv_tta": oof TTA dict, "test_metrics": {...}, "seconds": float,
        "data", "records", "test_records", "run", "submission", "report": paths}``.

    Example::

        demo("/tmp/demo", overwrite=True, quick=True)["test_metrics"]["accuracy"]
    """
    from tfkit.config import load_config
    from tfkit.datasets import export_dataset
    from tfkit.predict import oof_tta, predict
    from tfkit.records import build_records
    from tfkit.report import report
    from tfkit.train import train

    if task not in DEMO_TASKS:
        raise TfkitError(f"demo --task: expected one of {', '.join(DEMO_TASKS)}, got {task!r}")
    spec = DEMO_TASKS[task]
    t0 = time.time()
    out = prepare_out_dir(out, overwrite, what="demo folder")
    overrides = DEMO_PREDICT + list(spec.overrides)
    if quick:
        from tfkit.strategy import get_strategy, replicas

        overrides += QUICK + [f"data.batch_size={quick_batch_size(replicas(get_strategy()))}"]
    cfg = load_config(DIGITS_CONFIG, overrides)
    size = int(cfg.data.image_size)
    n_folds = 2 if quick else 5

    print(f"[1/6] exporting the {spec.dataset} dataset -> {out / 'data'}")
    data = export_dataset(spec.dataset, out / "data", test_size=0.2, seed=42)
    train_csv, test_csv = Path(data["train_csv"]), Path(data["test_csv"])
    if quick:
        train_csv = _subset(train_csv, QUICK_ROWS[0], out / "train_quick.csv", spec.stratify)
        test_csv = _subset(test_csv, QUICK_ROWS[1], out / "test_quick.csv", spec.stratify)

    print(f"[2/6] building records ({size} px, {n_folds} folds) -> {out / 'records'}")
    records, test_records = out / "records" / "train", out / "records" / "test"
    build_records(csv=train_csv, images=data["images"], out=records, size=size, n_folds=n_folds, seed=42,
                  progress=not quick, **spec.labels)
    build_records(csv=test_csv, images=data["images"], out=test_records, size=size, split="test",
                  classes_from=records / "manifest.json", progress=not quick, **spec.labels)

    print(f"[3/6] training {n_folds} folds ({cfg.model.name}, {cfg.train.epochs} epochs) -> {out / 'run'}")
    run = out / "run"
    cv = train(cfg, records, run)

    print(f"[4/6] out-of-fold predictions with {cfg.predict.tta} {cfg.predict.tta_mode} TTA views")
    cv_tta = oof_tta(run, records, progress=not quick)

    print("[5/6] predicting the held-out test set with every fold and TTA")
    submission = out / "submission.csv"
    sub = predict(run, submission, records=test_records, progress=not quick)

    print("[6/6] writing the report")
    page = report(run, records=records)

    primary = cv["primary"]
    held = sub.attrs.get("metrics", {})
    seconds = time.time() - t0
    print()
    print(f"CV {primary} (out-of-fold, {n_folds} folds): {cv['metrics'][primary]:.4f}"
          f"  | with TTA: {cv_tta['tta'][primary]:.4f}")
    if primary in held:
        print(f"held-out test {primary} ({len(sub)} images, {n_folds}-fold ensemble + TTA): {held[primary]:.4f}")
    print(f"finished in {seconds:.0f} s. Outputs:")
    outputs = {
        "data": out / "data", "records": records, "test_records": test_records, "run": run,
        "submission": submission, "report": page,
    }
    for name, path in outputs.items():
        print(f"  {name:<13} {path}")
    print(f"  {'cv':<13} {run / 'cv.json'} (with TTA: {run / 'cv_tta.json'})")
    return dict(outputs, cv=cv, cv_tta=cv_tta, test_metrics=held, seconds=seconds)
