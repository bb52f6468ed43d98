"""Hyperparameter search over the K-fold setup with Keras Tuner.

A *search space* is a YAML mapping of dotted config keys to specs, applied on
top of a base training config::

    model.name: {choice: [small_cnn, efficientnet_b0]}
    train.lr: {min: 1.0e-4, max: 1.0e-2, log: true}
    model.dropout: {min: 0.0, max: 0.5, step: 0.1}
    data.image_size: {choice: [32, 48]}
    train.ema: {choice: [0.0, 0.999]}
    augment.mixup_p: {min: 0.0, max: 0.5}
    data.cache: {boolean: true}
    train.epochs: 3                     # a fixed value (or {fixed: 3})

Each trial builds a full :class:`tfkit.config.Config` (base + the trial's
values), trains it with :func:`tfkit.train.train_fold` on one fold (fast) or on
every fold (``cv=True``: the objective is the mean of the per-fold scores) and
reports the score to a Keras Tuner oracle (random, Bayesian or Hyperband).

The parts are pluggable: :func:`build_oracle` (or any ``keras_tuner.Oracle``),
:class:`SpaceHyperModel` (a ``keras_tuner.HyperModel`` whose ``build`` returns
the trial's Config), and :class:`KFoldTuner` (the tuner; its ``train_fn`` is
``train_fold`` by default).

Re-running the same command resumes: finished trials are kept, an interrupted
trial is run again, and ``max_trials`` may be raised to extend a search.
Setting ``KERASTUNER_TUNER_ID`` / ``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT`` runs Keras Tuner's chief/worker mode: the chief
(``KERASTUNER_TUNER_ID=chief``) serves the oracle and writes the outputs; each
worker (``tuner0``, ``tuner1``, ...) runs trials. Workers share ``out``.

Outputs in ``out``: ``trials.csv`` (ranked), ``best_config.yaml`` (a full
config for ``tfkit train --config``), ``best.json``, ``score_by_trial.png``,
``score_vs_hparams.png``; Keras Tuner's state lives in ``out/search`` and each
trial's training run in ``out/search/trial_<id>/run``.

Example::

    summary = tune(load_config("base.yaml"), "space.yaml", "records", "tune_out",
                   tuner="bayesian", max_trials=20, objective="val_auc", cv=True)
    summary["best_score"]
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras_tuner
from keras_tuner.engine.base_tuner import BaseTuner

from tfkit.checks import resolve_run_config, validate
from tfkit.config import Config, config_to_dict, save_config
from tfkit.manifest import Manifest
from tfkit.preflight import check_out_dir, check_records
from tfkit.run import RunFolder
from tfkit.search_space import DEFAULT_TUNER, SPEC_KEYS, TUNERS, Param, SearchSpace, load_space  # noqa: F401  (re-exported)
from tfkit.utils import TfkitError, prepare_out_dir, read_json, write_csv, write_json

PROJECT = "search"  # Keras Tuner's project folder inside ``out``
_STATE_FILE = "tune_spec.json"  # what this search was started with (guards resume)
_TRIAL_FILE = "tfkit_trial.json"  # per-trial record written by whoever ran it


# --------------------------------------------------------------------------- objective / oracle


def parse_objective(objective: str) -> Any:
    """``"val_auc"`` or ``"val_auc:max"`` -> ``keras_tuner.Objective``.

    Without a direction, names containing ``loss``, ``error``, ``mse``, ``rmse`` or ``mae`` are minimised
    and everything else is maximised.

    Example:
        >>> parse_objective("val_loss").direction, parse_objective("val_qwk:max").direction
        ('min', 'max')
    """
    text = str(objective).strip()
    name, _, direction = text.partition(":")
    name, direction = name.strip(), direction.strip().lower()
    if not name:
        raise TfkitError(f"--objective: expected a metric name such as val_auc or val_loss:min, got {objective!r}")
    if not direction:
        from tfkit.metrics import lower_is_better

        direction = "min" if lower_is_better(name) else "max"
    if direction not in ("min", "max"):
        raise TfkitError(f"--objective {objective!r}: direction must be min or max, got {direction!r}")
    return keras_tuner.Objective(name, direction)


def check_objective(name: str, metrics: list[str], monitor: str) -> None:
    """The objective must be a score every trial reports: a validation metric of the run, or its monitor.

    Example:
        >>> check_objective("val_auc", ["accuracy", "auc"], "val_loss")
        >>> check_objective("val_foo", ["accuracy"], "val_loss")
        Traceback (most recent call last):
        ...
        tfkit.utils.TfkitError: --objective 'val_foo': the trials report val_accuracy, val_loss
    """
    reported = [f"val_{m}" for m in metrics] + ([monitor] if monitor not in (f"val_{m}" for m in metrics) else [])
    if name not in reported and name.removeprefix("val_") not in metrics:
        raise TfkitError(f"--objective {name!r}: the trials report {', '.join(reported)}")


def build_oracle(name: str, objective: Any, max_trials: int, seed: int = 42, max_epochs: int = 10) -> Any:
    """A Keras Tuner oracle by name.

    Args:
        name: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        objective: a ``keras_tuner.Objective`` (see :func:`parse_objective`).
        max_trials: trial budget (Hyperband also stops at its own bracket plan).
        seed: oracle seed.
        max_epochs: Hyperband's largest epoch budget (trials train
            ``tuner/epochs`` epochs, mapped onto ``train.epochs``).

    Returns:
        A ``keras_tuner.Oracle``.

    Example:
        >>> build_oracle("random", parse_objective("val_loss"), max_trials=5)  # doctest: +ELLIPSIS
        <...RandomSearchOracle object at ...>
    """
    if not isinstance(max_trials, int) or max_trials < 1:
        raise TfkitError(f"--trials: expected a positive integer, got {max_trials!r}")
    common = dict(objective=objective, seed=seed, max_retries_per_trial=0, max_consecutive_failed_trials=3)
    if name == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if name == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=max_trials, num_initial_points=min(max_trials, 3), **common
        )
    if name == "hyperband":
        if max_epochs < 2:
            raise TfkitError(f"hyperband needs train.epochs >= 2 as its epoch budget, got {max_epochs}")
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=max_epochs, factor=3, **common)
        oracle.max_trials = max_trials  # cap: create_trial stops at max_trials
        return oracle
    raise TfkitError(f"--tuner: expected one of {', '.join(TUNERS)}, got {name!r}")


# --------------------------------------------------------------------------- hypermodel + tuner


class SpaceHyperModel(keras_tuner.HyperModel):
    """A ``keras_tuner.HyperModel`` whose ``build(hp)`` returns the trial's Config.

    Args:
        base: base training config.
        space: a :class:`SearchSpace`.

    Example:
        >>> hm = SpaceHyperModel(Config(), load_space({"train.lr": {"choice": [0.1, 0.01]}}))
        >>> import keras_tuner; hp = keras_tuner.HyperParameters(); hm.declare_hyperparameters(hp)
        >>> hm.build(hp).train.lr
        0.1
    """

    def __init__(self, base: Config, space: SearchSpace) -> None:
        super().__init__(name="tfkit", tunable=True)
        self.base = base
        self.space = space

    def declare_hyperparameters(self, hp: Any) -> None:
        self.space.declare(hp)

    def build(self, hp: Any) -> Config:  # returns a Config, not a model: KFoldTuner trains it
        cfg = self.space.config_for(self.base, self.space.values_from(hp.values))
        if "tuner/epochs" in hp.values:  # Hyperband's budget for this trial
            cfg.train.epochs = int(hp.values["tuner/epochs"])
        return cfg


class TfkitFatalError(keras_tuner.errors.FatalError):
    """A user-fixable error inside a trial: stop the search, do not retry."""


def fold_score(result: Mapping[str, Any], name: str) -> float:
    """The objective's value in one fold's summary (as returned by ``train_fold``).

    ``val_<m>`` (or ``<m>``) reads ``result["metrics"][m]``: the metric of the
    fold's best checkpoint on its validation fold. A name equal to the fold's
    monitor (e.g. ``val_loss``) reads ``result["best"]``, the monitored value
    at the best epoch.

    Raises:
        TfkitError: the metric is not reported; the message lists what is.

    Example:
        >>> fold_score({"metrics": {"auc": 0.91}, "monitor": "val_loss", "best": 0.3}, "val_auc")
        0.91
    """
    metrics = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else {}
    short = name[4:] if name.startswith("val_") else name
    for where, key in ((metrics, short), (metrics, name), (result, name)):
        value = where.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    if result.get("monitor") == name and isinstance(result.get("best"), (int, float)):
        return float(result["best"])
    available = [f"val_{k}" for k in sorted(metrics)] + ([str(result["monitor"])] if result.get("monitor") else [])
    raise TfkitError(
        f"--objective {name!r}: the fold reports {available}; pick one of them "
        "(validation metrics come from train.metrics and the task; the monitor from train.monitor)"
    )


class KFoldTuner(BaseTuner):
    """Keras Tuner tuner whose trials are tfkit K-fold training runs.

    ``run_trial`` builds the trial's Config with the hypermodel, trains each
    of ``folds`` with ``train_fn`` into ``<project>/trial_<id>/run`` and returns
    ``{objective: mean fold score, "fold<k>_<objective>": score_k, ...}``.
    The Keras session is cleared and garbage collected after every fold and
    trial; with ``isolate=True`` each trial also runs in its own process, the
    only way to keep memory flat (TF/Keras retain some memory per fitted model).

    Args:
        oracle: a ``keras_tuner.Oracle`` (see :func:`build_oracle`).
        hypermodel: a :class:`SpaceHyperModel` (or any HyperModel whose
            ``build`` returns a Config).
        records: records folder.
        folds: the folds each trial trains and scores.
        manifest: the records' manifest (passed to ``train_fn``).
        train_fn: ``train_fn(cfg, records, fold, out, manifest=...) -> dict``;
            defaults to :func:`tfkit.train.train_fold`.
        directory, project_name: where Keras Tuner keeps its state.
        isolate: train each trial in a fresh spawned process (``train_fn``
            must then be picklable, e.g. a module-level function).

    Example::

        tuner = KFoldTuner(oracle, SpaceHyperModel(cfg, space), "records", folds=[0],
                           directory="out", project_name="search")
        tuner.search()
    """

    def __init__(
        self,
        oracle: Any,
        hypermodel: Any,
        records: str | os.PathLike,
        folds: list[int],
        manifest: Manifest | dict | None = None,
        train_fn: Callable[..., Mapping[str, Any]] | None = None,
        directory: str | os.PathLike | None = None,
        project_name: str = PROJECT,
        isolate: bool = False,
    ) -> None:
        super().__init__(oracle, hypermodel, directory=str(directory), project_name=project_name, overwrite=False)
        self.isolate = isolate
        self.records = str(records)
        self.folds = list(folds)
        self.manifest = manifest
        if train_fn is None:
            from tfkit.train import train_fold as train_fn
        self.train_fn = train_fn

    def trial_run_dir(self, trial_id: str) -> Path:
        """The training run folder of one trial."""
        return Path(self.project_dir) / f"trial_{trial_id}" / "run"

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        name = self.oracle.objective.name
        start = time.time()
        try:
            cfg = resolve_run_config(self.hypermodel.build(trial.hyperparameters), self.manifest)
            run_dir = self.trial_run_dir(trial.trial_id)
            run_dir.mkdir(parents=True, exist_ok=True)
            # A trial's folder is a tfkit run: `tfkit predict --run` works on it.
            run = RunFolder(run_dir)
            run.write_config(cfg)
            if self.manifest is not None:
                run.write_manifest(self.manifest)
            if self.isolate:
                results = _run_isolated(self.train_fn, cfg, self.records, self.folds, run_dir, self.manifest)
            else:
                results = _train_folds(self.train_fn, cfg, self.records, self.folds, run_dir, self.manifest)
            scores = {k: fold_score(r, name) for k, r in zip(self.folds, results)}
        except TfkitError as e:
            raise TfkitFatalError(str(e)) from e
        score = sum(scores.values()) / len(scores)
        write_json(run_dir / _TRIAL_FILE, {
            "trial_id": trial.trial_id, "tuner_id": self.tuner_id, "objective": name, "score": score,
            "fold_scores": {str(k): v for k, v in scores.items()}, "seconds": round(time.time() - start, 3),
            "epochs": cfg.train.epochs,
        })
        return {name: score, **{f"fold{k}_{name}": v for k, v in scores.items()}}

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)
        _release_memory()
        if str(trial.status) not in ("COMPLETED", "TrialStatus.COMPLETED"):
            last = (trial.message or "").strip().splitlines()[-1:] or ["no message"]
            print(f"tfkit tune: trial {trial.trial_id} {trial.status}: {last[0]}", file=sys.stderr)

    def save_model(self, trial_id: str, model: Any, step: int = 0) -> None:
        """Models are saved by ``train_fn`` in the trial's run folder."""

    def load_model(self, trial: Any) -> Any:
        """Not supported: load ``trial_<id>/run/fold<k>/model.keras`` with tfkit.predict."""
        raise TfkitError("KFoldTuner keeps models in each trial's run folder; use tfkit predict --run on it")


