"""Learning-rate schedules: warmup + cosine, one-cycle, cosine with warm
restarts (SGDR), the Kaggle TPU ramp-up / sustain / exponential decay, and
reduce-on-plateau; plus a plot of any of them.

Schedules are one registered, serialisable ``keras.optimizers.schedules.
LearningRateSchedule`` computed with float32 tensor ops only, so they run
inside ``tf.function(jit_compile=True)`` and on TPU (no float64).

All schedules are defined per optimizer step; ``*_epochs`` options are
converted with ``steps_per_epoch`` and may be fractional.

Example:
    >>> from tfkit.config import TrainConfig
    >>> cfg = TrainConfig(epochs=4, lr=1e-3, schedule="cosine", warmup_epochs=1)
    >>> vals = schedule_values(cfg, steps_per_epoch=10)
    >>> len(vals), round(float(vals.max()), 6)
    (40, 0.001)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from tfkit.config import Config
from tfkit.utils import TfkitError, pyplot, save_figure

SCHEDULES = ("constant", "cosine", "onecycle", "cosine_restarts", "cyclic", "rampup", "plateau")
ONECYCLE_DIV = 25.0  # one-cycle starts at lr / 25 (fastai's div_factor)
ONECYCLE_PCT = 0.3  # one-cycle warmup fraction when warmup_epochs is 0


def _cos_anneal(start: Any, end: Any, t: Any) -> Any:
    """``start`` at t=0 to ``end`` at t=1 along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * t))


