"""Per-epoch callbacks of a fold's ``fit`` and the resume folder they write.

Life cycle of one epoch end (callbacks run in this order; ``train_fold`` builds the list)::

    ResumeCheckpoint   raw weights + optimizer moments + history row     (before the EMA swap)
    SwapEMAWeights     (Keras; only when train.ema > 0)
    BestCheckpoint     model.keras when the monitor improved; early-stopping patience
    SwaCheckpoint      the running SWA average                          (only when train.swa_epochs > 0)
    ResumeCommit       resume/state.json names the epoch: the commit point; older epoch files go

Every file of the resume folder is named by the epoch after which it was
written and ``state.json`` is written last, so a kill at any point leaves a
consistent set: a re-run continues from the epoch ``state.json`` names.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from tfkit.metrics import lower_is_better
from tfkit.swa import SwaAverage
from tfkit.utils import TfkitError, read_json, write_csv, write_json

__all__ = ["ResumeFolder", "ResumeCheckpoint", "BestCheckpoint", "SwaCheckpoint", "ResumeCommit",
           "write_keras_model", "current_lr"]


def write_keras_model(model: Any, path: Path) -> None:
    """Save a ``.keras`` file atomically (Keras insists on the suffix, so the temp name keeps it).

    Args:
        model: the Keras model.
        path: destination ``.keras`` file.
    """
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def current_lr(optimizer: Any) -> float:
    """The optimizer's learning rate at its current step (a schedule is evaluated)."""
    lr = optimizer.learning_rate
    try:
        return float(np.asarray(lr))
    except TypeError:
        return float(np.asarray(lr(optimizer.iterations)))


