"""Model factory: ``create_model(name, ...)`` over ``keras.applications``
backbones and a small CNN, with a configurable head and an optional
metadata (tabular) branch.

Every model takes images as float32 in [0, 1] (input ``"image"``) and rescales
them inside the graph to what its backbone was trained on, so the data
pipeline never needs to know which backbone follows. The backbone is a nested
layer named ``"backbone"`` (freeze it, or give it a lower learning rate, by
name). The output is float32 probabilities even under mixed precision.

Example:
    >>> model = create_model("small_cnn", num_classes=10, image_size=32)
    >>> model.output_shape
    (None, 10)
    >>> "efficientnet_b0" in list_models()
    True
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
from keras import layers, ops

from tfkit.heads import arcface_output, check_head
from tfkit.manifest import resolve_task
from tfkit.metadata import MetadataEncoder
from tfkit.utils import TfkitError

# Output activation per task. Softmax only where the classes exclude each other
# (multiclass) or the outputs are one distribution over ordered bins.
HEAD_ACTIVATIONS = {"binary": "sigmoid", "multiclass": "softmax", "multilabel": "sigmoid",
                    "regression": "linear", "distribution": "softmax"}
POOLINGS = ("avg", "max", "gem")

# Caffe-style ImageNet channel means, in BGR order (keras.applications.resnet50).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# ImageNet RGB mean and std on the [0, 1] scale: the statistics pretrained stems expect.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_channel(rgb: Sequence[float], channels: int) -> list[float]:
    """Three RGB statistics stretched to ``channels``: the first three kept (RGB
    order), extra channels get their mean (a 4th stain is "some colour")."""
    rgb = [float(v) for v in rgb]
    return (rgb + [sum(rgb) / 3.0] * max(0, channels - 3))[:channels]


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="tfkit")
class Preprocess(layers.Layer):
    """Map [0, 1] images to the input range a backbone was trained on.

    Modes:
        ``"identity"``: leave [0, 1] (small_cnn: batch norm follows).
        ``"scale255"``: [0, 255] (backbones whose graph holds their own
        normalisation: EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
        ``"caffe"``: RGB -> BGR, [0, 255] minus the ImageNet mean (ResNet50).
        ``"tf"``: [-1, 1] (ResNet50V2).

    Images with C != 3 channels: the first three are taken as RGB (caffe flips
    only them); a channel beyond the third gets the mean of the RGB
    statistics. With ``mean`` and ``std`` (one per channel, on the [0, 1]
    scale, e.g. a dim microscopy stain) each channel is first standardised and
    given ImageNet's mean and std for that channel, so a pretrained stem sees
    the contrast it was trained on.

    Args:
        mode: one of the modes above.
        mean: per-channel mean of the data on [0, 1], or None.
        std: per-channel std of the data on [0, 1], or None (with ``mean``).

    Example:
        >>> Preprocess("tf")(keras.ops.ones((1, 2, 2, 3)))[0, 0, 0].numpy().tolist()
        [1.0, 1.0, 1.0]
    """

    MODES = ("identity", "scale255", "caffe", "tf")

    def __init__(self, mode: str = "identity", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise TfkitError(f"Preprocess: unknown mode {mode!r} (expected one of: {', '.join(self.MODES)})")
        if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
            raise TfkitError("model.channel_mean / channel_std: give both, one value per channel")
        if std is not None and min(std) <= 0:
            raise TfkitError(f"model.channel_std: expected values > 0, got {list(std)}")
        self.mode = mode
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]

    def build(self, input_shape: Any) -> None:
        c = int(input_shape[-1])
        if self.mean is not None and len(self.mean) != c:
            raise TfkitError(f"model.channel_mean: {len(self.mean)} values for {c}-channel images")

    def call(self, x: Any) -> Any:
        c = int(x.shape[-1])
        if self.mean is not None:
            scale = [_per_channel(_IMAGENET_STD, c)[i] / self.std[i] for i in range(c)]
            shift = [_per_channel(_IMAGENET_MEAN, c)[i] - self.mean[i] * scale[i] for i in range(c)]
            x = x * ops.cast(scale, x.dtype) + ops.cast(shift, x.dtype)
        if self.mode == "identity":
            return x
        if self.mode == "scale255":
            return x * 255.0
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if c >= 3:
            x = ops.concatenate([ops.flip(x[..., :3], axis=-1), x[..., 3:]], axis=-1)
        mean = _per_channel(_CAFFE_MEAN_BGR, c)
        return x * 255.0 - ops.cast(ops.convert_to_tensor(mean), x.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode, "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="tfkit")
class OutputRange(layers.Layer):
    """A bounded regression output: ``low + (high - low) * sigmoid(x)``.

    For targets with known limits (Pawpularity 1-100): predictions can never
    leave the range, and the unbounded linear head's early wild outputs (and
    their huge squared errors) are avoided. Computed in float32.

    Args:
        low: smallest value.
        high: largest value.

    Example:
        >>> OutputRange(1.0, 100.0)(keras.ops.zeros((1, 1))).numpy().tolist()
        [[50.5]]
    """

    def __init__(self, low: float, high: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not float(high) > float(low):
            raise TfkitError(f"model.output_range: expected [low, high] with low < high, got [{low}, {high}]")
        self.low, self.high = float(low), float(high)

    def call(self, x: Any) -> Any:
        y = self.low + (self.high - self.low) * ops.sigmoid(ops.cast(x, "float32"))
        return ops.clip(y, self.low, self.high)  # float32 rounding could step past a bound

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "low": self.low, "high": self.high}


@keras.saving.register_keras_serializable(package="tfkit")
class GeMPooling2D(layers.Layer):
    """Generalised-mean pooling (Radenović et al. 2018): ``mean(x^p)^(1/p)``
    over the spatial axes with a trainable ``p`` (p=1 is average pooling,
    p -> inf max pooling). Computed in float32 so ``x^p`` cannot overflow
    under float16.

    Args:
        p: initial exponent (3 is the paper's default).
        eps: floor applied to activations before the power (they must be > 0).
        trainable_p: learn ``p`` with the network.

    Example:
        >>> tuple(GeMPooling2D()(keras.ops.ones((2, 4, 4, 8))).shape)
        (2, 8)
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trainable_p: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_p = float(p)
        self.eps = float(eps)
        self.trainable_p = bool(trainable_p)

    def build(self, input_shape: Any) -> None:
        self.p = self.add_weight(
            name="p", shape=(), initializer=keras.initializers.Constant(self.init_p),
            trainable=self.trainable_p, dtype="float32",
        )

    def call(self, x: Any) -> Any:
        x = ops.maximum(ops.cast(x, "float32"), self.eps)
        pooled = ops.mean(ops.power(x, self.p), axis=(1, 2))
        return ops.power(pooled, 1.0 / self.p)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "p": self.init_p, "eps": self.eps, "trainable_p": self.trainable_p}


