"""Knowledge distillation from another run's OOF predictions, and pseudo-labels from a submission.

**Teacher** (``train.teacher: RUN``, ``train.teacher_weight`` = w, ``train.temperature`` = T).
Every training row's target becomes::

    target = (1 - w) * onehot(label) + w * softmax(log(p_teacher) / T)

where ``p_teacher`` is the row's line of the teacher's ``RUN/oof.csv``. The
temperature acts on the *stored probabilities*: they are turned back into
log-probabilities (clipped at 1e-7), divided by T and renormalised, i.e.
``p**(1/T) / sum(p**(1/T))``; this equals ``softmax(logits / T)`` of the
teacher's logits because a softmax is invariant to the constant that
``log(softmax(z))`` subtracts. T > 1 softens, T < 1 sharpens, T = 1 keeps them.

Why OOF predictions and not the teacher's fold models: row ``i`` of ``oof.csv``
was predicted by the teacher model of row ``i``'s own fold, which is the one
fold model that never trained on row ``i``. So no soft target was made by a
model that had seen the row it labels. The teacher must have been trained on
the very same records and folds (the same ``folds`` section and shard checksums
in its ``manifest.json``); anything else is refused with a one-line error
naming the mismatch, because the teacher's "OOF" row would then come from a
model that may have trained on it.

What the student's fold ``k`` sees: its training rows (folds != k) carry their
teacher OOF targets; its validation rows (fold k) carry their HARD labels and
no teacher target is ever looked up for them (the per-fold table built by
:meth:`TrainTargets.for_fold` does not even hold fold k's rows), so the
validation metrics, ``oof.csv`` and ``cv.json`` are always against the true
labels. What remains, and is the accepted form of OOF distillation (as in
stacking): the teacher model that labelled a training row of fold j != k was
itself trained on fold k, so fold k's labels reach the student only through
those predictions of training rows. A fully nested teacher (one per student
fold, trained without fold k) would remove that too, at K times the cost.

**Pseudo-labels** (``train.pseudo: SUBMISSION.csv``, ``train.pseudo_records: TEST_RECORDS``,
``train.pseudo_threshold``). The test images whose predicted confidence (max
probability in the submission) is >= the threshold join EVERY fold's training
stream, never a validation stream (validation is read from fold k's train
shards only). They get HARD labels: the submission's argmax class, one-hot,
because a confident prediction is nearly one-hot anyway and a hard label is
the classic recipe (Lee 2013); their true labels, if the test records carry
any, are never read. With a teacher set as well, a pseudo row is treated like
a labelled row whose teacher is the submission: its target mixes the hard
label with the tempered submission probabilities, with the same w and T. The
submission's columns are ``predict.id_column`` plus one probability per class
named as ``tfkit predict`` writes them (the class names or
``predict.label_columns``; a binary submission may hold the positive class
only). Ids present in both the training and the test records are refused.

**In the pipeline** (no ``py_function``): :meth:`TrainTargets.mixer` builds a
``tf.lookup.StaticHashTable`` id -> row index and a constant tensor of the
tempered probabilities; the training stream's per-example map gathers the row
and mixes it with the one-hot label. Mixup and cutmix then mix these soft
targets with the partner image's, exactly as they mix one-hot labels.
:meth:`TrainTargets.add_examples` reads the test shards, keeps the confident
ids (another hash table), replaces their label with the pseudo label and
interleaves them with the training examples before the shuffle.

Life cycle: :func:`prepare_targets` reads and checks everything once, before
any fold trains (``tfkit.train.train``); each fold takes :meth:`TrainTargets.for_fold`.

Example::

    cfg = load_config("tfkit/configs/digits.yaml", ["train.teacher=runs/big", "train.teacher_weight=0.7"])
    train(cfg, "records", "runs/student")      # folds read runs/big/oof.csv as soft targets
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from tfkit import data as tfdata
from tfkit import records as tfrec
from tfkit.config import Config, TrainConfig
from tfkit.manifest import Manifest, resolve_task
from tfkit.run import RunFolder
from tfkit.utils import TfkitError, read_id_csv

__all__ = ["check_distill_config", "temper", "mix_targets", "TrainTargets", "PseudoRows", "prepare_targets", "teacher_table",
           "pseudo_rows", "source_mismatch", "DISTILL_TASKS"]

DISTILL_TASKS = ("binary", "multiclass")
_EPS = 1e-7  # probabilities are clipped here before the log of the temperature
_SUM_TOL = 1e-3  # a row of probabilities must sum to 1 within this


def check_distill_config(t: TrainConfig, task: str | None = None) -> None:
    """One-line errors for out-of-range distillation / pseudo-label keys (run by ``tfkit.checks.validate``).

    Args:
        t: the ``train`` section.
        task: the resolved task (``None`` when the records are not known yet).

    Raises:
        TfkitError: ``teacher_weight`` outside [0, 1], ``temperature`` <= 0, ``pseudo_threshold``
            outside (0, 1], ``pseudo`` without ``pseudo_records`` (or the reverse), or a teacher /
            pseudo-labels asked of a task other than binary or multiclass.

    Example:
        >>> check_distill_config(TrainConfig(teacher="runs/big", temperature=2.0))
        >>> try:
        ...     check_distill_config(TrainConfig(temperature=0.0))
        ... except TfkitError as e:
        ...     print(e)
        train.temperature: expected > 0, got 0.0
    """
    if not 0.0 <= t.teacher_weight <= 1.0:
        raise TfkitError(f"train.teacher_weight: expected a number in [0, 1], got {t.teacher_weight}")
    if not t.temperature > 0.0:
        raise TfkitError(f"train.temperature: expected > 0, got {t.temperature}")
    if not 0.0 < t.pseudo_threshold <= 1.0:
        raise TfkitError(f"train.pseudo_threshold: expected a number in (0, 1], got {t.pseudo_threshold}")
    if (t.pseudo is None) != (t.pseudo_records is None):
        given, missing = ("pseudo", "pseudo_records") if t.pseudo is not None else ("pseudo_records", "pseudo")
        raise TfkitError(f"train.{given} needs train.{missing} (the submission CSV and the test records it predicts)")
    if (t.teacher is not None or t.pseudo is not None) and task is not None and task not in DISTILL_TASKS:
        raise TfkitError(f"train.teacher / train.pseudo: supported for {' and '.join(DISTILL_TASKS)} tasks, "
                         f"the run's task is {task}")


def temper(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Apply a distillation temperature to stored probabilities: ``softmax(log(p) / T)`` per row.

    Args:
        proba: ``[N, C]`` probabilities (rows sum to 1).
        temperature: T > 0.

    Returns:
        float32 ``[N, C]``, rows summing to 1.

    Example:
        >>> temper(np.array([[0.8, 0.2]]), 1.0).astype(float).round(3).tolist()
        [[0.8, 0.2]]
        >>> temper(np.array([[0.8, 0.2]]), 2.0).astype(float).round(3).tolist()  # sqrt(0.8) : sqrt(0.2) = 2 : 1
        [[0.667, 0.333]]
    """
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    q = np.exp(logp)
    return (q / q.sum(axis=1, keepdims=True)).astype(np.float32)