class ResumeFolder:
    """Owns ``fold{k}/resume/``: per-epoch weights, optimizer moments, SWA average and ``state.json``.

    Args:
        path: the resume folder (created on the first save).
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def weights(self, epoch: int) -> Path:
        return self.path / f"e{epoch}.weights.h5"

    def optimizer(self, epoch: int) -> Path:
        return self.path / f"e{epoch}.optimizer.npz"

    def swa(self, epoch: int) -> Path:
        return self.path / f"e{epoch}.swa.npz"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def load_state(self) -> dict:
        """The last committed state, or a fresh one (epoch 0)."""
        state: dict = read_json(self.state_file) if self.state_file.is_file() else dict(
            epoch=0, best=None, best_epoch=None, best_size=None, wait=0, history=[], phase=None, stopped=False)
        # Rows of epochs that finished after the last consistent state are replayed.
        state["history"] = [r for r in state["history"] if r["epoch"] < state["epoch"]]
        return state

    def load_swa(self, state: dict, start: int) -> SwaAverage:
        """The SWA average as of ``state`` (a fresh one starting at ``start`` when none was saved)."""
        return SwaAverage.load(state["swa"], self.swa(state["epoch"])) if state.get("swa") else SwaAverage(start)

    def save_epoch(self, model: Any, optimizer: Any, epoch: int) -> None:
        """Write the weights and optimizer variables after ``epoch`` epochs (not yet committed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / ".tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.weights(epoch))
        tmp = self.path / ".optimizer.tmp.npz"
        np.savez(tmp, **{f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
        os.replace(tmp, self.optimizer(epoch))

    def restore_optimizer(self, optimizer: Any, epoch: int) -> bool:
        """Assign the saved optimizer variables of ``epoch`` to a built optimizer.

        Returns:
            Whether a saved state was found and restored.
        """
        path = self.optimizer(epoch)
        if not path.is_file():
            return False
        saved = np.load(path)
        if len(saved.files) != len(optimizer.variables):
            raise TfkitError(f"{self.path}: optimizer state does not match the config; delete the folder to restart the fold")
        for i, v in enumerate(optimizer.variables):
            v.assign(saved[f"v{i}"])
        return True

    def commit(self, state: dict) -> None:
        """Write ``state.json`` (the commit point), then drop files of other epochs."""
        write_json(self.state_file, state)
        for old in self.path.glob("e*.*"):
            if not old.name.startswith(f"e{state['epoch']}."):
                old.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ResumeCheckpoint(keras.callbacks.Callback):
    """Before the EMA swap: the raw weights, optimizer moments and the epoch's history row.

    Args:
        resume: the fold's resume folder.
        history_csv: ``fold{k}/history.csv`` (rewritten each epoch from ``state["history"]``).
        inner: the model being trained (the wrapper's ``net``).
        state: the fold's shared state dict (see :meth:`ResumeFolder.load_state`).
        phase: the running phase (``index``, ``size``).
    """

    def __init__(self, resume: ResumeFolder, history_csv: Path, inner: Any, state: dict, phase: dict):
        super().__init__()
        self.resume, self.history_csv, self.inner, self.state, self.phase = resume, history_csv, inner, state, phase
        self._t0 = time.time()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch, "lr": float(current_lr(self.model.optimizer)), "image_size": self.phase["size"],
               "time_s": round(time.time() - self._t0, 3)}
        row.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
        self.state["history"].append(row)
        write_csv(self.history_csv, pd.DataFrame(self.state["history"]))
        self.resume.save_epoch(self.inner, self.model.optimizer, epoch + 1)
        self.state["phase"] = self.phase["index"]


class BestCheckpoint(keras.callbacks.Callback):
    """After the EMA swap: keep the best epoch's model and count early-stopping patience.

    Args:
        path: the ``model.keras`` written when ``monitor`` improves.
        inner: the model being trained.
        state: the fold's shared state dict (``best``, ``best_epoch``, ``best_size``, ``wait``, ``stopped``).
        monitor: the logged value compared (``train.monitor``).
        patience: epochs without improvement before stopping (0 = never).
        size: the phase's image size (recorded with the best model).
    """

    def __init__(self, path: Path, inner: Any, state: dict, monitor: str, patience: int, size: int):
        super().__init__()
        self.path, self.inner, self.state = path, inner, state
        self.monitor, self.patience, self.size = monitor, int(patience), int(size)
        self.mode = "min" if lower_is_better(monitor) else "max"

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs, s = dict(logs or {}), self.state
        if self.monitor not in logs:
            raise TfkitError(f"train.monitor: {self.monitor!r} is not logged (logged: {', '.join(sorted(logs))})")
        value = float(logs[self.monitor])
        better = s["best"] is None or (value < s["best"] if self.mode == "min" else value > s["best"])
        if better and math.isfinite(value):
            write_keras_model(self.inner, self.path)
            s.update(best=value, best_epoch=epoch, wait=0, best_size=self.size)
        else:
            s["wait"] += 1
        if self.patience and s["wait"] >= self.patience:
            s["stopped"] = True
            self.model.stop_training = True


class SwaCheckpoint(keras.callbacks.Callback):
    """After the EMA swap: add the epoch's weights to the SWA average and save it with the epoch.

    Args:
        swa: the running average (its ``start`` is the first averaged epoch).
        resume: the fold's resume folder.
        inner: the model being trained.
        state: the fold's shared state dict (``swa`` holds the average's info).
    """

    def __init__(self, swa: SwaAverage, resume: ResumeFolder, inner: Any, state: dict):
        super().__init__()
        self.swa, self.resume, self.inner, self.state = swa, resume, inner, state

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch >= self.swa.start:
            # Written before state.json (the commit point), so a kill keeps average and epoch in step.
            self.swa.update(self.inner, epoch)
            self.swa.save(self.resume.swa(epoch + 1))
            self.state["swa"] = self.swa.info()


class ResumeCommit(keras.callbacks.Callback):
    """Last of tfkit's callbacks: commit the epoch (``state.json``) once everything else is written.

    Args:
        resume: the fold's resume folder.
        state: the fold's shared state dict.
    """

    def __init__(self, resume: ResumeFolder, state: dict):
        super().__init__()
        self.resume, self.state = resume, state

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.state["epoch"] = epoch + 1
        self.resume.commit(self.state)
