"""The sparse solver behind :mod:`tfkit.folds`: groups to folds, triple-stratified.

Who owns what: :mod:`tfkit.folds` turns a frame, label lists or a numeric target
into (group, class) entries and calls :func:`solve`; this module only sees
integers and counts, holds no state between calls and writes nothing.

Each group (e.g. a patient) is a sparse vector of per-class counts (CSR rows:
only the classes it holds are stored) plus its image count. The objective,
summed over folds ``k``, is chi-square like

    sum_c (n_kc - T_c)^2 / T_c + a (n_k - N/K)^2 / (N/K) + b (g_k - G/K)^2 / (G/K)

(``n_kc`` images of class ``c`` in fold ``k``, ``T_c`` its ideal share, ``n_k``
images and ``g_k`` groups of fold ``k``; ``a`` = 0.6, ``b`` = 0.2, ``a + b < 1``
so class balance comes first). Memory is O(groups + non-zero (group, class)
counts + folds x classes): no groups x classes matrix is ever built.

1. **Greedy.** Groups are placed heaviest first, weight ``sum_c x_gc / T_c``
   (rare classes and big groups early, as Sechidis et al.'s iterative
   stratification takes the rarest label first and LPT scheduling the largest job
   first), in steps of 1/8 octave so near-equal weights tie. Each group's *key
   class* is the one it weighs most in (largest ``x_gc / T_c``). Groups with the
   same weight step, key class, key count and image count form a *run*. A run of
   ``m`` groups holding their key class only is interchangeable: placing them one
   at a time into the fold that least raises the objective is water-filling,
   computed in one step. Small runs of groups that hold other classes too are
   placed one group at a time, scored on all their classes; bigger ones are
   water-filled on the key class and dealt in fill order (which rotates over
   folds), sorted by their second class so that spreads too. The Python loop is
   over runs and mixed groups, not over all groups: 5M groups, 5,000 classes make
   about 180k runs.
2. **Local search** (``refine``): rounds of improving single-group moves (the
   best 20,000 candidates of a scan, each re-scored on the current totals before
   it is applied, so every move lowers the objective), and when no move helps, the
   best swap of two groups per pair of folds (over at most 512 distinct group
   profiles per fold, a seeded sample). It stops when a round gains less than half
   of what balancing one image is worth and less than a millionth of the objective
   left, or after a work budget of rounds that
   shrinks with the input (at least 2; beyond 1M groups a round scans a seeded
   window of 1M).

Measured (``bench/bench_folds.py``): on the binary grouped benchmark the folds
match the dense version's balance on every seed; 10M images, 5,000 classes and 5M
groups take ~11 s of CPU and ~1.2 GB peak (data included).

Same inputs and seed, same folds: every tie is broken by a generator seeded with
``seed``, never by time or thread count.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GroupCounts", "group_counts", "solve"]

# Weights of the image-count and group-count terms relative to the class terms.
# Their sum stays below 1 so a one-image difference in a class count always
# outweighs a one-image difference in fold size: classes first.
IMAGE_WEIGHT = 0.6
GROUP_WEIGHT = 0.2
# Local search: distinct profiles per fold tried in swaps, move candidates per round,
# groups scanned per round, and the work budget (rounds x stored counts) that bounds
# the rounds on big inputs.
SWAP_CANDIDATES = 512
MOVES_PER_ROUND = 20_000
SCAN_GROUPS = 1 << 20
CHUNK_GROUPS = 1 << 18  # groups per [groups, K] table while scanning moves
SEARCH_WORK = 3e7
MIN_ROUNDS = 2
MAX_ROUNDS = 1000
MISSES_PER_ROUND = 512  # candidates in a row that no longer improve: the round ends
STOP_FRACTION = 1e-6
# Runs of at most this many groups that also hold other classes are placed one
# group at a time, scored on all their classes (bigger runs are water-filled and
# dealt). Measured on 10M images / 5M groups: water-filling those runs too left an
# objective 3.5x higher that the local search took minutes to repair.
SMALL_RUN = 8
_TOL = 1e-9


@dataclass(frozen=True)
class GroupCounts:
    """Groups as sparse per-class counts: CSR rows over classes plus image counts.

    Attributes:
        indptr: int64 ``[G + 1]``; group ``g`` holds entries ``indptr[g]:indptr[g+1]``.
        classes: int32 ``[nnz]`` class of each entry, increasing within a group.
        counts: float64 ``[nnz]`` images of that class in the group (> 0).
        images: float64 ``[G]`` images (rows) in each group; with several labels per
            image it differs from the sum of the group's class counts.
        n_classes: number of classes C.
        values: optional float ``[G]`` (e.g. a regression target's mean per group):
            interchangeable groups are dealt to folds in rotation in this order, so
            each fold gets low and high values alike.
    """

    indptr: np.ndarray
    classes: np.ndarray
    counts: np.ndarray
    images: np.ndarray
    n_classes: int
    values: np.ndarray | None = None

    @property
    def n_groups(self) -> int:
        return len(self.images)


def group_counts(
    entry_groups: np.ndarray,
    entry_classes: np.ndarray,
    row_groups: np.ndarray,
    n_groups: int,
    n_classes: int,
    row_values: np.ndarray | None = None,
) -> GroupCounts:
    """Sum (group, class) entries into sparse per-group class counts.

    Args:
        entry_groups: group code (0..G-1) of each label entry; one entry per row for
            single-label data, one per positive label for multi-label data.
        entry_classes: class code (0..C-1) of each entry.
        row_groups: group code of each row (image), for the image counts.
        n_groups: number of groups G.
        n_classes: number of classes C.
        row_values: optional float per row; its mean per group orders the dealing
            (:attr:`GroupCounts.values`).

    Returns:
        The :class:`GroupCounts`; memory O(G + distinct (group, class) pairs).
    """
    key = entry_groups.astype(np.int64) * n_classes + entry_classes
    key, counts = np.unique(key, return_counts=True)
    groups_of_key = key // n_classes
    classes = (key - groups_of_key * n_classes).astype(np.int32)
    del key
    indptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(groups_of_key, minlength=n_groups), out=indptr[1:])
    images = np.bincount(row_groups, minlength=n_groups).astype(np.float64)
    values = None if row_values is None else np.bincount(row_groups, weights=row_values, minlength=n_groups) / images
    return GroupCounts(indptr, classes, counts.astype(np.float64), images, n_classes, values)


@dataclass(frozen=True)
class _Objective:
    """Ideal fold shares and weights: classes sparse, images and groups as two extra columns."""

    T: np.ndarray  # [C] ideal class count per fold
    w: np.ndarray  # [C] 1 / T_c (0 for a class that never occurs)
    T_extra: np.ndarray  # [2] ideal images and groups per fold
    w_extra: np.ndarray  # [2]

    @classmethod
    def of(cls, gc: GroupCounts, n_folds: int) -> "_Objective":
        T = np.bincount(gc.classes, weights=gc.counts, minlength=gc.n_classes) / n_folds
        w = np.divide(1.0, T, out=np.zeros_like(T), where=T > 0)
        T_extra = np.array([gc.images.sum(), gc.n_groups], dtype=np.float64) / n_folds
        return cls(T, w, T_extra, np.array([IMAGE_WEIGHT, GROUP_WEIGHT]) / T_extra)


def _extras(gc: GroupCounts) -> np.ndarray:
    """[G, 2] image count and 1 per group: the two dense columns of the objective."""
    return np.column_stack([gc.images, np.ones(gc.n_groups)])


def solve(gc: GroupCounts, n_folds: int, seed: int, refine: bool = True) -> np.ndarray:
    """Assign each group to a fold: greedy runs, then a bounded local search.

    Args:
        gc: the groups' sparse class counts (:func:`group_counts`).
        n_folds: number of folds K, at most the number of groups.
        seed: seeds every tie-break and sample.
        refine: run the local search after the greedy pass.

    Returns:
        int64 ``[G]`` fold of each group; every fold holds at least one group.
    """
    rng = np.random.default_rng(seed)
    obj = _Objective.of(gc, n_folds)
    # The matrix products here are small: a multi-threaded BLAS only adds contention
    # (measured 15x slower on a busy 2-core machine), so run it on one thread.
    with _single_thread_blas():
        assign = _greedy(gc, obj, n_folds, rng)
        if refine:
            assign = _local_search(gc, obj, assign, n_folds, rng)
    return _fill_empty(gc.images, assign, n_folds)


@functools.lru_cache(maxsize=1)
def _threadpools() -> Any:
    """The process's BLAS thread pools, found once (a lookup reads /proc: ~15 ms)."""
    try:
        from threadpoolctl import ThreadpoolController  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


def _single_thread_blas() -> contextlib.AbstractContextManager:
    controller = _threadpools()
    if controller is None:  # pragma: no cover
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------- greedy


def _top_entry(indptr: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Position of each group's highest-scoring entry (the first on ties), -1 if none.

    Entries scored ``-inf`` never count. A one-entry group's answer is its entry;
    the others are found with ``reduceat`` over their entries only (most groups of
    a big catalogue hold one class).
    """
    lens = np.diff(indptr)
    if len(score) == 0:
        return np.full(len(lens), -1, dtype=np.int64)
    first = np.where(lens > 0, indptr[:-1], -1)
    single = lens == 1
    first[single & (score[np.minimum(indptr[:-1], max(len(score) - 1, 0))] == -np.inf)] = -1
    multi = np.flatnonzero(lens > 1)
    if len(multi):
        pos = _ranges(indptr[multi], lens[multi])
        sub = score[pos]
        starts = np.cumsum(lens[multi]) - lens[multi]
        best = np.maximum.reduceat(sub, starts)
        hit = (sub == np.repeat(best, lens[multi])) & (sub > -np.inf)
        at = np.minimum.reduceat(np.where(hit, np.arange(len(sub)), len(sub)), starts)
        first[multi] = np.where(at < len(sub), pos[np.minimum(at, len(sub) - 1)], -1)
    return first


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each (s, n)."""
    return np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))


