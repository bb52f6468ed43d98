"""tfkit.tune: space validation and mapping, a tiny search end to end (trials
COMPLETED), resume after a larger budget and after a kill, the CV objective as
the mean of per-fold scores, export-then-train round trip, Hyperband's epoch
budget, and chief/worker distributed tuning on loopback."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner
import pandas as pd
import pytest
import yaml

from tfkit import tune as T
from tfkit.cli import main as cli_main
from tfkit.config import Config, load_config
from tfkit.utils import TfkitError, read_json

TINY = [
    "model.name=small_cnn", "model.width=4", "data.image_size=32", "data.batch_size=16", "train.epochs=1",
    "train.verbose=0", "train.mixed_precision='off'", "train.folds=[0,1]", "train.metrics=[accuracy,log_loss]",
    "train.warmup_epochs=0",
]
SPACE = {"train.lr": {"min": 1e-3, "max": 1e-2, "log": True}, "model.dropout": {"choice": [0.0, 0.25]}}


def _trial_statuses(out: Path) -> dict[str, str]:
    """Status of every trial as Keras Tuner saved it (not as tfkit reports it)."""
    return {p.parent.name: json.loads(p.read_text())["status"] for p in (out / "search").glob("trial_*/trial.json")}


class Recorder:
    """train_fn wrapper: counts calls and keeps each fold's returned summary."""

    def __init__(self):
        from tfkit.train import train_fold

        self.inner, self.calls = train_fold, []

    def __call__(self, cfg, records, fold, out, manifest=None):
        result = self.inner(cfg, records, fold, out, manifest=manifest)
        self.calls.append((Path(out).parent.name, fold, result))
        return result


@pytest.fixture(scope="module")
def rec(small_records):
    return str(small_records)


@pytest.fixture(scope="module")
def base():
    return load_config(None, TINY)


@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    """The base config and the space as YAML files, for the CLI."""
    root = tmp_path_factory.mktemp("files")
    (root / "base.yaml").write_text(yaml.safe_dump({
        "model": {"name": "small_cnn", "width": 4}, "data": {"image_size": 32, "batch_size": 16},
        "train": {"epochs": 1, "verbose": 0, "mixed_precision": "off", "folds": [0, 1],
                  "metrics": ["accuracy", "log_loss"], "warmup_epochs": 0},
    }))
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    assert load_config(root / "base.yaml") == base
    return root


# --------------------------------------------------------------------------- space (no training)


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"min": 1e-4, "max": 1e-2}}, "unknown config key 'train.lrr'"),
    ({"trian.lr": 0.1}, "unknown config key 'trian.lr'"),
    ({"train": {"nope": {"choice": [1, 2]}}}, "unknown config key 'train.nope'"),
    ({"train.lr": {"min": 1e-4}}, "needs both min and max"),
    ({"train.lr": {"min": "tiny", "max": 1e-2}}, "train.lr: expected a number, got 'tiny'"),
    ({"train.lr": {"min": 1e-2, "max": 1e-4}}, "min must be below max"),
    ({"train.lr": {"min": 0.0, "max": 1e-2, "log": True}}, "log sampling needs min > 0"),
    ({"train.lr": {"choice": []}}, "non-empty list"),
    ({"train.lr": {"choice": ["fast"]}}, "train.lr: expected a number"),
    ({"train.lr": {"choice": [0.1, 0.1]}}, "duplicate"),
    ({"train.lr": {"min": 1e-4, "max": 1e-2, "spread": 2}}, "unknown spec key(s) ['spread']"),
    ({"train.lr": {"min": 1e-4, "max": 1e-2, "choice": [0.1]}}, "exactly one of"),
    ({"data.image_size": {"min": 32.5, "max": 64}}, "min must be an integer"),
    ({"model.name": {"min": 1, "max": 2}}, "needs a numeric key"),
    ({"model.name": {"choice": ["no_such_net"]}}, "unknown model(s) ['no_such_net']"),
    ({"augment.preset": {"choice": ["photo", "nope"]}}, "augment.preset: unknown preset 'nope'"),
    ({"train.lr": {"boolean": True}}, "needs a true/false key"),
    ({"model.dropout": {"min": 0.0, "max": 0.5, "default": 0.9}}, "outside"),
    ({"train.epochs": 3}, "tunes nothing"),
    ([1, 2], "expected a mapping"),
])
def test_space_errors_name_the_key_and_the_problem(space, message):
    with pytest.raises(TfkitError) as e:
        T.load_space(space)
    assert message in str(e.value)


