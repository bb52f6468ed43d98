"""K-fold training: one model per fold, out-of-fold predictions, a CV score you can trust.

For every fold ``k`` a model is trained on the shards of the other folds and
validated on fold ``k``'s shards only (shard files hold one fold each, so the
split is decided by file names, never by a filter that could leak). The best
epoch (``cfg.train.monitor``) is kept; its predictions on fold ``k`` become
fold ``k``'s rows of ``oof.csv``, and ``cv.json`` is computed from ``oof.csv``
alone, so anyone can recompute it.

This module holds the orchestration (the fold loop, phases, resume, OOF, CV);
the mechanics live beside it: :mod:`tfkit.optim` (optimizers, layer-wise LR),
:mod:`tfkit.train_step` (the SAM / on-device augmentation train step),
:mod:`tfkit.callbacks` (resume and best checkpoints), :mod:`tfkit.swa` (SWA,
``bn_update``) and :mod:`tfkit.lr_find` (the LR finder).

Run folder::

    RUN/config.yaml  RUN/manifest.json  RUN/oof.csv  RUN/cv.json  RUN/curves.png
    RUN/fold{k}/model.keras  history.csv  done.json  logs/ (TensorBoard)
                             done.json["runtime"]: backend, devices, library versions (tfkit.strategy.runtime_info)
    RUN/fold{k}/resume/      last epoch's weights + optimizer state (deleted when the fold is done)

Resume: re-running the same command skips folds with ``done.json`` and continues
an unfinished fold from its last finished epoch (model weights, optimizer
moments, EMA, best score and early-stopping patience are restored).

Training phases: ``freeze_epochs`` (backbone frozen) and ``progressive``
(``[[epoch, size], ...]``) cut the epochs into phases. Each phase rebuilds the
model at its image size, copies the weights over (conv nets with global pooling
have size-independent weights) and starts a fresh optimizer whose schedule
continues from the phase's first step; the optimizer's moments restart at a
phase boundary, as they do in the usual "unfreeze and recompile" recipe.

SWA (``swa_epochs`` > 0, see :mod:`tfkit.swa`): the average of the last epochs,
with recomputed BatchNorm statistics, is always the fold's ``model.keras`` and
its OOF predictions; the best-epoch checkpoint is kept as ``best.keras`` and both
models' validation metrics are in ``done.json`` and ``cv.json`` (``metrics``
vs ``swa.best_checkpoint_metrics``).

Example::

    cfg = load_config("tfkit/configs/digits.yaml")
    cv = train(cfg, "records", "runs/digits")
    cv["metrics"]["accuracy"]   # 0.993
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
import yaml

from tfkit import data as tfdata
from tfkit import records as tfrec
from tfkit.backend import select_backend
from tfkit.batchnorm import PreciseBN, precise_bn_batches, precise_bn_enabled, trainable_batchnorms
from tfkit.callbacks import BestCheckpoint, ResumeCheckpoint, ResumeCommit, ResumeFolder, SwaCheckpoint, write_keras_model
from tfkit.config import Config, config_to_dict
from tfkit.distill import TrainTargets, prepare_targets
from tfkit.fold_setup import FoldSetup
from tfkit.losses import class_weights
from tfkit.lr_find import lr_find
from tfkit.manifest import Manifest, resolve_task
from tfkit.metadata import describe as describe_metadata
from tfkit.models import load_model, predict_array
from tfkit.optim import create_optimizer, layer_multipliers, offset_schedule
from tfkit.preflight import check_image_size, check_labels, check_records, check_run_out
from tfkit.run import (FoldFiles, RunFolder, oof_frame, oof_metrics, oof_probabilities, primary_metric, recompute_cv,
                       recompute_cv_frame)
from tfkit.checks import resolve_run_config, validate
from tfkit.scheduler import create_schedule, phases, schedule_callbacks
from tfkit.strategy import gradient_replicas, get_strategy, runtime_info
from tfkit.swa import SWA_BN_BATCHES, SwaAverage, bn_update, swa_start
from tfkit.targets import fit_thresholds, output_names
from tfkit.train_step import TrainingModel
from tfkit.utils import TfkitError, pyplot, save_figure, seed_everything, write_json

__all__ = ["train", "train_fold", "lr_find", "oof_frame", "oof_probabilities", "recompute_cv", "recompute_cv_frame",
           "TrainingModel", "bn_update", "FoldSetup", "phases"]

# train.backend: a fold may resume on the other backend (the weights and optimizer state are portable)
_IGNORED_ON_RESUME = {("train", "folds"), ("train", "verbose"), ("train", "backend")}


# --------------------------------------------------------------------------- one fold


def train_fold(cfg: Config, records: str | os.PathLike, fold: int, out: str | os.PathLike,
               manifest: Manifest | dict | None = None, callbacks: Sequence[Any] = (), strategy: Any = None,
               targets: TrainTargets | None = None) -> dict:
    """Train fold ``fold``: fit on the other folds' shards, validate on its own.

    Args:
        cfg: resolved config.
        records: train records folder (shards + manifest.json).
        fold: the validation fold.
        out: run folder; writes ``out/fold{fold}/``.
        manifest: the records' manifest (read when ``None``).
        callbacks: extra Keras callbacks (run after tfkit's own, e.g. for tests or logging).
        strategy: the distribution strategy (detected when ``None``).
        targets: the run's teacher targets / pseudo rows (:func:`tfkit.distill.prepare_targets`;
            prepared from ``cfg`` when ``None``).

    Returns:
        The fold's summary (also ``fold{k}/done.json``): metrics on its validation
        fold, best epoch, epochs run, image size of the best checkpoint, seconds.

    Example::

        summary = train_fold(cfg, "records", 0, "runs/r1")
    """
    run = RunFolder(out)
    if run.fold(fold).done.is_file():
        return run.done(fold)
    setup = FoldSetup.create(cfg, records, fold, manifest, strategy, targets=targets)
    fold, cfg = setup.fold, setup.cfg  # the config with concrete metrics and monitor
    files = run.fold(fold)
    files.dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    steps = setup.train_steps()
    if steps < 1:
        raise TfkitError(f"fold {fold}: the training folds hold fewer examples than one batch of {setup.global_batch}")
    cw = _class_weight(setup, records)
    if setup.metadata is not None:
        write_json(files.metadata, setup.metadata)
        print(f"fold {fold}: {describe_metadata(setup.metadata)}")
    resume = ResumeFolder(files.resume)
    state = resume.load_state()
    resumed_from = state["epoch"]
    if resumed_from and cfg.train.verbose:
        print(f"fold {fold}: resuming after epoch {resumed_from}")
    start = swa_start(cfg.train)
    swa = resume.load_swa(state, start) if start is not None else None
    if state["epoch"] == 0:
        files.best.unlink(missing_ok=True)  # a stale one from a deleted attempt

    seed_everything(cfg.train.seed + fold)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    base_schedule = create_schedule(cfg.train, steps, cfg.train.epochs)
    fit_args = dict(steps_per_epoch=steps, validation_steps=-(-setup.count([fold]) // setup.global_batch),
                    class_weight=cw, verbose=cfg.train.verbose, shuffle=False)  # tf.data shuffles; Keras would only warn
    plan = phases(cfg)
    inner = None
    bn_log: dict = {"batches": 0, "seconds": []}  # precise-BN passes of this run of the fold
    for phase in plan:
        if phase["end"] <= state["epoch"] or state.get("stopped"):
            continue
        wrapper, inner = _build_phase(setup, phase, inner, state, resume, offset_schedule(base_schedule, phase["start"] * steps))
        # The validation set is repeated with exactly validation_steps batches per pass: Keras keeps one
        # validation iterator across epochs, so a finite one would run dry (and a fresh one per epoch
        # pays the iterator-destroy stall).
        precise = _precise_bn(setup, inner, phase["size"], steps)
        wrapper.fit(setup.dataset(phase["size"], "train", deterministic=cfg.train.deterministic),
                    validation_data=setup.dataset(phase["size"], "eval", folds=[fold]).repeat(),
                    epochs=phase["end"], initial_epoch=state["epoch"],
                    callbacks=[*_fold_callbacks(setup, files, resume, inner, state, phase, swa, precise), *callbacks],
                    **fit_args)
        if precise is not None:
            bn_log.update(batches=precise.max_batches, seconds=bn_log["seconds"] + precise.seconds)
        if state.get("stopped"):
            break

    index = tfdata.read_index(records, folds=[fold], manifest=setup.manifest)
    if set(index["fold"].unique()) != {fold}:
        raise TfkitError(f"fold {fold}: validation rows carry folds {sorted(index['fold'].unique())}")
    size, swa_info = int(state["best_size"] or cfg.data.image_size), None
    if swa is not None and swa.count:
        size, swa_info = _finish_swa(setup, files, swa, plan, state, index, best_size=size)
    if not files.model.is_file():
        raise TfkitError(f"fold {fold}: no checkpoint was written (monitor {cfg.train.monitor} never finite)")
    frame, metrics = _evaluate(setup, files.model, size, index)
    run.write_oof(frame, fold)
    summary = dict(fold=fold, metrics=metrics, best_epoch=state["best_epoch"], best=state["best"],
                   monitor=cfg.train.monitor, epochs_run=state["epoch"], image_size=size, swa=swa_info,
                   precise_bn=dict(batches=bn_log["batches"], passes=len(bn_log["seconds"]),
                                   seconds_per_pass=round(float(np.median(bn_log["seconds"])), 4)
                                   if bn_log["seconds"] else None),
                   n_train=setup.count(setup.train_folds), n_val=int(len(index)),
                   n_pseudo=setup.targets.n_pseudo if setup.targets is not None else 0,
                   replicas=setup.strategy.num_replicas_in_sync, runtime=runtime_info(setup.strategy),
                   resumed_from_epoch=resumed_from, seconds=round(time.time() - t_start, 1))
    run.write_done(fold, summary)
    resume.remove()
    keras.backend.clear_session()
    return summary


def _class_weight(setup: FoldSetup, records: str | os.PathLike) -> dict | None:
    """Keras ``class_weight`` of ``train.class_weight=balanced`` from the training folds' labels (else None)."""
    mode = setup.cfg.train.class_weight
    if not mode:
        return None
    if mode != "balanced":
        raise TfkitError(f"train.class_weight: expected null or balanced, got {mode!r}")
    if setup.task not in ("binary", "multiclass"):
        raise TfkitError(f"train.class_weight=balanced weighs single-label classes; the task is {setup.task} "
                         "(for multi-label imbalance use train.loss=asl or focal)")
    labels = tfdata.read_index(records, folds=setup.train_folds, manifest=setup.manifest)["label"].to_numpy()
    return class_weights(labels, setup.num_classes)