def _greedy_order(
    gc: GroupCounts, obj: _Objective, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Groups in placement order and where each run of interchangeable groups starts.

    Returns:
        ``(order, run_starts, key, key_count)``. ``order`` sorts groups by weight
        ``sum_c x_gc / T_c`` (descending, in steps of 1/8 octave: groups within 9%
        of each other count as equally heavy, so runs are not split by small
        differences), then key class, key count and image count (descending), then
        second class and count, ``values`` if given, then a seeded shuffle.
        ``run_starts`` are the positions in ``order`` where the (weight step, key
        class, key count, image count) changes, plus ``len(order)``; ``key`` (-1:
        no class) and ``key_count`` are in placement order.
    """
    G = gc.n_groups
    score = obj.w[gc.classes] * gc.counts
    weight = np.zeros(G)
    has = np.diff(gc.indptr) > 0
    if has.any():
        weight[has] = np.add.reduceat(score, gc.indptr[:-1][has])
    with np.errstate(divide="ignore"):
        step = np.floor(8.0 * np.log2(weight))
    step[weight <= 0] = np.floor(8.0 * np.log2(weight[weight > 0].min())) - 1 if (weight > 0).any() else 0
    del weight
    top = _top_entry(gc.indptr, score)
    score[top[top >= 0]] = -np.inf  # the second class: best among the rest
    second = _top_entry(gc.indptr, score)
    del score
    key, key_count = _at(top, gc.classes, -1), _at(top, gc.counts, 0.0)
    # One integer key orders like the tuple (weight step desc, key class, key count desc,
    # images desc); a second appends (second class, its count desc) for the dealing.
    run_key = _composite([-step.astype(np.int64), key + 1, -key_count.astype(np.int64), -gc.images.astype(np.int64)])
    del step
    full_key = _composite([run_key, _at(second, gc.classes, -1) + 1, -_at(second, gc.counts, 0.0).astype(np.int64)])
    del second, top
    shuffle = rng.permutation(G)  # seeded order among otherwise equal groups
    if gc.values is None:
        order = shuffle[np.argsort(full_key[shuffle], kind="stable")]
    else:
        order = shuffle[np.lexsort((gc.values[shuffle], full_key[shuffle]))]
    del full_key, shuffle
    run_key = run_key[order]
    change = np.ones(G, dtype=bool)
    change[1:] = run_key[1:] != run_key[:-1]
    return order, np.append(np.flatnonzero(change), G), key[order], key_count[order]


def _at(pos: np.ndarray, values: np.ndarray, missing: float) -> np.ndarray:
    """``values[pos]`` where ``pos >= 0``, else ``missing`` (as int64 for integer values)."""
    out = np.full(len(pos), missing, dtype=np.int64 if values.dtype.kind in "iu" else values.dtype)
    out[pos >= 0] = values[pos[pos >= 0]]
    return out


def _composite(parts: list[np.ndarray]) -> np.ndarray:
    """One int64 sort key ordering like the tuple ``parts`` (each shifted to start at 0)."""
    key = np.zeros(len(parts[0]), dtype=np.int64)
    span = 1
    for p in parts:
        low = int(p.min()) if len(p) else 0
        width = int(p.max()) - low + 1 if len(p) else 1
        if span * width >= 2**62:  # only with extreme counts: rank what we have instead of overflowing
            key = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(-1)
            span = int(key.max()) + 1 if len(key) else 1
        key *= width
        key += p
        if low:
            key -= low
        span *= width
    return key


def _water_fill(cost: np.ndarray, step: float, m: int) -> np.ndarray:
    """How many of ``m`` identical items each fold gets, placed one at a time where cheapest.

    Item ``j`` placed in fold ``k`` costs ``cost[k] + j * step`` (``j`` items already
    there); ties go to the lower fold index. The one-at-a-time greedy takes the ``m``
    cheapest (fold, slot) pairs, so the counts follow from a water level, then are
    repaired slot by slot where rounding put the level off.

    Returns:
        int64 ``[K]`` items per fold.
    """
    K = len(cost)
    c0 = cost - cost.min()
    b = c0 / step
    bs = np.sort(b)
    level = (m + np.cumsum(bs)) / np.arange(1, K + 1)
    active = int(np.flatnonzero(level > bs)[-1])  # the water covers the active + 1 lowest folds
    n = np.floor(np.maximum(level[active] - b, 0.0)).astype(np.int64)
    c0, counts = c0.tolist(), n.tolist()

    def free(k: int) -> tuple[float, int]:  # the fold's next slot, exact (no division)
        return (c0[k] + counts[k] * step, k)

    def taken(k: int) -> tuple[float, int]:  # the fold's last filled slot
        return (c0[k] + (counts[k] - 1) * step, k) if counts[k] else (-np.inf, k)

    # Rounding may put the level a few slots off: fill or empty to m slots, then swap
    # while the dearest taken slot costs more than the cheapest free one.
    while sum(counts) < m:
        counts[min(range(K), key=free)] += 1
    while sum(counts) > m:
        counts[max(range(K), key=taken)] -= 1
    while True:
        cheap, dear = min(range(K), key=free), max(range(K), key=taken)
        if taken(dear) <= free(cheap):
            return np.array(counts, dtype=np.int64)
        counts[dear] -= 1
        counts[cheap] += 1


def _fill_order(cost: np.ndarray, step: float, n: np.ndarray, serpentine: bool = False) -> np.ndarray:
    """The folds of :func:`_water_fill`'s items in placement order (rotates over folds).

    ``serpentine`` reverses every other round of ``K`` slots (0,1,2,2,1,0,...), so
    items dealt in sorted order give no fold the first pick of every round.
    """
    K = len(n)
    folds = np.repeat(np.arange(K), n)
    slot = np.arange(len(folds)) - np.repeat(np.cumsum(n) - n, n)
    seq = folds[np.argsort((cost[folds] - cost.min()) + slot * step, kind="stable")]
    if serpentine and len(seq) > K:
        full = len(seq) // K * K
        rounds = seq[:full].reshape(-1, K)
        rounds[1::2] = rounds[1::2, ::-1].copy()
        seq[:full] = rounds.reshape(-1)
    return seq


def _greedy(gc: GroupCounts, obj: _Objective, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Place runs of interchangeable groups, heaviest first (water-filling), groups' folds."""
    order, run_starts, key, key_count = _greedy_order(gc, obj, rng)
    # Folds are renumbered in a seeded order, so "lowest index wins a tie" is a seeded tie-break.
    fold_names = rng.permutation(n_folds)
    placed = _place_runs(gc, obj, order, run_starts, key, key_count, n_folds)
    assign = np.empty(len(order), dtype=np.int64)
    assign[order] = fold_names[placed]
    return assign


def _place_runs(
    gc: GroupCounts,
    obj: _Objective,
    order: np.ndarray,
    run_starts: np.ndarray,
    key: np.ndarray,
    key_count: np.ndarray,
    n_folds: int,
) -> np.ndarray:
    """The greedy loop, one step per run (per group for small runs of mixed groups).

    Costs drop every term that is the same for all folds (they cannot change the
    choice): adding x to fold k costs ``sum_j w_j x_j F_kj`` plus a constant.
    """
    lens = np.diff(gc.indptr)[order]
    ptr = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lens, out=ptr[1:])
    gather = _ranges(gc.indptr[:-1][order], lens)
    classes, counts = gc.classes[gather], gc.counts[gather]  # entries in placement order
    wx = counts * obj.w[classes]
    del gather
    starts, ends = run_starts[:-1], run_starts[1:]
    # A pure run: each group holds its key class only (or nothing), so only that column changes.
    pure = np.add.reduceat((lens > 1).astype(np.int64), starts) == 0 if len(starts) else np.zeros(0, bool)
    images = gc.images[order][starts]
    kw = np.where(key[starts] >= 0, key_count[starts] * obj.w[np.maximum(key[starts], 0)], 0.0)
    wn, wg = obj.w_extra.tolist()
    steps = (wn * images * images + wg + kw * key_count[starts]).tolist()
    runs = zip(starts.tolist(), ends.tolist(), key[starts].tolist(), key_count[starts].tolist(),
               images.tolist(), kw.tolist(), steps, pure.tolist())
    FT = np.zeros((gc.n_classes, n_folds))  # class counts per fold, class-major: FT[c] is contiguous
    img = np.zeros(n_folds)  # w_n x images per fold
    grp = np.zeros(n_folds)  # w_g x groups per fold
    placed = np.empty(len(order), dtype=np.int64)
    folds_k = np.arange(n_folds)
    deal = gc.values is not None  # rotate folds within a run so values spread
    for s, e, c, x, n, kwc, step, is_pure in runs:
        if not is_pure and e - s <= SMALL_RUN:
            # Groups holding other classes too: one at a time, scored on all their classes.
            bounds = ptr[s:e + 1].tolist()
            base = n * img + grp  # the image and group part of the cost, kept up to date
            for i, lo, hi in zip(range(s, e), bounds[:-1], bounds[1:]):
                cls = classes[lo:hi]
                k = (base + wx[lo:hi] @ FT[cls]).argmin()
                placed[i] = k
                FT[cls, k] += counts[lo:hi]
                base[k] += wn * n * n + wg  # the same n for the whole run
            per_fold = np.bincount(placed[s:e], minlength=n_folds)
            img += (wn * n) * per_fold
            grp += wg * per_fold
            continue
        cost = n * img + grp
        if c >= 0:
            cost += kwc * FT[c]
        if e - s == 1:  # a pure run of one group: the cheapest fold
            k = cost.argmin()
            placed[s] = k
            if c >= 0:
                FT[c, k] += x
            img[k] += wn * n
            grp[k] += wg
            continue
        per_fold = _water_fill(cost, step, e - s)
        if is_pure and not deal:
            placed[s:e] = np.repeat(folds_k, per_fold)
            if c >= 0:
                FT[c] += x * per_fold
        else:
            placed[s:e] = seq = _fill_order(cost, step, per_fold, serpentine=deal)
            lo, hi = ptr[s], ptr[e]
            np.add.at(FT, (classes[lo:hi], np.repeat(seq, lens[s:e])), counts[lo:hi])
        img += (wn * n) * per_fold
        grp += wg * per_fold
    return placed


