"""The array namespaces the augmentation is written against: TensorFlow and JAX.

Why: on the host the augmentation runs inside ``tf.data`` (TensorFlow ops,
XLA-compiled by ``tf.function(jit_compile=True)``); with Keras on JAX and
``data.augment_on: device`` it must run inside the JAX-compiled train step, on
``jax.Array``s. Every op of :mod:`tfkit.augment` is written ONCE against the
small set of primitives below, so both backends execute the same arithmetic in
the same order (their results agree within float rounding, tested).

Only what the ops need is here: constructors, elementwise maths, reductions,
one flat gather, a segment sum (histograms) and uint32 bit operations (the
counter-based random draws of :mod:`tfkit.augment.draws`). Operators (``+``,
``*``, ``<``, ``&``, ``~``), indexing and slicing are the arrays' own.

Example:
    >>> import tensorflow as tf
    >>> ops = ops_for(tf.zeros([2, 8, 8, 3]))
    >>> ops.name
    'tensorflow'
"""

from __future__ import annotations

from typing import Any, Sequence

from tfkit.utils import TfkitError

__all__ = ["Ops", "TFOps", "JaxOps", "ops_for", "BACKENDS"]

BACKENDS = ("tensorflow", "jax")

# Ops that only forward their arguments to one library function: op -> (its path in tensorflow, in
# jax.numpy), bound by Ops._bind_forwards. Arguments are positional and mean the same on both backends:
# reshape(x, shape), broadcast_to(x, shape), where(cond, a, b), clip(x, lo, hi), minimum(a, b),
# maximum(a, b), floor/exp/log/log1p/sqrt/cos/sin/tan(x), pow(x, y), floormod(x, n),
# transpose(x, perm), xor(a, b) (uint32 bitwise).
FORWARDS = {
    "reshape":      ("reshape", "reshape"),
    "broadcast_to": ("broadcast_to", "broadcast_to"),
    "where":        ("where", "where"),
    "clip":         ("clip_by_value", "clip"),
    "minimum":      ("minimum", "minimum"),
    "maximum":      ("maximum", "maximum"),
    "floor":        ("floor", "floor"),
    "exp":          ("exp", "exp"),
    "log":          ("math.log", "log"),
    "log1p":        ("math.log1p", "log1p"),
    "sqrt":         ("sqrt", "sqrt"),
    "cos":          ("cos", "cos"),
    "sin":          ("sin", "sin"),
    "tan":          ("tan", "tan"),
    "pow":          ("pow", "power"),
    "floormod":     ("math.floormod", "mod"),
    "transpose":    ("transpose", "transpose"),
    "xor":          ("bitwise.bitwise_xor", "bitwise_xor"),
}


class Ops:
    """Primitives shared by both backends; subclasses bind them to one library.

    ``batch(x)`` is the leading dimension: a Python int on JAX, possibly a
    scalar tensor under TensorFlow (``tf.data`` batches may have unknown size).
    Everything else has static shapes.
    """

    name = ""

    def _bind_forwards(self, library: Any) -> None:
        """Bind each op of :data:`FORWARDS` to this backend's function in ``library`` (kept as ``self.lib``)."""
        self.lib = library
        column = BACKENDS.index(self.name)
        for op, paths in FORWARDS.items():
            fn, path = library, paths[column]
            for part in path.split("."):
                fn = getattr(fn, part)
            setattr(self, op, fn)

    # Spelled alike in tensorflow and jax.numpy (positional arguments, same defaults):
    def zeros(self, shape: Sequence[Any], dtype: str = "float32") -> Any:
        return self.lib.zeros(shape, dtype)

    def ones(self, shape: Sequence[Any], dtype: str = "float32") -> Any:
        return self.lib.ones(shape, dtype)

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self.lib.stack(xs, axis)

    def u32(self, value: int) -> Any:
        """A uint32 scalar constant."""
        return self.const(value, "uint32")

    def size(self, shape: Sequence[Any]) -> Any:
        """Number of elements of ``shape`` (ints and, under TF, scalar tensors)."""
        n = 1
        for d in shape:
            n = n * d
        return n

    def materialize(self, x: Any) -> Any:
        """``x`` unchanged, but computed once: a fusion barrier for small per-image arrays.

        XLA fuses elementwise producers into every consumer, so without a barrier
        per-image parameters (hashes, cos, sin, lookup tables) are recomputed inside
        every pixel's loop: a hue shift ran 0.34 ms with this barrier and 76-111 ms
        without it on JAX (CPU, batch 16 at 192 px), equalize 2.8 ms vs 68 ms on TF.
        ``jax.lax.optimization_barrier`` did not stop the fusion (XLA:CPU expands it
        away first) and TF has no such op; a sort is never fused into its consumers,
        and sorting two copies of a value returns it exactly, on every device (a
        dot with an identity would round through TF32 / bfloat16 passes on GPUs and TPUs).
        """
        raise NotImplementedError

    def static_shape(self, x: Any) -> list[int | None]:
        """The static shape as a list (None where unknown)."""
        return [None if d is None else int(d) for d in x.shape]


