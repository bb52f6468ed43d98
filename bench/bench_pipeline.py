"""Input-pipeline benchmark: is tfkit's batched augmentation nearly free?

Builds TFRecord shards of real photos (512x512 q95 JPEGs cut from random crops,
scales and flips of scikit-learn's bundled sample photos), then measures, side by
side in ONE run (round-robin windows over live iterators, medians over repeats),
images/s at batch 64 and output 384 of:

  (a)  read + parse + decode only                      (the ceiling)
  (a') decode + per-example resize to 384 + float       (what any training input costs)
  (b)  tfkit: decode -> batch -> augment_batch (dihedral, affine, crop, hue,
       saturation, contrast, brightness, cutout) in a map over batches
  (c)  the classic notebook way: the same augmentations per example in a map
       before batching (kept here only as the comparison)

and the resident memory each live pipeline holds (RSS after its warm-up minus
before), plus the process peak. Targets on 2 cores:
(b) >= 0.8x (a') and (b) >= 2.5x (c).

Usage:
    python bench/bench_pipeline.py            # 1024 images, 7 repeats
    python bench/bench_pipeline.py --quick    # 256 images, 3 repeats (development)
"""

from __future__ import annotations

import argparse
import io
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

from tfkit.augment import batch_augmenter  # noqa: E402
from tfkit.config import AugmentConfig  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
IN_SIZE, OUT_SIZE, BATCH = 512, 384, 64

# The full training augmentation of the issue, magnitudes as in the "lesion" preset.
AUG = AugmentConfig(
    dihedral_p=1.0, affine_p=0.8, rotate=30.0, shear=5.0, zoom=0.15, shift=0.1, fill_mode="reflect",
    crop_p=0.5, hue_p=0.5, hue=0.02, saturation_p=0.5, saturation=0.3,
    contrast_p=0.5, contrast=0.2, brightness_p=0.5, brightness=0.1,
    cutout_p=0.5, cutout_count=1, cutout_size=0.15,
)


# --------------------------------------------------------------------------- data