def _build_phase(setup: FoldSetup, phase: dict, previous: keras.Model | None, state: dict, resume: ResumeFolder,
                 schedule: Any) -> tuple[TrainingModel, keras.Model]:
    """The phase's model (weights from the previous phase or the resume folder) in a compiled wrapper."""
    t = setup.cfg.train
    with setup.strategy.scope():
        inner = setup.build_model(phase["size"])
        if previous is not None:
            inner.set_weights(previous.get_weights())
        elif state["epoch"] > 0:
            inner.load_weights(resume.weights(state["epoch"]))
        if phase["frozen"]:
            setup.freeze_backbone(inner)
        mult = layer_multipliers(inner, t.layer_lr_decay, t.layer_lr_groups) if not phase["frozen"] else {}
        optimizer = create_optimizer(t, schedule, mult)
        wrapper = setup.wrap(inner, optimizer, phase["size"], seed=setup.cfg.data.seed + 1000 * setup.fold)
        optimizer.build(wrapper.trainable_variables)
        if state["epoch"] > phase["start"] and state.get("phase") == phase["index"]:
            resume.restore_optimizer(optimizer, state["epoch"])
    return wrapper, inner


def _fold_callbacks(setup: FoldSetup, files: FoldFiles, resume: ResumeFolder, inner: keras.Model, state: dict,
                    phase: dict, swa: SwaAverage | None, precise: PreciseBN | None) -> list:
    """tfkit's callbacks of one phase, in the order :mod:`tfkit.callbacks` describes."""
    t = setup.cfg.train
    cbs: list = [ResumeCheckpoint(resume, files.history, inner, state, phase)]
    if t.ema > 0:
        cbs.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if precise is not None:  # after the EMA swap: its on_test_begin sees the weights that get validated
        cbs.append(precise)
    cbs.append(BestCheckpoint(files.model, inner, state, t.monitor, t.early_stopping, phase["size"]))
    if swa is not None:
        cbs.append(SwaCheckpoint(swa, resume, inner, state))
    return [*cbs, ResumeCommit(resume, state),
            keras.callbacks.TensorBoard(str(files.logs), write_graph=False, profile_batch=0),
            *schedule_callbacks(t)]