@keras.saving.register_keras_serializable(package="tfkit")
class TfkitSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One schedule object for every kind; see the module docstring.

    Args:
        kind: ``constant | cosine | onecycle | cosine_restarts | rampup``.
        lr: peak learning rate.
        min_lr: floor (cosine end, restart trough, ramp start, decay asymptote).
        total_steps: length of the run in steps (cosine/onecycle end here).
        warmup_steps: linear warmup from ``min_lr`` to ``lr`` (onecycle: cosine
            warmup from ``lr / 25``). The peak is reached on step ``warmup_steps - 1``.
        steps_per_epoch: for ``rampup``'s per-epoch decay.
        restart_steps: first SGDR cycle length.
        restart_mult: SGDR cycle length multiplier (cycle i lasts ``restart_steps * mult**i``).
        sustain_steps: rampup: steps held at the peak.
        decay: rampup: ``lr - min_lr`` is multiplied by this per epoch after the sustain.
        cycle_steps: cyclic: length of one triangle (min_lr -> lr -> min_lr).
        cycle_decay: cyclic: the triangle's height is multiplied by this each
            cycle (1.0 is Smith's "triangular", 0.5 "triangular2").

    Example:
        >>> s = TfkitSchedule("constant", lr=0.1, min_lr=0.0, total_steps=10)
        >>> round(float(s(3)), 6)
        0.1
    """

    def __init__(
        self,
        kind: str,
        lr: float,
        min_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        steps_per_epoch: int = 1,
        restart_steps: int = 1,
        restart_mult: float = 2.0,
        sustain_steps: int = 0,
        decay: float = 0.8,
        cycle_steps: int = 2,
        cycle_decay: float = 1.0,
    ) -> None:
        if kind not in SCHEDULES or kind == "plateau":
            raise TfkitError(f"train.schedule: unknown schedule {kind!r} (expected one of: {', '.join(SCHEDULES)})")
        self.kind = kind
        self.lr = float(lr)
        self.min_lr = float(min_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.restart_steps = int(restart_steps)
        self.restart_mult = float(restart_mult)
        self.sustain_steps = int(sustain_steps)
        self.decay = float(decay)
        self.cycle_steps = int(cycle_steps)
        self.cycle_decay = float(cycle_decay)

    def __call__(self, step: Any) -> Any:
        s = ops.cast(step, "float32")
        lr, lo = self.lr, self.min_lr
        w = float(max(self.warmup_steps, 0))
        if self.kind == "onecycle":
            start = lr / ONECYCLE_DIV
            up = _cos_anneal(start, lr, ops.clip(s / max(w - 1.0, 1.0), 0.0, 1.0))
            t = ops.clip((s - w) / max(self.total_steps - w - 1.0, 1.0), 0.0, 1.0)
            down = _cos_anneal(lr, lo, t)
            return ops.where(s < w, up, down)
        warm = lo + (lr - lo) * ops.minimum((s + 1.0) / max(w, 1.0), 1.0)
        a = s - w  # steps after warmup
        if self.kind == "constant":
            after = ops.full_like(s, lr)
        elif self.kind == "cosine":
            t = ops.clip(a / max(self.total_steps - w - 1.0, 1.0), 0.0, 1.0)
            after = _cos_anneal(lr, lo, t)
        elif self.kind == "cosine_restarts":
            after = self._restarts(ops.maximum(a, 0.0))
        elif self.kind == "cyclic":
            # Smith's cyclical LR (what tfa.optimizers.CyclicalLearningRate did).
            c = float(max(self.cycle_steps, 2))
            a0 = ops.maximum(a, 0.0)
            phase = (a0 - c * ops.floor(a0 / c)) / c  # 0..1 within the cycle
            tri = 1.0 - ops.abs(2.0 * phase - 1.0)  # 0 -> 1 -> 0
            height = ops.power(self.cycle_decay, ops.floor(a0 / c))
            after = lo + (lr - lo) * tri * height
        else:  # rampup
            d = ops.maximum(a - float(self.sustain_steps), 0.0) / float(max(self.steps_per_epoch, 1))
            after = lo + (lr - lo) * ops.power(self.decay, d)
        return ops.where(s < w, warm, after)

    def _restarts(self, a: Any) -> Any:
        r, m = float(max(self.restart_steps, 1)), self.restart_mult
        if abs(m - 1.0) < 1e-9:
            i = ops.floor(a / r)
            start, length = i * r, ops.full_like(a, r)
        else:

            def cycle_start(i: Any) -> Any:
                # Whole steps: float32 powers are a few ulps off, and a boundary
                # at 65.00001 would move the restart one step late.
                return ops.round(r * (1.0 - ops.power(m, i)) / (1.0 - m))

            i = ops.floor(ops.log(1.0 - a / r * (1.0 - m)) / math.log(m))
            # float32 log can land one cycle off at a boundary: correct with
            # the same start formula so boundaries are exact and consistent.
            i = ops.where(a < cycle_start(i), i - 1.0, i)
            i = ops.where(a >= cycle_start(i + 1.0), i + 1.0, i)
            start = cycle_start(i)
            length = ops.maximum(cycle_start(i + 1.0) - start, 1.0)
        return _cos_anneal(self.lr, self.min_lr, (a - start) / length)

    def get_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "lr": self.lr, "min_lr": self.min_lr, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "steps_per_epoch": self.steps_per_epoch,
            "restart_steps": self.restart_steps, "restart_mult": self.restart_mult,
            "sustain_steps": self.sustain_steps, "decay": self.decay,
            "cycle_steps": self.cycle_steps, "cycle_decay": self.cycle_decay,
        }


def check_schedule(train_cfg: Any) -> str:
    """Check ``train.schedule`` and its settings; one-line errors naming the key.

    Args:
        train_cfg: the ``train`` section.

    Returns:
        The schedule's kind.

    Example:
        >>> from tfkit.config import TrainConfig
        >>> check_schedule(TrainConfig(schedule="cyclic", cycle_decay=0.5))
        'cyclic'
    """
    kind = train_cfg.schedule
    if kind not in SCHEDULES:
        raise TfkitError(f"train.schedule: unknown schedule {kind!r} (expected one of: {', '.join(SCHEDULES)})")
    if not train_cfg.lr > 0 or train_cfg.min_lr < 0 or train_cfg.min_lr > train_cfg.lr:
        raise TfkitError(f"train.lr/min_lr: expected 0 <= min_lr <= lr and lr > 0, got lr={train_cfg.lr}, min_lr={train_cfg.min_lr}")
    if kind == "cosine_restarts" and (train_cfg.restart_epochs <= 0 or train_cfg.restart_mult <= 0):
        raise TfkitError(f"train.restart_epochs/restart_mult must be > 0, got {train_cfg.restart_epochs}, {train_cfg.restart_mult}")
    if kind == "cyclic" and (train_cfg.cycle_epochs <= 0 or not 0 < train_cfg.cycle_decay <= 1):
        raise TfkitError(f"train.cycle_epochs must be > 0 and cycle_decay in (0, 1], got {train_cfg.cycle_epochs}, {train_cfg.cycle_decay}")
    if kind == "rampup" and not 0 < train_cfg.decay <= 1:
        raise TfkitError(f"train.decay: expected a factor in (0, 1], got {train_cfg.decay}")
    return kind


def create_schedule(train_cfg: Any, steps_per_epoch: int, epochs: int | None = None) -> TfkitSchedule | float:
    """The learning rate an optimizer should be built with.

    Args:
        train_cfg: a :class:`tfkit.config.TrainConfig` (``schedule``, ``lr``,
            ``min_lr``, ``warmup_epochs``, ``restart_epochs``, ``restart_mult``,
            ``sustain_epochs``, ``decay``, ``epochs``).
        steps_per_epoch: optimizer steps per epoch.
        epochs: run length; defaults to ``train_cfg.epochs``.

    Returns:
        A :class:`TfkitSchedule`; for ``plateau`` the float ``train_cfg.lr``,
        because Keras' ``ReduceLROnPlateau`` can only change a plain learning
        rate (add :func:`schedule_callbacks`' callback).

    Raises:
        TfkitError: unknown schedule or non-positive sizes.

    Example:
        >>> from tfkit.config import TrainConfig
        >>> create_schedule(TrainConfig(schedule="plateau", lr=0.01), 100)
        0.01
    """
    epochs = int(train_cfg.epochs if epochs is None else epochs)
    kind = check_schedule(train_cfg)
    if steps_per_epoch < 1 or epochs < 1:
        raise TfkitError(f"schedule: steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}")
    if kind == "plateau":
        return float(train_cfg.lr)
    total = epochs * steps_per_epoch
    warmup = int(round(train_cfg.warmup_epochs * steps_per_epoch))
    if kind == "onecycle" and warmup <= 0:
        warmup = int(round(ONECYCLE_PCT * total))
    return TfkitSchedule(
        kind, lr=train_cfg.lr, min_lr=train_cfg.min_lr, total_steps=total, warmup_steps=min(warmup, total),
        steps_per_epoch=steps_per_epoch,
        restart_steps=max(1, int(round(train_cfg.restart_epochs * steps_per_epoch))),
        restart_mult=train_cfg.restart_mult,
        sustain_steps=int(round(train_cfg.sustain_epochs * steps_per_epoch)), decay=train_cfg.decay,
        cycle_steps=max(2, int(round(train_cfg.cycle_epochs * steps_per_epoch))), cycle_decay=train_cfg.cycle_decay,
    )


def schedule_callbacks(train_cfg: Any) -> list[keras.callbacks.Callback]:
    """Callbacks a schedule needs: ``ReduceLROnPlateau`` for ``plateau``, else none.

    Args:
        train_cfg: uses ``schedule``, ``monitor``, ``plateau_factor``, ``plateau_patience``, ``min_lr``.

    Returns:
        A list of callbacks to pass to ``fit``.

    Example:
        >>> from tfkit.config import TrainConfig
        >>> schedule_callbacks(TrainConfig(schedule="cosine"))
        []
    """
    if train_cfg.schedule != "plateau":
        return []
    from tfkit.metrics import lower_is_better

    mode = "min" if lower_is_better(train_cfg.monitor) else "max"  # val_rmse too, not only *loss*
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor=train_cfg.monitor, factor=train_cfg.plateau_factor, patience=train_cfg.plateau_patience,
            min_lr=train_cfg.min_lr, mode=mode, verbose=0,
        )
    ]


def schedule_values(train_cfg: Any, steps_per_epoch: int, epochs: int | None = None) -> np.ndarray:
    """The learning rate of every step of the run, as float32 numpy.

    Args:
        train_cfg: see :func:`create_schedule`.
        steps_per_epoch: optimizer steps per epoch.
        epochs: defaults to ``train_cfg.epochs``.

    Returns:
        ``[epochs * steps_per_epoch]`` array (plateau: constant ``lr``, the
        value before any reduction).

    Example:
        >>> from tfkit.config import TrainConfig
        >>> schedule_values(TrainConfig(schedule="constant", epochs=1, warmup_epochs=0), 3).tolist()
        [0.0010000000474974513, 0.0010000000474974513, 0.0010000000474974513]
    """
    epochs = int(train_cfg.epochs if epochs is None else epochs)
    sched = create_schedule(train_cfg, steps_per_epoch, epochs)
    n = epochs * steps_per_epoch
    if not isinstance(sched, keras.optimizers.schedules.LearningRateSchedule):
        return np.full(n, sched, dtype=np.float32)
    return np.asarray(ops.convert_to_numpy(sched(np.arange(n, dtype=np.float32))), dtype=np.float32)


def plot_schedule(train_cfg: Any, steps_per_epoch: int, path: str | os.PathLike, epochs: int | None = None) -> Path:
    """Plot the schedule (learning rate vs epoch) to a PNG, atomically.

    Args:
        train_cfg: see :func:`create_schedule`.
        steps_per_epoch: optimizer steps per epoch.
        path: PNG to write.
        epochs: defaults to ``train_cfg.epochs``.

    Returns:
        The PNG's path.

    Example::

        plot_schedule(TrainConfig(schedule="rampup"), 100, "lr.png")   # PosixPath('lr.png')
    """
    from tfkit.preflight import check_out_file

    if int(steps_per_epoch) < 1:
        raise TfkitError(f"--steps-per-epoch: expected at least 1, got {steps_per_epoch}")
    if int(epochs if epochs is not None else train_cfg.epochs) < 1:
        raise TfkitError(f"train.epochs: expected >= 1, got {epochs if epochs is not None else train_cfg.epochs}")
    check_schedule(train_cfg)
    check_out_file(path, "--out")
    plt = pyplot()
    vals = schedule_values(train_cfg, steps_per_epoch, epochs)
    x = np.arange(len(vals)) / steps_per_epoch
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(x, vals, lw=1.5)
    title = f"{train_cfg.schedule}: lr={train_cfg.lr:g}, min_lr={train_cfg.min_lr:g}, {len(vals)} steps"
    if train_cfg.schedule == "plateau":
        title += " (before ReduceLROnPlateau)"
    ax.set(title=title, xlabel="epoch", ylabel="learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


# --------------------------------------------------------------------------- training phases


def phases(cfg: Config) -> list[dict]:
    """Cut ``[0, epochs)`` into phases of constant image size and frozen state.

    Args:
        cfg: the config (``train.epochs``, ``train.freeze_epochs``, ``train.progressive``, ``data.image_size``).

    Returns:
        One dict per phase: ``index``, ``start``, ``end`` (epochs), ``size``, ``frozen``.

    Example:
        >>> from tfkit.config import load_config
        >>> cfg = load_config(None, ["data.image_size=32", "train.epochs=4", "train.freeze_epochs=1",
        ...                          "train.progressive=[[2, 48]]"])
        >>> [(p["start"], p["end"], p["size"], p["frozen"]) for p in phases(cfg)]
        [(0, 1, 32, True), (1, 2, 32, False), (2, 4, 48, False)]
    """
    epochs = int(cfg.train.epochs)
    if epochs < 1:
        raise TfkitError(f"train.epochs: expected >= 1, got {epochs}")
    sizes = {0: int(cfg.data.image_size)}
    for item in cfg.train.progressive:
        if len(item) != 2 or item[0] < 0 or item[1] < 8:
            raise TfkitError(f"train.progressive: expected [[epoch, size], ...] with size >= 8, got {cfg.train.progressive}")
        sizes[int(item[0])] = int(item[1])
    cuts = sorted({0, *[e for e in sizes if e < epochs], *([cfg.train.freeze_epochs] if 0 < cfg.train.freeze_epochs < epochs else [])})
    out = []
    for i, start in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else epochs
        size = sizes[max(e for e in sizes if e <= start)]
        out.append(dict(index=i, start=start, end=end, size=size, frozen=start < cfg.train.freeze_epochs))
    return out
