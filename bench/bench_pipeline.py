"""Input-pipeline benchmark: is tfkit's training pipeline with augmentation nearly free?

Writes real photos as 512x512 q95 JPEG files (random crops, scales and flips of
scikit-learn's bundled sample photos) plus a CSV, turns them into fold-sharded
records with ``tfkit.records.build_records`` (no ``size``: the JPEG bytes pass
through), then measures on those shards, side by side in ONE run (round-robin
windows over live iterators, medians over repeats), images/s at batch 64 and
output 384 of:

  (a)  read + parse + decode only                      (the ceiling)
  (a') decode + per-example resize to 384 + float       (what any training input costs)
  (b)  tfkit's REAL training stream: ``tfkit.data.build_dataset(records, cfg,
       mode="train")`` (interleave, shuffle, repeat, decode, batch, XLA-compiled
       augment_batch: dihedral, affine, crop, hue, saturation, contrast,
       brightness, cutout)
  (b0) the same augmentation in a minimal hand-built batched pipeline (no
       shuffle buffer, no ids/targets): what (b) should match
  (c)  the classic notebook way: the same augmentations per example in a map
       before batching (kept here only as the comparison)

(a), (a'), (b0) and (c) parse with ``tfkit.records.make_parser`` and decode with
the very function ``build_dataset`` uses. Memory per pipeline: "held" is RSS
after its warm-up minus before (buffers, compiled code; for (b) this includes
its shuffle buffer of encoded JPEGs), "peak" the largest rise of the process's
peak RSS above the RSS at the start of one of its timed windows (reset through
/proc/self/clear_refs). Targets on 2 cores: (b) >= 0.8x (a') and (b) >= 2.5x (c).

Usage:
    python bench/bench_pipeline.py            # 1024 images, 7 repeats
    python bench/bench_pipeline.py --quick    # 256 images, 3 repeats (development)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from tfkit import data as tfdata  # noqa: E402
from tfkit import records as tfrecords  # noqa: E402
from tfkit.augment import batch_augmenter  # noqa: E402
from tfkit.config import AugmentConfig, load_config  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
IN_SIZE, OUT_SIZE, BATCH, N_CLASSES = 512, 384, 64, 10

# The full training augmentation of the issue, magnitudes as in the "lesion" preset.
AUG = AugmentConfig(
    dihedral_p=1.0, affine_p=0.8, rotate=30.0, shear=5.0, zoom=0.15, shift=0.1, fill_mode="reflect",
    crop_p=0.5, hue_p=0.5, hue=0.02, saturation_p=0.5, saturation=0.3,
    contrast_p=0.5, contrast=0.2, brightness_p=0.5, brightness=0.1,
    cutout_p=0.5, cutout_count=1, cutout_size=0.15,
)


# --------------------------------------------------------------------------- data


def make_records(root: Path, n_images: int, n_folds: int = 4, seed: int = 0) -> tuple[str, dict]:
    """Write ``n_images`` 512 px q95 JPEGs (random crops/scales/flips of real photos)
    and a CSV under ``root``, then build records from them with tfkit (JPEG bytes
    pass through). Returns (records folder, manifest)."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    img_dir = root / "images"
    img_dir.mkdir()
    rows = []
    for i in range(n_images):
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        side = int(rng.uniform(0.35, 1.0) * min(w, h))
        x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        img = photo.crop((x0, y0, x0 + side, y0 + side)).resize((IN_SIZE, IN_SIZE), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(img_dir / f"img{i:05d}.jpg", format="JPEG", quality=95)
        rows.append(f"img{i:05d},{int(rng.integers(N_CLASSES))}")
    (root / "train.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    out = root / "records"
    manifest = tfrecords.build_records(root / "train.csv", img_dir, out, n_folds=n_folds, seed=seed,
                                       size=None, workers=1, progress=False)
    assert manifest["image"]["size"] == [IN_SIZE, IN_SIZE], manifest["image"]
    return str(out), manifest


class Source:
    """The shards and the parse/decode functions every pipeline here shares."""

    def __init__(self, records: str, manifest: dict):
        self.records, self.manifest = records, manifest
        self.files = tfdata.select_files(records, None, manifest)
        self.parse = tfrecords.make_parser(manifest)
        # The same decode function tfkit.data.build_dataset maps (private on purpose:
        # (a)/(a') must pay exactly what (b) pays to decode).
        self.decode_example = tfdata._decoder(manifest, OUT_SIZE)

    def decode(self, serialized):
        ex = self.decode_example(self.parse(serialized))
        return ex["image"], tf.one_hot(ex["label"], N_CLASSES)


PAR = os.cpu_count() or 2  # parallel calls per map: one per core
PREFETCH = 2  # batches


def _options(private_threads: int | None, intra: int | None = None) -> tf.data.Options:
    # Fixed parallelism and buffers instead of AUTOTUNE: autotuned buffers grow
    # while an iterator sits idle (GBs of RSS, bursts that fake throughput in a
    # round-robin measurement), and autotune causes the iterator-destroy stall.
    opt = tf.data.Options()
    opt.deterministic = False
    opt.autotune.enabled = False
    if private_threads:
        opt.threading.private_threadpool_size = private_threads
    if intra:
        opt.threading.max_intra_op_parallelism = intra
    return opt


def _records(files):
    ds = tf.data.Dataset.from_tensor_slices(files).repeat()
    return ds.interleave(tf.data.TFRecordDataset, cycle_length=len(files))


def pipe_decode(src: Source, threads):
    ds = _records(src.files).map(src.decode, num_parallel_calls=PAR, deterministic=False)
    return ds.batch(BATCH, drop_remainder=True).prefetch(PREFETCH).with_options(_options(threads))


def pipe_resize(src: Source, threads):
    def f(s):
        img, y = src.decode(s)
        return tf.image.resize(img, [OUT_SIZE, OUT_SIZE]) / 255.0, y

    ds = _records(src.files).map(f, num_parallel_calls=PAR, deterministic=False)
    return ds.batch(BATCH, drop_remainder=True).prefetch(PREFETCH).with_options(_options(threads))


def pipe_build_dataset(src: Source, threads, **overrides):
    """(b): the real training stream, as tfkit.train builds it."""
    cfg = load_config(None, [f"data.image_size={OUT_SIZE}", f"data.batch_size={BATCH}"])
    cfg = dataclasses.replace(cfg, augment=AUG)
    saved = {k: getattr(tfdata, k) for k in overrides}
    try:  # tuning variants (--only b-*) patch the module's fixed parallelism
        for k, v in overrides.items():
            setattr(tfdata, k, v)
        ds = tfdata.build_dataset(src.records, cfg, mode="train", manifest=src.manifest)
    finally:
        for k, v in saved.items():
            setattr(tfdata, k, v)
    if threads:
        opt = tf.data.Options()
        opt.threading.private_threadpool_size = threads
        ds = ds.with_options(opt)
    return ds


def pipe_tfkit(src: Source, threads, jit=True, parallel_batches=2, intra=None):
    """(b0): decode -> batch -> enumerate -> XLA augment map, nothing else."""
    aug = batch_augmenter(AUG, OUT_SIZE, jit_compile=jit)
    ds = _records(src.files).map(src.decode, num_parallel_calls=PAR, deterministic=False)
    ds = ds.batch(BATCH, drop_remainder=True).enumerate()  # batch index -> stateless seed
    ds = ds.map(lambda i, xy: aug(xy[0], xy[1], tf.stack([tf.constant(7, tf.int64), i])),
                num_parallel_calls=parallel_batches, deterministic=False)
    return ds.prefetch(PREFETCH).with_options(_options(threads, intra))


# ------------------------------------------------------------- classic per-example augmentation


def _classic_affine(img, seed):
    """Per-example affine by gather_nd of a rotated/sheared/zoomed/shifted grid (the
    well-known TPU-notebook recipe), at the output size, reflect fill."""
    u = tf.random.stateless_uniform([5], seed, -1.0, 1.0)
    on = tf.cast(tf.random.stateless_uniform([], seed + 1) < AUG.affine_p, tf.float32)
    rot = u[0] * AUG.rotate * math.pi / 180 * on
    shr = u[1] * AUG.shear * math.pi / 180 * on
    zoom = 1.0 + u[2] * AUG.zoom * on
    sx, sy = u[3] * AUG.shift * OUT_SIZE * on, u[4] * AUG.shift * OUT_SIZE * on
    c, s = tf.cos(rot), tf.sin(rot)
    m = tf.reshape(tf.stack([c / zoom, (c * tf.tan(shr) - s) / zoom, s / zoom, (s * tf.tan(shr) + c) / zoom]), [2, 2])
    g = tf.range(OUT_SIZE, dtype=tf.float32) - OUT_SIZE / 2 + 0.5
    yy, xx = tf.meshgrid(g, g, indexing="ij")
    xy = tf.stack([tf.reshape(xx, [-1]), tf.reshape(yy, [-1])])
    src = tf.matmul(m, xy) + tf.constant([[OUT_SIZE / 2 - 0.5], [OUT_SIZE / 2 - 0.5]]) + tf.stack([[sx], [sy]])
    idx = tf.cast(tf.round(src), tf.int32)
    idx = tf.math.floormod(idx, 2 * OUT_SIZE)
    idx = tf.where(idx >= OUT_SIZE, 2 * OUT_SIZE - 1 - idx, idx)
    out = tf.gather_nd(img, tf.stack([idx[1], idx[0]], -1))
    return tf.reshape(out, [OUT_SIZE, OUT_SIZE, 3])


def _classic(src: Source, serialized, seed):
    img, y = src.decode(serialized)
    seeds = tf.random.experimental.stateless_split(seed, 12)
    img = tf.image.convert_image_dtype(img, tf.float32)
    # dihedral: transpose with p=0.5, then a random number of quarter turns
    img = tf.cond(tf.random.stateless_uniform([], seeds[0]) < 0.5, lambda: tf.transpose(img, [1, 0, 2]), lambda: img)
    img = tf.image.rot90(img, tf.random.stateless_uniform([], seeds[1], 0, 4, tf.int32))
    # random resized crop, then resize to the output size
    area = tf.random.stateless_uniform([], seeds[2], AUG.crop_scale[0], AUG.crop_scale[1])
    ratio = tf.exp(tf.random.stateless_uniform([], seeds[3], math.log(AUG.crop_ratio[0]), math.log(AUG.crop_ratio[1])))
    on = tf.random.stateless_uniform([], seeds[4]) < AUG.crop_p
    cw = tf.where(on, tf.minimum(tf.sqrt(area * ratio), 1.0), 1.0)
    ch = tf.where(on, tf.minimum(tf.sqrt(area / ratio), 1.0), 1.0)
    hw = tf.cast(tf.round(tf.stack([ch, cw]) * IN_SIZE), tf.int32)
    img = tf.image.stateless_random_crop(img, tf.concat([hw, [3]], 0), seeds[5])
    img = tf.image.resize(img, [OUT_SIZE, OUT_SIZE])
    img = _classic_affine(img, seeds[6])
    img = tf.image.stateless_random_hue(img, AUG.hue, seeds[7])
    img = tf.image.stateless_random_saturation(img, 1 - AUG.saturation, 1 + AUG.saturation, seeds[8])
    img = tf.image.stateless_random_contrast(img, 1 - AUG.contrast, 1 + AUG.contrast, seeds[9])
    img = tf.image.stateless_random_brightness(img, AUG.brightness, seeds[10])
    img = tf.clip_by_value(img, 0.0, 1.0)
    # cutout: a zero square at a random centre, half the time
    side = int(AUG.cutout_size * OUT_SIZE)
    c = tf.random.stateless_uniform([3], seeds[11], 0, OUT_SIZE, tf.int32)
    g = tf.range(OUT_SIZE)
    box = ((g[:, None] >= c[0] - side // 2) & (g[:, None] < c[0] + side - side // 2)
           & (g[None, :] >= c[1] - side // 2) & (g[None, :] < c[1] + side - side // 2) & (c[2] < OUT_SIZE // 2))
    img = img * tf.cast(~box, tf.float32)[..., None]
    return img, y


def pipe_classic(src: Source, threads):
    ds = tf.data.Dataset.zip(_records(src.files), tf.data.Dataset.random(seed=3).batch(2))
    ds = ds.map(lambda s, seed: _classic(src, s, seed), num_parallel_calls=PAR, deterministic=False)
    return ds.batch(BATCH, drop_remainder=True).prefetch(PREFETCH).with_options(_options(threads))


# --------------------------------------------------------------------------- measurement


def _rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process (VmRSS) or its peak so far (VmHWM), MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _drain(it, batch_s: float, at_most: int = 16) -> None:
    """Take the batches a pipeline finished while it sat idle (each returns in
    well under ``batch_s``, its warm-up time per batch) up to two in a row it
    has to compute, so the timed window starts in steady state whatever the
    pipeline's buffer depth (a fixed count under-drains deep pipelines and fakes
    their throughput)."""
    slow = 0
    for _ in range(at_most):
        t = time.perf_counter()
        next(it)
        slow = slow + 1 if time.perf_counter() - t > 0.4 * batch_s else 0
        if slow == 2:
            return


def _reset_peak() -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 images, 3 repeats (development)")
    ap.add_argument("--n", type=int, default=None, help="images in the records")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--window", type=int, default=None, help="timed batches per window")
    ap.add_argument("--threads", type=int, default=0, help="tf.data private thread pool (0: TF's default)")
    ap.add_argument("--only", default="a,a',b,b0,c", help="comma-separated pipelines to run")
    args = ap.parse_args(argv)
    n = args.n or (256 if args.quick else 1024)
    repeats = args.repeats or (3 if args.quick else 7)
    window = args.window or (4 if args.quick else 10)
    load = os.getloadavg()
    print(f"tf {tf.__version__}, {os.cpu_count()} cpus, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{n} images {IN_SIZE}px q95 -> batch {BATCH}, output {OUT_SIZE}; {repeats} repeats x {window} batches")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        src = Source(*make_records(Path(tmp), n))
        mb = sum(os.path.getsize(f) for f in src.files) / 1e6
        print(f"records: {len(src.files)} shards, {mb:.1f} MB, images + build_records in "
              f"{time.perf_counter() - t0:.1f} s; tfkit.data: DECODE_CALLS={tfdata.DECODE_CALLS}, "
              f"BATCH_CALLS={tfdata.BATCH_CALLS}, PREFETCH={tfdata.PREFETCH}, autotune off")
        builders = {"a": pipe_decode, "a'": pipe_resize, "b": pipe_build_dataset, "b0": pipe_tfkit,
                    "c": pipe_classic,
                    # variants for tuning (--only): batches in flight, decode calls, no XLA
                    "b-1batch": lambda s, t: pipe_build_dataset(s, t, BATCH_CALLS=1),
                    "b-3batch": lambda s, t: pipe_build_dataset(s, t, BATCH_CALLS=3),
                    "b-decode1": lambda s, t: pipe_build_dataset(s, t, DECODE_CALLS=1),
                    "b0-nojit": lambda s, t: pipe_tfkit(s, t, jit=False),
                    "b0-intra2": lambda s, t: pipe_tfkit(s, t, intra=2)}
        unknown = [k for k in args.only.split(",") if k not in builders]
        if unknown:
            raise SystemExit(f"--only: unknown pipeline(s) {unknown}; choose from {', '.join(builders)}")
        names = args.only.split(",")
        # XLA's one-time start-up (JIT, LLVM) would otherwise count as the memory held
        # by whichever XLA pipeline warms up first.
        batch_augmenter(AUG, 32)(tf.zeros([2, 40, 40, 3], tf.uint8), tf.zeros([2, N_CLASSES]),
                                 tf.constant([0, 0], tf.int64))
        iters, held, peak, batch_s = {}, {}, {}, {}
        for k in names:  # warm up: traces, XLA compiles, fills buffers
            before = _rss_mb()
            iters[k] = iter(builders[k](src, args.threads))
            for _ in range(2):
                x, _y = next(iters[k])
            t = time.perf_counter()
            for _ in range(3):
                x, _y = next(iters[k])
            batch_s[k] = (time.perf_counter() - t) / 3
            assert x.shape == ((BATCH, IN_SIZE, IN_SIZE, 3) if k == "a" else (BATCH, OUT_SIZE, OUT_SIZE, 3)), x.shape
            assert x.dtype == (tf.uint8 if k == "a" else tf.float32), x.dtype
            del x, _y
            held[k] = _rss_mb() - before  # what the live pipeline keeps resident (buffers, code)
            peak[k] = 0.0
        rates: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(repeats):
            for k in names:  # round robin: every pipeline sees the same machine load
                _drain(iters[k], batch_s[k])
                start = _rss_mb()
                _reset_peak()
                t = time.perf_counter()
                for _ in range(window):
                    next(iters[k])
                rates[k].append(window * BATCH / (time.perf_counter() - t))
                peak[k] = max(peak[k], _rss_mb("VmHWM") - start)
        del iters
    med = {k: statistics.median(v) for k, v in rates.items()}
    labels = {"a": "(a)  read+parse+decode only", "a'": "(a') decode + resize 384 + float",
              "b": "(b)  tfkit.data.build_dataset train", "b0": "(b0) hand-built batched pipeline",
              "c": "(c)  classic per-example map",
              "b-1batch": "(b)  variant: BATCH_CALLS=1", "b-3batch": "(b)  variant: BATCH_CALLS=3",
              "b-decode1": "(b)  variant: DECODE_CALLS=1", "b0-nojit": "(b0) variant: no XLA",
              "b0-intra2": "(b0) variant: max_intra_op_parallelism=2"}
    print("\n| pipeline | img/s median | min..max | RSS held MB | RSS peak +MB |\n|---|---:|---:|---:|---:|")
    for k in names:
        print(f"| {labels[k]} | {med[k]:.0f} | {min(rates[k]):.0f}..{max(rates[k]):.0f} | {held[k]:.0f} "
              f"| {peak[k]:.0f} |")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for num, den, target in (("b", "a'", 0.8), ("b", "c", 2.5), ("b", "b0", None), ("b", "a", None)):
        if num in med and den in med:
            goal = f"  (target >= {target}: {'met' if med[num] / med[den] >= target else 'NOT met'})" if target else ""
            print(f"({num})/({den}) = {med[num] / med[den]:.2f}{goal}")
    return med


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
