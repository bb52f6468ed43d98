"""Classification heads beyond a dense softmax: ArcFace, the additive angular
margin head (Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep
Face Recognition").

The head keeps one unit-length weight vector per class and scores an image by
the cosine between its (unit-length) features and each class vector. At
training the angle to the true class is widened by a margin ``m`` before the
cosines are scaled by ``s``: the model must then pull each image's features
within ``theta < pi/2 - m`` of its class (roughly) to be right, which packs
classes tighter and farther apart than plain softmax does. At inference there
is no margin: the output is ``softmax(s * cos)``, probabilities like every
other tfkit head, so prediction, TTA, OOF, ensembles and reports work unchanged.

Selected by config (``model.head: arcface``, ``model.arcface_scale``,
``model.arcface_margin``) for multiclass tasks, with any backbone and with the
metadata branch (the head sees the pooled image features concatenated with
the metadata features). Only ``keras.ops`` are used, so the layer runs on the
TensorFlow and JAX backends.

Training needs the labels inside the forward pass: :func:`margin_forward`
gives tfkit's training step ``(x, y) -> softmax(margin logits)``. On the
TensorFlow backend Keras's cross-entropy reads the logits behind that softmax
(no clipping of tiny probabilities; at initialisation the true class's
margin probability is below Keras's 1e-7 clip). A JAX training step should
use :meth:`ArcFace.call` with labels and a from-logits loss.

Example:
    >>> head = ArcFace(3, scale=16.0, margin=0.3)
    >>> f = keras.ops.ones((2, 8))
    >>> tuple(head(f).shape), tuple(head(f, labels=keras.ops.array([0, 2])).shape)
    ((2, 3), (2, 3))
"""

from __future__ import annotations

import math
from typing import Any, Callable

import keras
from keras import layers, ops

from tfkit.utils import TfkitError

HEADS = ("dense", "arcface")
_EPS = 1e-7  # floor of sin^2 so d sqrt / d cos stays finite at cos = +-1


@keras.saving.register_keras_serializable(package="tfkit")
class ArcFace(layers.Layer):
    """Additive angular margin head.

    ``ArcFace(C)(features)`` returns ``softmax(scale * cos)`` (inference);
    ``ArcFace(C)(features, labels=y)`` returns the scaled margin logits
    ``scale * cos(theta_j + margin * y_j)`` (training), where ``y`` is a one-hot
    or soft ``[B, C]`` target or ``[B]`` class indices. With soft targets
    (mixup, cutmix) each class's angle gets its share of the margin.

    When ``theta + margin`` would pass pi, the logit continues as
    ``cos(theta) - margin * sin(margin)`` (InsightFace's fallback), so it keeps
    falling as the angle grows.

    Args:
        units: number of classes.
        scale: ``s``, the logit scale of the cosines (30 is common; the softmax
            temperature at inference).
        margin: ``m``, the angular margin in radians (0.5 in the paper), in [0, pi/2).

    Example:
        >>> layer = ArcFace(4)
        >>> p = layer(keras.ops.ones((2, 5)))
        >>> [round(float(x), 4) for x in keras.ops.sum(p, axis=-1)]
        [1.0, 1.0]
    """

    def __init__(self, units: int, scale: float = 30.0, margin: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(units) < 2:
            raise TfkitError(f"ArcFace: expected at least 2 classes, got {units}")
        check_head("arcface", None, scale, margin)
        self.units, self.scale, self.margin = int(units), float(scale), float(margin)

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer="glorot_uniform", trainable=True)

    def cosine(self, features: Any) -> Any:
        """``[B, C]`` cosines between the features and each class's weight vector."""
        f = ops.normalize(ops.cast(features, self.compute_dtype), axis=-1)
        w = ops.normalize(ops.cast(self.kernel, self.compute_dtype), axis=0)
        return ops.clip(ops.matmul(f, w), -1.0, 1.0)

    def call(self, features: Any, labels: Any = None) -> Any:
        cos = self.cosine(features)
        if labels is None:
            return ops.softmax(self.scale * cos, axis=-1)
        return self.margin_logits(cos, labels)

    def margin_logits(self, cos: Any, labels: Any) -> Any:
        """``scale * cos(theta + margin)`` for the target class(es), ``scale * cos`` for the others."""
        y = ops.convert_to_tensor(labels)
        if len(y.shape) == 1 or (y.shape[-1] == 1 and self.units > 1):
            y = ops.one_hot(ops.cast(ops.reshape(y, (-1,)), "int32"), self.units)
        y = ops.cast(y, cos.dtype)
        m = self.margin
        sin = ops.sqrt(ops.maximum(1.0 - ops.square(cos), _EPS))
        widened = cos * math.cos(m) - sin * math.sin(m)
        widened = ops.where(cos > math.cos(math.pi - m), widened, cos - m * math.sin(m))
        return self.scale * (cos + y * (widened - cos))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "scale": self.scale, "margin": self.margin}


def check_head(head: str, task: str | None, scale: float = 30.0, margin: float = 0.5) -> None:
    """Refuse an unknown head, ArcFace for a task without a softmax over classes, or a bad scale or margin.

    Args:
        head: ``model.head``.
        task: the resolved task (``None``: not known yet, not checked).
        scale: ``model.arcface_scale``.
        margin: ``model.arcface_margin``.

    Raises:
        TfkitError: one line naming the key.

    Example:
        >>> check_head("arcface", "binary")
        Traceback (most recent call last):
        ...
        tfkit.utils.TfkitError: model.head=arcface needs model.task=multiclass (a softmax over classes), got binary; for two classes set model.task: multiclass
    """
    if head not in HEADS:
        raise TfkitError(f"model.head: unknown head {head!r} (expected one of: {', '.join(HEADS)})")
    if head != "arcface":
        return
    if task is not None and task != "multiclass":
        raise TfkitError(f"model.head=arcface needs model.task=multiclass (a softmax over classes), got {task}; "
                         "for two classes set model.task: multiclass")
    if not float(scale) > 0:
        raise TfkitError(f"model.arcface_scale: expected a positive scale such as 30, got {scale}")
    if not 0.0 <= float(margin) < math.pi / 2:
        raise TfkitError(f"model.arcface_margin: expected radians in [0, pi/2) such as 0.5, got {margin}")


def arcface_output(x: Any, num_classes: int, scale: float, margin: float) -> Any:
    """The model's output layer (named ``"output"``, float32 like tfkit's dense heads) applied to ``x``."""
    return ArcFace(num_classes, scale=scale, margin=margin, dtype="float32", name="output")(x)


def margin_forward(model: keras.Model) -> Callable[[Any, Any], Any] | None:
    """The training forward pass of a model whose output layer is an :class:`ArcFace` head.

    Args:
        model: a functional tfkit model.

    Returns:
        ``None`` for other heads; else ``forward(x, y) -> softmax(margin logits)``
        (``[B, C]`` probabilities under the margin), running every layer with
        ``training=True``.

    Example::

        fwd = margin_forward(create_model("small_cnn", 3, 32, head="arcface"))
        probs = fwd(images, one_hot_labels)   # [B, 3], the margin on each image's class
    """
    try:
        head = model.get_layer("output")
    except ValueError:
        return None
    if not isinstance(head, ArcFace):
        return None
    # Shares every layer (and weight) with `model`: the features the head sees.
    features = keras.Model(model.input, head.input, name="arcface_features")

    def forward(x: Any, y: Any) -> Any:
        return ops.softmax(head(features(x, training=True), labels=y), axis=-1)

    return forward
