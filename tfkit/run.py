"""The run folder: one object owns its layout, its files and what is computed from them.

``tfkit train`` writes a run folder; ``predict``, ``report`` and ``tune`` read it
(a tuning trial's folder is a run folder too). Layout::

    RUN/config.yaml      the resolved config (``tfkit train --config`` takes it back)
    RUN/manifest.json    a copy of the training records' manifest
    RUN/oof.csv          out-of-fold predictions of every finished fold: id, fold, label, p_<class>... (or pred;
                         y_<name> label columns for multi-label, regression, distribution: tfkit.targets)
    RUN/cv.json          metrics recomputed from oof.csv alone, per fold and overall
    RUN/thresholds.json  decision thresholds fitted on oof.csv (multi-label F-beta, ordinal cut points), when asked
    RUN/curves.png       training curves of every fold
    RUN/oof_tta.csv      RUN/cv_tta.json    written by ``tfkit predict --oof`` (OOF with TTA)
    RUN/report/          written by ``tfkit report``
    RUN/fold{k}/model.keras  the fold's model (best epoch, or SWA)   best.keras (with SWA)
    RUN/fold{k}/done.json    the fold's summary; its presence marks the fold finished
    RUN/fold{k}/oof.csv  history.csv  logs/ (TensorBoard)  resume/ (while training)
    RUN/fold{k}/metadata.json  metadata encoding fitted on the fold's training rows (with data.metadata)

Life cycle: ``train`` creates the folder and writes everything but the TTA
files and the report; readers never write the training files.

An ensemble folder (:class:`EnsembleFolder`, written by ``tfkit ensemble``) keeps
the run layout's ``oof.csv``, ``cv.json`` and ``manifest.json`` (so the tools
that read OOF predictions read it too) and adds ``weights.json`` (the blend),
``correlation.png`` and ``submission.csv``; it has no ``config.yaml`` and no folds.

Example:
    >>> import pandas as pd
    >>> oof = pd.DataFrame({"id": ["a", "b", "c", "d"], "fold": [0, 0, 1, 1], "label": [0, 1, 1, 0],
    ...                     "p_x": [0.9, 0.2, 0.4, 0.7], "p_y": [0.1, 0.8, 0.6, 0.3]})
    >>> cv = recompute_cv_frame(oof, ["x", "y"], "multiclass", names=["accuracy"])
    >>> cv["metrics"]["accuracy"], sorted(cv["folds"])
    (1.0, ['0', '1'])
    >>> primary_metric(["accuracy"], cv["metrics"])
    'accuracy'
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from tfkit.config import Config, load_config, save_config
from tfkit.manifest import Manifest
from tfkit.utils import TfkitError, read_json, write_csv, write_json

__all__ = ["RunFolder", "EnsembleFolder", "FoldFiles", "oof_frame", "oof_probabilities", "oof_metrics", "recompute_cv", "recompute_cv_frame",
           "primary_metric", "clean_metrics"]


@dataclasses.dataclass(frozen=True)
class FoldFiles:
    """The files of one fold, ``RUN/fold{k}/...``."""

    dir: Path
    model: Path  # the fold's model: the best epoch, or the SWA average
    best: Path  # the best-epoch checkpoint kept beside an SWA model
    done: Path  # the fold's summary; its presence marks the fold finished
    history: Path
    oof: Path
    logs: Path  # TensorBoard
    resume: Path  # owned by tfkit.callbacks.ResumeFolder while the fold trains
    metadata: Path  # the metadata encoding fitted on the fold's training rows (tfkit.metadata)


class RunFolder:
    """Paths and typed reads/writes of one run folder (see the module docstring for the layout).

    Args:
        path: the run folder (need not exist yet).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.manifest_path = self.path / "manifest.json"
        self.oof_path = self.path / "oof.csv"
        self.cv_path = self.path / "cv.json"
        self.thresholds_path = self.path / "thresholds.json"
        self.curves_path = self.path / "curves.png"
        self.oof_tta_path = self.path / "oof_tta.csv"
        self.cv_tta_path = self.path / "cv_tta.json"
        self.report_dir = self.path / "report"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def fold(self, k: int) -> FoldFiles:
        """The paths of fold ``k``'s files."""
        d = self.path / f"fold{int(k)}"
        return FoldFiles(dir=d, model=d / "model.keras", best=d / "best.keras", done=d / "done.json",
                         history=d / "history.csv", oof=d / "oof.csv", logs=d / "logs", resume=d / "resume",
                         metadata=d / "metadata.json")

    # ----------------------------------------------------------------------- config and manifest

    def check(self) -> None:
        """A one-line error unless this is a run folder (config and manifest present)."""
        if not self.path.is_dir():
            raise TfkitError(f"run folder not found: {self.path}")
        for p in (self.config_path, self.manifest_path):
            if not p.is_file():
                raise TfkitError(f"{self.path}: missing {p.name} (expected a run folder written by `tfkit train`)")

    def load(self, overrides: Iterable[str] = ()) -> tuple[Config, Manifest]:
        """The run's resolved config (plus ``--set`` overrides) and its manifest."""
        self.check()
        return load_config(self.config_path, overrides), Manifest.load(self.manifest_path)

    def write_config(self, cfg: Config) -> None:
        save_config(cfg, self.config_path)

    def write_manifest(self, manifest: Manifest | dict) -> None:
        write_json(self.manifest_path, Manifest.from_dict(manifest).to_dict())

    # ----------------------------------------------------------------------- folds and models

    def fold_numbers(self) -> list[int]:
        """Sorted ``k`` of every ``fold{k}`` folder, finished or not."""
        return sorted(int(d.name[4:]) for d in self.path.glob("fold*") if d.is_dir() and d.name[4:].isdigit())

    def trained_folds(self, with_models: bool = True) -> list[int]:
        """Sorted folds that finished training (``done.json``; with ``with_models`` also ``model.keras``)."""
        return [k for k in self.fold_numbers()
                if self.fold(k).done.is_file() and (not with_models or self.fold(k).model.is_file())]

    def finished_folds(self) -> list[int]:
        """:meth:`trained_folds` with models; a one-line error when none has finished."""
        for k in self.trained_folds(with_models=False):
            if not self.fold(k).model.is_file():  # finished, yet its model is gone: never ensemble without it
                raise TfkitError(f"{self.fold(k).model}: model not found although fold {k} finished (done.json); "
                                 f"restore it, or delete {self.fold(k).dir} and train that fold again")
        folds = self.trained_folds()
        if not folds:
            raise TfkitError(f"{self.path}: no finished fold (expected fold<k>/model.keras and fold<k>/done.json)")
        return folds

    def done(self, k: int) -> dict:
        """The fold's summary (``done.json``)."""
        return read_json(self.fold(k).done)

    def write_done(self, k: int, summary: dict) -> None:
        """Write the fold's summary: from now on the fold counts as finished."""
        write_json(self.fold(k).done, summary)

    def load_model(self, k: int) -> Any:
        """Fold ``k``'s ``model.keras``, loaded with ``safe_mode=True`` and without compiling."""
        from tfkit.models import load_model  # here, not at the top: reading a run's CSVs and JSONs needs no Keras

        path = self.fold(k).model
        if not path.is_file():
            raise TfkitError(f"{path}: model not found (fold {k} has not finished training)")
        return load_model(path, f"fold {k} model")

    def histories(self) -> dict[int, pd.DataFrame]:
        """Each fold's ``history.csv`` (folds without one are left out)."""
        return {k: pd.read_csv(self.fold(k).history) for k in self.fold_numbers() if self.fold(k).history.is_file()}

    # ----------------------------------------------------------------------- OOF and CV

    def read_oof(self, k: int | None = None) -> pd.DataFrame:
        """``oof.csv`` of the run (or of fold ``k``), ids read as strings."""
        path = self.oof_path if k is None else self.fold(k).oof
        if not path.is_file():
            raise TfkitError(f"{self.path}: no {path.name} (train at least one fold first)")
        return pd.read_csv(path, dtype={"id": str})

    def write_oof(self, frame: pd.DataFrame, k: int | None = None) -> None:
        write_csv(self.oof_path if k is None else self.fold(k).oof, frame)

    def read_cv(self) -> dict:
        """``cv.json`` (``{}`` when absent)."""
        return read_json(self.cv_path) if self.cv_path.is_file() else {}

    def write_cv(self, cv: dict) -> None:
        write_json(self.cv_path, cv)

    def read_thresholds(self) -> dict:
        """``thresholds.json`` (``{}`` when the run fitted none)."""
        return read_json(self.thresholds_path) if self.thresholds_path.is_file() else {}

    def write_thresholds(self, thresholds: dict) -> None:
        write_json(self.thresholds_path, thresholds)

    def read_cv_tta(self) -> dict | None:
        """``cv_tta.json`` of ``tfkit predict --oof``, or ``None``."""
        return read_json(self.cv_tta_path) if self.cv_tta_path.is_file() else None

    def write_oof_tta(self, frame: pd.DataFrame, result: dict) -> Path:
        """Write ``oof_tta.csv`` and ``cv_tta.json``; returns the latter's path."""
        write_csv(self.oof_tta_path, frame)
        write_json(self.cv_tta_path, result)
        return self.cv_tta_path


