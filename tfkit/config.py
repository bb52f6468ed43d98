"""One configuration object, threaded through every stage.

A run is described by a single YAML file whose top-level sections mirror the
stages of the data's journey (``data``, ``augment``, ``model``, ``train``,
``predict``). Every key has a default here, so an empty file is a valid
config. Unknown keys are an error that names the key and the keys allowed:
a typo must never silently fall back to a default.

Example:
    >>> cfg = load_config(None, overrides=["train.epochs=3", "model.name=small_cnn"])
    >>> cfg.train.epochs
    3
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "config.yaml")
    >>> save_config(cfg, path)
    >>> load_config(path) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from tfkit.utils import TfkitError, atomic_write


class ConfigError(TfkitError, ValueError):
    """A config file or override names an unknown key or a value of the wrong type."""


# --------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """How shards become batches (`tfkit.data`)."""

    image_size: int = 32  # side of the square image the model sees, pixels
    batch_size: int = 64  # per replica; the global batch is this times the replica count
    shuffle_buffer: int = 2048
    cache: bool = False  # cache decoded examples in memory (small datasets)
    metadata: list[str] = field(default_factory=list)  # metadata features fed to the model
    augment_on: str = "host"  # "host": in tf.data; "device": inside the model's train step
    oversample: bool = False  # class-balanced sampling for imbalanced data
    ordinal: bool = False  # the classes are ordered grades (manifest order); also build-records --ordinal
    seed: int = 42


@dataclass
class AugmentConfig:
    """Batched augmentation (`tfkit.augment`). Each op has a probability ``*_p``
    (per image) and magnitudes; a probability of 0 turns the op off.

    ``preset`` picks task defaults (see ``AUGMENT_PRESETS``); keys set explicitly
    in the file or with ``--set`` override the preset.
    """

    preset: str = "none"
    # geometry: dihedral, flips, crop, affine and the resize fold into ONE matrix per
    # image and one resampling pass (tfkit.augment)
    dihedral_p: float = 0.0  # one of the 8 symmetries of the square, uniformly
    hflip_p: float = 0.0
    vflip_p: float = 0.0
    affine_p: float = 0.0
    rotate: float = 0.0  # max degrees
    shear: float = 0.0  # max degrees
    zoom: float = 0.0  # max relative zoom, e.g. 0.1 -> [0.9, 1.1]
    shift: float = 0.0  # max shift as a fraction of the side
    fill_mode: str = "reflect"  # reflect | wrap | nearest | constant
    fill_value: float = 0.0  # constant fill, on the [0, 1] scale
    interpolation: str = "nearest"  # nearest (one gather) | bilinear (four gathers)
    crop_p: float = 0.0  # random resized crop
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    # colour: folded into one per-image colour transform
    hue_p: float = 0.0
    hue: float = 0.0  # max shift, fraction of a full turn (rotation about the grey axis)
    saturation_p: float = 0.0
    saturation: float = 0.0  # factor in [1 - s, 1 + s] (lerp to luma)
    contrast_p: float = 0.0
    contrast: float = 0.0  # factor in [1 - c, 1 + c] (lerp to the image's mean luma)
    brightness_p: float = 0.0
    brightness: float = 0.0  # max additive shift on [0, 1] images (every channel)
    # hue, saturation and contrast need RGB: on images with C != 3 channels they are
    # skipped (logged once); every other op works on all channels
    # point ops on [0, 1] values, per image and channel, after the colour transform
    gamma_p: float = 0.0
    gamma: float = 0.0  # exponent in [1 - g, 1 + g], g < 1
    posterize_p: float = 0.0
    posterize_bits: int = 8  # keep b bits, b drawn in [posterize_bits, 8] (8 = identity)
    solarize_p: float = 0.0
    solarize: float = 0.0  # invert values above a threshold drawn in [1 - s, 1]
    equalize_p: float = 0.0  # histogram equalisation per channel (PIL's ImageOps.equalize)
    sharpness_p: float = 0.0
    sharpness: float = 0.0  # factor in [1 - s, 1 + s] (PIL's ImageEnhance.Sharpness: 0 smooth, 1 same)
    # pixel noise
    noise_p: float = 0.0
    noise_std: float = 0.0  # per-image std drawn in [0, noise_std], on [0, 1] images
    blur_p: float = 0.0
    blur_sigma: float = 0.0  # per-image Gaussian sigma drawn in [0, blur_sigma], pixels
    # occlusion
    cutout_p: float = 0.0
    cutout_count: int = 1
    cutout_size: float = 0.2  # side as a fraction of the image side
    gridmask_p: float = 0.0  # GridMask (Chen et al. 2020): a grid of dropped squares
    gridmask_ratio: float = 0.5  # side of each dropped square / grid unit (0 = identity)
    gridmask_size: list[float] = field(default_factory=lambda: [0.2, 0.5])  # unit side, fraction of the image
    gridmask_rotate: float = 0.0  # max rotation of the grid, degrees
    # per-image choice among ops: with probability one_of_p an image gets exactly one of
    # these ops, chosen with weights = their own *_p (equal if all 0); listed ops never
    # apply on their own coin (albumentations' OneOf)
    one_of: list[str] = field(default_factory=list)
    one_of_p: float = 0.0
    # RandAugment (Cubuk et al. 2020), per image: n distinct ops drawn from
    # randaugment_ops, each at magnitude m on the 0..10 scale (timm's "increasing"
    # levels, random sign), each applied with probability randaugment_p; n = 0 is off
    randaugment_n: int = 0
    randaugment_m: float = 9.0
    randaugment_p: float = 1.0
    randaugment_ops: list[str] = field(default_factory=lambda: [
        "identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness",
        "saturation", "contrast", "sharpness", "posterize", "solarize", "equalize", "autocontrast"])
    # label-mixing with a partner image of the same batch; at most one per image,
    # so mixup_p + cutmix_p <= 1; labels get the image's weights / pasted area
    mixup_p: float = 0.0
    mixup_alpha: float = 0.2
    cutmix_p: float = 0.0
    cutmix_alpha: float = 1.0


# Task defaults. Dihedral symmetries are wrong for digits and text (a 6 is not
# a 9) but free accuracy for microscopy and skin lesions, which have no "up".
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "digits": dict(
        affine_p=0.9, rotate=12.0, shear=8.0, zoom=0.12, shift=0.08, fill_mode="constant",
        brightness_p=0.3, brightness=0.1, contrast_p=0.3, contrast=0.2,
        cutout_p=0.2, cutout_size=0.2,
    ),
    "photo": dict(
        hflip_p=0.5, affine_p=0.7, rotate=15.0, shear=5.0, zoom=0.1, shift=0.08,
        crop_p=0.5, hue_p=0.5, hue=0.03, saturation_p=0.5, saturation=0.3,
        contrast_p=0.5, contrast=0.2, brightness_p=0.5, brightness=0.1,
        cutout_p=0.3, cutout_size=0.2,
    ),
    "lesion": dict(
        dihedral_p=1.0, affine_p=0.8, rotate=30.0, shear=5.0, zoom=0.15, shift=0.1,
        crop_p=0.5, hue_p=0.5, hue=0.02, saturation_p=0.5, saturation=0.3,
        contrast_p=0.5, contrast=0.2, brightness_p=0.5, brightness=0.1,
        cutout_p=0.5, cutout_count=2, cutout_size=0.15,
    ),
    "microscopy": dict(
        dihedral_p=1.0, affine_p=0.5, rotate=180.0, zoom=0.1, shift=0.05,
        hue_p=0.5, hue=0.05, saturation_p=0.5, saturation=0.2,
        contrast_p=0.5, contrast=0.2, brightness_p=0.5, brightness=0.1,
        blur_p=0.2, blur_sigma=1.0,
    ),
}


@dataclass
class ModelConfig:
    """Which network (`tfkit.models.create_model`)."""

    name: str = "small_cnn"
    weights: str | None = None  # None, "imagenet", or a local .h5/.weights.h5/.keras file
    pooling: str = "avg"  # avg | max | gem
    dropout: float = 0.2
    head_units: list[int] = field(default_factory=list)  # hidden dense layers of the head
    meta_units: list[int] = field(default_factory=lambda: [32])  # metadata branch
    # Categorical metadata columns: onehot | embedding (a learned table per column,
    # width min(50, (n+1)//2), vocabulary from the fold's training rows; tfkit.metadata).
    meta_categorical: str = "onehot"
    task: str = "auto"  # auto | binary | multiclass | multilabel | regression | distribution
    width: int = 32  # base width of small_cnn
    # Output head (tfkit.heads): dense (softmax/sigmoid) | arcface (additive angular
    # margin, multiclass): cosines to class vectors, margin (radians) on the true class
    # at training, softmax(scale * cos) at inference.
    head: str = "dense"
    arcface_scale: float = 30.0
    arcface_margin: float = 0.5
    output_range: list[float] | None = None  # regression: [low, high] bounds the output (scaled sigmoid)
    channel_mean: list[float] = field(default_factory=list)  # per-channel image mean on [0, 1]; [] = off
    channel_std: list[float] = field(default_factory=list)  # per-channel std, with channel_mean


@dataclass
class TrainConfig:
    """K-fold training (`tfkit.train`)."""

    epochs: int = 10
    folds: list[int] | None = None  # None trains every fold
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3  # peak learning rate for the global batch
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # constant | cosine | onecycle | cosine_restarts | cyclic | rampup | plateau
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    restart_epochs: float = 5.0  # cosine_restarts: first cycle length
    restart_mult: float = 2.0  # cosine_restarts: cycle length multiplier
    cycle_epochs: float = 2.0  # cyclic: length of one up-and-down triangle
    cycle_decay: float = 1.0  # cyclic: amplitude factor per cycle (1: triangular, 0.5: triangular2)
    sustain_epochs: float = 0.0  # rampup: epochs held at the peak
    decay: float = 0.8  # rampup: exponential decay per epoch after sustain
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    loss: str = "auto"  # auto | crossentropy | focal | asl | mse | mae | huber | emd (tfkit.losses.TASK_LOSSES)
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    asl_gamma_pos: float = 0.0  # asymmetric loss (Ridnik et al. 2021): focusing of positives
    asl_gamma_neg: float = 4.0  # ... of negatives
    asl_clip: float = 0.05  # ... probability margin subtracted for negatives
    huber_delta: float = 1.0  # huber: where the loss turns from quadratic to linear
    class_weight: str | None = None  # None | "balanced"
    clip_norm: float | None = None
    ema: float = 0.0  # decay of the weights' moving average; 0 turns EMA off
    sam_rho: float = 0.0  # sharpness-aware minimisation radius; 0 turns SAM off
    swa_epochs: int = 0  # stochastic weight averaging of the last N epochs (equal weights); 0 turns SWA off
    freeze_epochs: int = 0  # train the head only for this many epochs first
    layer_lr_decay: float = 1.0  # discriminative LR: earlier blocks get lr * decay^depth
    layer_lr_groups: int = 5  # backbone layers are cut into this many groups for layer_lr_decay
    progressive: list[list[int]] = field(default_factory=list)  # [[epoch, image_size], ...]
    # "auto": the metric that fits the task (tfkit.metrics.resolve_metrics): val_auc
    # (binary, multilabel), val_log_loss (multiclass), val_qwk (ordinal), val_rmse (regression)
    monitor: str = "auto"
    # BatchNorm statistics of the current weights before every validation (tfkit.batchnorm):
    # auto = on when Keras's moving averages would still hold >1% of earlier epochs (< 459 steps/epoch)
    precise_bn: str = "auto"  # auto | on | off
    early_stopping: int = 0  # patience in epochs; 0 turns it off
    # None: by task (binary: auc, log_loss, accuracy, f1; multiclass: accuracy, log_loss,
    # f1, auc; + qwk when the classes are ordinal). The first one is the CV headline.
    metrics: list[str] | None = None
    mixed_precision: str = "auto"  # auto | off | float16 | bfloat16
    steps_per_execution: int = 1
    seed: int = 42
    # Bit-reproducible training for a seed: example order fixed and TF's op
    # determinism on (slower). Off: order-ignoring reads for speed, so two runs
    # of the same config give slightly different models.
    deterministic: bool = False
    # Keras backend: auto (JAX on a TPU VM whose TensorFlow cannot see the chips,
    # else TensorFlow) | tensorflow | jax. Keras fixes it at import (tfkit.backend).
    backend: str = "auto"
    verbose: int = 1
    # Distillation and pseudo-labels (tfkit.distill): soft targets from another run's OOF predictions,
    # and confident test predictions added to every fold's training data.
    teacher: str | None = None  # run folder trained on the same records/folds; its oof.csv gives the soft targets
    teacher_weight: float = 0.5  # w in target = (1 - w) * onehot + w * softmax(log(p_teacher) / T), in [0, 1]
    temperature: float = 1.0  # T > 0 applied to the stored probabilities (T > 1 softens, T < 1 sharpens)
    pseudo: str | None = None  # submission CSV (tfkit predict, probabilities) of the test images
    pseudo_records: str | None = None  # the test records (tfkit build-records --split test) those ids come from
    pseudo_threshold: float = 0.95  # a test image joins training when its max probability >= this, in (0, 1]


@dataclass
class PredictConfig:
    """Test-time augmentation and fold ensembling (`tfkit.predict`)."""

    tta: int = 1  # number of views per image
    # auto | dihedral | flips | five_crop | ten_crop | augment. auto (made concrete when the
    # config is loaded, see resolve_tta_mode): views the model was trained to see.
    tta_mode: str = "auto"
    average: str = "mean"  # mean | gmean
    fold_weights: str = "equal"  # equal | cv
    id_column: str = "id"
    label_columns: list[str] | None = None  # defaults to the class names
    output: str = "proba"  # proba | label (multilabel: space-separated tags; regression on grades: the grade)
    threshold: str | float = "auto"  # multilabel tags: auto | f1 | f2 (thresholds.json, fitted on OOF) | a number
    batch_size: int | None = None  # images per batch before TTA (V views -> V x this per forward pass); default data.batch_size
    seed: int = 0  # seed of tta_mode=augment (same seed, same predictions)


@dataclass
class Config:
    """The whole run. Every stage reads its own section and nothing else."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)