def _train_folds(train_fn: Callable[..., Mapping[str, Any]], cfg: Config, records: str, folds: list[int],
                 run_dir: Path, manifest: Manifest | dict | None) -> list[Mapping[str, Any]]:
    results = []
    for k in folds:
        results.append(train_fn(cfg, records, k, run_dir, manifest=manifest))
        _release_memory()
    return results


def default_isolation(environ: Mapping[str, str] | None = None) -> bool:
    """Whether trials run in their own process by default: yes on a CPU machine (memory stays flat);
    no on a TPU VM or beside a GPU, whose device the searching process (a notebook's kernel) may
    already hold: a TPU admits one process, so a trial's process would find it "already in use" and
    train on the host CPU, and a GPU's memory is already mapped (most of it by TensorFlow, 75% by JAX).

    Args:
        environ: environment to read (default ``os.environ``).

    Example:
        >>> default_isolation({"TPU_ACCELERATOR_TYPE": "v5litepod-8"})
        False
    """
    from tfkit.backend import gpu_attached, tpu_attached

    return not (tpu_attached(environ) or gpu_attached(environ))


def _run_isolated(train_fn: Callable[..., Mapping[str, Any]], cfg: Config, records: str, folds: list[int],
                  run_dir: Path, manifest: Manifest | dict | None) -> list[Mapping[str, Any]]:
    """Train the folds in a fresh (spawned) process that exits afterwards.

    TF/Keras keep about 20 MiB per trained model after ``clear_session()``
    (60 MiB with XLA; measured in bench/bench_tune_memory.py), so only a
    process per trial keeps a long search flat. A TfkitError in the child
    comes back as a TfkitError with its message.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        return pool.submit(_train_folds, train_fn, cfg, records, folds, run_dir, manifest).result()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: a killed search must not leave its trial training on in the background
    (a resumed search would then write the same fold folder twice)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover - no glibc
            pass
    # The parent may have died while this child was still starting, before the
    # death signal was armed: the child would then wait forever on its queue.
    if os.getppid() != parent_pid:
        os._exit(1)


def _release_memory() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


# --------------------------------------------------------------------------- outputs


def _status(trial: Any) -> str:
    return str(getattr(trial.status, "value", trial.status)).replace("TrialStatus.", "")


def trials_table(oracle: Any, space: SearchSpace, directory: str | os.PathLike, folds: list[int]) -> Any:
    """Every trial as a ``pandas.DataFrame`` ranked by score (best first).

    Columns: ``rank`` (completed trials only), ``trial_id``, ``status``,
    ``score``, ``score_fold<k>`` per fold, ``tuner_id``, ``seconds``,
    ``epochs``, then each tuned key (decoded config values).
    """
    import pandas as pd

    name, direction = oracle.objective.name, oracle.objective.direction
    rows = []
    for tid in oracle.start_order:
        trial = oracle.trials[tid]
        row: dict[str, Any] = {"trial_id": tid, "status": _status(trial)}
        done = row["status"] == "COMPLETED"
        row["score"] = trial.score if done else math.nan
        for k in folds:
            mname = f"fold{k}_{name}"
            row[f"score_fold{k}"] = trial.metrics.get_last_value(mname) if done and trial.metrics.exists(mname) else math.nan
        info_path = Path(directory) / PROJECT / f"trial_{tid}" / "run" / _TRIAL_FILE
        info = read_json(info_path) if info_path.is_file() else {}
        row["tuner_id"] = info.get("tuner_id", "")
        row["seconds"] = info.get("seconds", math.nan)
        row["epochs"] = info.get("epochs", math.nan)
        for key, value in space.values_from(trial.hyperparameters.values).items():
            row[key] = json.dumps(value) if isinstance(value, (list, dict)) or value is None else value
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["trial_id", "status", "score"] + [f"score_fold{k}" for k in folds]
                         + ["tuner_id", "seconds", "epochs"] + space.keys)
    if frame.empty:
        frame.insert(0, "rank", [])
        return frame
    completed = frame["status"] == "COMPLETED"
    order = frame[completed].sort_values("score", ascending=direction == "min", kind="stable")
    ranked = pd.concat([order, frame[~completed]])
    ranked.insert(0, "rank", list(range(1, len(order) + 1)) + [None] * int((~completed).sum()))
    ranked["rank"] = ranked["rank"].astype("Int64")
    return ranked.reset_index(drop=True)


def _plot(frame: Any, space: SearchSpace, objective: Any, out: Path) -> list[Path]:
    import numpy as np
    import pandas as pd

    from tfkit.utils import pyplot, save_figure

    plt = pyplot()
    import matplotlib.ticker

    done = frame[frame["status"] == "COMPLETED"].copy()
    done["order"] = [int(t) for t in done["trial_id"]]
    done = done.sort_values("order")
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(done["order"], done["score"], "o", label="trial")
    best = done["score"].cummin() if objective.direction == "min" else done["score"].cummax()
    ax.step(done["order"], best, where="post", label="best so far")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(objective.name)
    ax.set_title(f"{objective.name} ({objective.direction}) by trial")
    ax.legend()
    fig.tight_layout()
    path = out / "score_by_trial.png"
    paths.append(save_figure(fig, path, dpi=100))

    n = len(space.params)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, p in zip(axes.flat, space.params):
        values = done[p.key]
        if p.kind in ("int", "float"):
            ax.plot(pd.to_numeric(values), done["score"], "o")
            if p.log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
                ticks = np.geomspace(float(p.min), float(p.max), 4)
                ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
        else:
            labels = [str(v) for v in (json.dumps(v) if p.encoded else v for v in p.values)] if p.kind == "choice" \
                else ["False", "True"]
            pos = {lab: i for i, lab in enumerate(labels)}
            x = np.array([pos.get(str(v), -1) for v in values], dtype=float)
            jitter = (np.random.default_rng(0).random(len(x)) - 0.5) * 0.2
            ax.plot(x + jitter, done["score"], "o")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlabel(p.key)
        ax.set_ylabel(objective.name)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "score_vs_hparams.png"
    paths.append(save_figure(fig, path, dpi=100))
    return paths


def write_outputs(tuner: KFoldTuner, space: SearchSpace, base: Config, out: str | os.PathLike) -> dict[str, Any]:
    """Write trials.csv, best_config.yaml, best.json and the plots from the tuner's oracle.

    Returns:
        Summary dict: ``best_trial``, ``best_score``, ``best_values``,
        ``n_trials``, ``n_completed``, ``objective``, ``direction`` and the paths.

    Raises:
        TfkitError: no trial completed (the message carries the last failure).
    """
    out = Path(out)
    oracle = tuner.oracle
    frame = trials_table(oracle, space, out, tuner.folds)
    write_csv(out / "trials.csv", frame)
    completed = frame[frame["status"] == "COMPLETED"]
    summary: dict[str, Any] = {
        "objective": oracle.objective.name, "direction": oracle.objective.direction,
        "n_trials": len(frame), "n_completed": len(completed), "trials_csv": str(out / "trials.csv"),
    }
    if completed.empty:
        failed = [oracle.trials[t] for t in oracle.start_order if oracle.trials[t].message]
        last = (failed[-1].message.strip().splitlines()[-1] if failed else "no trial ran")
        raise TfkitError(f"tune: no trial completed in {out} (last failure: {last})")
    best = oracle.trials[str(completed.iloc[0]["trial_id"])]
    # as the trial's run folder saved it: metrics and monitor concrete for the records' task
    cfg = resolve_run_config(tuner.hypermodel.build(best.hyperparameters), tuner.manifest)
    save_config(cfg, out / "best_config.yaml")
    best_values = space.values_from(best.hyperparameters.values)
    summary.update(
        best_trial=best.trial_id, best_score=float(best.score), best_values=best_values,
        best_fold_scores={c[len("score_fold"):]: float(completed.iloc[0][c]) for c in frame if c.startswith("score_fold")},
        best_config=str(out / "best_config.yaml"), best_run=str(tuner.trial_run_dir(best.trial_id)),
    )
    write_json(out / "best.json", summary)
    summary["plots"] = [str(p) for p in _plot(frame, space, oracle.objective, out)]
    return summary


# --------------------------------------------------------------------------- entry point


def _role() -> str:
    from keras_tuner.src.distribute import utils as dist_utils

    if not dist_utils.has_chief_oracle():
        return "local"
    return "chief" if dist_utils.is_chief_oracle() else "worker"


def _search_spec(space: SearchSpace, cfg: Config, obj: Any, tuner_name: str, folds: list[int],
                 records: str | os.PathLike) -> dict[str, Any]:
    """What a search is started with (saved as ``tune_spec.json``; a resume must match it)."""
    spec = {
        "space": {"params": {p.key: dataclasses.asdict(p) for p in space.params}, "fixed": dict(space.fixed)},
        "base": config_to_dict(cfg), "objective": [obj.name, obj.direction], "tuner": tuner_name,
        "folds": folds, "records": str(Path(records).resolve()),
    }
    spec["base"]["train"].pop("verbose", None)  # printing more or less does not change the search
    return json.loads(json.dumps(spec))  # tuples -> lists, as read back from disk


def _claim_folder(out: Path, spec: dict[str, Any], role: str, overwrite: bool) -> None:
    """Start the tuning folder (chief or single process) or wait for it (worker); refuse a different search."""
    state_path = out / _STATE_FILE
    if role != "worker":
        if overwrite or not state_path.is_file():
            prepare_out_dir(out, overwrite=overwrite, what="tuning folder")
            write_json(state_path, spec)
    else:
        # The chief initialises the folder; a worker started first waits for it.
        waited = time.time()
        while not state_path.is_file():
            if time.time() - waited > 3600:
                raise TfkitError(f"worker: the chief never initialised {out} (no {_STATE_FILE} after an hour)")
            time.sleep(0.5)
    if state_path.is_file():
        changed = _changed_settings(read_json(state_path), spec)
        if changed:
            raise TfkitError(
                f"{out} holds a search started with different {', '.join(changed)}; "
                "re-run with the original settings to resume, choose another --out, or pass --overwrite"
            )


def _changed_settings(saved: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The settings that differ from the saved search; config keys by name (``train.lr``), not ``base``."""
    changed = sorted(k for k in spec if saved.get(k) != spec[k])
    if "base" in changed:
        old, new = saved.get("base") or {}, spec["base"]
        changed.remove("base")
        changed += sorted(f"{sec}.{key}" for sec in new for key in new[sec]
                          if (old.get(sec) or {}).get(key, "<missing>") != new[sec][key])
    return changed