class EnsembleFolder(RunFolder):
    """The output folder of ``tfkit ensemble``: a run folder's OOF files plus the blend (module docstring).

    Args:
        path: the ensemble folder (need not exist yet).

    Example:
        >>> f = EnsembleFolder("blend")
        >>> f.weights_path.name, f.cv_path.name, f.is_complete()
        ('weights.json', 'cv.json', False)
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.weights_path = self.path / "weights.json"
        self.correlation_path = self.path / "correlation.png"
        self.submission_path = self.path / "submission.csv"

    def __repr__(self) -> str:
        return f"EnsembleFolder({str(self.path)!r})"

    def is_complete(self) -> bool:
        """Whether ``tfkit ensemble`` wrote this folder: its four files present, and no run's ``config.yaml``."""
        files = (self.cv_path, self.weights_path, self.oof_path, self.manifest_path)
        return all(p.is_file() for p in files) and not self.config_path.is_file()

    def read_weights(self) -> dict:
        """``weights.json``: the method, the metric and each member run's weight and score."""
        return read_json(self.weights_path)

    def write_weights(self, weights: dict) -> None:
        write_json(self.weights_path, weights)


def clean_metrics(metrics: dict) -> dict:
    """Scalars as Python floats (JSON-ready); arrays are left as they are."""
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in metrics.items()}