# --------------------------------------------------------------------------- local search


@dataclass
class _State:
    """What the local search changes: the assignment and the fold totals."""

    assign: np.ndarray  # [G] fold of each group
    F: np.ndarray  # [K, C] class counts per fold
    E: np.ndarray  # [K, 2] images and groups per fold
    size: np.ndarray  # [K] groups per fold

    @classmethod
    def of(cls, gc: GroupCounts, assign: np.ndarray, n_folds: int) -> "_State":
        owner = np.repeat(assign, np.diff(gc.indptr))
        F = np.bincount(owner * gc.n_classes + gc.classes, weights=gc.counts, minlength=n_folds * gc.n_classes)
        F = F.astype(np.float64, copy=False)  # bincount of nothing is int64
        E = np.column_stack([np.bincount(assign, weights=gc.images, minlength=n_folds),
                             np.bincount(assign, minlength=n_folds).astype(np.float64)])
        size = np.bincount(assign, minlength=n_folds)
        return cls(assign.copy(), F.reshape(n_folds, gc.n_classes), E, size)

    def objective(self, obj: _Objective) -> float:
        """The imbalance objective of the current totals."""
        return float(((self.F - obj.T) ** 2 @ obj.w).sum() + ((self.E - obj.T_extra) ** 2 @ obj.w_extra).sum())

    def move(self, gc: GroupCounts, extras: np.ndarray, g: int, dst: int) -> None:
        """Move group ``g`` to fold ``dst``, updating the totals."""
        src = int(self.assign[g])
        sl = slice(gc.indptr[g], gc.indptr[g + 1])
        self.F[src, gc.classes[sl]] -= gc.counts[sl]
        self.F[dst, gc.classes[sl]] += gc.counts[sl]
        self.E[src] -= extras[g]
        self.E[dst] += extras[g]
        self.size[src] -= 1
        self.size[dst] += 1
        self.assign[g] = dst