# --------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class _Spec:
    builder: Callable[..., keras.Model]  # (input_shape, weights, name) -> headless model
    preprocess: str  # Preprocess mode
    imagenet: bool = True  # has downloadable ImageNet weights


def small_cnn(
    input_shape: Sequence[int], width: int = 32, stages: int = 3, convs_per_stage: int = 2, name: str = "backbone"
) -> keras.Model:
    """A fast baseline for small images: ``stages`` stages of
    ``convs_per_stage`` x (3x3 conv - batch norm - ReLU), widths
    ``width * 2**stage``, 2x2 max-pooling between stages.

    Args:
        input_shape: ``(H, W, C)``.
        width: channels of the first stage.
        stages: number of stages (each halves the resolution but the last).
        convs_per_stage: conv blocks per stage.
        name: model name.

    Returns:
        A headless ``keras.Model`` returning the last feature map.

    Example:
        >>> small_cnn((32, 32, 3), width=16).output_shape
        (None, 8, 8, 64)
    """
    if width < 1 or stages < 1 or convs_per_stage < 1:
        raise TfkitError(f"small_cnn: width, stages and convs_per_stage must be >= 1, got {width}, {stages}, {convs_per_stage}")
    inputs = keras.Input(tuple(input_shape))
    x = inputs
    for s in range(stages):
        for c in range(convs_per_stage):
            x = layers.Conv2D(width * 2**s, 3, padding="same", use_bias=False, name=f"s{s}_conv{c}")(x)
            x = layers.BatchNormalization(name=f"s{s}_bn{c}")(x)
            x = layers.Activation("relu", name=f"s{s}_relu{c}")(x)
        if s < stages - 1:
            x = layers.MaxPooling2D(2, name=f"s{s}_pool")(x)
    return keras.Model(inputs, x, name=name)