def primary_metric(names: Sequence[str], metrics: dict) -> str | None:
    """The headline metric: the first of ``names`` (``train.metrics``) that was computed, else the first computed."""
    return next((m for m in names if m in metrics), next(iter(metrics), None))


def oof_frame(index: pd.DataFrame, proba: np.ndarray, classes: list[str], task: str) -> pd.DataFrame:
    """Predictions in the ``oof.csv`` layout (:func:`tfkit.targets.oof_frame`): ``id, fold, label,
    p_<class>...``; ``y_<name>`` label columns for multi-label, regression and distribution targets.

    Args:
        index: rows in prediction order (``tfkit.data.read_index``), with id, fold, label (or ``y_<name>``).
        proba: model outputs ``[N, C]`` (binary may be ``[N, 1]``; regression ``[N, T]``).
        classes: output names (:func:`tfkit.targets.output_names`), in the manifest's order.
        task: the run's task.

    Returns:
        The frame (regression: ``pred`` / ``pred_<target>`` columns instead of ``p_<class>``).

    Example:
        >>> oof_frame(pd.DataFrame({"id": ["a"], "fold": [0], "label": [1]}), np.array([[0.2, 0.8]]), ["x", "y"], "multiclass")
          id  fold  label  p_x  p_y
        0  a     0      1  0.2  0.8
    """
    from tfkit import targets  # here: tfkit.metrics imports Keras, readers of a run need not

    return targets.oof_frame(index, proba, classes, task)