class TFOps(Ops):
    """TensorFlow ops: the host path inside ``tf.data`` and the TF train step."""

    name = "tensorflow"

    def __init__(self) -> None:
        import tensorflow as tf

        self.tf = tf
        self._bind_forwards(tf)

    def is_array(self, x: Any) -> bool:
        return self.tf.is_tensor(x)

    def asarray(self, x: Any) -> Any:
        return self.tf.convert_to_tensor(x)

    def const(self, value: Any, dtype: str = "float32") -> Any:
        return self.tf.constant(value, dtype)

    def dtype(self, x: Any) -> str:
        return x.dtype.name

    def cast(self, x: Any, dtype: str) -> Any:
        return self.tf.cast(x, dtype)

    def batch(self, x: Any) -> Any:
        return self.tf.shape(x)[0] if x.shape[0] is None else int(x.shape[0])

    def range(self, n: Any, dtype: str = "int32") -> Any:
        return self.tf.range(n, dtype=dtype)

    def full(self, shape: Sequence[Any], value: Any, dtype: str = "float32") -> Any:
        return self.tf.fill(shape, self.tf.constant(value, dtype))

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self.tf.concat(xs, axis)

    def sum(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.tf.reduce_sum(x, axis, keepdims=keepdims)

    def mean(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.tf.reduce_mean(x, axis, keepdims=keepdims)

    def max(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.tf.reduce_max(x, axis, keepdims=keepdims)

    def min(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.tf.reduce_min(x, axis, keepdims=keepdims)

    def any(self, x: Any, axis: Any = None) -> Any:
        return self.tf.reduce_any(x, axis)

    def argmax(self, x: Any, axis: int) -> Any:
        return self.tf.argmax(x, axis=axis, output_type=self.tf.int32)

    def cumsum(self, x: Any, axis: int, exclusive: bool = False) -> Any:
        return self.tf.cumsum(x, axis=axis, exclusive=exclusive)

    def take(self, x: Any, idx: Any) -> Any:
        """``x[idx]`` along axis 0 (indices in range)."""
        return self.tf.gather(x, idx)

    def pad(self, x: Any, paddings: Sequence[Sequence[int]], symmetric: bool) -> Any:
        return self.tf.pad(x, paddings, mode="SYMMETRIC" if symmetric else "CONSTANT")

    def roll(self, x: Any, shift: Any, axis: int) -> Any:
        return self.tf.roll(x, shift, axis=axis)

    def flip(self, x: Any, axes: Sequence[int]) -> Any:
        return self.tf.reverse(x, axes)

    def segment_sum(self, data: Any, ids: Any, n: int) -> Any:
        return self.tf.math.unsorted_segment_sum(data, ids, n)

    def shr(self, x: Any, n: int) -> Any:
        return self.tf.bitwise.right_shift(x, self.tf.constant(n, x.dtype))

    def materialize(self, x: Any) -> Any:
        """``x`` unchanged, computed once (see :meth:`Ops.materialize`)."""
        tf = self.tf
        return tf.sort(tf.stack([x, x], -1), axis=-1)[..., 0]

    def words(self, x: Any) -> tuple[Any, Any]:
        """Low and high uint32 words of integers (int32 sign-extends, as int64 would)."""
        tf = self.tf
        if x.dtype == tf.int64:
            mask = tf.constant(0xFFFFFFFF, tf.int64)
            lo = tf.bitwise.bitwise_and(x, mask)
            hi = tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, tf.constant(32, tf.int64)), mask)
            return tf.cast(lo, tf.uint32), tf.cast(hi, tf.uint32)
        x = tf.cast(x, tf.int32)
        return tf.bitcast(x, tf.uint32), tf.bitcast(tf.bitwise.right_shift(x, 31), tf.uint32)


class JaxOps(Ops):
    """``jax.numpy`` ops (what ``keras.ops`` runs on the JAX backend): the device path."""

    name = "jax"

    def __init__(self) -> None:
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise TfkitError("augment backend 'jax': JAX is not installed (pip install tfkit-vision[jax])") from e
        self.jax, self.jnp = jax, jnp
        self._bind_forwards(jnp)

    def is_array(self, x: Any) -> bool:
        return isinstance(x, self.jax.Array)

    def asarray(self, x: Any) -> Any:
        return self.jnp.asarray(x)

    def const(self, value: Any, dtype: str = "float32") -> Any:
        return self.jnp.asarray(value, dtype)

    def dtype(self, x: Any) -> str:
        return str(x.dtype)

    def cast(self, x: Any, dtype: str) -> Any:
        return self.jnp.asarray(x).astype(dtype)

    def batch(self, x: Any) -> int:
        return int(x.shape[0])

    def range(self, n: Any, dtype: str = "int32") -> Any:
        return self.jnp.arange(n, dtype=dtype)

    def full(self, shape: Sequence[Any], value: Any, dtype: str = "float32") -> Any:
        return self.jnp.full(shape, value, dtype)

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any:
        return self.jnp.concatenate(xs, axis)

    def sum(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.jnp.sum(x, axis=_axis(axis), keepdims=keepdims)

    def mean(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.jnp.mean(x, axis=_axis(axis), keepdims=keepdims)

    def max(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.jnp.max(x, axis=_axis(axis), keepdims=keepdims)

    def min(self, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return self.jnp.min(x, axis=_axis(axis), keepdims=keepdims)

    def any(self, x: Any, axis: Any = None) -> Any:
        return self.jnp.any(x, axis=_axis(axis))

    def argmax(self, x: Any, axis: int) -> Any:
        return self.jnp.argmax(x, axis=axis).astype("int32")

    def cumsum(self, x: Any, axis: int, exclusive: bool = False) -> Any:
        c = self.jnp.cumsum(x, axis=axis, dtype=x.dtype)
        return c - x if exclusive else c

    def take(self, x: Any, idx: Any) -> Any:
        # "clip" skips the out-of-range fill JAX adds by default; indices are in range.
        return self.jnp.take(x, idx, axis=0, mode="clip")

    def pad(self, x: Any, paddings: Sequence[Sequence[int]], symmetric: bool) -> Any:
        return self.jnp.pad(x, paddings, mode="symmetric" if symmetric else "constant")

    def roll(self, x: Any, shift: Any, axis: int) -> Any:
        return self.jnp.roll(x, shift, axis=axis)

    def flip(self, x: Any, axes: Sequence[int]) -> Any:
        return self.jnp.flip(x, axis=tuple(axes))

    def segment_sum(self, data: Any, ids: Any, n: int) -> Any:
        return self.jax.ops.segment_sum(data, ids, num_segments=n)

    def shr(self, x: Any, n: int) -> Any:
        return self.jnp.right_shift(x, self.jnp.asarray(n, x.dtype))

    def materialize(self, x: Any) -> Any:
        """``x`` unchanged, computed once (see :meth:`Ops.materialize`)."""
        jnp = self.jnp
        return jnp.sort(jnp.stack([x, x], -1), axis=-1)[..., 0]

    def words(self, x: Any) -> tuple[Any, Any]:
        """Low and high uint32 words of integers (int32 sign-extends, as int64 would)."""
        lax, jnp = self.jax.lax, self.jnp
        if x.dtype == jnp.int64:  # only with jax_enable_x64
            return x.astype(jnp.uint32), (x >> 32).astype(jnp.uint32)
        x = x.astype(jnp.int32)
        return lax.bitcast_convert_type(x, jnp.uint32), lax.bitcast_convert_type(x >> 31, jnp.uint32)


def _axis(axis: Any) -> Any:
    return tuple(axis) if isinstance(axis, list) else axis


_CACHE: dict[str, Ops] = {}


def ops_for(x: Any = None, backend: str | None = None) -> Ops:
    """The namespace for ``x``: TensorFlow for tf tensors, NumPy arrays and lists;
    JAX for ``jax.Array``s (including tracers inside ``jax.jit``).

    Args:
        x: an array whose library decides the backend (ignored when ``backend`` is given).
        backend: "tensorflow" or "jax" to choose explicitly.

    Returns:
        The shared :class:`Ops` instance of that backend.

    Raises:
        TfkitError: an unknown backend name.
    """
    if backend is None:
        backend = "tensorflow"
        if x is not None and type(x).__module__.split(".")[0] in ("jax", "jaxlib"):
            backend = "jax"
    if backend not in BACKENDS:
        raise TfkitError(f"augment backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend not in _CACHE:
        _CACHE[backend] = TFOps() if backend == "tensorflow" else JaxOps()
    return _CACHE[backend]