def test_space_file_errors(tmp_path):
    with pytest.raises(TfkitError, match="search space file not found"):
        T.load_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train.lr: {min: 1\n")
    with pytest.raises(TfkitError, match="invalid YAML at line 2"):
        T.load_space(bad)


def test_shipped_example_space_is_valid():
    space = T.load_space(Path(T.__file__).parent / "configs" / "space_example.yaml")
    assert {"model.name", "train.lr", "data.image_size", "augment.rotate"} <= set(space.keys)


def test_space_maps_to_hyperparameters_and_trial_configs():
    space = T.load_space({
        "train": {"lr": {"min": 1e-4, "max": 1e-2, "log": True}, "epochs": 2},  # nested section + fixed
        "model.width": {"min": 4, "max": 16, "step": 4},
        "data.image_size": {"choice": [32, 48], "default": 48},
        "data.cache": {"boolean": True},
        "model.head_units": {"choice": [[], [64, 32]]},  # non-scalar choices travel as JSON
        "train.clip_norm": {"choice": [None, 1.0]},
        "augment.preset": {"choice": ["none", "digits"]},
        "augment.rotate": {"fixed": 7.0},
    })
    hp = keras_tuner.HyperParameters()
    space.declare(hp)
    kinds = {h.name: type(h).__name__ for h in hp.space}
    assert kinds == {"train.lr": "Float", "model.width": "Int", "data.image_size": "Choice", "data.cache": "Boolean",
                     "model.head_units": "Choice", "train.clip_norm": "Choice", "augment.preset": "Choice"}
    assert hp.get("data.image_size") == 48
    assert [h for h in hp.space if h.name == "train.lr"][0].sampling == "log"
    assert [h for h in hp.space if h.name == "model.width"][0].step == 4
    assert dict(space.fixed) == {"train.epochs": 2, "augment.rotate": 7.0}

    hp.values.update({"model.head_units": json.dumps([64, 32]), "train.clip_norm": json.dumps(1.0),
                      "augment.preset": "digits", "train.lr": 3e-3, "model.width": 8, "data.cache": True})
    cfg = T.SpaceHyperModel(Config(), space).build(hp)
    assert (cfg.model.head_units, cfg.train.clip_norm, cfg.train.lr, cfg.model.width) == ([64, 32], 1.0, 3e-3, 8)
    assert cfg.data.cache is True and cfg.data.image_size == 48 and cfg.train.epochs == 2
    # Choosing a preset applies it (digits: constant fill), the space's own augment keys still win.
    assert cfg.augment.preset == "digits" and cfg.augment.fill_mode == "constant" and cfg.augment.rotate == 7.0
    # Hyperband's per-trial budget lands on train.epochs.
    hp.values["tuner/epochs"] = 5
    assert T.SpaceHyperModel(Config(), space).build(hp).train.epochs == 5


def test_objective_direction():
    assert T.parse_objective("val_loss").direction == "min"
    assert T.parse_objective("val_log_loss").direction == "min"
    assert T.parse_objective("val_auc").direction == "max"
    assert T.parse_objective("val_loss:max").direction == "max"
    with pytest.raises(TfkitError, match="direction must be min or max"):
        T.parse_objective("val_auc:up")
    assert T.fold_score({"metrics": {"accuracy": 0.5}, "monitor": "val_loss", "best": 0.7}, "val_accuracy") == 0.5
    assert T.fold_score({"metrics": {"accuracy": 0.5}, "monitor": "val_loss", "best": 0.7}, "val_loss") == 0.7
    with pytest.raises(TfkitError, match="val_accuracy"):
        T.fold_score({"metrics": {"accuracy": 0.5}, "monitor": "val_loss", "best": 0.7}, "val_auc")


# --------------------------------------------------------------------------- tiny searches


@pytest.fixture(scope="module")
def search(tmp_path_factory, rec, base):
    """A 2-trial random search on fold 0, then the same command with max_trials=3."""
    out = tmp_path_factory.mktemp("search") / "tune"
    first = Recorder()
    s1 = T.tune(base, SPACE, rec, out, tuner="random", max_trials=2, objective="val_accuracy", fold=0,
                train_fn=first, isolate=False)
    before = {p: p.stat().st_mtime_ns for p in (out / "search").glob("trial_*/run/fold0/done.json")}
    second = Recorder()
    s2 = T.tune(base, SPACE, rec, out, tuner="random", max_trials=3, objective="val_accuracy", fold=0,
                train_fn=second, isolate=False)
    return dict(out=out, first=first, second=second, s1=s1, s2=s2, before=before)


def test_tiny_search_end_to_end(search, rec):
    out, s1 = search["out"], search["s1"]
    assert len(search["first"].calls) == 2 and s1["n_completed"] == 2
    assert set(_trial_statuses(out).values()) == {"COMPLETED"}
    table = pd.read_csv(out / "trials.csv")
    assert list(table["status"]) == ["COMPLETED"] * 3
    assert list(table["rank"]) == [1, 2, 3]
    assert table["score"].is_monotonic_decreasing  # accuracy: higher is better, best first
    assert {"trial_id", "score", "score_fold0", "tuner_id", "train.lr", "model.dropout"} <= set(table.columns)
    assert table["train.lr"].between(1e-3, 1e-2).all() and set(table["model.dropout"]) <= {0.0, 0.25}
    # Each score is the fold's accuracy that train_fold measured on its validation fold.
    for _, row in table.iterrows():
        done = read_json(out / "search" / f"trial_{row['trial_id']}" / "run" / "fold0" / "done.json")
        assert row["score"] == pytest.approx(done["metrics"]["accuracy"], abs=1e-12)
    best = read_json(out / "best.json")
    assert best["best_score"] == pytest.approx(table["score"].max())
    for name in ("score_by_trial.png", "score_vs_hparams.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_runs_only_the_new_trial(search):
    out = search["out"]
    assert len(search["second"].calls) == 1  # trials 0 and 1 were not redone
    assert search["second"].calls[0][0] == "trial_2"
    after = {p: p.stat().st_mtime_ns for p in search["before"]}
    assert after == search["before"]
    assert search["s2"]["n_completed"] == 3
    assert _trial_statuses(out) == {"trial_0": "COMPLETED", "trial_1": "COMPLETED", "trial_2": "COMPLETED"}


def test_resume_refuses_changed_settings(search, rec, base):
    with pytest.raises(TfkitError, match="different objective"):
        T.tune(base, SPACE, rec, search["out"], max_trials=3, objective="val_log_loss", fold=0)


def test_export_then_train_round_trip(search, rec, tmp_path):
    out = search["out"]
    best = read_json(out / "best.json")
    exported = load_config(out / "best_config.yaml")
    assert exported == load_config(Path(best["best_run"]) / "config.yaml")  # exactly the trial's config
    assert exported.train.lr == pytest.approx(best["best_values"]["train.lr"])
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(out / "best_config.yaml"), "--records", rec, "--out", str(run),
                     "--folds", "0"]) == 0
    assert load_config(run / "config.yaml") == exported
    assert (run / "fold0" / "done.json").is_file() and (run / "cv.json").is_file()