def _app(cls_name: str, rename: bool = False, **extra: Any) -> Callable[..., keras.Model]:
    def build(input_shape: Sequence[int], weights: str | None, name: str) -> keras.Model:
        cls = getattr(keras.applications, cls_name)
        if rename:
            # Keras 3.15's EfficientNetV2 looks its block table up by the model's
            # name (KeyError for any other name): build it under its own, then wrap.
            app = cls(include_top=False, weights=weights, input_shape=tuple(input_shape), **extra)
            return keras.Model(app.inputs, app.outputs, name=name)
        return cls(include_top=False, weights=weights, input_shape=tuple(input_shape), name=name, **extra)

    build.__name__ = cls_name
    return build


def _registry() -> dict[str, _Spec]:
    reg: dict[str, _Spec] = {
        "small_cnn": _Spec(lambda shape, weights, name, width=32: small_cnn(shape, width=width, name=name), "identity", False),
    }
    for b in range(8):
        reg[f"efficientnet_b{b}"] = _Spec(_app(f"EfficientNetB{b}"), "scale255")
    for v in ("b0", "b1", "b2", "b3", "s", "m", "l"):
        reg[f"efficientnetv2_{v}"] = _Spec(_app(f"EfficientNetV2{v.upper()}", rename=True, include_preprocessing=True), "scale255")
    reg["resnet50"] = _Spec(_app("ResNet50"), "caffe")
    reg["resnet50v2"] = _Spec(_app("ResNet50V2"), "tf")
    for size in ("tiny", "small", "base", "large", "xlarge"):
        reg[f"convnext_{size}"] = _Spec(_app(f"ConvNeXt{size.capitalize()}", include_preprocessing=True), "scale255")
    for size in ("small", "large"):
        reg[f"mobilenetv3_{size}"] = _Spec(_app(f"MobileNetV3{size.capitalize()}", include_preprocessing=True), "scale255")
    return reg


_MODELS = _registry()


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted.

    Example:
        >>> list_models()[:2]
        ['convnext_base', 'convnext_large']
    """
    return sorted(_MODELS)


def preprocess_mode(name: str) -> str:
    """The :class:`Preprocess` mode a backbone's model uses (see its docstring)."""
    return _spec(name).preprocess


def _spec(name: str) -> _Spec:
    if name not in _MODELS:
        raise TfkitError(f"model.name: unknown model {name!r} (expected one of: {', '.join(list_models())})")
    return _MODELS[name]


def check_model_config(name: str, pooling: str = "avg", dropout: float = 0.0, image_size: int = 32) -> None:
    """One-line errors for a model :func:`create_model` cannot build (before anything is built).

    Example:
        >>> check_model_config("small_cnn", "gem", 0.2, 32)
        >>> check_model_config("small_cnn", "sum")
        Traceback (most recent call last):
        ...
        tfkit.utils.TfkitError: model.pooling: unknown pooling 'sum' (expected one of: avg, max, gem)
    """
    _spec(name)
    if pooling not in POOLINGS:
        raise TfkitError(f"model.pooling: unknown pooling {pooling!r} (expected one of: {', '.join(POOLINGS)})")
    if not 0.0 <= float(dropout) < 1.0:
        raise TfkitError(f"model.dropout: expected a rate in [0, 1), got {dropout}")
    if int(image_size) < 8:
        raise TfkitError(f"data.image_size: expected at least 8 pixels, got {image_size}")


def output_units(task: str, num_classes: int, n_targets: int = 1) -> int:
    """Width of the output layer: 1 for binary, ``n_targets`` for regression, else ``num_classes``."""
    if task == "regression":
        return int(n_targets)
    return 1 if task == "binary" else int(num_classes)


