"""Benchmark of ``tfkit build-records``: end-to-end throughput and peak memory.

Each build runs as a fresh ``python -m tfkit build-records`` subprocess, so interpreter
start-up, imports, pool start-up, fold assignment and writing are all counted.

* re-encode: 512 px JPEGs of real photos -> ``--size 384`` (decode, resize, encode)
* pass-through: the same JPEGs stored untouched (no ``--size``)
* 1 worker vs all cores: ratio = (all-core rate) / (cores x one-worker rate); target >= 0.9.
  Beside it, the machine's own scaling of the same Pillow work (re-encoding only, forked
  processes, nothing written, no start-up): on 2 vCPUs it is itself below 1, so it is
  the ceiling the end-to-end ratio is read against.
* peak memory (ru_maxrss of the parent and, separately, the largest child) as the
  image count grows: it must stay flat (streaming).
* pass-through against the disk (``--disk-n`` images, 20,000 by default: ~1.6 GB): the
  same files copied by a plain loop (read each file, append its bytes to one output
  file, fresh process: what ``cat *.jpg > out`` does), and read-only with 8 threads
  (the disk's parallel read ceiling), measured in the same run, interleaved with the
  builds; warm page cache, and with ``--cold`` the page cache dropped before every run
  (root). Output folders are deleted, and dirty pages synced, before each timed run.

Source images: random crops/flips/scales of scikit-learn's two bundled photos
(``load_sample_images``: china.jpg, flower.jpg), saved as 512x512 JPEG q95.

Usage::

    python bench/bench_records.py            # 1,500 images, memory at 500/1000/2000, 3 repeats
    python bench/bench_records.py --quick    # 150 images, memory at 100/200, 1 repeat
    python bench/bench_records.py --cold     # disk comparison also with a cold page cache (root)
    # this checkout against another tfkit source tree, builds interleaved (e.g. before a refactor):
    git archive main tfkit | tar -x -C /tmp/main_src
    python bench/bench_records.py --against /tmp/main_src --n 600 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
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
              verify: str = "decode", cold: bool = False, source: str | None = None) -> dict:
    """One end-to-end build in a subprocess (of the tfkit in ``source`` when given, a folder
    holding a ``tfkit`` package); returns seconds and peak RSS (MiB)."""
    src = csv
    if n_limit is not None:
        lines = csv.read_text().splitlines(keepends=True)
        src = csv.with_name(f"train_{n_limit}.csv")
        src.write_text("".join(lines[: n_limit + 1]))
    cmd = [sys.executable, "-c", _CHILD, str(src), str(csv.parent / "images"), str(out), str(workers),
           str(size or 0), verify]
    shutil.rmtree(out, ignore_errors=True)  # deleting the last output is not part of a build
    _settle(cold)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": source} if source else None
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
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


def _settle(cold: bool) -> None:
    """Flush dirty pages (the last run's output) so a run does not pay for the one before;
    with ``cold``, also drop the page cache so every file comes from the disk."""
    subprocess.run("sync" + ("; echo 3 > /proc/sys/vm/drop_caches" if cold else ""), shell=True, check=True)


_COPY = r"""
import sys, time
t0 = time.perf_counter()
with open(sys.argv[1], "wb") as out:
    for p in sys.argv[2:]:
        with open(p, "rb") as f:
            out.write(f.read())
print(time.perf_counter() - t0)
"""

_READ8 = r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
def read(p):
    with open(p, "rb") as f:
        return len(f.read())
t0 = time.perf_counter()
with ThreadPoolExecutor(8) as ex:
    sum(ex.map(read, sys.argv[1:]))
print(time.perf_counter() - t0)
"""


def make_disk_set(tmp: Path, src_images: Path, n: int) -> Path:
    """``n`` distinct files (the generated JPEGs copied under new names) and their CSV."""
    folder = tmp / "disk"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    sources = sorted(src_images.iterdir())
    rows = []
    for k in range(n):
        name = f"d_{k:06d}"
        (folder / "images" / f"{name}.jpg").write_bytes(sources[k % len(sources)].read_bytes())
        rows.append(f"{name},{k % 5}\n")
    (folder / "train.csv").write_text("id,label\n" + "".join(rows))
    return folder / "train.csv"


def disk_comparison(csv: Path, tmp: Path, repeats: int, cold: bool) -> None:
    """Pass-through builds against a plain copy and a parallel read of the same files."""
    files = [str(p) for p in sorted((csv.parent / "images").iterdir())]
    n = len(files)
    mib = sum(os.path.getsize(p) for p in files) / 2**20
    cores = os.cpu_count() or 1
    rates: dict[str, list[float]] = {"copy": [], "read8": [], "markers": [], "decode": []}
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits all alike
        out = tmp / "copy.out"
        out.unlink(missing_ok=True)
        _settle(cold)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _COPY, str(out), *files], check=True, capture_output=True)
        rates["copy"].append(n / (time.perf_counter() - t0))
        out.unlink()
        _settle(cold)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _READ8, *files], check=True, capture_output=True)
        rates["read8"].append(n / (time.perf_counter() - t0))
        for verify in ("markers", "decode"):
            rates[verify].append(n / run_build(csv, tmp / "out", cores, None, verify=verify, cold=cold)["seconds"])
        shutil.rmtree(tmp / "out", ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    cache = "cold (page cache dropped before each run)" if cold else "warm"
    print(f"\npass-through vs the disk: {n} files, {mib:.0f} MiB, page cache {cache}, median of {repeats}, "
          f"end to end (process start-up included)")
    print("| run | files/s | vs plain copy |")
    print("|---|---:|---:|")
    print(f"| plain copy (read each file, append to one output file) | {med['copy']:.0f} | 1.00 |")
    print(f"| read only, 8 threads (no writing) | {med['read8']:.0f} | {med['read8'] / med['copy']:.2f} |")
    for verify in ("markers", "decode"):
        print(f"| build-records pass-through --verify {verify}, {cores} workers | {med[verify]:.0f} | "
              f"{med[verify] / med['copy']:.2f} |")
    print("all runs (files/s): " + "; ".join(f"{k} " + ", ".join(f"{r:.0f}" for r in v) for k, v in rates.items()))


ENCODE_ONLY_WHAT = "tfkit.records.encode_image per file, forked processes, nothing written, no start-up"


def _encode_files(args: tuple[list[str], int]) -> int:
    from tfkit.records import encode_image

    paths, size = args
    for p in paths:
        encode_image(p, size, 95)
    return len(paths)


def encode_only(images: Path, n: int, processes: int, size: int) -> float:
    """img/s of the re-encoding alone, split over ``processes`` forked processes: the
    machine's own scaling, the ceiling for the end-to-end ratio on this box."""
    import multiprocessing as mp

    paths = sorted(str(p) for p in images.iterdir())[:n]
    if processes == 1:
        t0 = time.perf_counter()
        _encode_files((paths, size))
        return n / (time.perf_counter() - t0)
    with mp.get_context("fork").Pool(processes) as pool:
        pool.map(_encode_files, [([], size)] * processes)  # processes started before timing
        t0 = time.perf_counter()
        pool.map(_encode_files, [(paths[k::processes], size) for k in range(processes)])
        return n / (time.perf_counter() - t0)


def compare_sources(csv: Path, tmp: Path, n: int, repeats: int, other: str) -> None:
    """Each mode built by this checkout and by the tfkit in ``other``, alternately; medians side by side."""
    here = str(Path(__file__).resolve().parents[1])
    cores = os.cpu_count() or 1
    print(f"| mode (n={n}) | workers | this checkout s | {other} s | ratio (other / this) |")
    print("|---|---:|---:|---:|---:|")
    for mode, size, verify in (("re-encode 512->384", 384, "decode"), ("pass-through, --verify decode", None, "decode")):
        for w in sorted({1, cores}):
            secs: dict[str, list[float]] = {here: [], other: []}
            for _ in range(repeats):  # interleaved: drift in the machine's speed hits both alike
                for src in secs:
                    secs[src].append(run_build(csv, tmp / "out", w, size, n_limit=n, verify=verify,
                                               source=src)["seconds"])
            a, b = statistics.median(secs[here]), statistics.median(secs[other])
            print(f"| {mode} | {w} | {a:.2f} | {b:.2f} | {b / a:.2f} |")


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
                    help="disk comparison also with the page cache dropped before each run (needs root)")
    ap.add_argument("--against", default=None, metavar="SRC",
                    help="only compare this checkout's builds with those of the tfkit package in folder SRC")
    ap.add_argument("--disk-n", type=int, default=None,
                    help="files for the pass-through vs disk comparison (default 20000; --quick 1500)")
    args = ap.parse_args()
    n = args.n or (150 if args.quick else 1500)
    repeats = args.repeats or (1 if args.quick else 3)
    mem_counts = [100, 200] if args.quick else [500, 1000, 2000]
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        n_make = n if args.against else max(n, max(mem_counts))
        t0 = time.perf_counter()
        csv = make_images(tmp / "data", n_make)
        sizes = [p.stat().st_size for p in (tmp / "data" / "images").iterdir()]
        print(f"made {n_make} 512x512 JPEGs (mean {np.mean(sizes) / 1024:.0f} KiB) in {time.perf_counter() - t0:.1f} s; "
              f"{cores} cores; {repeats} repeat(s), medians")
        print()
        if args.against:
            compare_sources(csv, tmp, n, repeats, args.against)
            print(f"\ncommand: {sys.executable} bench/bench_records.py {' '.join(sys.argv[1:])}")
            return
        print(f"| mode (n={n}) | workers | seconds | img/s | ratio vs cores x 1-worker |")
        print("|---|---:|---:|---:|---:|")
        modes = (("re-encode 512->384", 384, "decode"), ("pass-through, --verify decode", None, "decode"),
                 ("pass-through, --verify markers", None, "markers"))
        machine = None
        for mode, size, verify in modes:
            secs: dict[int, list[float]] = {1: [], cores: []}
            control: dict[int, list[float]] = {1: [], cores: []}
            for _ in range(repeats):  # interleaved, so drift in the machine's speed hits both alike
                for w in secs:
                    secs[w].append(run_build(csv, tmp / "out", w, size, n_limit=n, verify=verify)["seconds"])
                    if size is not None:
                        control[w].append(encode_only(csv.parent / "images", n, w, size))
            rates = {w: n / statistics.median(v) for w, v in secs.items()}
            for w in secs:
                ratio = "" if w == 1 else f"{rates[w] / (cores * rates[1]):.2f}"
                print(f"| {mode} | {w} | {statistics.median(secs[w]):.2f} | {rates[w]:.0f} | {ratio} |")
            if size is not None:
                c = {w: statistics.median(v) for w, v in control.items()}
                machine = (mode, c[1], c[cores], c[cores] / (cores * c[1]), rates[cores] / (cores * rates[1]))
        if machine:
            mode, c1, cn, m_ratio, t_ratio = machine
            print(f"\nmachine's own scaling ({mode}): the same Pillow work ({ENCODE_ONLY_WHAT}) runs "
                  f"{c1:.0f} img/s in 1 process, {cn:.0f} img/s in {cores}: ratio {m_ratio:.2f}; "
                  f"tfkit end to end {t_ratio:.2f} = {t_ratio / m_ratio:.2f} of what the machine allows")
        from tfkit.records import crc32c_backend

        print(f"\nCRC32C implementation: {crc32c_backend()}")
        disk_csv = make_disk_set(tmp, tmp / "data" / "images", args.disk_n or (1500 if args.quick else 20000))
        disk_comparison(disk_csv, tmp, repeats, cold=False)
        if args.cold:
            disk_comparison(disk_csv, tmp, repeats, cold=True)
        shutil.rmtree(disk_csv.parent, ignore_errors=True)
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
