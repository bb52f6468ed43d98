"""Benchmark of ``tfkit build-records``: end-to-end throughput and peak memory.

Each build runs as a fresh ``python -m tfkit build-records`` subprocess, so interpreter
start-up, imports, pool start-up, fold assignment and writing are all counted.

* re-encode: 512 px JPEGs of real photos -> ``--size 384`` (decode, resize, encode)
* pass-through: the same JPEGs stored untouched (no ``--size``)
* 1 worker vs all cores: ratio = (all-core rate) / (cores x one-worker rate); target >= 0.9
* peak memory (ru_maxrss of the parent and, separately, the largest child) as the
  image count grows: it must stay flat (streaming).

Source images: random crops/flips/scales of scikit-learn's two bundled photos
(``load_sample_images``: china.jpg, flower.jpg), saved as 512x512 JPEG q95.

Usage::

    python bench/bench_records.py            # 1,500 images, memory at 500/1000/2000, 3 repeats
    python bench/bench_records.py --quick    # 150 images, memory at 100/200, 1 repeat
    python bench/bench_records.py --cold     # also against the disk with the page cache dropped (root)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` photo-like 512x512 JPEGs and a train.csv; returns the CSV path."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427x640 each
    rng = np.random.default_rng(seed)
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        p = photos[k % len(photos)]
        scale = rng.uniform(1.2, 2.5)  # upscale so a 512 crop fits, with varying content
        big = p.resize((int(p.width * scale), int(p.height * scale)), Image.Resampling.BICUBIC)
        x = int(rng.integers(0, big.width - 512 + 1))
        y = int(rng.integers(0, big.height - 512 + 1))
        crop = big.crop((x, y, x + 512, y + 512))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        name = f"img_{k:05d}"
        crop.save(img_dir / f"{name}.jpg", quality=95)
        rows.append(f"{name},{k % 5}\n")
    csv = folder / "train.csv"
    csv.write_text("id,label\n" + "".join(rows))
    return csv


def run_build(csv: Path, out: Path, workers: int, size: int | None, n_limit: int | None = None,
              verify: str = "decode") -> dict:
    """One end-to-end build in a subprocess; returns seconds and peak RSS (MiB)."""
    src = csv
    if n_limit is not None:
        lines = csv.read_text().splitlines(keepends=True)
        src = csv.with_name(f"train_{n_limit}.csv")
        src.write_text("".join(lines[: n_limit + 1]))
    cmd = [sys.executable, "-c", _CHILD, str(src), str(csv.parent / "images"), str(out), str(workers),
           str(size or 0), verify]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"build failed: {r.stderr[-2000:]}")
    parent_mb, child_mb = (float(x) for x in r.stdout.split()[-2:])
    return {"seconds": dt, "parent_mb": parent_mb, "child_mb": child_mb}


# The child runs the CLI in-process and then reports its own and its children's peak RSS.
_CHILD = r"""
import resource, sys
from tfkit.cli import main
csv, images, out, workers, size, verify = sys.argv[1:7]
args = ["build-records", "--csv", csv, "--images", images, "--out", out, "--workers", workers, "--overwrite",
        "--verify", verify]
if size != "0":
    args += ["--size", size]
rc = main(args)
if rc:
    sys.exit(rc)
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{me:.1f} {kids:.1f}")
"""


def _drop_caches() -> None:
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


def _cold_runs(csv: Path, tmp: Path, n: int, repeats: int) -> None:
    """Cold page cache before each run: file reads and builds both pay the disk
    (and the build's interpreter start-up pays cold imports)."""
    reads, builds = [], {("decode", os.cpu_count() or 1): [], ("markers", 1): []}
    files = sorted((tmp / "data" / "images").iterdir())[:n]
    for _ in range(repeats):
        _drop_caches()
        t0 = time.perf_counter()
        for p in files:
            p.read_bytes()
        reads.append(n / (time.perf_counter() - t0))
        for (verify, w), rates in builds.items():
            _drop_caches()
            rates.append(n / run_build(csv, tmp / "out", w, None, n_limit=n, verify=verify)["seconds"])
    print(f"\ncold cache: reading the {n} source files: {statistics.median(reads):.0f} files/s")
    for (verify, w), rates in builds.items():
        r = statistics.median(rates)
        print(f"cold cache: pass-through --verify {verify}, {w} worker(s): {r:.0f} img/s "
              f"({r / statistics.median(reads):.2f}x the disk's read rate)")


def _startup_seconds() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tfkit.cli, tfkit.records, tfkit.folds, pandas, PIL.Image"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run to check the script works")
    ap.add_argument("--n", type=int, default=None, help="images for the throughput runs (default 1500)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per setting (median reported)")
    ap.add_argument("--workdir", default=None, help="where to write images/records (default a temp dir)")
    ap.add_argument("--cold", action="store_true",
                    help="also measure with the page cache dropped before each run (needs root): the disk's real speed")
    args = ap.parse_args()
    n = args.n or (150 if args.quick else 1500)
    repeats = args.repeats or (1 if args.quick else 3)
    mem_counts = [100, 200] if args.quick else [500, 1000, 2000]
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        n_make = max(n, max(mem_counts))
        t0 = time.perf_counter()
        csv = make_images(tmp / "data", n_make)
        sizes = [p.stat().st_size for p in (tmp / "data" / "images").iterdir()]
        print(f"made {n_make} 512x512 JPEGs (mean {np.mean(sizes) / 1024:.0f} KiB) in {time.perf_counter() - t0:.1f} s; "
              f"{cores} cores; {repeats} repeat(s), medians")
        print()
        print(f"| mode (n={n}) | workers | seconds | img/s | ratio vs cores x 1-worker |")
        print("|---|---:|---:|---:|---:|")
        modes = (("re-encode 512->384", 384, "decode"), ("pass-through, --verify decode", None, "decode"),
                 ("pass-through, --verify markers", None, "markers"))
        for mode, size, verify in modes:
            rates = {}
            for w in (1, cores):
                secs = [run_build(csv, tmp / "out", w, size, n_limit=n, verify=verify)["seconds"]
                        for _ in range(repeats)]
                med = statistics.median(secs)
                rates[w] = n / med
                ratio = "" if w == 1 else f"{rates[w] / (cores * rates[1]):.2f}"
                print(f"| {mode} | {w} | {med:.2f} | {rates[w]:.0f} | {ratio} |")
        # disk read speed of the same files (page cache warm), for the pass-through comparison
        t0 = time.perf_counter()
        total = 0
        for p in sorted((tmp / "data" / "images").iterdir())[:n]:
            total += len(p.read_bytes())
        dt = time.perf_counter() - t0
        print(f"\nreading the {n} source files alone: {n / dt:.0f} files/s ({total / dt / 2**20:.0f} MiB/s, warm cache)")
        if args.cold:
            _cold_runs(csv, tmp, n, repeats)
        # what every end-to-end build pays before its first image: interpreter + imports
        start = [_startup_seconds() for _ in range(repeats)]
        print(f"process start-up + imports (python -m tfkit, no work): {statistics.median(start):.2f} s")
        print()
        print("| images | parent peak RSS MiB | largest worker peak RSS MiB | seconds |")
        print("|---:|---:|---:|---:|")
        for m in mem_counts:
            r = run_build(csv, tmp / "out", cores, 384, n_limit=m)
            print(f"| {m} | {r['parent_mb']:.0f} | {r['child_mb']:.0f} | {r['seconds']:.2f} |")
    print(f"\ncommand: {sys.executable} bench/bench_records.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