def _load_backbone_weights(backbone: keras.Model, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise TfkitError(f"model.weights: file not found: {p} (expected None, 'imagenet' or a local .h5/.weights.h5/.keras file)")
    s = str(p)
    try:
        if s.endswith(".keras"):
            # A tfkit checkpoint (or any model holding a layer named "backbone"):
            # take its backbone's weights.
            src = keras.saving.load_model(s, safe_mode=True, compile=False)
            try:
                src = src.get_layer("backbone")
            except ValueError:
                pass
            src_w, dst_w = src.get_weights(), backbone.get_weights()
            if [w.shape for w in src_w] != [w.shape for w in dst_w]:
                raise TfkitError(f"model.weights: {p} holds a backbone of another architecture or input size ({len(src_w)} arrays vs {len(dst_w)} expected)")
            backbone.set_weights(src_w)
        elif s.endswith(".weights.h5"):
            backbone.load_weights(s, skip_mismatch=True)
        elif s.endswith(".h5") or s.endswith(".hdf5"):
            # Legacy Keras 2 files (e.g. Kaggle "notop" weight datasets): match by layer name.
            backbone.load_weights(s, by_name=True, skip_mismatch=True)
        else:
            raise TfkitError(f"model.weights: {p} has an unsupported extension (expected .h5, .weights.h5 or .keras)")
    except TfkitError:
        raise
    except Exception as e:  # keras raises many types on unreadable files
        raise TfkitError(f"model.weights: cannot load {p} into {backbone.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _build_plain(name: str, image_size: int, weights: str | None, width: int, channels: int) -> keras.Model:
    """The backbone for ``channels``-channel input with ``weights`` loaded as they are."""
    spec = _spec(name)
    shape = (int(image_size), int(image_size), int(channels))
    if weights == "imagenet":
        if not spec.imagenet:
            raise TfkitError(f"model.weights: {name} has no ImageNet weights (use weights: null)")
        app_weights: str | None = "imagenet"
    else:
        app_weights = None
    if name == "small_cnn":
        backbone = spec.builder(shape, None, "backbone", width=width)
    else:
        try:
            with warnings.catch_warnings():
                # keras.applications warns on C != 1, 3 channels; tfkit widens the input on purpose.
                warnings.filterwarnings("ignore", message="This model usually expects 1 or 3 input channels")
                backbone = spec.builder(shape, app_weights, "backbone")
        except ValueError as e:
            raise TfkitError(f"model {name} at image_size={image_size}: {str(e).splitlines()[0]}")
    if weights not in (None, "", "imagenet"):
        _load_backbone_weights(backbone, str(weights))
    return backbone


def widen_channels(w: Any, channels: int, axis: int) -> Any:
    """A weight array built for 3 input channels, resized to ``channels`` along ``axis``.

    More than 3: the RGB slices are kept and each extra channel is initialised
    with their mean (the usual recipe for RGBY / 6-stain models). Fewer than 3
    (grey): for a convolution kernel (rank 4) each channel gets the sum of the
    RGB kernels divided by ``channels``, so a grey image gives the activations
    the RGB image of the same grey gave; for statistics (a normalisation mean or
    variance) the mean.

    Args:
        w: numpy array with size 3 on ``axis``.
        channels: the new size.
        axis: the input-channel axis.

    Returns:
        The widened (or narrowed) array.

    Example:
        >>> widen_channels(np.array([1.0, 2.0, 6.0]), 4, 0).tolist()
        [1.0, 2.0, 6.0, 3.0]
    """
    w = np.asarray(w)
    mean = w.mean(axis=axis, keepdims=True)
    if channels >= 3:
        return np.concatenate([w] + [mean] * (channels - 3), axis=axis)
    per = w.sum(axis=axis, keepdims=True) / channels if w.ndim == 4 else mean
    return np.concatenate([per] * channels, axis=axis)


def widen_input_weights(src: keras.Model, dst: keras.Model) -> int:
    """Copy a 3-channel backbone's weights into the same architecture built for C channels.

    Arrays of equal shape are copied; an array that differs in one axis, where
    the source has 3, is widened by :func:`widen_channels` (the first
    convolution's kernel, and an input normalisation's mean and variance).

    Args:
        src: the 3-channel backbone, weights loaded.
        dst: the C-channel backbone.

    Returns:
        The number of arrays widened.

    Raises:
        TfkitError: the two are not the same architecture.
    """
    src_w, dst_w = src.get_weights(), dst.get_weights()
    if len(src_w) != len(dst_w):
        raise TfkitError(f"model.weights: cannot widen {src.name}: {len(src_w)} arrays vs {len(dst_w)}")
    out, widened = [], 0
    for a, b in zip(src_w, dst_w):
        if a.shape == b.shape:
            out.append(a)
            continue
        axes = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y] if a.ndim == b.ndim else []
        if len(axes) != 1 or a.shape[axes[0]] != 3:
            raise TfkitError(f"model.weights: array of shape {a.shape} does not fit {b.shape}: not a channel widening")
        out.append(widen_channels(a, b.shape[axes[0]], axes[0]))
        widened += 1
    dst.set_weights(out)
    return widened


def _fold_imagenet_rescaling(name: str, weights: str | None, dst: keras.Model) -> None:
    """EfficientNet (v1) with ImageNet weights divides by sqrt(ImageNet std) after its
    input normalisation, in a layer keras adds only for 3-channel ImageNet builds;
    a C-channel build lacks it, so fold it into the normalisation's variance."""
    if weights != "imagenet" or not name.startswith("efficientnet_b"):
        return
    norm = next(layer for layer in dst.layers if isinstance(layer, layers.Normalization))
    mean, variance, count = norm.get_weights()
    std = _per_channel(_IMAGENET_STD, variance.shape[-1])
    # x / sqrt(var) / sqrt(std) == x / sqrt(var * std)
    norm.set_weights([mean, variance * np.asarray(std, dtype=variance.dtype), count])


def build_backbone(name: str, image_size: int, weights: str | None = None, width: int = 32,
                   channels: int = 3) -> keras.Model:
    """The headless backbone alone, named ``"backbone"``, taking preprocessed input.

    Args:
        name: see :func:`list_models`.
        image_size: side of the square input.
        weights: ``None``, ``"imagenet"`` or a local weights file.
        width: small_cnn base width.
        channels: input channels C. With pretrained 3-channel weights and C != 3
            the weights are loaded into a 3-channel build, then copied with the
            first convolution widened (:func:`widen_input_weights`). A weights
            file already holding a C-channel backbone (a tfkit checkpoint of the
            same shape) is loaded as it is.

    Returns:
        A ``keras.Model`` mapping ``[B, S, S, C]`` to a feature map.
    """
    if int(channels) < 1:
        raise TfkitError(f"channels: expected >= 1, got {channels}")
    if int(channels) == 3 or weights in (None, ""):
        return _build_plain(name, image_size, weights, width, channels)
    dst = _build_plain(name, image_size, None, width, channels)
    try:
        src = _build_plain(name, image_size, weights, width, 3)
    except TfkitError:
        if weights == "imagenet":
            raise
        # Perhaps the file already holds a C-channel backbone.
        _load_backbone_weights(dst, str(weights))
        return dst
    widen_input_weights(src, dst)
    _fold_imagenet_rescaling(name, weights, dst)
    return dst


def _head(x: Any, task: str, units: int, dropout: float, head_units: Sequence[int],
          output_range: Sequence[float] | None, hidden_only: bool = False) -> Any:
    """Dropout + hidden dense layers + the output layer of ``task`` (not with ``hidden_only``:
    an ArcFace head brings its own output layer)."""
    for i, n in enumerate(head_units):
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"head_dropout{i}")(x)
        x = layers.Dense(int(n), activation="swish", name=f"head_dense{i}")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    if hidden_only:
        return x
    if output_range:
        if task != "regression":
            raise TfkitError(f"model.output_range bounds regression outputs; the task is {task}")
        if len(output_range) != 2:
            raise TfkitError(f"model.output_range: expected [low, high], got {list(output_range)}")
        x = layers.Dense(units, dtype="float32", name="output_logit")(x)
        return OutputRange(*output_range, dtype="float32", name="output")(x)
    # float32 output: softmax/sigmoid in float16 lose precision and the loss sees rounded 0/1.
    return layers.Dense(units, activation=HEAD_ACTIVATIONS[task], dtype="float32", name="output")(x)