@dataclass(frozen=True)
class _Terms:
    """Per-group constants of the local search (built once)."""

    owner: np.ndarray  # [nnz] group of each entry
    wx: np.ndarray  # [nnz] w_c x_gc
    extras: np.ndarray  # [G, 2] images, 1
    wextras: np.ndarray  # [G, 2] w_n images, w_g
    self_term: np.ndarray  # [G] 2 sum_j w_j x_gj^2: the fold-independent part of a move

    @classmethod
    def of(cls, gc: GroupCounts, obj: _Objective) -> "_Terms":
        owner = np.repeat(np.arange(gc.n_groups), np.diff(gc.indptr))
        wx = gc.counts * obj.w[gc.classes]
        extras = _extras(gc)
        wextras = extras * obj.w_extra
        self_term = 2.0 * (np.bincount(owner, weights=wx * gc.counts, minlength=gc.n_groups)
                           + (wextras * extras).sum(axis=1))
        return cls(owner, wx, extras, wextras, self_term)


def _profile_ids(gc: GroupCounts) -> np.ndarray:
    """A 64-bit hash of each group's (class, count) entries and image count.

    Groups with equal hashes are (barring a collision, which only narrows the swap
    candidates) interchangeable: swapping two of them changes nothing.
    """
    with np.errstate(over="ignore"):
        h = (gc.classes.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= gc.counts.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h *= np.uint64(0x165667B19E3779F9)
        ids = np.zeros(gc.n_groups, dtype=np.uint64)
        lens = np.diff(gc.indptr)
        if len(h):
            ids[lens > 0] = np.add.reduceat(h, gc.indptr[:-1][lens > 0])
        ids += gc.images.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    return ids


def _local_search(
    gc: GroupCounts, obj: _Objective, assign: np.ndarray, n_folds: int, rng: np.random.Generator
) -> np.ndarray:
    """Improve the greedy assignment by batches of moves, then swaps, while the objective drops."""
    st = _State.of(gc, assign, n_folds)
    terms = _Terms.of(gc, obj)
    profiles = _profile_ids(gc)
    rounds = int(np.clip(SEARCH_WORK / max(len(gc.counts) + gc.n_groups, 1), MIN_ROUNDS, MAX_ROUNDS))
    value = st.objective(obj)
    for _ in range(rounds):
        gain = _apply_moves(gc, obj, st, terms, rng)
        if gain <= 0.0:
            gain = _apply_swaps(gc, obj, st, terms, profiles, rng)
        # Stop when a round buys less than half of what balancing one image is worth
        # and a negligible share of what is left.
        if gain < min(0.5 * obj.w_extra[0], STOP_FRACTION * value):
            break
        value -= gain
    return st.assign


def _fold_dots(gc: GroupCounts, terms: _Terms, dev: np.ndarray, s: int, e: int) -> np.ndarray:
    """``[e - s, K]``: sum_c w_c x_gc dev[k, c] for groups s..e-1 (sparse rows times a dense table)."""
    lo, hi = gc.indptr[s], gc.indptr[e]
    vals = dev[:, gc.classes[lo:hi]] * terms.wx[lo:hi]  # [K, entries]
    owner = terms.owner[lo:hi] - s
    return np.stack([np.bincount(owner, weights=v, minlength=e - s) for v in vals], axis=1)


def _move_candidates(
    gc: GroupCounts, obj: _Objective, st: _State, terms: _Terms, rng: np.random.Generator
) -> np.ndarray:
    """Groups whose best single move lowers the objective, most improving first.

    Moving g from a to b changes the objective by
    ``2 sum_j w_j x_j (F_bj - F_aj) + 2 sum_j w_j x_j^2`` (classes, images and
    groups alike); computed in chunks of groups so the [groups, K] tables stay small.
    Beyond SCAN_GROUPS groups, a round scans a seeded window of that many.
    """
    dev = st.F - obj.T
    dev_extra = (st.E - obj.T_extra).T  # [2, K]
    out_g, out_d = [], []
    chunk = CHUNK_GROUPS
    first = int(rng.integers(0, gc.n_groups - SCAN_GROUPS + 1)) if gc.n_groups > SCAN_GROUPS else 0
    last = min(first + SCAN_GROUPS, gc.n_groups)
    for s in range(first, last, chunk):
        e = min(s + chunk, last)
        D = _fold_dots(gc, terms, dev, s, e) + terms.wextras[s:e] @ dev_extra
        rows = np.arange(e - s)
        a = st.assign[s:e]
        move = D - D[rows, a][:, None]
        move[rows, a] = np.inf
        delta = 2.0 * move.min(axis=1) + terms.self_term[s:e]
        delta[st.size[a] <= 1] = np.inf  # never empty a fold
        good = np.flatnonzero(delta < -_TOL)
        out_g.append(good + s)
        out_d.append(delta[good])
    g, d = np.concatenate(out_g), np.concatenate(out_d)
    return g[np.argsort(d, kind="stable")[:MOVES_PER_ROUND]]


def _apply_moves(gc: GroupCounts, obj: _Objective, st: _State, terms: _Terms, rng: np.random.Generator) -> float:
    """Apply the candidates' best moves one by one, each re-scored on the current totals.

    The candidates were found on the totals at the start of the round; each is
    re-scored exactly before it is applied, so every applied move lowers the
    objective. Returns the total decrease.
    """
    gain, misses = 0.0, 0
    for g in _move_candidates(gc, obj, st, terms, rng).tolist():
        if misses >= MISSES_PER_ROUND:  # the round's stale candidates are used up
            break
        misses += 1
        a = int(st.assign[g])
        if st.size[a] <= 1:
            continue
        sl = slice(gc.indptr[g], gc.indptr[g + 1])
        dots = (st.F[:, gc.classes[sl]] - obj.T[gc.classes[sl]]) @ terms.wx[sl]
        dots += (st.E - obj.T_extra) @ terms.wextras[g]
        change = 2.0 * (dots - dots[a]) + terms.self_term[g]
        change[a] = np.inf
        b = int(change.argmin())
        if change[b] < -_TOL:
            st.move(gc, terms.extras, g, b)
            gain -= float(change[b])
            misses = 0
    return gain


def _swap_pool(st: _State, profiles: np.ndarray, fold: int, rng: np.random.Generator) -> np.ndarray:
    """Up to SWAP_CANDIDATES groups of ``fold`` with distinct profiles (a seeded sample)."""
    members = np.flatnonzero(st.assign == fold)
    if len(members) > 8 * SWAP_CANDIDATES:
        members = np.sort(rng.choice(members, size=8 * SWAP_CANDIDATES, replace=False))
    _, first = np.unique(profiles[members], return_index=True)
    reps = members[np.sort(first)]
    if len(reps) > SWAP_CANDIDATES:
        reps = np.sort(rng.choice(reps, size=SWAP_CANDIDATES, replace=False))
    return reps


def _entries(gc: GroupCounts, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the entries of ``groups`` and the index (into ``groups``) of each one's group."""
    lens = gc.indptr[groups + 1] - gc.indptr[groups]
    return _ranges(gc.indptr[groups], lens), np.repeat(np.arange(len(groups)), lens)


def _cross(gc: GroupCounts, terms: _Terms, ga: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """``[len(ga), len(hb)]``: sum_j w_j x_gj x_hj over the classes and the two extra columns.

    Dense over the union of the pools' classes (one BLAS product) when that is
    cheap, else a sparse join on class (few shared classes among many).
    """
    pa, ia = _entries(gc, ga)
    pb, ib = _entries(gc, hb)
    union, col = np.unique(np.concatenate([gc.classes[pa], gc.classes[pb]]), return_inverse=True)
    col_a, col_b = col[: len(pa)], col[len(pa):]
    pairs = int(np.bincount(col_a, minlength=len(union)) @ np.bincount(col_b, minlength=len(union)))
    extra = terms.wextras[ga] @ terms.extras[hb].T
    if 32 * pairs >= len(ga) * len(hb) * len(union):  # a join step costs ~30 BLAS flops
        A = np.zeros((len(ga), len(union)))
        A[ia, col_a] = terms.wx[pa]
        B = np.zeros((len(hb), len(union)))
        B[ib, col_b] = gc.counts[pb]
        return A @ B.T + extra
    by_class = np.argsort(col_b, kind="stable")
    col_b, ib, pb = col_b[by_class], ib[by_class], pb[by_class]
    lo = np.searchsorted(col_b, col_a, side="left")
    n = np.searchsorted(col_b, col_a, side="right") - lo
    left = np.repeat(np.arange(len(pa)), n)
    right = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(len(left))
    weights = terms.wx[pa][left] * gc.counts[pb][right]
    cross = np.bincount(ia[left] * len(hb) + ib[right], weights=weights, minlength=len(ga) * len(hb))
    return cross.reshape(len(ga), len(hb)) + extra


def _apply_swaps(
    gc: GroupCounts, obj: _Objective, st: _State, terms: _Terms, profiles: np.ndarray, rng: np.random.Generator
) -> float:
    """Apply the best improving swap of each fold pair, pairs sharing no fold, best first.

    Swapping g (in a) with h (in b) changes the objective by
    ``A_g + B_h - 4 sum_j w_j x_gj x_hj`` with ``A_g = 2 w.x_g (F_b - F_a) + 2 w.x_g^2``
    and ``B_h = -2 w.x_h (F_b - F_a) + 2 w.x_h^2``. Returns the total decrease.
    """
    K = st.F.shape[0]
    pools = [_swap_pool(st, profiles, k, rng) for k in range(K)]
    found = []
    for a in range(K):
        for b in range(a + 1, K):
            ga, hb = pools[a], pools[b]
            if len(ga) == 0 or len(hb) == 0:
                continue
            diff = np.stack([st.F[b] - st.F[a]])
            diff_e = st.E[b] - st.E[a]
            A = 2.0 * (_pool_dots(gc, terms, ga, diff) + terms.wextras[ga] @ diff_e) + terms.self_term[ga]
            B = -2.0 * (_pool_dots(gc, terms, hb, diff) + terms.wextras[hb] @ diff_e) + terms.self_term[hb]
            delta = A[:, None] + B[None, :] - 4.0 * _cross(gc, terms, ga, hb)
            i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
            if delta[i, j] < -_TOL:
                found.append((float(delta[i, j]), a, b, int(ga[i]), int(hb[j])))
    used: set[int] = set()
    gain = 0.0
    for delta, a, b, g, h in sorted(found):
        if a in used or b in used:
            continue
        used.update((a, b))
        st.move(gc, terms.extras, g, b)
        st.move(gc, terms.extras, h, a)
        gain -= delta
    return gain


def _pool_dots(gc: GroupCounts, terms: _Terms, groups: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """sum_c w_c x_gc diff[0, c] for each of ``groups``."""
    pos, which = _entries(gc, groups)
    return np.bincount(which, weights=terms.wx[pos] * diff[0, gc.classes[pos]], minlength=len(groups))


def _fill_empty(images: np.ndarray, assign: np.ndarray, n_folds: int) -> np.ndarray:
    """Guarantee every fold holds a group (moves the smallest group of the fullest fold)."""
    assign = assign.copy()
    while True:
        counts = np.bincount(assign, minlength=n_folds)
        empty = np.flatnonzero(counts == 0)
        if len(empty) == 0:
            return assign
        members = np.flatnonzero(assign == int(np.argmax(counts)))
        assign[members[int(np.argmin(images[members]))]] = int(empty[0])