def make_shards(out_dir: Path, n_images: int, n_shards: int = 4, seed: int = 0) -> list[str]:
    """Write ``n_images`` 512 px q95 JPEGs (random crops/scales/flips of real photos)."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    files = [str(out_dir / f"train{i:02d}-000-{n_images // n_shards}.tfrec") for i in range(n_shards)]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for i in range(n_images - n_images % n_shards):
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        side = int(rng.uniform(0.35, 1.0) * min(w, h))
        x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        img = photo.crop((x0, y0, x0 + side, y0 + side)).resize((IN_SIZE, IN_SIZE), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        ex = tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(10))])),
        }))
        writers[i % n_shards].write(ex.SerializeToString())
    for wr in writers:
        wr.close()
    return files


_SPEC = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


def _decode(serialized):
    ex = tf.io.parse_single_example(serialized, _SPEC)
    img = tf.io.decode_jpeg(ex["image"], channels=3)
    img = tf.ensure_shape(img, [IN_SIZE, IN_SIZE, 3])
    return img, tf.one_hot(ex["label"], 10)


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


def pipe_decode(files, threads):
    ds = _records(files).map(_decode, num_parallel_calls=PAR, deterministic=False)
    return ds.batch(BATCH, drop_remainder=True).prefetch(PREFETCH).with_options(_options(threads))


def pipe_resize(files, threads):
    def f(s):
        img, y = _decode(s)
        return tf.image.resize(img, [OUT_SIZE, OUT_SIZE]) / 255.0, y

    ds = _records(files).map(f, num_parallel_calls=PAR, deterministic=False)
    return ds.batch(BATCH, drop_remainder=True).prefetch(PREFETCH).with_options(_options(threads))


def pipe_tfkit(files, threads, jit=True, parallel_batches=2, intra=None):
    aug = batch_augmenter(AUG, OUT_SIZE, jit_compile=jit)
    ds = _records(files).map(_decode, num_parallel_calls=PAR, deterministic=False)
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


def _classic(serialized, seed):
    img, y = _decode(serialized)
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


def pipe_classic(files, threads):
    ds = tf.data.Dataset.zip(_records(files), tf.data.Dataset.random(seed=3).batch(2))
    ds = ds.map(_classic, num_parallel_calls=PAR, deterministic=False)
    return ds.batch(BATCH, drop_remainder=True).prefetch(PREFETCH).with_options(_options(threads))


# --------------------------------------------------------------------------- measurement


def _rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process (VmRSS) or its peak so far (VmHWM), MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 images, 3 repeats (development)")
    ap.add_argument("--n", type=int, default=None, help="images in the shards")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--window", type=int, default=None, help="timed batches per window")
    ap.add_argument("--threads", type=int, default=0, help="tf.data private thread pool (0: TF's default)")
    ap.add_argument("--only", default="a,a',b,c", help="comma-separated pipelines to run")
    args = ap.parse_args(argv)
    n = args.n or (256 if args.quick else 1024)
    repeats = args.repeats or (3 if args.quick else 7)
    window = args.window or (4 if args.quick else 10)
    print(f"tf {tf.__version__}, {os.cpu_count()} cpus; {n} images {IN_SIZE}px q95 -> batch {BATCH}, "
          f"output {OUT_SIZE}; {repeats} repeats x {window} batches")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = make_shards(Path(tmp), n)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        print(f"shards: {len(files)} files, {mb:.1f} MB, written in {time.perf_counter() - t0:.1f} s")
        builders = {"a": pipe_decode, "a'": pipe_resize, "b": pipe_tfkit, "c": pipe_classic,
                    # variants for tuning (--only): one batch at a time, and without XLA
                    "b1": lambda f, t: pipe_tfkit(f, t, parallel_batches=1),
                    "b-nojit": lambda f, t: pipe_tfkit(f, t, jit=False),
                    "b-intra2": lambda f, t: pipe_tfkit(f, t, intra=2)}
        names = [k for k in args.only.split(",") if k in builders]
        iters, held = {}, {}
        for k in names:  # warm up: traces, XLA compiles, fills buffers
            before = _rss_mb()
            iters[k] = iter(builders[k](files, args.threads))
            for _ in range(3):
                x, _y = next(iters[k])
            assert x.shape == ((BATCH, IN_SIZE, IN_SIZE, 3) if k == "a" else (BATCH, OUT_SIZE, OUT_SIZE, 3)), x.shape
            assert x.dtype == (tf.uint8 if k == "a" else tf.float32), x.dtype
            del x, _y
            held[k] = _rss_mb() - before  # what the live pipeline keeps resident (buffers, code)
        rates: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(repeats):
            for k in names:  # round robin: every pipeline sees the same machine load
                for _ in range(PREFETCH + 2):  # drain what was buffered while it sat idle
                    next(iters[k])
                t = time.perf_counter()
                for _ in range(window):
                    next(iters[k])
                rates[k].append(window * BATCH / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    labels = {"a": "(a)  read+parse+decode only", "a'": "(a') decode + resize 384 + float",
              "b": "(b)  tfkit batched augment_batch", "c": "(c)  classic per-example map",
              "b1": "(b)  variant: 1 batch in flight", "b-nojit": "(b)  variant: no XLA",
              "b-intra2": "(b)  variant: max_intra_op_parallelism=2"}
    print(f"\n| pipeline | img/s median | min..max | RSS held MB |\n|---|---:|---:|---:|")
    for k in names:
        print(f"| {labels[k]} | {med[k]:.0f} | {min(rates[k]):.0f}..{max(rates[k]):.0f} | {held[k]:.0f} |")
    print(f"process peak RSS: {_rss_mb('VmHWM'):.0f} MB (all pipelines live at once)")
    if "b" in med and "a'" in med:
        print("\n(b)/(a') = %.2f  (target >= 0.8)" % (med['b'] / med["a'"]))
    if "b" in med and "c" in med:
        print(f"(b)/(c)  = {med['b'] / med['c']:.2f}  (target >= 2.5)")
    if "b" in med and "a" in med:
        print(f"(b)/(a)  = {med['b'] / med['a']:.2f}")
    return med


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
