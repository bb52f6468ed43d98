"""Label-noise cleaning: list the training images a run's out-of-fold
predictions call confidently wrong, show them, and write the CSV without them.

The recipe of many winning write-ups: predict the whole training set out of
fold, and drop the images predicted as another class with probability above a
threshold (0.9). Out-of-fold matters: a model that trained on an image has
memorised its label, right or wrong. What the list finds on the digits with
labels flipped on purpose is measured by ``bench/bench_clean.py`` (precision
and recall at several thresholds).

Writes into ``OUT`` (all or nothing):

* ``flagged.csv``: id, fold, label, pred, p_label, p_pred, loss, most confidently
  wrong first; ``tfkit build-records --exclude OUT/flagged.csv`` drops them,
* ``flagged.png``: contact sheet, each image titled ``id / given -> predicted (p)``
  (with the run's training ``records``),
* ``<csv stem>_clean.csv``: the training CSV without the flagged rows (with ``csv``),
* ``clean.json``: the threshold and counts.

Example::

    clean("runs/digits", "clean", threshold=0.9, csv="train.csv", records="records")["n_flagged"]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tfkit.run_view import RunView, oof_values, read_run
from tfkit.utils import TfkitError, atomic_dir, write_csv, write_json


def flag_noisy(view: RunView, threshold: float = 0.9) -> pd.DataFrame:
    """Training images whose OOF prediction is another class with probability >= ``threshold``.

    Args:
        view: the run.
        threshold: confidence of the wrong prediction, in (0, 1].

    Returns:
        ``tfkit.report.top_losses`` rows (rank, id, fold, label, pred, p_label,
        p_pred, loss), most confidently wrong first.

    Raises:
        TfkitError: a regression run, or a threshold outside (0, 1].
    """
    from tfkit.report import top_losses

    if view.task not in ("binary", "multiclass"):
        raise TfkitError(f"clean: {view.path} is a {view.task} run; label-noise cleaning needs class predictions")
    if not 0.0 < float(threshold) <= 1.0:
        raise TfkitError(f"clean --threshold: expected a probability in (0, 1], got {threshold}")
    wrong = top_losses(view.oof, oof_values(view), view.classes)
    flagged = wrong[wrong["p_pred"] >= float(threshold)].drop(columns="label_index").reset_index(drop=True)
    flagged["rank"] = np.arange(1, len(flagged) + 1)
    return flagged


def clean_csv(csv: str | os.PathLike, ids: pd.Series, id_col: str) -> pd.DataFrame:
    """The training CSV (read as text, so values are written back unchanged) without ``ids``."""
    from tfkit.exclude import without_ids

    csv = Path(csv)
    if not csv.is_file():
        raise TfkitError(f"clean --csv: file not found: {csv}")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False, na_filter=False)
    return without_ids(frame, ids.tolist(), id_col, f"clean --csv {csv}")


def clean(
    run: str | os.PathLike,
    out: str | os.PathLike,
    threshold: float = 0.9,
    csv: str | os.PathLike | None = None,
    records: str | os.PathLike | None = None,
    max_images: int = 64,
    overwrite: bool = False,
) -> dict[str, Any]:
    """List the confidently wrong training images of a run; write the sheet and the cleaned CSV.

    Args:
        run: run folder (its OOF predictions are used).
        out: output folder, written atomically (a non-empty one needs ``overwrite``).
        threshold: flag an image when its OOF prediction is another class with at least this probability.
        csv: the training CSV the records were built from; its copy without the flagged rows is written.
        records: the run's training records, for the contact sheet (left out without them).
        max_images: most images on the contact sheet (the most confident first).
        overwrite: replace a non-empty ``out``.

    Returns:
        The ``clean.json`` dict: threshold, n_images, n_flagged, flagged_by_class and the written files.

    Raises:
        TfkitError: not a classification run, a bad threshold, a CSV without the flagged ids.
    """

    view = read_run(run)
    flagged = flag_noisy(view, threshold)
    id_col = (view.manifest.get("columns") or {}).get("id") or "id"  # the CSV's id column at build time
    cleaned = clean_csv(csv, flagged["id"], id_col) if csv is not None else None
    shown = flagged.head(max(0, int(max_images)))
    images = _images(records, shown["id"].tolist(), view.cfg.data.image_size) if records is not None and len(shown) else None
    summary: dict[str, Any] = {
        "run": str(view.path), "threshold": float(threshold), "n_images": int(len(view.oof)),
        "n_flagged": int(len(flagged)), "flagged_by_class": {str(k): int(v) for k, v in flagged["label"].value_counts().sort_index().items()},
        "files": ["flagged.csv"],
    }
    with atomic_dir(out, overwrite=overwrite, what="clean --out") as tmp:
        write_csv(tmp / "flagged.csv", flagged)
        if images is not None:
            from tfkit.report import plot_top_losses

            plot_top_losses(images, shown, tmp / "flagged.png")
            summary["files"].append("flagged.png")
        if cleaned is not None:
            name = f"{Path(csv).stem}_clean.csv"
            write_csv(tmp / name, cleaned)
            summary["files"].append(name)
            summary["n_kept"] = int(len(cleaned))
        write_json(tmp / "clean.json", summary)
    share = len(flagged) / max(1, len(view.oof))
    print(f"clean: {len(flagged)} of {len(view.oof)} training images ({share:.1%}) are predicted out of fold as "
          f"another class with p >= {threshold} -> {Path(out) / 'flagged.csv'}")
    if cleaned is None:
        print(f"  rebuild without them: tfkit build-records ... --exclude {Path(out) / 'flagged.csv'}")
    return summary


def _images(records: str | os.PathLike, ids: list[str], image_size: int) -> np.ndarray:
    from tfkit.data import load_examples

    return load_examples(str(records), ids, image_size=image_size)["image"]