def _precise_bn(setup: FoldSetup, inner: keras.Model, size: int, steps: int) -> PreciseBN | None:
    """The phase's precise-BN callback (``train.precise_bn``), or None (off, or no trainable BatchNorm)."""
    bns = trainable_batchnorms(inner)
    if not bns or not precise_bn_enabled(setup.cfg.train.precise_bn, steps, max(b.momentum for b in bns)):
        return None
    batches = precise_bn_batches(setup.count(setup.train_folds), setup.global_batch)
    return PreciseBN(setup.statistics_batches(size).repeat(), batches)


def _evaluate(setup: FoldSetup, path: Path, size: int, index: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """OOF rows and validation metrics of the saved model at ``path`` on the held-out fold."""
    model = load_model(path, f"fold {setup.fold} model")
    proba = predict_array(model, setup.dataset(size, "predict", folds=[setup.fold]))
    proba = proba[: len(index)]  # the padded rows of the last batch
    if len(index) != len(proba):
        raise TfkitError(f"fold {setup.fold}: {len(proba)} predictions for {len(index)} validation rows")
    frame = oof_frame(index, proba, setup.classes, setup.task)
    return frame, oof_metrics(frame, setup.classes, setup.task, setup.cfg.train.metrics)


def _finish_swa(setup: FoldSetup, files: FoldFiles, swa: SwaAverage, plan: list[dict], state: dict,
                index: pd.DataFrame, best_size: int) -> tuple[int, dict]:
    """Write the SWA model (BatchNorm recomputed) as model.keras, keeping the best epoch as best.keras.

    Returns:
        The SWA model's image size and the ``swa`` entry of ``done.json``.
    """
    # SWA always becomes model.keras (it is what was asked for); the best epoch stays as best.keras.
    # The rename happens once, so a kill after it and a re-run still evaluate the true best checkpoint.
    model, best = files.model, files.best
    if model.is_file() and not best.is_file():
        os.replace(model, best)
    last = state["epoch"] - 1
    phase = next(p for p in plan if p["start"] <= last < p["end"])
    size = int(phase["size"])
    with setup.strategy.scope():
        swa_model = setup.build_model(size)
        if phase["frozen"]:
            setup.freeze_backbone(swa_model)
        swa.assign_to(swa_model)
        n_bn = bn_update(swa_model, setup.statistics_batches(size), max_batches=SWA_BN_BATCHES)
    write_keras_model(swa_model, model)
    best_metrics = _evaluate(setup, best, best_size, index)[1] if best.is_file() else None
    return size, dict(swa.info(), bn_batches=n_bn, image_size=size, best_checkpoint_metrics=best_metrics)


# --------------------------------------------------------------------------- all folds


def _check_resume_config(cfg: Config, run: RunFolder) -> None:
    if not run.config_path.is_file():
        return
    with open(run.config_path, encoding="utf-8") as f:
        old = yaml.safe_load(f) or {}
    new = config_to_dict(cfg)
    diffs = []
    for section, values in new.items():
        for key, value in (values or {}).items():
            if (section, key) in _IGNORED_ON_RESUME:
                continue
            before = (old.get(section) or {}).get(key, "<missing>")
            if before != value and not (isinstance(value, tuple) and list(value) == before):
                diffs.append(f"{section}.{key}: {before!r} -> {value!r}")
    if diffs:
        raise TfkitError(f"{run.path} was trained with another config ({'; '.join(diffs[:3])}); "
                         "use a new --out or restore the config")


def train(cfg: Config, records: str | os.PathLike, out: str | os.PathLike,
          folds: Sequence[int] | None = None, callbacks: Sequence[Any] = ()) -> dict:
    """Train every requested fold (skipping finished ones), then write oof.csv, cv.json and curves.png.

    Args:
        cfg: resolved config (``tfkit.config.load_config``).
        records: train records folder.
        out: run folder; re-running the same command resumes.
        folds: folds to train (default ``cfg.train.folds``, else all).
        callbacks: extra Keras callbacks passed to every fold's ``fit``.

    Returns:
        The ``cv.json`` dict: ``metrics`` (out-of-fold over every finished fold),
        ``folds`` (per fold), ``primary`` (the headline metric's name), ``task``.

    Example::

        cv = train(load_config("tfkit/configs/digits.yaml"), "records", "runs/d")
    """
    select_backend(cfg.train.backend)  # Keras is imported: this checks it runs on the backend asked for
    run = RunFolder(out)
    manifest = Manifest.from_dict(check_records(records))  # shards as the manifest lists them, sha256 included
    if folds is None:
        folds = cfg.train.folds if cfg.train.folds is not None else range(manifest.require_folds())
    chosen = manifest.check_folds(folds)
    if not chosen:
        raise TfkitError("--folds: no fold given (expected e.g. 0,2; default every fold)")
    strategy = get_strategy()
    cfg = resolve_run_config(cfg, manifest)  # metrics and monitor by task: the run folder keeps concrete names
    validate(cfg, manifest, replicas=gradient_replicas(strategy))  # before the run folder exists
    check_run_out(out, manifest, records)  # never into a folder that is not a run, nor a run of other records
    check_image_size(records, manifest)
    if manifest.kind == "single":  # tag and target records have no class index per row to check
        check_labels(tfdata.read_index(records, manifest=manifest)["label"], manifest, records)
    targets = prepare_targets(cfg, records, manifest, chosen, out=out)  # teacher / pseudo checked before any work
    run.path.mkdir(parents=True, exist_ok=True)
    _check_resume_config(cfg, run)
    run.write_config(cfg)
    run.write_manifest(manifest)
    t0 = time.time()
    for k in chosen:
        train_fold(cfg, records, k, out, manifest=manifest, callbacks=callbacks, strategy=strategy, targets=targets)
    cv = _write_cv(cfg, run, manifest)
    _plot_curves(run)
    _print_summary(cv, time.time() - t0)
    return cv


def _write_cv(cfg: Config, run: RunFolder, manifest: Manifest) -> dict:
    done = run.trained_folds(with_models=False)
    oof = pd.concat([run.read_oof(k) for k in done], ignore_index=True)
    if oof["id"].duplicated().any():
        raise TfkitError(f"{run.path}: id {oof['id'][oof['id'].duplicated()].iloc[0]!r} is predicted by two folds")
    run.write_oof(oof)
    task = resolve_task(cfg.model.task, manifest=manifest)
    names = output_names(manifest, task)
    cv = recompute_cv_frame(oof, names, task, names=cfg.train.metrics)
    chosen = fit_thresholds(oof, names, task, cfg.train.metrics)
    if chosen:
        # Fitted on every fold's OOF rows: what predict applies to the test set.
        run.write_thresholds(dict(task=task, outputs=names, **chosen))
    for k in done:
        info = run.done(k)
        cv["folds"][str(k)].update(best_epoch=info["best_epoch"], epochs_run=info["epochs_run"],
                                   seconds=info["seconds"], n_val=info["n_val"])
        if info.get("swa"):
            cv["folds"][str(k)]["swa"] = info["swa"]
    cv.update(primary=primary_metric(cfg.train.metrics, cv["metrics"]), task=task, n_folds_trained=len(done),
              n_folds=manifest.n_folds)
    run.write_cv(cv)
    return cv


def _print_summary(cv: dict, seconds: float) -> None:
    names = list(cv["metrics"])
    head = f"{'fold':>5} {'epochs':>6} {'best':>5} " + " ".join(f"{n:>9}" for n in names) + f" {'time_s':>8}"
    print(head)
    for k, row in cv["folds"].items():
        print(f"{k:>5} {row.get('epochs_run', ''):>6} {row.get('best_epoch', ''):>5} "
              + " ".join(f"{row.get(n, float('nan')):>9.4f}" for n in names) + f" {row.get('seconds', 0):>8.1f}")
    print(f"{'oof':>5} {'':>6} {'':>5} " + " ".join(f"{cv['metrics'][n]:>9.4f}" for n in names) + f" {seconds:>8.1f}")
    p = cv.get("primary")
    if p:
        print(f"CV {p}: {cv['metrics'][p]:.4f} ({cv['n_folds_trained']}/{cv['n_folds']} folds)")


def _plot_curves(run: RunFolder) -> Path | None:
    plt = pyplot()
    hist = run.histories()
    if not hist:
        return None
    metric_cols = sorted({c[4:] for h in hist.values() for c in h.columns if c.startswith("val_") and c != "val_loss"})
    panels = ["loss", *metric_cols[:3]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels):
        for k, h in hist.items():
            x = h["epoch"] + 1
            line = None
            if name in h:
                (line,) = ax.plot(x, h[name], "--", alpha=0.7)
            if f"val_{name}" in h:
                ax.plot(x, h[f"val_{name}"], "-", color=line.get_color() if line else None, label=f"fold {k}")
        ax.set_title(f"{name} (dashed: train, solid: val)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, run.curves_path, dpi=100)