# --------------------------------------------------------------------------- loading


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's annotation, converting ints to floats
    and scalars to one-element lists where that is unambiguous."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                last = e
        raise last or ConfigError(f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item,) = args or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "3e-4" as a string: it needs a dot to be a float.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if isinstance(value, bool):
            # YAML 1.1 reads a bare off/on (also no/yes) as a bool; for a string key
            # such as train.mixed_precision the user meant the word.
            value = "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    types = _field_types(type(obj))
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in types:
            raise ConfigError(
                f"unknown config key '{full}' (expected one of: {', '.join(sorted(types))})"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, full)
        else:
            setattr(obj, key, _coerce(value, types[key], full))


def _yaml_problem(e: Exception) -> str:
    """``yaml.YAMLError`` as one line: what went wrong and the 1-based line and column."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1} column {mark.column + 1}: {what}" if mark is not None else str(what)


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text``; a syntax error is one :class:`ConfigError` line naming ``source``.

    Example:
        >>> parse_yaml("[1, 2", "--set x")
        Traceback (most recent call last):
        ...
        tfkit.config.ConfigError: --set x: invalid YAML at line 1 column 6: expected ',' or ']', but got '<stream end>'
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML at {_yaml_problem(e)}") from None


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """Read a YAML file safely; a missing file, non-UTF-8 bytes or a syntax error is one line.

    Args:
        path: the file.
        what: how the message names it ("config file", "search space file").

    Returns:
        The parsed document (``None`` for an empty file).

    Raises:
        ConfigError: naming the file (and the line, for a syntax error).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the {what} as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e.strerror})") from None
    return parse_yaml(text, str(p))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    # YAML parses the value so "3" is an int, "[1,2]" a list and "null" None.
    return key.strip().split("."), parse_yaml(raw, f"--set {text!r}") if raw.strip() else ""