def create_model(
    name: str,
    num_classes: int,
    image_size: int,
    task: str = "multiclass",
    weights: str | None = None,
    meta_dim: int = 0,
    pooling: str = "avg",
    dropout: float = 0.2,
    head_units: Sequence[int] = (),
    meta_units: Sequence[int] = (32,),
    width: int = 32,
    head: str = "dense",
    arcface_scale: float = 30.0,
    arcface_margin: float = 0.5,
    metadata: Mapping[str, Any] | None = None,
    channels: int = 3,
    n_targets: int = 1,
    output_range: Sequence[float] | None = None,
    channel_mean: Sequence[float] | None = None,
    channel_std: Sequence[float] | None = None,
) -> keras.Model:
    """Build a network: preprocessing -> backbone -> pooling -> head, plus
    an optional metadata branch concatenated with the pooled image features.

    Args:
        name: backbone name (see :func:`list_models`).
        num_classes: number of classes (labels for multilabel, bins for distribution).
        image_size: side of the square input images.
        task: ``binary`` (1 sigmoid) | ``multiclass`` (softmax) | ``multilabel``
            (C sigmoids) | ``regression`` (``n_targets`` linear) |
            ``distribution`` (softmax over ordered bins) | ``auto``.
        weights: ``None`` (random), ``"imagenet"`` (keras download) or a local
            ``.h5`` / ``.weights.h5`` / ``.keras`` file for the backbone.
        meta_dim: width of an already-encoded ``"meta"`` input; 0 for images only
            (ignored when ``metadata`` is given).
        pooling: ``avg`` | ``max`` | ``gem``.
        dropout: dropout rate before each dense layer of the head.
        head_units: hidden dense layers of the head (swish).
        meta_units: dense layers of the metadata branch (ReLU).
        width: base width of ``small_cnn``.
        head: ``dense`` or ``arcface`` (multiclass; :class:`tfkit.heads.ArcFace`).
        arcface_scale: ArcFace's logit scale ``s``.
        arcface_margin: ArcFace's angular margin ``m`` (radians).
        metadata: a metadata encoding fitted on the training rows
            (:func:`tfkit.metadata.fit_encoding`): the ``"meta"`` input then takes one
            raw value per column and a :class:`~tfkit.metadata.MetadataEncoder` layer,
            saved with the model, encodes it.
        channels: input channels (3-channel pretrained weights are widened,
            see :func:`build_backbone`).
        n_targets: regression outputs.
        output_range: ``[low, high]`` bounds a regression output (:class:`OutputRange`).
        channel_mean: per-channel mean of the images on [0, 1] (:class:`Preprocess`).
        channel_std: per-channel std, with ``channel_mean``.

    Returns:
        An uncompiled ``keras.Model`` with input ``"image"`` (and ``"meta"``)
        and a float32 output named ``"output"``.

    Raises:
        TfkitError: unknown name/task/pooling, bad sizes, missing weights file.

    Example:
        >>> m = create_model("small_cnn", 3, 32, task="multiclass", meta_dim=4)
        >>> [t.name for t in m.inputs]
        ['image', 'meta']
    """
    task = resolve_task(task, num_classes)
    check_model_config(name, pooling, dropout, image_size)
    if meta_dim < 0:
        raise TfkitError(f"meta_dim: expected >= 0, got {meta_dim}")
    check_head(head, task, arcface_scale, arcface_margin)
    if int(n_targets) < 1:
        raise TfkitError(f"n_targets: expected >= 1, got {n_targets}")

    image = keras.Input((int(image_size), int(image_size), int(channels)), name="image", dtype="float32")
    x = Preprocess(preprocess_mode(name), mean=channel_mean, std=channel_std, name="preprocess")(image)
    backbone = build_backbone(name, image_size, weights=weights, width=width, channels=channels)
    x = backbone(x)
    pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "gem": GeMPooling2D}[pooling]
    x = pool(name="pool")(x)

    inputs = [image]
    if metadata is not None:
        meta_dim = len(metadata["columns"])
    if meta_dim > 0:
        meta = keras.Input((int(meta_dim),), name="meta", dtype="float32")
        inputs.append(meta)
        m = MetadataEncoder(metadata, name="meta_encoder")(meta) if metadata is not None else meta
        for i, units in enumerate(meta_units):
            m = layers.Dense(int(units), activation="relu", name=f"meta_dense{i}")(m)
        x = layers.Concatenate(name="concat")([x, m])

    if head == "arcface":
        x = _head(x, task, 0, float(dropout), head_units, None, hidden_only=True)
        out = arcface_output(x, num_classes, arcface_scale, arcface_margin)
    else:
        out = _head(x, task, output_units(task, num_classes, n_targets), float(dropout), head_units, output_range)
    return keras.Model(inputs if len(inputs) > 1 else image, out, name=f"tfkit_{name}")