def oof_probabilities(frame: pd.DataFrame, classes: list[str], task: str) -> np.ndarray:
    """The prediction array ``compute_metrics`` expects, from ``oof.csv`` columns.

    Args:
        frame: ``oof.csv`` as a DataFrame.
        classes: output names (manifest order).
        task: binary | multiclass | multilabel | regression | distribution.

    Returns:
        ``[N]`` positive-class probability (binary) or prediction (one regression
        target), else ``[N, C]``.

    Example:
        >>> frame = pd.DataFrame({"p_x": [0.9, 0.2], "p_y": [0.1, 0.8], "label": [0, 1]})
        >>> oof_probabilities(frame, ["x", "y"], "binary").tolist()
        [0.1, 0.8]
    """
    from tfkit import targets

    return targets.oof_arrays(frame, classes, task)[1]


def recompute_cv_frame(oof: pd.DataFrame, classes: list[str], task: str,
                       names: Sequence[str] | None = None) -> dict:
    """Overall and per-fold metrics of an OOF frame (``oof.csv`` layout); ``*_tuned``
    scores use thresholds cross-fitted over the folds (:func:`tfkit.targets.cv_metrics`).

    Args:
        oof: DataFrame with id, fold, labels and predictions (:func:`oof_frame`).
        classes: output names in manifest order.
        task: the task name.
        names: metric names (``cfg.train.metrics``); ``None`` for every applicable one.

    Returns:
        ``{"metrics": {...}, "folds": {"k": {...}}}`` (see the module example).
    """
    from tfkit import targets

    return targets.cv_metrics(oof, classes, task, metric_names=names)


def oof_metrics(frame: pd.DataFrame, classes: list[str], task: str, names: Sequence[str] | None = None,
                thresholds: dict | None = None) -> dict:
    """Metrics of the rows of a prediction frame (``oof.csv`` layout) against their labels.

    Args:
        frame: id, labels and predictions (:func:`oof_frame`).
        classes: output names in manifest order.
        task: the task name.
        names: metric names; ``None`` for every applicable one.
        thresholds: ``thresholds.json`` of the run: the ``*_tuned`` scores of
            held-out predictions use them (fitted on the OOF rows, never on these).

    Returns:
        ``{name: value}`` with scalars as floats.
    """
    from tfkit import targets
    from tfkit.metrics import compute_metrics

    labels, preds = targets.oof_arrays(frame, classes, task)
    n = None if any(str(c).startswith("y_") for c in frame.columns) else len(classes)
    saved = {k: v for k, v in (thresholds or {}).items() if k in ("f1", "f2", "qwk")}
    return clean_metrics(compute_metrics(labels, preds, task, names=names, num_classes=n, thresholds=saved or None))


def recompute_cv(run: str | os.PathLike) -> dict:
    """Recompute the overall and per-fold metrics of a run from its ``oof.csv``.

    Args:
        run: run folder.

    Returns:
        ``{"metrics": {...}, "folds": {"k": {...}}}``: what ``cv.json`` holds.

    Example::

        recompute_cv("runs/digits")["metrics"]["accuracy"]
    """
    folder = RunFolder(run)
    cfg, manifest = folder.load()
    task = folder.read_cv().get("task") or manifest.get("task", "multiclass")
    from tfkit.targets import output_names

    return recompute_cv_frame(folder.read_oof(), output_names(manifest, task), task, names=cfg.train.metrics)
