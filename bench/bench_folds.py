"""Fold balance and scale: tfkit.folds against scikit-learn and iterative-stratification.

Three sections (all by default; pick with --binary / --multilabel / --regression / --scale):

* **binary** (the historical case): a skewed grouped dataset like a medical-imaging
  competition (SIIM-ISIC style): about 2,000 patients with 1 to 100+ images each
  (lognormal), about 2% positives, clustered. ``assign_folds`` against scikit-learn's
  ``StratifiedGroupKFold``: spread (max - min) and std across folds of the positive
  rate and image count. Medians over seeds.
* **multilabel**: 20,000 images, 28 labels (rates 35% down to 2%, Human Protein
  Atlas-like), in groups of about 3 images that share label propensities.
  ``iterative-stratification``'s ``MultilabelStratifiedKFold`` (Sechidis et al.'s
  algorithm; no groups) against ``multilabel_folds`` without and with groups, and a
  random group split: per-label positive-rate spread across folds (mean and max over
  labels), label-pair rate spread (pairs seen together at least 20 times), images per
  fold range, and the share of groups split across folds (leakage).
* **regression**: a skewed target (gamma) in groups: spread of the fold means and of
  per-bin counts, ``regression_folds`` against ``GroupKFold`` and ``KFold``.
* **scale**: rows x classes (Zipf) x groups -> seconds (wall and CPU), peak MB, images
  per fold range, class-count deviation from the ideal share. Each size runs in its
  own process (the data generated beforehand and loaded from .npy), so peak RSS is
  that of the assignment: Python, pandas, the two data columns and the solver.

``iterative-stratification`` is a bench-only dependency (not needed by tfkit):
``pip install iterative-stratification``.

Usage:
    python bench/bench_folds.py                  # every section
    python bench/bench_folds.py --binary --quick # 500 groups, 3 seeds
    python bench/bench_folds.py --multilabel
    python bench/bench_folds.py --scale          # 100k/1k/50k, 1M/5k/500k, 10M/5k/5M
    python bench/bench_folds.py --scale --sizes 100000x1000x50000 --repeats 5
    python bench/bench_folds.py --scale --baseline /tmp/old  # also an older tfkit checkout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold

# Only assign_folds at the top: the scale children also run older tfkit checkouts (--baseline).
from tfkit.folds import assign_folds

# --------------------------------------------------------------------------- binary


def make_dataset(n_groups: int, seed: int) -> pd.DataFrame:
    """Skewed grouped binary dataset: heavy-tailed group sizes, clustered positives.

    Args:
        n_groups: number of groups (patients).
        seed: RNG seed.

    Returns:
        DataFrame with columns ``id``, ``group``, ``label`` (0/1).
    """
    rng = np.random.default_rng(seed)
    # Lognormal sizes: median ~8, a tail past 100 (capped at 400), minimum 1.
    sizes = np.clip(np.round(rng.lognormal(mean=2.1, sigma=1.1, size=n_groups)), 1, 400).astype(int)
    # 8% of groups are "positive-prone" (rate ~20%), the rest nearly never positive.
    prone = rng.random(n_groups) < 0.08
    rate = np.where(prone, rng.uniform(0.05, 0.40, n_groups), 0.003)
    group = np.repeat(np.arange(n_groups), sizes)
    label = (rng.random(len(group)) < rate[group]).astype(int)
    return pd.DataFrame({"id": np.arange(len(group)), "group": [f"p{g:05d}" for g in group], "label": label})


def splitter_folds(splitter, n_rows: int, y=None, groups=None) -> np.ndarray:
    """Any scikit-learn style splitter as one fold per row."""
    folds = np.full(n_rows, -1)
    for k, (_, val) in enumerate(splitter.split(np.zeros(n_rows), y, groups)):
        folds[val] = k
    return folds


def balance(df: pd.DataFrame, folds: np.ndarray, n_folds: int) -> dict[str, float]:
    """Spread and std across folds of positive rate and image count; group isolation check."""
    images = np.bincount(folds, minlength=n_folds)
    pos = np.bincount(folds, weights=df["label"].to_numpy(), minlength=n_folds)
    rate = pos / images
    assert (pd.Series(folds).groupby(df["group"].to_numpy()).nunique() == 1).all(), "a group spans folds"
    return {
        "rate_range": float(rate.max() - rate.min()),
        "rate_std": float(rate.std()),
        "img_range": float(images.max() - images.min()),
        "img_std": float(images.std()),
        "pos_range": float(pos.max() - pos.min()),
    }


def run_binary(args: argparse.Namespace) -> None:
    n_groups, seeds = (500, 3) if args.quick else (args.groups, args.seeds)
    K = args.folds
    methods = {
        "tfkit assign_folds": lambda df, s: assign_folds(df, K, "label", group_col="group", seed=s),
        "tfkit greedy only (no local search)": lambda df, s: assign_folds(
            df, K, "label", group_col="group", seed=s, refine=False
        ),
        "sklearn StratifiedGroupKFold": lambda df, s: splitter_folds(
            StratifiedGroupKFold(n_splits=K, shuffle=True, random_state=s), len(df), df["label"], df["group"]
        ),
    }
    rows, sizes = [], []
    for seed in range(seeds):
        df = make_dataset(n_groups, seed)
        sizes.append((len(df), df["label"].mean(), df.groupby("group").size().max()))
        for name, fn in methods.items():
            t0 = time.perf_counter()
            folds = fn(df, seed)
            dt = time.perf_counter() - t0
            rows.append({"method": name, "seed": seed, "time_s": dt, **balance(df, folds, K)})
    res = pd.DataFrame(rows)
    n_img, pos, biggest = np.median(np.array(sizes), axis=0)
    print(f"## Binary, grouped: {n_groups} groups, median {n_img:.0f} images, {100 * pos:.2f}% positive, largest "
          f"group {biggest:.0f} images; K={K}; medians over {seeds} seeds (max over seeds in brackets)\n")
    print("| method | pos-rate range | pos-rate std | images range | images std | positives range | time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in methods:
        r = res[res["method"] == name]
        med, worst = r.median(numeric_only=True), r.max(numeric_only=True)
        print(f"| {name} | {med.rate_range:.5f} ({worst.rate_range:.5f}) | {med.rate_std:.5f} | "
              f"{med.img_range:.0f} ({worst.img_range:.0f}) | {med.img_std:.1f} | {med.pos_range:.0f} | {med.time_s:.3f} |")
    tf_ = res[res["method"] == "tfkit assign_folds"].set_index("seed")
    sk = res[res["method"] == "sklearn StratifiedGroupKFold"].set_index("seed")
    print()
    print(f"sklearn / tfkit, median of per-seed ratios: pos-rate range "
          f"{np.median(sk.rate_range / tf_.rate_range.clip(lower=1e-12)):.1f}x, images range "
          f"{np.median(sk.img_range / tf_.img_range.clip(lower=1)):.1f}x")
    # One positive more in a fold of ~6,000 images moves its rate by ~1.7e-4; rate ranges
    # closer than 1e-6 are the same integer configuration and count as ties.
    tol = 1e-6
    both = (tf_.rate_range <= sk.rate_range + tol) & (tf_.img_range <= sk.img_range)
    strictly = (tf_.rate_range < sk.rate_range - tol) & (tf_.img_range < sk.img_range)
    print(f"tfkit at least as balanced as sklearn on both measures in {int(both.sum())}/{seeds} seeds "
          f"(rate ranges within {tol:g} count as ties), strictly better on both in {int(strictly.sum())}/{seeds}\n")


# --------------------------------------------------------------------------- multi-label


def make_multilabel(n_rows: int, n_labels: int, seed: int, group_mean: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Grouped multi-hot targets: label rates 35% down to ~2% (Zipf-like), tilted per group.

    Args:
        n_rows: images.
        n_labels: labels.
        seed: RNG seed.
        group_mean: mean images per group (1 + Poisson).

    Returns:
        ``(Y, groups)``: uint8 ``[n_rows, n_labels]`` and a group id per row.
    """
    rng = np.random.default_rng(seed)
    base = 0.35 / np.arange(1, n_labels + 1) ** 0.9
    sizes = 1 + rng.poisson(group_mean - 1, size=n_rows)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n_rows) + 1]
    groups = np.repeat(np.arange(len(sizes)), sizes)[:n_rows]
    # A group's images share label propensities (a lognormal factor per group and label).
    tilt = rng.lognormal(0.0, 1.0, size=(len(sizes), n_labels))
    Y = (rng.random((n_rows, n_labels)) < np.clip(base * tilt[groups], 0, 0.95)).astype(np.uint8)
    return Y, groups