def model_from_config(
    model_cfg: Any, num_classes: int, image_size: int, task: str | None = None, meta_dim: int = 0,
    metadata: Mapping[str, Any] | None = None,
    channels: int = 3, n_targets: int = 1,
) -> keras.Model:
    """:func:`create_model` from a :class:`tfkit.config.ModelConfig`.

    Args:
        model_cfg: the ``model`` section of the config.
        num_classes: number of classes (labels, bins).
        image_size: input side (``cfg.data.image_size``).
        task: overrides ``model_cfg.task`` when given (``auto`` is resolved).
        meta_dim: width of an already-encoded metadata vector.
        metadata: the fold's fitted metadata encoding (see :func:`create_model`).
        meta_dim: width of the metadata vector (``tfkit.data.metadata_dim``).
        channels: image channels of the records.
        n_targets: regression target columns of the records.

    Returns:
        The model.

    Example:
        >>> from tfkit.config import ModelConfig
        >>> model_from_config(ModelConfig(), 10, 32).output_shape
        (None, 10)
    """
    return create_model(
        model_cfg.name, num_classes, image_size,
        task=task if task not in (None, "") else model_cfg.task,
        weights=model_cfg.weights, meta_dim=meta_dim, pooling=model_cfg.pooling,
        dropout=model_cfg.dropout, head_units=tuple(model_cfg.head_units),
        meta_units=tuple(model_cfg.meta_units), width=model_cfg.width, metadata=metadata,
        head=model_cfg.head, arcface_scale=model_cfg.arcface_scale, arcface_margin=model_cfg.arcface_margin,
        channels=channels,
        n_targets=n_targets, output_range=model_cfg.output_range or None,
        channel_mean=model_cfg.channel_mean or None, channel_std=model_cfg.channel_std or None,
    )