def config_from_dict(values: dict[str, Any] | None, overrides: Iterable[str] = ()) -> Config:
    """Build a :class:`Config` from a nested mapping plus ``key=value`` overrides.

    Args:
        values: nested mapping as read from YAML (may be ``None``).
        overrides: strings such as ``"train.lr=3e-4"``; applied last.

    Returns:
        The resolved config. The augmentation preset is applied first, then the
        file's keys, then the overrides.

    Raises:
        ConfigError: on an unknown key or a value of the wrong type.
    """
    values = dict(values or {})
    nested: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for text in overrides:
        path, value = _parse_override(text)
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
        node[path[-1]] = value
    cfg = Config()
    preset = (nested.get("augment") or {}).get("preset", cfg.augment.preset)
    if preset not in AUGMENT_PRESETS:
        raise ConfigError(
            f"augment.preset: unknown preset {preset!r} (expected one of: {', '.join(AUGMENT_PRESETS)})"
        )
    _apply(cfg.augment, AUGMENT_PRESETS[preset], "augment")
    _apply(cfg, nested, "")
    if cfg.predict.tta_mode == "auto":
        cfg.predict.tta_mode = resolve_tta_mode(cfg.augment)
    return cfg


def resolve_tta_mode(augment: AugmentConfig) -> str:
    """The TTA views that ``predict.tta_mode: auto`` means for a run trained with ``augment``.

    Views a model never saw in training are not free accuracy: a digits model
    shown a 6 turned upside down reads a 9. So ``auto`` is ``dihedral`` only when
    training drew the 8 symmetries (``dihedral_p > 0``), ``flips`` when it drew
    both flips, and otherwise ``augment``: seeded passes of the run's own
    training augmentation at half strength (``tfkit.predict``).

    Example:
        >>> resolve_tta_mode(load_config(None, ["augment.preset=lesion"]).augment)
        'dihedral'
        >>> resolve_tta_mode(load_config(None, ["augment.preset=digits"]).augment)
        'augment'
        >>> load_config(None, ["augment.preset=digits"]).predict.tta_mode
        'augment'
    """
    if augment.dihedral_p > 0:
        return "dihedral"
    if augment.hflip_p > 0 and augment.vflip_p > 0:
        return "flips"
    return "augment"


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (``yaml.safe_load``) and apply ``--set`` overrides.

    Args:
        path: YAML file, or ``None`` for the defaults.
        overrides: ``"section.key=value"`` strings.

    Returns:
        The resolved :class:`Config`.

    Example:
        >>> load_config(None, ["data.image_size=48"]).data.image_size
        48
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
    return config_from_dict(values, overrides)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts (what ``save_config`` writes)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config as YAML, atomically (temp name, then rename)."""
    with atomic_write(path) as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