def test_cv_objective_is_the_mean_of_fold_scores(tmp_path, rec, base):
    rec_fn = Recorder()
    s = T.tune(base, SPACE, rec, tmp_path / "cv", tuner="bayesian", max_trials=1, objective="val_log_loss",
               cv=True, train_fn=rec_fn, isolate=False)
    assert [(c[0], c[1]) for c in rec_fn.calls] == [("trial_0", 0), ("trial_0", 1)]
    per_fold = [c[2]["metrics"]["log_loss"] for c in rec_fn.calls]
    row = pd.read_csv(tmp_path / "cv" / "trials.csv").iloc[0]
    assert row["status"] == "COMPLETED" and s["direction"] == "min"
    assert [row["score_fold0"], row["score_fold1"]] == pytest.approx(per_fold, abs=1e-12)
    assert row["score"] == pytest.approx(sum(per_fold) / 2, abs=1e-12)
    assert s["best_score"] == pytest.approx(sum(per_fold) / 2, abs=1e-12)


def test_hyperband_maps_its_epoch_budget_onto_train_epochs(tmp_path, rec, base):
    cfg = load_config(None, TINY + ["train.epochs=2"])
    s = T.tune(cfg, SPACE, rec, tmp_path / "hb", tuner="hyperband", max_trials=2, objective="val_accuracy", fold=0,
               isolate=False)
    table = pd.read_csv(tmp_path / "hb" / "trials.csv")
    assert s["n_completed"] == 2 and set(table["status"]) == {"COMPLETED"}
    for _, row in table.iterrows():
        done = read_json(tmp_path / "hb" / "search" / f"trial_{row['trial_id']}" / "run" / "fold0" / "done.json")
        assert done["epochs_run"] == row["epochs"] and 1 <= row["epochs"] <= 2