def multilabel_balance(Y: np.ndarray, groups: np.ndarray, folds: np.ndarray, K: int) -> dict[str, float]:
    """Per-label and label-pair positive-rate spreads across folds, image range, split groups."""
    from tfkit.folds import fold_label_counts

    images = np.bincount(folds, minlength=K)
    rate = fold_label_counts(Y, folds, K) / images[:, None]
    spread = rate.max(axis=0) - rate.min(axis=0)
    Yi = Y.astype(np.int64)
    iu = np.triu_indices(Y.shape[1], 1)
    common = (Yi.T @ Yi)[iu] >= 20
    pair = np.stack([((Yi[folds == k].T @ Yi[folds == k])[iu][common]) / images[k] for k in range(K)])
    split = pd.Series(folds).groupby(groups).nunique().to_numpy() > 1
    return {
        "label_mean": float(spread.mean()),
        "label_max": float(spread.max()),
        "pair_mean": float((pair.max(axis=0) - pair.min(axis=0)).mean()),
        "img_range": float(np.ptp(images)),
        "split_groups": float(split.mean()),
    }


def run_multilabel(args: argparse.Namespace) -> None:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    from tfkit.folds import multilabel_folds

    n_rows, n_labels, K = args.ml_rows, args.ml_labels, args.folds
    seeds = 2 if args.quick else args.ml_seeds
    methods = {
        "iterative-stratification MultilabelStratifiedKFold (no groups)": lambda Y, g, s: splitter_folds(
            MultilabelStratifiedKFold(n_splits=K, shuffle=True, random_state=s), len(Y), Y
        ),
        "tfkit multilabel_folds (no groups)": lambda Y, g, s: multilabel_folds(Y, K, seed=s),
        "tfkit multilabel_folds, groups": lambda Y, g, s: multilabel_folds(Y, K, groups=g, seed=s),
        "random group split": lambda Y, g, s: (np.random.default_rng(s).permutation(g.max() + 1) % K)[g],
    }
    rows = []
    for seed in range(seeds):
        Y, groups = make_multilabel(n_rows, n_labels, seed)
        for name, fn in methods.items():
            t0 = time.perf_counter()
            folds = fn(Y, groups, seed)
            dt = time.perf_counter() - t0
            rows.append({"method": name, "seed": seed, "time_s": dt, **multilabel_balance(Y, groups, folds, K)})
    res = pd.DataFrame(rows)
    print(f"## Multi-label: {n_rows} images, {n_labels} labels (mean {Y.sum(1).mean():.2f} per image), "
          f"{groups.max() + 1} groups; K={K}; medians over {seeds} seeds\n")
    print("| method | label rate spread, mean | label rate spread, max | label-pair spread, mean | "
          "images range | groups split | time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in methods:
        m = res[res["method"] == name].median(numeric_only=True)
        print(f"| {name} | {m.label_mean:.5f} | {m.label_max:.5f} | {m.pair_mean:.5f} | {m.img_range:.0f} | "
              f"{100 * m.split_groups:.1f}% | {m.time_s:.2f} |")
    by = res.set_index(["method", "seed"])
    it = by.loc["iterative-stratification MultilabelStratifiedKFold (no groups)"]
    grouped = by.loc["tfkit multilabel_folds, groups"]
    random = by.loc["random group split"]
    print()
    print(f"iterative-stratification / tfkit (no groups), median of per-seed ratios: label spread "
          f"{np.median(it.label_mean / by.loc['tfkit multilabel_folds (no groups)'].label_mean):.2f}x, pair spread "
          f"{np.median(it.pair_mean / by.loc['tfkit multilabel_folds (no groups)'].pair_mean):.2f}x")
    print(f"random group split / tfkit with groups: label spread "
          f"{np.median(random.label_mean / grouped.label_mean):.1f}x, pair spread "
          f"{np.median(random.pair_mean / grouped.pair_mean):.2f}x\n")


# --------------------------------------------------------------------------- regression


def run_regression(args: argparse.Namespace) -> None:
    from tfkit.folds import regression_folds

    K, seeds = args.folds, (2 if args.quick else args.ml_seeds)
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        sizes = 1 + rng.poisson(1.5, 4000)
        groups = np.repeat(np.arange(len(sizes)), sizes)
        # a per-group level plus per-image noise, skewed like Pawpularity-style scores
        y = rng.gamma(2.0, 10.0, len(sizes))[groups] + rng.normal(0, 3, len(groups))
        methods = {
            "tfkit regression_folds, groups (10 bins)": regression_folds(y, K, groups=groups, seed=seed),
            "sklearn GroupKFold": splitter_folds(GroupKFold(n_splits=K), len(y), None, groups),
            "sklearn KFold(shuffle) (no groups)": splitter_folds(KFold(K, shuffle=True, random_state=seed), len(y)),
        }
        bins = pd.qcut(y, 10, labels=False)
        for name, folds in methods.items():
            means = np.array([y[folds == k].mean() for k in range(K)])
            counts = pd.crosstab(folds, bins).to_numpy()
            split = (pd.Series(folds).groupby(groups).nunique() > 1).mean()
            rows.append({"method": name, "mean_range": np.ptp(means), "bin_range": np.ptp(counts, axis=0).max(),
                         "img_range": np.ptp(np.bincount(folds)), "split": split})
    res = pd.DataFrame(rows)
    print(f"## Regression: gamma target, {len(y)} images in {len(sizes)} groups; K={K}; medians over {seeds} seeds\n")
    print("| method | fold-mean range | worst bin-count range | images range | groups split |")
    print("|---|---:|---:|---:|---:|")
    for name in methods:
        m = res[res["method"] == name].median(numeric_only=True)
        print(f"| {name} | {m.mean_range:.3f} | {m.bin_range:.0f} | {m.img_range:.0f} | {100 * m.split:.1f}% |")
    print()


# --------------------------------------------------------------------------- scale


def make_scale(n_rows: int, n_classes: int, n_groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Catalogue-scale single-label data (Cdiscount-like): Zipf classes, lognormal group sizes.

    Each group has a main class (Zipf, exponent 1.1); 10% of rows take another
    Zipf-drawn class, so some groups hold several classes. Rows are shuffled.

    Returns:
        ``(labels, groups)``: int64 per row.
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    p /= p.sum()
    w = rng.lognormal(0.0, 1.0, n_groups)
    sizes = 1 + rng.multinomial(n_rows - n_groups, w / w.sum())
    groups = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)
    labels = rng.choice(n_classes, n_groups, p=p)[groups]
    noisy = rng.random(n_rows) < 0.1
    labels[noisy] = rng.choice(n_classes, int(noisy.sum()), p=p)
    perm = rng.permutation(n_rows)
    return labels[perm].astype(np.int64), groups[perm]


def scale_child(data_dir: str) -> None:
    """Run in a fresh process: load one size, assign folds, print a JSON line of figures."""
    labels = np.load(Path(data_dir) / "labels.npy")
    groups = np.load(Path(data_dir) / "groups.npy")
    df = pd.DataFrame({"label": labels, "group": groups})
    del labels, groups
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    c0, t0 = time.process_time(), time.perf_counter()
    folds = np.asarray(assign_folds(df, 5, "label", group_col="group", seed=0, n_bins=0))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lab = df["label"].to_numpy()
    counts = np.bincount(folds * (lab.max() + 1) + lab, minlength=5 * (lab.max() + 1)).reshape(5, -1)
    dev = np.abs(counts - counts.sum(axis=0) / 5)
    biggest = int(df.groupby("group").size().max())
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": peak, "loaded_mb": before,
                      "img_range": int(np.ptp(np.bincount(folds))), "dev_mean": float(dev.mean()),
                      "dev_max": float(dev.max()), "biggest": biggest}))


