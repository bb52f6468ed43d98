"""Counter-based random draws that are bit-identical on TensorFlow and JAX.

Why not ``tf.random`` / ``jax.random``: the two libraries' generators give
different numbers for the same seed, so an augmentation drawn on the host
(``tf.data``) could not be reproduced inside a JAX train step. Here every
random number is a pure function of (seed, op, sub-stream, element index),
computed with uint32 multiply / xor / shift only (integer arithmetic is exact
on every backend and under XLA): the key is folded from the shape-[2] seed
(both 32-bit words of each component, so int32 and int64 seeds of the same
value agree), then each element's counter goes through two rounds of the
"lowbias32" integer hash (C. Wellons' hash-prospector; full avalanche).
Uniforms take the top 24 bits, so they are exact float32 multiples of 2**-24
and identical on both backends; everything derived from them (normals,
Gamma/Beta) differs at most by float rounding.

The element index is row-major over the draw's shape with the image index
first, so image ``i`` of a batch draws from its own counters.

Example:
    >>> from tfkit.augment.backend import ops_for
    >>> rng = Rng(ops_for(backend="tensorflow"), [1, 2])
    >>> rng.uniform(7, [4]).shape
    TensorShape([4])
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from tfkit.augment.backend import Ops
from tfkit.utils import TfkitError

__all__ = ["Rng"]

_M1, _M2 = 0x7FEB352D, 0x846CA68B  # lowbias32 multipliers
_GOLDEN = 0x9E3779B9
_COIN = 99  # sub-stream of an op's per-image on/off coin


def _mix(ops: Ops, x: Any) -> Any:
    """lowbias32: an invertible uint32 -> uint32 hash with full avalanche."""
    x = ops.xor(x, ops.shr(x, 16)) * ops.u32(_M1)
    x = ops.xor(x, ops.shr(x, 15)) * ops.u32(_M2)
    return ops.xor(x, ops.shr(x, 16))


class Rng:
    """Stateless random draws keyed by a shape-[2] integer seed.

    Args:
        ops: the backend namespace.
        seed: int tensor/array/list of shape [2] (e.g. ``[base seed, batch index]``).

    Raises:
        TfkitError: the seed is not shape [2] of integers.
    """

    def __init__(self, ops: Ops, seed: Any):
        self.ops = ops
        s = seed if ops.is_array(seed) else ops.asarray(seed)
        dtype = ops.dtype(s)
        if len(s.shape) != 1 or s.shape[0] != 2 or not dtype.startswith(("int", "uint")):
            raise TfkitError(f"augment seed: expected an int tensor of shape [2], got shape {tuple(s.shape)} {dtype}")
        lo, hi = ops.words(s)
        key = ops.u32(_GOLDEN)
        for word in (lo[0], hi[0], lo[1], hi[1]):
            key = _mix(ops, ops.xor(key, word))
        self.key = key

    def bits(self, op: int, shape: Sequence[Any], sub: int = 0) -> Any:
        """uint32 draws of ``shape`` from stream (op, sub)."""
        ops = self.ops
        k1 = _mix(ops, ops.xor(_mix(ops, ops.xor(self.key, ops.u32(op))), ops.u32(sub)))
        k2 = _mix(ops, k1 + ops.u32(_GOLDEN))
        counter = ops.cast(ops.range(ops.size(shape)), "uint32")
        h = _mix(ops, _mix(ops, ops.xor(counter, k1)) + k2)
        return ops.reshape(h, list(shape))

    def unit(self, op: int, shape: Sequence[Any], sub: int = 0, per_pixel: bool = False) -> Any:
        """Uniform in [0, 1): exact multiples of 2**-24, equal on every backend.

        Per-image draws are materialized (computed once, not inside every pixel's
        loop: see :meth:`~tfkit.augment.backend.Ops.materialize`); per-pixel
        draws (``per_pixel``) are used once each and need not be."""
        top = self.ops.cast(self.ops.shr(self.bits(op, shape, sub), 8), "int32")
        u = self.ops.cast(top, "float32") * (1.0 / (1 << 24))
        return u if per_pixel else self.ops.materialize(u)

    def uniform(self, op: int, shape: Sequence[Any], lo: float = 0.0, hi: float = 1.0, sub: int = 0) -> Any:
        """Uniform in [lo, hi)."""
        return lo + (hi - lo) * self.unit(op, shape, sub)

    def coin(self, op: int, b: Any, p: float) -> Any:
        """Per-image coin with probability ``p``: bool [B]."""
        return self.unit(op, [b], _COIN) < p

    def normal(self, op: int, shape: Sequence[Any], sub: int = 0, per_pixel: bool = False) -> Any:
        """Standard normal by Box-Muller from two uniform streams."""
        ops = self.ops
        u1 = self.unit(op, shape, 1000 + 2 * sub, per_pixel)
        u2 = self.unit(op, shape, 1001 + 2 * sub, per_pixel)
        return ops.sqrt(-2.0 * ops.log1p(-u1)) * ops.cos((2.0 * math.pi) * u2)

    def gamma(self, op: int, shape: Sequence[Any], alpha: float, sub: int = 0, tries: int = 12) -> Any:
        """Gamma(alpha, 1) by Marsaglia-Tsang with a fixed number of tries.

        Rejection sampling vectorised for XLA: ``tries`` candidates, keep the first
        accepted (acceptance >= 95% each, so a miss has probability < 1e-15 and
        returns the mode)."""
        ops = self.ops
        a = alpha + 1.0 if alpha < 1.0 else alpha  # alpha < 1: boost, then scale by U^(1/alpha)
        d = a - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        full = list(shape) + [tries]
        z = self.normal(op, full, 10 * sub + 1)
        u = ops.maximum(self.unit(op, full, 10 * sub + 2), 1e-12)
        t = 1.0 + c * z
        v = t * t * t  # explicit: pow(x, 3) rounds differently per backend
        ok = (v > 0) & (ops.log(u) < 0.5 * z * z + d - d * v + d * ops.log(ops.maximum(v, 1e-30)))
        first = ops.argmax(ops.cast(ok, "int32"), axis=-1)
        pick = ops.range(tries) == first[..., None]
        val = ops.sum(ops.where(pick, d * v, 0.0), -1)
        val = ops.where(ops.any(ok, -1), val, d)
        if alpha < 1.0:
            val = val * ops.pow(ops.maximum(self.unit(op, shape, 10 * sub + 3), 1e-12), 1.0 / alpha)
        return val

    def beta(self, op: int, shape: Sequence[Any], alpha: float, sub: int = 0) -> Any:
        """Beta(alpha, alpha) (the mixup / cutmix weight)."""
        x = self.gamma(op, shape, alpha, 2 * sub + 1)
        y = self.gamma(op, shape, alpha, 2 * sub + 2)
        total = x + y
        return self.ops.where(total > 0, x / self.ops.maximum(total, 1e-30), 0.5)
