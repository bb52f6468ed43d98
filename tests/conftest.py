"""Shared pytest fixtures (owner: records engineer; others append small fixtures at the end).

Session fixtures build real data once per test session:

* ``digits_dir``: the embedded digits dataset exported (1,797 real 8x8 scans as PNG,
  train.csv / test.csv).
* ``digits_records``: train records of the exported digits, ``--size 32``, 5 folds,
  seed 42 (about 1,437 examples in 5 shards).
* ``digits_test_records``: the held-out test.csv as test-split records with the train
  class list (labels kept as indices).
* ``small_records``: a tiny train set (60 digits, 32 px, 3 folds, metadata columns
  ``age`` numeric and ``site`` categorical, groups) for fast tests.
* ``tiny_run``: a 3-fold run of :data:`TINY_RUN` on ``small_records``, trained once per
  session and copied for each test module that asks (a module's writes stay its own).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Speed only (no test depends on it; a user's XLA_FLAGS wins): the tests' models are tiny, so on
# JAX compiling, not running, dominates; XLA's CPU backend skips LLVM's expensive optimisations and
# runs each program on one thread (two pytest workers share two cores). Measured: JAX tests ~20%
# faster; TensorFlow's tests unchanged. Subprocesses inherit it; JAX_XLA_FLAGS adds 2 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_multi_thread_eigen=false")
JAX_XLA_FLAGS = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Scheduling only (no test depends on it): pytest-xdist's --dist loadfile hands out whole files in
# collection order, so the longest files (measured, 2026-12-03) go first and the many short ones
# fill in at the end; by default xdist would order files by their number of tests, which put the
# few-but-long end-to-end files last.
LONGEST_FIRST = (
    "test_tune.py", "test_notebook.py", "test_jax.py", "test_augment.py", "test_demo.py", "test_train.py",
    "test_kill.py", "test_e2e_targets.py", "test_batchnorm.py", "test_backend.py", "test_quiet.py",
    "test_data.py", "test_predict.py", "test_folds.py", "test_ensemble.py", "test_strategy.py", "test_distill.py",
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist >= 3.6
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with images/, train.csv, test.csv of the exported digits dataset."""
    from tfkit.datasets import export_dataset

    out = tmp_path_factory.mktemp("digits_export") / "digits"
    export_dataset("digits", out, test_size=0.2, seed=42)
    return out


@pytest.fixture(scope="session")
def digits_records(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train records of the digits: 32 px, 5 folds, seed 42. Returns the records folder."""
    from tfkit.records import build_records

    out = tmp_path_factory.mktemp("digits_records") / "records"
    build_records(
        csv=digits_dir / "train.csv", images=digits_dir / "images", out=out, size=32, n_folds=5,
        seed=42, workers=2, progress=False,
    )
    return out


@pytest.fixture(scope="session")
def digits_test_records(digits_dir: Path, digits_records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test-split records of the held-out digits (labels as indices of the train classes)."""
    from tfkit.records import build_records

    out = tmp_path_factory.mktemp("digits_test_records") / "records"
    build_records(
        csv=digits_dir / "test.csv", images=digits_dir / "images", out=out, size=32, split="test",
        classes_from=digits_records / "manifest.json", workers=2, progress=False,
    )
    return out


@pytest.fixture(scope="session")
def small_csv(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CSV of 60 digits (6 per class) with group, numeric ``age`` (some missing) and categorical ``site``."""
    import numpy as np
    import pandas as pd

    train = pd.read_csv(digits_dir / "train.csv", dtype={"id": str})
    small = train.groupby("label", group_keys=False).head(6).sort_values("id").reset_index(drop=True)
    rng = np.random.default_rng(0)
    small["group"] = [f"p{k // 2:03d}" for k in range(len(small))]
    age = rng.integers(20, 80, len(small)).astype(float)
    age[::7] = np.nan
    small["age"] = age
    small["site"] = rng.choice(["head", "torso", "leg", ""], len(small))
    path = tmp_path_factory.mktemp("small_csv") / "small.csv"
    small.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def small_records(small_csv: Path, digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 digits, 32 px, 3 folds, group column and metadata ``age`` (numeric) + ``site`` (categorical)."""
    from tfkit.records import build_records

    out = tmp_path_factory.mktemp("small_records") / "records"
    build_records(
        csv=small_csv, images=digits_dir / "images", out=out, group_col="group", meta_cols=["age", "site"],
        size=32, n_folds=3, seed=42, workers=1, progress=False,
    )
    return out


# The tiny run several modules read (report, predict, ensemble, bad input, JAX portability).
TINY_RUN = ["data.image_size=16", "data.batch_size=16", "model.width=4", "train.epochs=1", "train.verbose=0",
            "train.mixed_precision=off", "train.warmup_epochs=0"]


@pytest.fixture(scope="session")
def _tiny_run_pristine(small_records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tfkit.config import load_config
    from tfkit.train import train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    train(load_config(None, TINY_RUN), small_records, run)
    return run


@pytest.fixture(scope="module")
def tiny_run(_tiny_run_pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of a 3-fold :data:`TINY_RUN` run on ``small_records`` (trained once per session)."""
    run = tmp_path_factory.mktemp("tiny_run_copy") / "run"
    shutil.copytree(_tiny_run_pristine, run)
    return run


@pytest.fixture(scope="session")
def fake_run():
    """Factory of run folders without training (owner: finish): ``fake_run(path, oof, classes,
    overrides=(), task="multiclass", folds_setup=None)`` writes config.yaml, manifest.json,
    oof.csv, fold<k>/done.json and cv.json (from the OOF, as tfkit train computes it)."""
    import pandas as pd

    from tfkit.checks import resolve_run_config
    from tfkit.config import load_config, save_config
    from tfkit.run import recompute_cv_frame
    from tfkit.utils import write_csv, write_json

    def make(path: Path, oof: pd.DataFrame, classes: list, overrides=(), task: str = "multiclass",
             folds_setup: dict | None = None, run_level: bool = True) -> Path:
        path = Path(path)
        n_folds = int(oof["fold"].max()) + 1
        manifest = {"classes": [str(c) for c in classes], "task": task, "split": "train",
                    "folds": {"n_folds": n_folds, "seed": 42, **(folds_setup or {})}, "columns": {"id": "id"}}
        # as tfkit train saves it: metrics and monitor made concrete for the task
        cfg = resolve_run_config(load_config(None, list(overrides)), manifest)
        save_config(cfg, path / "config.yaml")
        write_json(path / "manifest.json", manifest)
        for k, part in oof.groupby("fold"):
            write_json(path / f"fold{k}" / "done.json", {"fold": int(k), "seconds": 1.5, "epochs_run": 1})
            if not run_level:
                write_csv(path / f"fold{k}" / "oof.csv", part)
        if run_level:
            write_csv(path / "oof.csv", oof)
            cv = recompute_cv_frame(oof, [str(c) for c in classes], task, names=cfg.train.metrics)
            cv.update(primary=next(m for m in cfg.train.metrics if m in cv["metrics"]), task=task)
            write_json(path / "cv.json", cv)
        return path

    return make


@pytest.fixture(scope="session")
def jax_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Environment of a JAX subprocess (owner: jax helper): Keras on JAX, 2 forced host
    devices, and one persistent XLA compilation cache for the session, so subprocesses
    do not recompile the same programs (a small_cnn's initialisers: ~20 s -> ~2 s)."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return dict(
        os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=JAX_XLA_FLAGS, JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