def load_model(path: str | os.PathLike, what: str = "model") -> keras.Model:
    """Load a ``.keras`` file in Keras safe mode, uncompiled; every failure is one line naming the file.

    Safe mode never runs code from the file: a ``Lambda`` layer (Python
    bytecode) is refused, not executed. The zip container is checked first
    (its CRCs cover every member), so a truncated, bit-flipped or foreign file
    is named as such instead of Keras's "File not found" for a file that exists.

    Args:
        path: the ``.keras`` file.
        what: how the message names it (e.g. "fold 2 model").

    Returns:
        The model.

    Raises:
        TfkitError: missing file, not a valid ``.keras`` archive, a Lambda layer,
            or a layer class Keras cannot find.
    """
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise TfkitError(f"{p}: {what} not found")
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise TfkitError(f"{p}: {what} is not a valid .keras file (truncated or corrupted: {e}); "
                         "retrain the fold or restore the file") from None
    if bad is not None or not {"config.json", "model.weights.h5"} <= names:
        raise TfkitError(f"{p}: {what} is not a valid .keras file (corrupted member "
                         f"{bad or 'config.json/model.weights.h5 missing'}); retrain the fold or restore the file")
    with zipfile.ZipFile(p) as z:
        lambdas = b'"class_name": "Lambda"' in z.read("config.json").replace(b'"class_name":"', b'"class_name": "')
    if lambdas:  # refused from its config alone: Keras never sees the code
        raise TfkitError(f"{p}: refused to load {what}: it holds a Lambda layer (Python code); tfkit loads "
                         "models in Keras safe mode and never runs code from a model file")
    try:
        return keras.saving.load_model(p, compile=False, safe_mode=True)
    except ValueError as e:
        raise TfkitError(f"{p}: cannot load {what}: {str(e).splitlines()[0]}") from None
    except (TypeError, KeyError, OSError) as e:
        raise TfkitError(f"{p}: cannot load {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def predict_array(model: keras.Model, dataset: Any) -> Any:
    """Predict every batch of ``dataset`` with one static input shape; return ``[N, ...]`` float64.

    ``model.predict`` traces its function again for the last, shorter batch;
    with one new model per fold and a few validation batches each, TensorFlow
    then warns of "triggered tf.function retracing". Here the last batch is
    padded to the first batch's size (and the padding's outputs dropped), so
    each model traces once.

    Args:
        model: a Keras model.
        dataset: batches of ``x`` or ``(x, y)`` / ``(x, y, w)`` (``y`` ignored).

    Returns:
        NumPy array of the outputs, one row per example, in dataset order.
    """
    import numpy as np

    parts, full = [], None
    for batch in dataset:
        # NumPy feeds either backend (JAX's predict_on_batch refuses TensorFlow tensors)
        x = keras.tree.map_structure(np.asarray, batch[0] if isinstance(batch, tuple) else batch)
        n = int(keras.tree.flatten(x)[0].shape[0])
        full = full or n
        if n < full:
            x = keras.tree.map_structure(lambda t: np.concatenate([t, np.zeros((full - n, *t.shape[1:]), t.dtype)]), x)
        parts.append(np.asarray(model.predict_on_batch(x), dtype=np.float64)[:n])
    if not parts:
        raise TfkitError("predict: the dataset yielded no batch")
    return np.concatenate(parts)
