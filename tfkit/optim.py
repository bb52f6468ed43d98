"""Optimizers: a small registry, layer-wise learning rates and schedule offsets.

``create_optimizer(train_cfg, schedule, multipliers)`` builds the optimizer
named by ``train.optimizer`` from :data:`OPTIMIZERS` (one small record per
optimizer: its Keras class and the config keys it reads).

Discriminative learning rates (``layer_lr_decay`` < 1): the backbone's weighted
layers, in build order, are cut into ``layer_lr_groups`` equal consecutive
groups; group ``g`` (0 = nearest the input) trains with
``lr * layer_lr_decay ** (groups - g)`` and the head with ``lr``. The factor is
applied to the learning rate inside the optimizer's per-variable update (not to
the gradients, which Adam would normalise away), so it is exact for SGD, Adam
and AdamW alike (AdamW's decoupled weight decay keeps the base rate).

Example::

    schedule = create_schedule(cfg.train, steps_per_epoch=100, epochs=10)
    optimizer = create_optimizer(cfg.train, schedule, layer_multipliers(model, 0.7, 4))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras

from tfkit.config import TrainConfig
from tfkit.utils import TfkitError

__all__ = ["OPTIMIZERS", "OptimizerInfo", "LayerScaled", "check_optimizer", "create_optimizer", "layer_multipliers", "lr_scaled",
           "OffsetSchedule", "offset_schedule"]


class LayerScaled:
    """Mixin for a Keras optimizer: each variable's update uses ``lr * multiplier``.

    Args:
        lr_multipliers: ``{variable.path: factor}``; variables not listed use 1.
        *args, **kwargs: the base optimizer's arguments.
    """

    def __init__(self, *args: Any, lr_multipliers: dict[str, float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tfkit_mult_by_path = dict(lr_multipliers or {})
        self._tfkit_mult: list[float] = []

    def build(self, variables: list) -> None:
        super().build(variables)
        self._tfkit_mult = [float(self._tfkit_mult_by_path.get(v.path, 1.0)) for v in variables]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        # The index lookup maps a replica's component variable to its Keras variable.
        m = self._tfkit_mult[self._get_variable_index(variable)] if self._tfkit_mult else 1.0
        if m != 1.0:
            learning_rate = learning_rate * m
        return super().update_step(gradient, variable, learning_rate)


def lr_scaled(base: type) -> type:
    """The :class:`LayerScaled` subclass of a Keras optimizer class (cached per base).

    Args:
        base: a ``keras.optimizers.Optimizer`` subclass.

    Returns:
        A class taking the base's arguments plus ``lr_multipliers``.
    """
    if base not in _SCALED:
        _SCALED[base] = type(f"LayerScaled{base.__name__}", (LayerScaled, base), {})
    return _SCALED[base]


_SCALED: dict[type, type] = {}


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """One registry entry.

    Args:
        cls: the Keras optimizer class.
        kwargs: the optimizer's own arguments from the ``train`` config section.
        no_weight_decay: variable-name parts excluded from weight decay.
    """

    cls: type
    kwargs: Callable[[TrainConfig], dict] = lambda t: {}
    no_weight_decay: tuple[str, ...] = ()


OPTIMIZERS: dict[str, OptimizerInfo] = {
    # Decaying biases and normalisation scales hurts; timm and the BERT recipe exclude them.
    "adamw": OptimizerInfo(keras.optimizers.AdamW, lambda t: dict(weight_decay=t.weight_decay),
                           no_weight_decay=("bias", "gamma", "beta")),
    "adam": OptimizerInfo(keras.optimizers.Adam),
    "sgd": OptimizerInfo(keras.optimizers.SGD, lambda t: dict(momentum=t.momentum, nesterov=True)),
}


def check_optimizer(t: TrainConfig) -> OptimizerInfo:
    """Check ``train.optimizer`` and ``train.ema``; one-line errors naming the key.

    Returns:
        The optimizer's registry entry.

    Example:
        >>> check_optimizer(TrainConfig(optimizer="SGD")).cls.__name__
        'SGD'
    """
    info = OPTIMIZERS.get(t.optimizer.lower())
    if info is None:
        raise TfkitError(f"train.optimizer: unknown optimizer {t.optimizer!r} (expected adamw, adam or sgd)")
    if t.ema > 0 and not 0 < t.ema < 1:
        raise TfkitError(f"train.ema: expected a decay in (0, 1) such as 0.999, got {t.ema}")
    return info


def create_optimizer(t: TrainConfig, schedule: Any, multipliers: dict[str, float]) -> keras.optimizers.Optimizer:
    """The optimizer of ``train.optimizer`` with clipping, EMA and per-variable LR factors.

    Args:
        t: the ``train`` config section (optimizer, clip_norm, ema, weight_decay, momentum).
        schedule: a learning rate or ``LearningRateSchedule``.
        multipliers: per-variable LR factors (:func:`layer_multipliers`).

    Returns:
        An unbuilt Keras optimizer.
    """
    info = check_optimizer(t)
    common: dict[str, Any] = dict(learning_rate=schedule, global_clipnorm=t.clip_norm)
    if t.ema > 0:
        common.update(use_ema=True, ema_momentum=float(t.ema))
    opt = lr_scaled(info.cls)(lr_multipliers=multipliers, **common, **info.kwargs(t))
    if info.no_weight_decay:
        opt.exclude_from_weight_decay(var_names=list(info.no_weight_decay))
    return opt


def layer_multipliers(model: Any, decay: float, groups: int) -> dict[str, float]:
    """Per-variable LR factors for the backbone (see the module docstring).

    Args:
        model: a tfkit model with a layer named ``backbone``.
        decay: ``train.layer_lr_decay`` (1 = off).
        groups: ``train.layer_lr_groups``.

    Returns:
        ``{variable.path: factor}`` for the backbone's variables (empty when off).
    """
    if decay == 1.0:
        return {}
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise TfkitError(f"train.layer_lr_decay={decay} needs a model with a layer named 'backbone'")
    layers = [layer for layer in backbone._flatten_layers(include_self=False) if layer.weights]  # noqa: SLF001
    if not layers:
        return {}
    groups = max(1, min(int(groups), len(layers)))
    out: dict[str, float] = {}
    for i, layer in enumerate(layers):
        g = i * groups // len(layers)
        for v in layer.weights:
            out.setdefault(v.path, float(decay) ** (groups - g))
    return out


class OffsetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``base(step + offset)``: a phase's fresh optimizer continues the global schedule.

    Args:
        base: the run's schedule.
        offset: optimizer steps already taken in earlier phases.
    """

    def __init__(self, base: keras.optimizers.schedules.LearningRateSchedule, offset: int):
        self.base, self.offset = base, int(offset)

    def __call__(self, step: Any) -> Any:
        return self.base(step + self.offset)

    def get_config(self) -> dict:
        return {"offset": self.offset}


def offset_schedule(base: Any, offset: int) -> Any:
    """``base`` shifted by ``offset`` steps; a constant rate or a zero offset is returned as is.

    Args:
        base: a learning rate or ``LearningRateSchedule``.
        offset: steps to add.

    Returns:
        ``base`` or an :class:`OffsetSchedule`.
    """
    if not isinstance(base, keras.optimizers.schedules.LearningRateSchedule) or offset == 0:
        return base
    return OffsetSchedule(base, offset)
