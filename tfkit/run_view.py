"""A read-only view of a finished run folder, for the tools that work after
training: ``tfkit ensemble``, ``tfkit clean`` and ``tfkit runs``.

Those tools learn what a run folder holds here and nowhere else: the resolved
config, the records' manifest, the out-of-fold predictions (``oof.csv`` layout)
and the CV scores. A ``tfkit train`` run has a run-level ``oof.csv`` and
``cv.json``; a ``tfkit tune`` trial (``TUNE/search/trial_<id>/run``) has only the
folds' own ``fold<k>/oof.csv``, so they are joined and scored here the way
``tfkit train`` scores a run.

Who owns what: ``tfkit.train`` writes the folder through :class:`tfkit.run.RunFolder`;
this module only reads it, through the same class.

Example::

    view = read_run("runs/digits")
    view.primary, view.cv["metrics"][view.primary]   # ('accuracy', 0.993)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tfkit.manifest import Manifest, resolve_task
from tfkit.run import RunFolder, primary_metric, recompute_cv_frame
from tfkit.utils import TfkitError, read_json

TRIAL_FILE = "tfkit_trial.json"  # written by tfkit.tune beside a trial's run


@dataclass
class RunView:
    """What a finished run holds (nothing is written back).

    Attributes:
        path: the run folder.
        cfg: its resolved :class:`tfkit.config.Config`.
        manifest: the records' manifest it was trained on (:class:`tfkit.manifest.Manifest`).
        task: binary | multiclass | regression.
        classes: class names, manifest order.
        oof: out-of-fold predictions in the ``oof.csv`` layout (id, fold, label,
            ``p_<class>``... or ``pred``).
        cv: ``cv.json`` (or the same dict recomputed from ``oof``).
        cv_tta: ``cv_tta.json`` of ``tfkit predict --oof``, when present.
        folds: ``done.json`` of each finished fold, by fold index.
        trial: ``tfkit_trial.json`` of a ``tfkit tune`` trial, when present.
    """

    path: Path
    cfg: Any
    manifest: Manifest
    task: str
    classes: list[str]
    oof: pd.DataFrame
    cv: dict
    cv_tta: dict | None
    folds: dict[int, dict]
    trial: dict | None

    @property
    def primary(self) -> str:
        """The headline metric's name (``cv.json``'s ``primary``)."""
        return str(self.cv.get("primary") or next(iter(self.cv["metrics"])))

    @property
    def value_columns(self) -> list[str]:
        """The prediction columns of ``oof``: ``p_<class>``... or ``pred`` (regression)."""
        return ["pred"] if self.task == "regression" else [f"p_{c}" for c in self.classes]

    @property
    def seconds(self) -> float:
        """Training time summed over the finished folds."""
        return float(sum(float(d.get("seconds") or 0.0) for d in self.folds.values()))


def read_run(run: str | os.PathLike) -> RunView:
    """Read a run folder written by ``tfkit train`` (or a ``tfkit tune`` trial's run).

    Args:
        run: the run folder.

    Returns:
        The :class:`RunView`.

    Raises:
        TfkitError: not a run folder, or no fold has finished.

    Example::

        read_run("runs/digits").oof.columns[:3].tolist()   # ['id', 'fold', 'label']
    """
    folder = RunFolder(run)
    cfg, manifest = folder.load()
    task = resolve_task(cfg.model.task, manifest=manifest)
    folds = {k: folder.done(k) for k in folder.trained_folds(with_models=False)}
    oof = _read_oof(folder, folds)
    cv = folder.read_cv()
    if not cv:  # a tune trial: only the folds' own oof.csv
        cv = recompute_cv_frame(oof, manifest.classes, task, names=cfg.train.metrics)
        cv.update(primary=primary_metric(cfg.train.metrics, cv["metrics"]), task=task)
    trial = folder.path / TRIAL_FILE
    return RunView(path=folder.path, cfg=cfg, manifest=manifest, task=task, classes=manifest.classes, oof=oof,
                   cv=cv, cv_tta=folder.read_cv_tta(), folds=folds,
                   trial=read_json(trial) if trial.is_file() else None)


def _read_oof(folder: RunFolder, folds: dict[int, dict]) -> pd.DataFrame:
    if folder.oof_path.is_file():
        return folder.read_oof()
    parts = [folder.read_oof(k) for k in sorted(folds) if folder.fold(k).oof.is_file()]
    if not parts:
        raise TfkitError(f"{folder.path}: no out-of-fold predictions (no oof.csv and no finished fold)")
    return pd.concat(parts, ignore_index=True)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a run folder (config, manifest and some OOF predictions)."""
    f = RunFolder(path)
    return (f.config_path.is_file() and f.manifest_path.is_file()
            and (f.oof_path.is_file() or any(f.fold(k).oof.is_file() for k in f.fold_numbers())))


def oof_values(view: RunView) -> np.ndarray:
    """The prediction columns of ``view.oof`` as a float64 ``[N, K]`` array (row order of ``oof``)."""
    return view.oof[view.value_columns].to_numpy(dtype=np.float64)
