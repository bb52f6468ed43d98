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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
from keras import layers, ops

from tfkit.heads import arcface_output, check_head
from tfkit.manifest import resolve_task
from tfkit.metadata import MetadataEncoder
from tfkit.utils import TfkitError

POOLINGS = ("avg", "max", "gem")

# Caffe-style ImageNet channel means, in BGR order (keras.applications.resnet50).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="tfkit")
class Preprocess(layers.Layer):
    """Map [0, 1] RGB images to the input range a backbone was trained on.

    Modes:
        ``"identity"``: leave [0, 1] (small_cnn: batch norm follows).
        ``"scale255"``: [0, 255] (backbones whose graph holds their own
        normalisation: EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
        ``"caffe"``: RGB -> BGR, [0, 255] minus the ImageNet mean (ResNet50).
        ``"tf"``: [-1, 1] (ResNet50V2).

    Args:
        mode: one of the modes above.

    Example:
        >>> Preprocess("tf")(keras.ops.ones((1, 2, 2, 3)))[0, 0, 0].numpy().tolist()
        [1.0, 1.0, 1.0]
    """

    MODES = ("identity", "scale255", "caffe", "tf")

    def __init__(self, mode: str = "identity", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise TfkitError(f"Preprocess: unknown mode {mode!r} (expected one of: {', '.join(self.MODES)})")
        self.mode = mode

    def call(self, x: Any) -> Any:
        if self.mode == "identity":
            return x
        if self.mode == "scale255":
            return x * 255.0
        if self.mode == "tf":
            return x * 2.0 - 1.0
        bgr = ops.flip(x, axis=-1) * 255.0
        return bgr - ops.cast(ops.convert_to_tensor(_CAFFE_MEAN_BGR), bgr.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


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


def _app(cls_name: str, **extra: Any) -> Callable[..., keras.Model]:
    def build(input_shape: Sequence[int], weights: str | None, name: str) -> keras.Model:
        cls = getattr(keras.applications, cls_name)
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
        reg[f"efficientnetv2_{v}"] = _Spec(_app(f"EfficientNetV2{v.upper()}", include_preprocessing=True), "scale255")
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


def output_units(task: str, num_classes: int) -> int:
    """Width of the output layer: 1 for binary and regression, else ``num_classes``."""
    return 1 if task in ("binary", "regression") else int(num_classes)


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


def build_backbone(name: str, image_size: int, weights: str | None = None, width: int = 32) -> keras.Model:
    """The headless backbone alone, named ``"backbone"``, taking preprocessed input.

    Args:
        name: see :func:`list_models`.
        image_size: side of the square input.
        weights: ``None``, ``"imagenet"`` or a local weights file.
        width: small_cnn base width.

    Returns:
        A ``keras.Model`` mapping ``[B, S, S, 3]`` to a feature map.
    """
    spec = _spec(name)
    shape = (int(image_size), int(image_size), 3)
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
            backbone = spec.builder(shape, app_weights, "backbone")
        except ValueError as e:
            raise TfkitError(f"model {name} at image_size={image_size}: {str(e).splitlines()[0]}")
    if weights not in (None, "", "imagenet"):
        _load_backbone_weights(backbone, str(weights))
    return backbone


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
) -> keras.Model:
    """Build a classifier: preprocessing -> backbone -> pooling -> head, plus
    an optional metadata branch concatenated with the pooled image features.

    Args:
        name: backbone name (see :func:`list_models`).
        num_classes: number of classes (labels for multilabel).
        image_size: side of the square input images.
        task: ``binary`` (1 sigmoid) | ``multiclass`` (softmax) | ``multilabel``
            (C sigmoids) | ``regression`` (1 linear) | ``auto``.
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

    image = keras.Input((int(image_size), int(image_size), 3), name="image", dtype="float32")
    x = Preprocess(preprocess_mode(name), name="preprocess")(image)
    backbone = build_backbone(name, image_size, weights=weights, width=width)
    x = backbone(x)
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="pool")(x)
    else:
        x = GeMPooling2D(name="pool")(x)

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

    for i, units in enumerate(head_units):
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"head_dropout{i}")(x)
        x = layers.Dense(int(units), activation="swish", name=f"head_dense{i}")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    activation = {"binary": "sigmoid", "multiclass": "softmax", "multilabel": "sigmoid", "regression": "linear"}[task]
    # float32 output: softmax/sigmoid in float16 lose precision and the loss sees rounded 0/1.
    if head == "arcface":
        out = arcface_output(x, num_classes, arcface_scale, arcface_margin)
    else:
        out = layers.Dense(output_units(task, num_classes), activation=activation, dtype="float32", name="output")(x)
    return keras.Model(inputs if len(inputs) > 1 else image, out, name=f"tfkit_{name}")


def model_from_config(
    model_cfg: Any, num_classes: int, image_size: int, task: str | None = None, meta_dim: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> keras.Model:
    """:func:`create_model` from a :class:`tfkit.config.ModelConfig`.

    Args:
        model_cfg: the ``model`` section of the config.
        num_classes: number of classes.
        image_size: input side (``cfg.data.image_size``).
        task: overrides ``model_cfg.task`` when given (``auto`` is resolved).
        meta_dim: width of an already-encoded metadata vector.
        metadata: the fold's fitted metadata encoding (see :func:`create_model`).

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
    try:
        return keras.saving.load_model(p, compile=False, safe_mode=True)
    except ValueError as e:
        if "Lambda" in str(e):
            raise TfkitError(f"{p}: refused to load {what}: it holds a Lambda layer (Python code); tfkit loads "
                             "models in Keras safe mode and never runs code from a model file") from None
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
        x = batch[0] if isinstance(batch, tuple) else batch
        n = int(keras.tree.flatten(x)[0].shape[0])
        full = full or n
        if n < full:
            x = keras.tree.map_structure(
                lambda t: np.concatenate([np.asarray(t), np.zeros((full - n, *t.shape[1:]), np.asarray(t).dtype)]), x)
        parts.append(np.asarray(model.predict_on_batch(x), dtype=np.float64)[:n])
    if not parts:
        raise TfkitError("predict: the dataset yielded no batch")
    return np.concatenate(parts)