def test_bad_fold_and_objective_are_clear_errors(tmp_path, rec, base):
    with pytest.raises(TfkitError, match=r"fold\(s\) \[99\] do not exist"):
        T.tune(base, SPACE, rec, tmp_path / "a", fold=99)
    # Raised inside the trial's own process (isolate=True, the default) and reported here.
    with pytest.raises(TfkitError, match="'val_nope'.*val_accuracy"):
        T.tune(base, SPACE, rec, tmp_path / "b", max_trials=1, objective="val_nope", fold=0)


# --------------------------------------------------------------------------- processes


def _cli(files: Path, rec: str, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tfkit", "tune", "--config", str(files / "base.yaml"), "--space",
            str(files / "space.yaml"), "--records", rec, "--out", str(out), "--trials", str(trials),
            "--objective", "val_accuracy", "--fold", "0", *extra]


def test_killed_search_resumes(tmp_path, files, rec, base):
    out = tmp_path / "killed"
    # Trials run in their own process (the CLI default): killing the search must kill its trial too.
    proc = subprocess.Popen(_cli(files, rec, out, 3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "search" / "trial_1" / "trial.json").is_file():  # trial 0 done, trial 1 started
        assert proc.poll() is None, "the search ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _trial_statuses(out) == {"trial_0": "COMPLETED", "trial_1": "RUNNING"}
    rec_fn = Recorder()
    s = T.tune(base, SPACE, rec, out, max_trials=3, objective="val_accuracy", fold=0, train_fn=rec_fn,
               isolate=False)
    assert sorted(c[0] for c in rec_fn.calls) == ["trial_1", "trial_2"]  # trial 0 kept, trial 1 rerun
    assert s["n_completed"] == 3 and set(_trial_statuses(out).values()) == {"COMPLETED"}


def test_distributed_chief_and_two_workers(tmp_path, files, rec):
    out = tmp_path / "dist"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = {}
    for tid in ("chief", "tuner0", "tuner1"):
        env = dict(os.environ, KERASTUNER_TUNER_ID=tid, KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=str(port))
        procs[tid] = subprocess.Popen(_cli(files, rec, out, 4, "--in-process"), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    logs = {}
    try:
        for tid, p in procs.items():
            logs[tid] = p.communicate(timeout=400)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for tid, p in procs.items():
        assert p.returncode == 0, f"{tid} exited {p.returncode}:\n{logs.get(tid, '')[-2000:]}"
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 4 and set(table["status"]) == {"COMPLETED"}
    assert set(_trial_statuses(out).values()) == {"COMPLETED"}
    assert set(table["tuner_id"]) == {"tuner0", "tuner1"}  # both workers ran trials, the chief none
    assert (out / "best_config.yaml").is_file()


def test_trials_run_in_their_own_process_only_on_a_cpu_machine(monkeypatch):
    from tfkit import backend

    devices: list[str] = []
    monkeypatch.setattr(backend.glob, "glob", lambda pattern: [d for d in devices if d.startswith(pattern[:9])])
    assert T.default_isolation({}) is True  # CPU only: a fresh process per trial keeps memory flat
    # A TPU admits one process: a trial's own process would find it in use and train on the host CPU.
    assert T.default_isolation({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}) is False
    devices.append("/dev/accel0")
    assert T.default_isolation({}) is False
    devices[:] = ["/dev/nvidia0"]  # this process's TensorFlow or JAX maps most of the GPU's memory
    assert T.default_isolation({}) is False
    assert T.default_isolation({"CUDA_VISIBLE_DEVICES": "-1"}) is True  # the GPU is hidden


def test_a_search_on_a_tpu_vm_trains_its_trials_in_this_process(monkeypatch, tmp_path, rec, base):
    def no_child(*args, **kwargs):
        raise AssertionError("a trial was sent to another process")

    calls = []

    def train_fn(cfg, records, fold, out, manifest=None):  # stands in for train_fold: where it runs is the point
        calls.append((os.getpid(), fold))
        return {"metrics": {"accuracy": 0.5}, "monitor": "val_loss", "best": 1.0}

    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    monkeypatch.setattr(T, "_run_isolated", no_child)
    s = T.tune(base, SPACE, rec, tmp_path / "tpu", max_trials=2, objective="val_accuracy", fold=0, train_fn=train_fn)
    assert calls == [(os.getpid(), 0)] * 2 and s["n_completed"] == 2
