"""Does distillation or pseudo-labelling move CV? A small student on the embedded digits, three ways.

Exports the embedded digits (1,437 train / 360 test scans), builds 16 px records
(3 folds by default, seed 42) and test records, trains a strong teacher once (small_cnn
width 32, ``tfkit/configs/digits.yaml``, 15 epochs, batch 32) and predicts the test records with it
(the pseudo-label submission). Then a weak student (small_cnn width 8, 6
epochs, batch 16, same augmentation) is trained per seed:

* ``baseline``: hard labels;
* ``teacher``: ``train.teacher`` = the teacher run (soft OOF targets, ``--weight``, ``--temperature``);
* ``pseudo``: ``train.pseudo`` = the teacher's test submission (confident rows, ``--threshold``);
* ``both``: teacher and pseudo.

Prints per seed and as medians over seeds: the student's K-fold CV accuracy and
log loss (OOF, always against the true labels) and its accuracy on the 360
held-out test images (fold ensemble, no TTA). The pseudo students trained on
those test images with the teacher's labels, so their test column is transductive
(what a competition allows) and not comparable with the others'; their CV is.
The load average is printed at the start and the end (the machine is shared).

Usage:
    python bench/bench_distill.py [--seeds 3] [--folds 3] [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = Path(__file__).resolve().parents[1] / "tfkit" / "configs" / "digits.yaml"
ARMS = ("baseline", "teacher", "pseudo", "both")


def prepare(work: Path, n_folds: int) -> tuple[Path, Path]:
    """Export the digits and build the train (``n_folds`` folds) and test records at 16 px."""
    from tfkit.datasets import export_dataset
    from tfkit.records import build_records

    data, records, test = work / "data", work / "records", work / "test_records"
    if (records / "manifest.json").is_file() and (test / "manifest.json").is_file():
        return records, test  # a re-run in the same --work reuses the records (and the finished runs)
    export_dataset("digits", data, overwrite=True)
    build_records(data / "train.csv", data / "images", records, size=16, n_folds=n_folds, seed=42,
                  overwrite=True, progress=False)
    build_records(data / "test.csv", data / "images", test, size=16, split="test",
                  classes_from=records / "manifest.json", overwrite=True, progress=False)
    return records, test


def run_one(records: Path, test: Path, out: Path, overrides: list[str]) -> dict:
    """Train ``digits.yaml`` + ``overrides`` on every fold; CV and held-out test metrics."""
    from tfkit.config import load_config
    from tfkit.predict import predict
    from tfkit.train import train

    t0 = time.time()
    cv = train(load_config(CONFIG, overrides), records, out)
    sub = predict(out, out / "submission.csv", records=test, tta=1, progress=False)
    return dict(cv=cv["metrics"]["accuracy"], log_loss=cv["metrics"]["log_loss"],
                test=sub.attrs["metrics"]["accuracy"], seconds=time.time() - t0, sub=out / "submission.csv")


def arm_overrides(arm: str, teacher: Path, submission: Path, test: Path, args: argparse.Namespace) -> list[str]:
    """The config keys of one arm of the comparison."""
    keys = []
    if arm in ("teacher", "both"):
        keys += [f"train.teacher={teacher}", f"train.teacher_weight={args.weight}", f"train.temperature={args.temperature}"]
    if arm in ("pseudo", "both"):
        keys += [f"train.pseudo={submission}", f"train.pseudo_records={test}", f"train.pseudo_threshold={args.threshold}"]
    return keys


def pseudo_summary(submission: Path, test: Path, threshold: float) -> str:
    """How many test rows pass the threshold, and how many of their pseudo labels are right."""
    import numpy as np
    import pandas as pd

    from tfkit.data import read_index

    sub = pd.read_csv(submission, dtype={"id": str}).set_index("id")
    truth = read_index(str(test)).set_index("id")["label"]
    proba = sub.loc[truth.index].to_numpy(dtype=np.float64)
    keep = proba.max(axis=1) >= threshold
    right = (proba.argmax(axis=1) == truth.to_numpy())[keep]
    return (f"pseudo rows: {int(keep.sum())} of {len(keep)} test images have confidence >= {threshold} "
            f"(max {proba.max():.3f}); {right.mean():.4f} of their pseudo labels are right")


def run_name(arm: str, args: argparse.Namespace) -> str:
    """The run folder of an arm, named by its parameters so other settings never resume it."""
    name = arm
    if arm in ("teacher", "both"):
        name += f"_w{args.weight}_T{args.temperature}"
    if arm in ("pseudo", "both"):
        name += f"_p{args.threshold}"
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="student seeds (medians over them)")
    p.add_argument("--folds", type=int, default=3, help="folds of the records (3 keeps it affordable on 2 shared cores)")
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--student-epochs", type=int, default=6)
    p.add_argument("--student-width", type=int, default=8)
    p.add_argument("--weight", type=float, default=0.7, help="train.teacher_weight")
    p.add_argument("--temperature", type=float, default=2.0, help="train.temperature")
    p.add_argument("--threshold", type=float, default=0.9, help="train.pseudo_threshold")
    p.add_argument("--arms", default=",".join(ARMS), help="arms to train besides the baseline, e.g. teacher,both")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one; an existing one "
                   "reuses its records and finished runs, so another --weight/--temperature trains only those arms)")
    p.add_argument("--quick", action="store_true", help="3 folds, 2 teacher / 1 student epochs, 1 seed: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.folds, args.teacher_epochs, args.student_epochs, args.seeds = 3, 2, 1, 1

    load0 = os.getloadavg()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_distill_"))
    t0 = time.time()
    records, test = prepare(work, args.folds)
    # Batches of 32 (teacher) and 16 (student) give a few hundred steps, enough for BatchNorm's moving
    # statistics (momentum 0.99) to forget their initial values (see FACTS: BN on small datasets).
    teacher = run_one(records, test, work / "teacher",
                      [f"train.epochs={args.teacher_epochs}", "model.width=32", "data.batch_size=32"])
    print(f"teacher (width 32, {args.teacher_epochs} epochs): CV accuracy {teacher['cv']:.4f}, "
          f"test accuracy {teacher['test']:.4f}, {teacher['seconds']:.0f} s", flush=True)
    print(pseudo_summary(teacher["sub"], test, args.threshold), flush=True)
    student = [f"train.epochs={args.student_epochs}", f"model.width={args.student_width}", "data.batch_size=16"]
    arms = ["baseline", *[a for a in args.arms.split(",") if a in ARMS and a != "baseline"]]
    results: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in range(args.seeds):
        for arm in arms:
            keys = [*student, f"train.seed={seed}", f"data.seed={seed}",
                    *arm_overrides(arm, work / "teacher", teacher["sub"], test, args)]
            r = run_one(records, test, work / f"{run_name(arm, args)}_s{seed}", keys)
            results[arm].append(r)
            print(f"seed {seed} {arm:<9} CV accuracy {r['cv']:.4f}  log loss {r['log_loss']:.4f}  "
                  f"test accuracy {r['test']:.4f}  {r['seconds']:.0f} s", flush=True)

    base = statistics.median(r["cv"] for r in results["baseline"])
    print()
    print(f"student: small_cnn width {args.student_width}, {args.student_epochs} epochs, {args.folds} folds, "
          f"{args.seeds} seed(s); teacher_weight {args.weight}, temperature {args.temperature}, "
          f"pseudo_threshold {args.threshold}")
    print(f"{'arm':<10} {'median CV acc':>13} {'vs baseline':>11} {'median log loss':>15} {'median test acc':>15}  per-seed CV")
    for arm in arms:
        rs = results[arm]
        cv = statistics.median(r["cv"] for r in rs)
        print(f"{arm:<10} {cv:>13.4f} {cv - base:>+11.4f} {statistics.median(r['log_loss'] for r in rs):>15.4f} "
              f"{statistics.median(r['test'] for r in rs):>15.4f}  {' '.join(format(r['cv'], '.4f') for r in rs)}")
    print(f"teacher    {teacher['cv']:>13.4f} {teacher['cv'] - base:>+11.4f} {teacher['log_loss']:>15.4f} "
          f"{teacher['test']:>15.4f}")
    print("(pseudo/both trained on the test images with the teacher's labels: their test column is transductive)")
    print(f"load average at start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, at end "
          f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())} (2 cores); total wall {time.time() - t0:.0f} s; work {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