def run_scale(args: argparse.Namespace) -> None:
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    trees = [("tfkit", str(Path(__file__).resolve().parents[1]))]
    if args.baseline:
        trees.append(("baseline", args.baseline))
    print(f"## Scale: rows x classes (Zipf 1.1) x groups, K=5, each run in its own process; load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; medians over {args.repeats} runs\n")
    print("| tree | rows | classes | groups | wall s | CPU s | peak MB | data loaded MB | images range | "
          "class-count deviation, mean / max (largest group) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n_rows, n_classes, n_groups in sizes:
            labels, groups = make_scale(n_rows, n_classes, n_groups)
            np.save(Path(tmp) / "labels.npy", labels)
            np.save(Path(tmp) / "groups.npy", groups)
            del labels, groups
            for name, tree in trees:
                # The dense assigner kept a groups x classes float64 matrix (and copies): skip sizes it cannot hold.
                if name == "baseline" and 3 * 8 * n_groups * (n_classes + 2) > 4 * 2**30:
                    print(f"| {name} | {n_rows:,} | {n_classes:,} | {n_groups:,} | skipped: a dense groups x classes "
                          f"matrix needs {8 * n_groups * (n_classes + 2) / 2**30:.0f} GiB | | | | | |")
                    continue
                runs = [_child_run(tree, tmp) for _ in range(args.repeats)]
                m = pd.DataFrame(runs).median()
                print(f"| {name} | {n_rows:,} | {n_classes:,} | {n_groups:,} | {m.wall:.1f} | {m.cpu:.1f} | "
                      f"{m.peak_mb:.0f} | {m.loaded_mb:.0f} | {m.img_range:.0f} | {m.dev_mean:.2f} / {m.dev_max:.1f} "
                      f"({m.biggest:.0f}) |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def _child_run(tree: str, data_dir: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, __file__, "--child", data_dir], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", action="store_true", help="the binary grouped section")
    parser.add_argument("--multilabel", action="store_true", help="the multi-label section")
    parser.add_argument("--regression", action="store_true", help="the regression section")
    parser.add_argument("--scale", action="store_true", help="the scale table")
    parser.add_argument("--quick", action="store_true", help="fewer groups and seeds")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--groups", type=int, default=2000, help="binary: groups")
    parser.add_argument("--seeds", type=int, default=10, help="binary: seeds")
    parser.add_argument("--ml-rows", type=int, default=20_000)
    parser.add_argument("--ml-labels", type=int, default=28)
    parser.add_argument("--ml-seeds", type=int, default=5, help="multi-label and regression: seeds")
    parser.add_argument("--sizes", default="100000x1000x50000,1000000x5000x500000,10000000x5000x5000000",
                        help="scale: comma-separated ROWSxCLASSESxGROUPS")
    parser.add_argument("--repeats", type=int, default=3, help="scale: runs per size (median)")
    parser.add_argument("--baseline", default=None,
                        help="scale: also run another tfkit checkout (the folder holding its tfkit/ package)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        scale_child(args.child)
        return
    chosen = [s for s in ("binary", "multilabel", "regression", "scale") if getattr(args, s)]
    for section in chosen or ["binary", "multilabel", "regression", "scale"]:
        globals()[f"run_{section}"](args)


if __name__ == "__main__":
    main()