def mix_targets(hard: np.ndarray, soft: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - w) * hard + w * soft``: the student's target (numpy twin of the in-pipeline mix).

    Args:
        hard: one-hot ``[N, C]`` (or ``[N, 1]`` binary labels).
        soft: tempered teacher probabilities of the same shape.
        weight: w in [0, 1].

    Returns:
        float32 targets.

    Example:
        >>> mix_targets(np.array([[1.0, 0.0]]), np.array([[0.6, 0.4]]), 0.5).astype(float).round(6).tolist()
        [[0.8, 0.2]]
    """
    return ((1.0 - weight) * np.asarray(hard, np.float32) + weight * np.asarray(soft, np.float32)).astype(np.float32)


def _check_proba(values: np.ndarray, ids: Sequence[str], what: str, rows_sum_to_one: bool) -> None:
    """One-line error naming the first row whose probabilities are not finite, in [0, 1], summing to 1."""
    bad = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (values > 1).any(axis=1)
    if rows_sum_to_one:
        bad |= np.abs(values.sum(axis=1) - 1.0) > _SUM_TOL
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TfkitError(f"{what}: id {ids[i]!r} has probabilities {values[i].round(4).tolist()} "
                         f"(expected finite values in [0, 1]{' summing to 1' if rows_sum_to_one else ''})")


# --------------------------------------------------------------------------- teacher


def source_mismatch(teacher: Manifest, records: Manifest) -> str | None:
    """What differs between the teacher's training records and the student's, or ``None``.

    Args:
        teacher: the teacher run's ``manifest.json``.
        records: the student's records' manifest.

    Returns:
        A short phrase naming the first mismatch (classes, a ``folds`` key, a shard), or ``None``.

    Example:
        >>> a = Manifest.from_dict({"classes": ["a", "b"], "folds": {"n_folds": 5, "seed": 1}, "shards": []})
        >>> source_mismatch(a, Manifest.from_dict({**a, "folds": {"n_folds": 5, "seed": 2}}))
        'folds.seed: teacher 1, records 2'
    """
    if teacher.classes != records.classes:
        return f"classes: teacher {teacher.classes}, records {records.classes}"
    tf_, rf = teacher.folds, records.folds
    for key in sorted(set(tf_) | set(rf)):
        if tf_.get(key) != rf.get(key):
            return f"folds.{key}: teacher {tf_.get(key)!r}, records {rf.get(key)!r}"
    ts = {s["file"]: s.get("sha256") for s in teacher.shards}
    rs = {s["file"]: s.get("sha256") for s in records.shards}
    for name in sorted(set(ts) | set(rs)):
        if ts.get(name) != rs.get(name):
            where = "only in the records" if name not in ts else "only in the teacher's" if name not in rs else "checksum differs"
            return f"shard {name}: {where}"
    return None


def teacher_table(teacher: str | os.PathLike, manifest: Manifest, index: pd.DataFrame,
                  folds: Sequence[int], temperature: float) -> pd.DataFrame:
    """The teacher's tempered OOF probabilities of the rows of ``folds``, checked against the records.

    Args:
        teacher: the teacher's run folder.
        manifest: the student's records' manifest (must equal the teacher's records).
        index: the records' rows (``tfkit.data.read_index``: id, label, fold).
        folds: the folds whose rows need a teacher target (the student's training folds).
        temperature: T of :func:`temper`.

    Returns:
        Frame with ``id``, ``fold`` (the records' fold, equal to the teacher's fold whose model
        predicted the row) and ``q`` (float32 ``[C]`` tempered probabilities), one row per id.

    Raises:
        TfkitError: not a run folder, other records or folds, a missing / duplicated / misplaced
            prediction, or probabilities that are not probabilities.
    """
    run = RunFolder(teacher)
    run.check()
    mismatch = source_mismatch(Manifest.load(run.manifest_path), manifest)
    if mismatch:
        raise TfkitError(f"train.teacher {run.path}: trained on other records or folds ({mismatch}); "
                         "its OOF predictions would come from models that saw the rows")
    oof = run.read_oof()
    cols = [f"p_{c}" for c in manifest.classes]
    missing = [c for c in cols if c not in oof.columns]
    if missing:
        raise TfkitError(f"train.teacher {run.oof_path}: no column {missing[0]!r} (expected p_<class> for every class)")
    if oof["id"].duplicated().any():
        raise TfkitError(f"train.teacher {run.oof_path}: id {oof['id'][oof['id'].duplicated()].iloc[0]!r} appears twice")
    need = index.loc[index["fold"].isin(list(folds)), ["id", "fold"]]
    rows = need.merge(oof[["id", "fold", *cols]], on="id", how="left", suffixes=("", "_teacher"))
    absent = rows["fold_teacher"].isna()
    if absent.any():
        r = rows[absent].iloc[0]
        raise TfkitError(f"train.teacher {run.oof_path}: no OOF prediction for id {r['id']!r} of fold {int(r['fold'])} "
                         f"({int(absent.sum())} rows missing; train the teacher's fold {int(r['fold'])})")
    moved = rows["fold_teacher"].astype(np.int64) != rows["fold"]
    if moved.any():
        r = rows[moved].iloc[0]
        raise TfkitError(f"train.teacher {run.oof_path}: id {r['id']!r} was predicted by fold {int(r['fold_teacher'])}'s "
                         f"model but the records put it in fold {int(r['fold'])}")
    proba = rows[cols].to_numpy(dtype=np.float64)
    _check_proba(proba, rows["id"].tolist(), f"train.teacher {run.oof_path}", rows_sum_to_one=True)
    return pd.DataFrame({"id": rows["id"].to_numpy(), "fold": rows["fold"].to_numpy(np.int64),
                         "q": list(temper(proba, temperature))})


# --------------------------------------------------------------------------- pseudo-labels


@dataclasses.dataclass(frozen=True)
class PseudoRows:
    """The confident test rows that join every fold's training stream.

    Attributes:
        records: the test records folder.
        manifest: its manifest.
        ids: the confident ids (submission order).
        labels: int64 pseudo labels (the submission's argmax class).
        q: float32 ``[n, C]`` tempered submission probabilities (the teacher part of their targets).
        n_submission: rows in the submission (confident or not).
    """

    records: str
    manifest: Manifest
    ids: np.ndarray
    labels: np.ndarray
    q: np.ndarray
    n_submission: int


def _submission_proba(sub: pd.DataFrame, path: str, classes: list[str], task: str, cfg: Config) -> np.ndarray:
    """``[N, C]`` probabilities from a ``tfkit predict`` submission's columns."""
    names = list(cfg.predict.label_columns) if cfg.predict.label_columns else list(classes)
    if task == "binary" and len(names) == 2 and names[0] not in sub.columns and names[1] in sub.columns:
        p1 = sub[names[1]].to_numpy(dtype=np.float64)  # positive class only, as tfkit predict writes binary
        proba = np.stack([1.0 - p1, p1], axis=1)
    else:
        missing = [c for c in names if c not in sub.columns]
        if missing:
            raise TfkitError(f"train.pseudo {path}: no column {missing[0]!r} (expected {cfg.predict.id_column!r} and "
                             f"one probability column per class: {', '.join(names)})")
        proba = sub[names].to_numpy(dtype=np.float64)
    _check_proba(proba, sub[cfg.predict.id_column].tolist(), f"train.pseudo {path}", rows_sum_to_one=True)
    return proba


def _check_test_records(test: Manifest, manifest: Manifest, cfg: Config, path: str) -> None:
    """The test records must decode and encode like the training records."""
    for key in ("size", "channels", "format"):
        a, b = (test.get("image") or {}).get(key), (manifest.get("image") or {}).get(key)
        if a != b:
            raise TfkitError(f"train.pseudo_records {path}: image {key} {a!r} differs from the training records' {b!r} "
                             "(build both with the same --size / --channels)")
    if test.classes and test.classes != manifest.classes:
        raise TfkitError(f"train.pseudo_records {path}: classes {test.classes} differ from the training records' "
                         "(build the test records with --classes-from the training manifest)")
    for col in cfg.data.metadata or []:
        if test.metadata_spec(col) != manifest.metadata_spec(col):
            raise TfkitError(f"train.pseudo_records {path}: metadata column {col!r} is encoded differently from the "
                             "training records' (build the test records with --classes-from the training manifest)")


def pseudo_rows(cfg: Config, manifest: Manifest, train_ids: Sequence[str], task: str) -> PseudoRows:
    """Read and check ``train.pseudo`` / ``train.pseudo_records``; keep the confident rows.

    Args:
        cfg: the config (``train.pseudo*``, ``train.temperature``, ``predict.id_column`` /
            ``label_columns``, ``data.metadata``).
        manifest: the training records' manifest.
        train_ids: every id of the training records.
        task: binary or multiclass.

    Returns:
        The confident rows (possibly none).

    Raises:
        TfkitError: unreadable CSV, missing columns, bad probabilities, duplicated ids, ids also in
            the training records, confident ids missing from the test records, or test records
            that do not match the training records.
    """
    t, id_col = cfg.train, cfg.predict.id_column
    path, records = str(t.pseudo), str(t.pseudo_records)
    sub = read_id_csv(path, id_col, f"train.pseudo {path}", f"train.pseudo: submission CSV not found: {path}",
                      id_hint=" (predict.id_column)")
    proba = _submission_proba(sub, path, manifest.classes, task, cfg)
    test = Manifest.from_dict(tfrec.load_manifest(records))
    _check_test_records(test, manifest, cfg, records)
    test_ids = set(tfdata.read_index(records, manifest=test)["id"])
    train_set = set(train_ids)
    both = sorted((set(sub[id_col]) | test_ids) & train_set)
    if both:
        raise TfkitError(f"train.pseudo: id {both[0]!r} is in the training records and in the test data "
                         f"({len(both)} such ids); pseudo-labelling it would train on a validation image")
    keep = proba.max(axis=1) >= t.pseudo_threshold
    ids = sub[id_col].to_numpy()[keep].astype(str)
    absent = [i for i in ids if i not in test_ids]
    if absent:
        raise TfkitError(f"train.pseudo {path}: id {absent[0]!r} is not in train.pseudo_records {records}")
    return PseudoRows(records=records, manifest=test, ids=ids, labels=proba[keep].argmax(axis=1).astype(np.int64),
                      q=temper(proba[keep], t.temperature), n_submission=len(sub))


# --------------------------------------------------------------------------- what the stream needs


@dataclasses.dataclass(frozen=True)
class TrainTargets:
    """Teacher targets and pseudo rows of a run; :meth:`for_fold` gives one fold's view.

    Build it with :func:`prepare_targets`. ``tfkit.data.build_dataset(..., targets=...)`` calls
    :meth:`add_examples` and :meth:`mixer` on training streams only.

    Attributes:
        task: binary or multiclass.
        num_classes: C.
        weight: w of the mix (0 when there is no teacher: hard labels only).
        teacher: frame of :func:`teacher_table` (``None`` without a teacher).
        pseudo: :class:`PseudoRows` (``None`` without pseudo-labels).
        fold: the held-out fold of this view (``None``: every fold's rows).
    """

    task: str
    num_classes: int
    weight: float
    teacher: pd.DataFrame | None
    pseudo: PseudoRows | None
    fold: int | None = None

    def for_fold(self, fold: int) -> "TrainTargets":
        """This run's targets for training fold ``fold``'s model: fold ``fold``'s own rows are dropped."""
        teacher = None if self.teacher is None else self.teacher[self.teacher["fold"] != int(fold)].reset_index(drop=True)
        return dataclasses.replace(self, teacher=teacher, fold=int(fold))

    @property
    def n_pseudo(self) -> int:
        """Confident test rows added to the training stream."""
        return 0 if self.pseudo is None else len(self.pseudo.ids)

    @property
    def pseudo_labels(self) -> np.ndarray:
        """The pseudo rows' labels (empty without pseudo-labels)."""
        return np.zeros([0], np.int64) if self.pseudo is None else self.pseudo.labels

    def soft_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and tempered probabilities looked up by :meth:`mixer`: the teacher rows, then the pseudo rows."""
        ids, qs = [], []
        if self.teacher is not None:
            ids.append(self.teacher["id"].to_numpy().astype(str))
            qs.append(np.stack(self.teacher["q"].to_list()) if len(self.teacher) else np.zeros([0, self.num_classes]))
        if self.pseudo is not None:
            ids.append(self.pseudo.ids)
            qs.append(self.pseudo.q)
        return np.concatenate(ids), np.concatenate(qs).astype(np.float32)

    def mixer(self) -> Callable[[Any, Any], Any] | None:
        """``fn(id, y) -> (1 - w) * y + w * q[id]`` for a ``Dataset.map`` (``None`` without a teacher).

        Builds the id lookup eagerly (call it outside any traced function); an id without a
        teacher target (e.g. a validation row) makes the gather fail loudly rather than pass.
        """
        if self.teacher is None:
            return None
        import tensorflow as tf

        ids, q = self.soft_table()
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), default_value=-1)
        q_const = tf.constant(q[:, 1:] if self.task == "binary" else q)  # binary targets are [1]: p(positive)
        w = float(self.weight)

        def mix(ident: Any, y: Any) -> Any:
            soft = tf.gather(q_const, table.lookup(ident))
            return (1.0 - w) * y + w * soft

        return mix

    def add_examples(self, ds: Any, n_examples: int, seed: int, meta_names: Sequence[str]) -> Any:
        """The parsed training examples ``ds`` with the confident test examples interleaved.

        Args:
            ds: parsed training examples (``tfkit.records.make_parser`` dicts).
            n_examples: how many ``ds`` holds per pass (sets the mixing proportions).
            seed: seed of the interleaving.
            meta_names: metadata columns the model reads (the only ones kept).

        Returns:
            One pass over both streams in a seeded random order, each example exactly once
            (``ds`` unchanged when there are no pseudo rows). Pseudo examples carry their
            pseudo label and fold -1.
        """
        if not self.n_pseudo:
            return ds
        import tensorflow as tf

        p = self.pseudo
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(p.ids), tf.range(len(p.ids), dtype=tf.int64)), default_value=-1)
        labels = tf.constant(p.labels, tf.int64)
        files = tfdata.select_files(p.records, None, p.manifest)
        extra = (tf.data.TFRecordDataset(files).map(tfrec.make_parser(p.manifest))
                 .filter(lambda ex: table.lookup(ex["id"]) >= 0)
                 .map(lambda ex: {**ex, "label": tf.gather(labels, table.lookup(ex["id"])), "fold": tf.constant(-1, tf.int64)}))

        def common(ex: dict) -> dict:
            # Both streams reduced to one structure (the test records may hold other metadata columns).
            return {"image": ex["image"], "id": ex["id"], "label": ex["label"], "fold": ex["fold"],
                    "group": ex["group"], "meta": {n: ex["meta"][n] for n in meta_names}}

        weights = np.array([n_examples, self.n_pseudo], np.float64)
        return tf.data.Dataset.sample_from_datasets(
            [ds.map(common), extra.map(common)], weights=(weights / weights.sum()).tolist(), seed=seed,
            stop_on_empty_dataset=False)


def prepare_targets(cfg: Config, records: str | os.PathLike, manifest: Manifest | dict | None = None,
                    folds: Sequence[int] | None = None, out: str | os.PathLike | None = None) -> TrainTargets | None:
    """Read and check ``train.teacher`` and ``train.pseudo`` once, before any fold trains.

    Args:
        cfg: the config.
        records: the student's training records.
        manifest: their manifest (read when ``None``).
        folds: the student folds that will be trained (default ``train.folds`` or all); the teacher
            must have OOF predictions of every row those folds train on.
        out: the student's run folder (a teacher may not be the run being trained).

    Returns:
        The run's :class:`TrainTargets`, or ``None`` when neither key is set.

    Raises:
        TfkitError: a bad key, another task than binary/multiclass, or any check of
            :func:`teacher_table` / :func:`pseudo_rows`.
    """
    t = cfg.train
    if t.teacher is None and t.pseudo is None and t.pseudo_records is None:
        return None
    manifest = Manifest.from_dict(manifest or tfrec.load_manifest(records))
    task = resolve_task(cfg.model.task, manifest=manifest)
    check_distill_config(t, task)
    n_folds = manifest.require_folds()
    chosen = manifest.check_folds(folds if folds is not None else (t.folds if t.folds is not None else range(n_folds)))
    index = tfdata.read_index(str(records), manifest=manifest)
    teacher = None
    if t.teacher is not None and out is not None and Path(t.teacher).resolve() == Path(out).resolve():
        raise TfkitError(f"train.teacher {t.teacher}: is the run being trained (a teacher must be another run)")
    if t.teacher is not None:
        needed = sorted({f for f in range(n_folds) for k in chosen if f != k})
        teacher = teacher_table(t.teacher, manifest, index, needed, t.temperature)
    pseudo = pseudo_rows(cfg, manifest, index["id"].tolist(), task) if t.pseudo is not None else None
    if pseudo is not None and t.verbose:
        print(f"train.pseudo: {len(pseudo.ids)} of {pseudo.n_submission} test images have confidence "
              f">= {t.pseudo_threshold} and join every fold's training data")
    return TrainTargets(task=task, num_classes=manifest.num_classes, weight=float(t.teacher_weight) if teacher is not None else 0.0,
                        teacher=teacher, pseudo=pseudo)
