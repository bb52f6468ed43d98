"""The learning-rate finder (Smith 2015): an exponential LR sweep on one fold's training folds.

The set-up (model, loss, optimizer, data, strategy) is the one training uses
(:class:`tfkit.fold_setup.FoldSetup`), so the sweep measures the run it advises.

Example::

    lr_find(cfg, "records", "lr")["suggested_lr"]   # 0.0031
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd

from tfkit.backend import select_backend
from tfkit.config import Config
from tfkit.optim import create_optimizer
from tfkit.fold_setup import FoldSetup
from tfkit.preflight import check_out_dir, check_records
from tfkit.utils import TfkitError, pyplot, save_figure, seed_everything, write_csv

__all__ = ["lr_find", "ExponentialSweep", "smooth"]


class ExponentialSweep(keras.optimizers.schedules.LearningRateSchedule):
    """``min_lr * (max_lr / min_lr) ** (step / (steps - 1))``: from ``min_lr`` to ``max_lr`` in ``steps``.

    Args:
        min_lr: the rate at step 0.
        max_lr: the rate at step ``steps - 1``.
        steps: length of the sweep (>= 2).
    """

    def __init__(self, min_lr: float, max_lr: float, steps: int):
        self.min_lr, self.max_lr, self.steps = float(min_lr), float(max_lr), int(steps)

    def __call__(self, step: Any) -> Any:
        frac = keras.ops.cast(step, "float32") / float(self.steps - 1)
        return self.min_lr * keras.ops.power(keras.ops.convert_to_tensor(self.max_lr / self.min_lr, "float32"), frac)

    def rate(self, step: int) -> float:
        """The rate at ``step``, in float64 (what the table reports)."""
        return self.min_lr * (self.max_lr / self.min_lr) ** (step / (self.steps - 1))

    def get_config(self) -> dict:
        return {"min_lr": self.min_lr, "max_lr": self.max_lr, "steps": self.steps}


class _Recorder(keras.callbacks.Callback):
    """One-step epochs: record each batch's loss and stop once the smoothed loss explodes."""

    def __init__(self, sweep: ExponentialSweep):
        super().__init__()
        self.sweep = sweep
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", float("nan")))
        self.lrs.append(self.sweep.rate(epoch))
        self.losses.append(loss)
        sm = smooth(self.losses)
        if not math.isfinite(loss) or (len(sm) > 5 and sm[-1] > 4 * min(sm)):
            self.model.stop_training = True


def lr_find(cfg: Config, records: str | os.PathLike, out: str | os.PathLike, min_lr: float = 1e-7,
            max_lr: float = 1.0, steps: int = 100, fold: int = 0) -> dict:
    """Exponential learning-rate sweep (Smith 2015) on the training folds of ``fold``.

    The LR grows from ``min_lr`` to ``max_lr`` over ``steps`` batches, one
    optimizer step each; the loss is smoothed (EMA, bias-corrected) and the sweep
    stops once it exceeds 4x its minimum or turns non-finite.

    Args:
        cfg: resolved config (model, optimizer, loss and data are used as in training).
        records: train records folder.
        out: folder for ``lr_find.png`` and ``lr_find.csv``.
        min_lr: first learning rate.
        max_lr: last learning rate.
        steps: number of batches (>= 10).
        fold: the held-out fold whose training folds are swept.

    Returns:
        ``{"suggested_lr", "steepest_lr", "min_loss_lr", "csv", "png", "steps_run"}``.
        The suggestion is the LR of steepest descent of the smoothed loss,
        falling back to (LR at the minimum) / 10.
    """
    if not 0 < min_lr < max_lr:
        raise TfkitError(f"lr-find: expected 0 < --min-lr < --max-lr, got {min_lr} and {max_lr}")
    if steps < 10:
        raise TfkitError(f"lr-find: --steps must be at least 10, got {steps}")
    select_backend(cfg.train.backend)
    check_out_dir(out, "--out")
    manifest = check_records(records)
    setup = FoldSetup.create(cfg, records, fold, manifest)  # validates the whole config before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    sweep = ExponentialSweep(min_lr, max_lr, steps)
    with setup.strategy.scope():
        wrapper = setup.wrap(setup.build_model(cfg.data.image_size), create_optimizer(cfg.train, sweep, {}),
                             cfg.data.image_size, seed=cfg.data.seed, metrics=False)
    recorder = _Recorder(sweep)
    # One "epoch" per batch: Keras reports the running mean over an epoch, so
    # one-step epochs give each batch's own loss (the iterator lives across them).
    wrapper.fit(setup.dataset(cfg.data.image_size, "train"), epochs=steps, steps_per_epoch=1, callbacks=[recorder],
                verbose=0, shuffle=False)
    result = _suggest(np.asarray(recorder.lrs), recorder.losses)
    write_csv(out / "lr_find.csv", pd.DataFrame({"lr": recorder.lrs, "loss": recorder.losses,
                                                 "smoothed": smooth(recorder.losses)}))
    _plot_lr(np.asarray(recorder.lrs), np.asarray(recorder.losses), smooth(recorder.losses), result["suggested_lr"],
             out / "lr_find.png")
    steepest = result["steepest_lr"]
    print(f"lr-find: suggested lr {result['suggested_lr']:.3g} (steepest descent "
          f"{steepest if steepest is None else f'{steepest:.3g}'}, min loss at {result['min_loss_lr']:.3g}; "
          f"{len(recorder.losses)} steps)")
    keras.backend.clear_session()
    return dict(result, steps_run=len(recorder.losses), csv=str(out / "lr_find.csv"), png=str(out / "lr_find.png"))


def _suggest(lrs: np.ndarray, losses: Sequence[float]) -> dict:
    """The steepest-descent LR of the smoothed loss, else (LR at the minimum) / 10, within the sweep."""
    sm = smooth(losses)
    finite = np.isfinite(sm)
    if finite.sum() < 3:
        raise TfkitError("lr-find: the loss was not finite at the smallest learning rates; lower --min-lr")
    i_min = int(np.nanargmin(np.where(finite, sm, np.inf)))
    min_loss_lr = float(lrs[i_min])
    steepest = None
    if i_min >= 2:
        grad = np.gradient(sm[: i_min + 1], np.log(lrs[: i_min + 1]))
        steepest = float(lrs[int(np.argmin(grad))])
    # Never suggest outside the swept range: below it nothing was measured.
    suggested = steepest if steepest is not None else max(min_loss_lr / 10, float(lrs[0]))
    return dict(suggested_lr=float(suggested), steepest_lr=steepest, min_loss_lr=min_loss_lr)


def smooth(values: Sequence[float], beta: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (fastai's lr-finder smoothing); NaN stays NaN.

    Args:
        values: the raw losses.
        beta: the EMA's decay.

    Returns:
        The smoothed values (float64).

    Example:
        >>> smooth([1.0, 1.0, 1.0]).tolist()  # bias-corrected: a constant stays constant
        [1.0, 1.0, 1.0]
        >>> smooth([1.0, float("nan")]).tolist()
        [1.0, nan]
        >>> round(float(smooth([2.0, 4.0], beta=0.5)[1]), 4)
        3.3333
    """
    avg, out = 0.0, []
    for i, v in enumerate(values, 1):
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** i))
    return np.asarray(out, dtype=np.float64)


def _plot_lr(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, suggested: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label="smoothed")
    ax.axvline(suggested, color="r", ls="--", label=f"suggested {suggested:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:
        ax.set_ylim(finite.min() * 0.9, min(finite.max(), finite[0] * 2) * 1.1)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