def _search(kt: KFoldTuner) -> None:
    """Run the search; Keras Tuner's fatal and too-many-failures errors become one-line TfkitErrors."""
    try:
        kt.search()
    except keras_tuner.errors.FatalError as e:
        cause = e.__cause__ if isinstance(e.__cause__, TfkitError) else None
        raise TfkitError(str(cause or e)) from e
    except RuntimeError as e:  # Keras Tuner's "too many consecutive failed trials"
        if "failed" not in str(e):
            raise
        raise TfkitError(f"tune: {str(e).splitlines()[0]}") from e


def _trials_run_by(out: Path, tuner_id: str) -> list[str]:
    """Ids of the trials this tuner (a worker) ran, from each trial's ``tfkit_trial.json``."""
    ran = []
    for info in sorted((out / PROJECT).glob(f"trial_*/run/{_TRIAL_FILE}")):
        data = read_json(info)
        if data.get("tuner_id") == tuner_id:
            ran.append(data["trial_id"])
    return ran


def tune(
    cfg: Config,
    space: str | os.PathLike | Mapping[str, Any] | SearchSpace,
    records: str | os.PathLike,
    out: str | os.PathLike,
    tuner: str | Any = DEFAULT_TUNER,
    max_trials: int = 10,
    objective: str | None = None,
    fold: int = 0,
    cv: bool = False,
    overwrite: bool = False,
    train_fn: Callable[..., Mapping[str, Any]] | None = None,
    isolate: bool | None = None,
) -> dict[str, Any]:
    """Search hyperparameters over the K-fold setup; re-running resumes.

    Args:
        cfg: base training config (the space's keys are applied on top).
        space: search-space YAML path, mapping, or :class:`SearchSpace`.
        records: train records folder.
        out: tuning folder. Re-running with the same arguments continues the
            search (finished trials are kept; an interrupted one runs again;
            a larger ``max_trials`` extends it).
        tuner: ``"random"``, ``"bayesian"``, ``"hyperband"`` or a
            ``keras_tuner.Oracle`` instance.
        max_trials: total trial budget (over all runs of this search).
        objective: metric name, direction inferred (``*loss*`` -> min) or
            given as ``"val_auc:max"``; ``None``: the run's monitor (``train.monitor``,
            by task: val_auc, val_log_loss, ...). It must be a metric the trials report.
        fold: the fold scored when ``cv`` is false.
        cv: score each trial by the mean over ``cfg.train.folds`` (default: all folds).
        overwrite: discard an existing search in ``out`` and start afresh.
        train_fn: replaces :func:`tfkit.train.train_fold` (same signature;
            picklable when ``isolate``).
        isolate: run each trial in a fresh process (memory stays flat over
            long searches; costs one TensorFlow import per trial). False
            trains in this process, after ``clear_session()`` + ``gc``.
            ``None``: :func:`default_isolation` (a process per trial on a CPU
            machine, this process on a TPU VM or beside a GPU).

    Returns:
        On the chief (or a single process): the summary of
        :func:`write_outputs`. On a worker: ``{"role": "worker", "trials": [...]}``
        listing the trial ids it ran.

    Raises:
        TfkitError: bad space/objective/fold, a search in ``out`` started with
            different settings, or no trial completed.

    Example::

        tune(load_config("base.yaml"), "space.yaml", "records", "tune", tuner="hyperband",
             max_trials=30, objective="val_loss", cv=True)
    """
    if int(max_trials) < 1:
        raise TfkitError(f"--trials: expected at least 1 trial, got {max_trials}")
    check_out_dir(out, "--out")
    search_space = space if isinstance(space, SearchSpace) else load_space(space)
    manifest = Manifest.from_dict(check_records(records))
    resolved = resolve_run_config(cfg, manifest)
    obj = parse_objective(objective or resolved.train.monitor)
    check_objective(obj.name, resolved.train.metrics, resolved.train.monitor)
    n_folds = manifest.require_folds()
    folds = (list(cfg.train.folds) if cfg.train.folds is not None else list(range(n_folds))) if cv else [fold]
    manifest.check_folds(folds, option="--fold/train.folds")
    validate(cfg, manifest)  # the base config, before the tuning folder exists (each trial's is checked again)
    search_space.check(cfg, manifest)

    if isolate is None:
        isolate = default_isolation()
    role = _role()
    out = Path(out)
    tuner_name = tuner if isinstance(tuner, str) else type(tuner).__name__
    spec = _search_spec(search_space, cfg, obj, tuner_name, folds, records)
    _claim_folder(out, spec, role, overwrite)

    oracle = tuner if not isinstance(tuner, str) else build_oracle(
        tuner, obj, max_trials, seed=cfg.train.seed, max_epochs=cfg.train.epochs
    )
    oracle.max_trials = max_trials  # not part of the saved state: a re-run may raise the budget
    kt = KFoldTuner(
        oracle, SpaceHyperModel(cfg, search_space), records, folds, manifest=manifest, train_fn=train_fn,
        directory=out, project_name=PROJECT, isolate=isolate,
    )
    _search(kt)
    if role == "worker":
        return {"role": "worker", "tuner_id": kt.tuner_id, "trials": _trials_run_by(out, kt.tuner_id)}
    summary = write_outputs(kt, search_space, cfg, out)
    summary["role"] = role
    print(
        f"tfkit tune: {summary['n_completed']}/{summary['n_trials']} trials completed; best trial "
        f"{summary['best_trial']} {obj.name}={summary['best_score']:.6g} -> {summary['best_config']}"
    )
    return summary
