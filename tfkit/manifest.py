"""The records' metadata (``manifest.json``) as one typed object, and the task it implies.

``tfkit build-records`` writes ``manifest.json`` beside the shards and every
later stage reads it: the classes and their order, the task, the folds, the
shards with their checksums, the image size and the metadata columns'
encodings (vocabularies, mean/std). :class:`Manifest` reads today's file
unchanged, keeps every key (``to_dict`` gives the same dict back, so a run
folder's copy is byte-for-byte the same JSON) and offers typed properties
for what tfkit uses. It is also a read-only mapping, so code that indexes the
dict (``manifest["classes"]``) keeps working.

:data:`TASKS` and :func:`resolve_task` live here because the task is
decided by the records (``auto``) or checked against them.

Example:
    >>> m = Manifest.from_dict({"split": "train", "classes": ["cat", "dog"], "task": "binary",
    ...                         "folds": {"n_folds": 5}, "image": {"size": [64, 64]}})
    >>> m.classes, m.num_classes, m.n_folds, m.image_size
    (['cat', 'dog'], 2, 5, (64, 64))
    >>> m["task"], resolve_task("auto", manifest=m)
    ('binary', 'binary')
    >>> m.to_dict() == dict(m)
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tfkit.utils import TfkitError, read_json

__all__ = ["TASKS", "TASKS_OF_KIND", "Manifest", "resolve_task"]

TASKS = ("binary", "multiclass", "multilabel", "regression", "distribution")


class Manifest(Mapping[str, Any]):
    """A records folder's ``manifest.json``: typed properties over the unchanged dict.

    Build it with :meth:`from_dict` or :meth:`load`; it is immutable (a mapping
    without setters) and pickles (tuning sends it to trial processes).

    Args:
        data: the manifest dict as ``tfkit build-records`` wrote it.
    """

    def __init__(self, data: Mapping[str, Any]):
        self._data = dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "Manifest") -> "Manifest":
        """The manifest of ``data`` (a :class:`Manifest` is returned as is)."""
        return data if isinstance(data, Manifest) else cls(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        """Read a local ``manifest.json`` (or the one inside the folder ``path``).

        Args:
            path: the file, or a records or run folder holding it.

        Returns:
            The manifest.
        """
        path = Path(path)
        if path.suffix != ".json":
            path = path / "manifest.json"
        if not path.is_file():
            raise TfkitError(f"manifest {path} not found (is {path.parent} a folder written by tfkit build-records?)")
        try:
            data = read_json(path)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise TfkitError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise TfkitError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls(data)

    def to_dict(self) -> dict:
        """A copy of the dict, as ``manifest.json`` holds it."""
        return dict(self._data)

    # Mapping: read-only dict access for code that indexes the manifest.
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Manifest(split={self.split!r}, classes={self.num_classes}, task={self.task!r}, n_folds={self.n_folds})"

    # ----------------------------------------------------------------------- typed views

    @property
    def split(self) -> str:
        """``train`` or ``test`` (whatever ``--split`` was)."""
        return str(self._data.get("split", "train"))

    @property
    def classes(self) -> list[str]:
        """Class names in label-index order (empty for unlabelled test records built without classes)."""
        return [str(c) for c in self._data.get("classes") or []]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def task(self) -> str | None:
        """The task the records were built for (``None`` without classes)."""
        return self._data.get("task")

    @property
    def ordinal(self) -> bool:
        """Whether ``build-records --ordinal`` declared the classes ordered grades (in class order)."""
        return bool(self._data.get("ordinal", False))

    @property
    def kind(self) -> str:
        """What the labels are: ``single`` (one class index per image), ``multilabel``
        (a multi-hot vector over :attr:`classes`) or ``regression`` (float :attr:`targets`)."""
        task = self._data.get("task")
        return task if task in ("multilabel", "regression") else "single"

    @property
    def targets(self) -> list[str]:
        """Regression target columns (empty for class labels)."""
        return [str(t) for t in self._data.get("targets") or []]

    @property
    def channel_names(self) -> list[str]:
        """Channel names of multi-channel records (``r, g, b`` for RGB JPEG records)."""
        image = self._data.get("image") or {}
        names = image.get("channel_names")
        if names:
            return [str(c) for c in names]
        n = int(image.get("channels") or 3)
        return ["r", "g", "b"] if n == 3 else [f"c{k}" for k in range(n)]

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def has_labels(self) -> bool:
        """Whether the records carry labels (``columns.label``, ``label_cols`` or ``target_cols`` was given)."""
        columns = self._data.get("columns") or {"label": True}
        return any(columns.get(k) for k in ("label", "label_cols", "target_cols"))

    @property
    def folds(self) -> dict:
        """The ``folds`` section (``n_folds``, method, seed, columns)."""
        return dict(self._data.get("folds") or {})

    @property
    def n_folds(self) -> int:
        """Number of folds (0 for test records)."""
        return int(self.folds.get("n_folds") or 0)

    @property
    def shards(self) -> list[dict]:
        """One dict per shard file: ``file``, ``count``, ``sha256``, ..."""
        return list(self._data.get("shards") or [])

    @property
    def n_examples(self) -> int:
        return int(self._data.get("n_examples") or 0)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of every stored image, or ``None`` when sizes vary."""
        size = (self._data.get("image") or {}).get("size")
        return (int(size[0]), int(size[1])) if size else None

    @property
    def metadata(self) -> dict[str, dict]:
        """Metadata columns and their encodings (``kind``; ``vocab`` or ``mean``/``std``)."""
        return dict(self._data.get("metadata") or {})

    def metadata_spec(self, column: str) -> dict:
        """The public encoding of one metadata column (keys starting with ``_`` left out; ``{}`` if absent)."""
        return {k: v for k, v in self.metadata.get(column, {}).items() if not k.startswith("_")}

    def metadata_columns(self, names: Sequence[str]) -> list[tuple[str, dict]]:
        """``(name, spec)`` of each metadata column fed to a model; a one-line error for an unknown one.

        Example:
            >>> Manifest.from_dict({"metadata": {"age": {"kind": "numeric"}}}).metadata_columns(["age"])
            [('age', {'kind': 'numeric'})]
        """
        available = self.metadata
        out = []
        for name in names:
            if name not in available:
                raise TfkitError(f"data.metadata: column {name!r} is not in the records "
                                 f"(available: {', '.join(available) or 'none; rebuild the records with --meta'})")
            spec = available[name]
            if spec.get("kind") not in ("numeric", "categorical"):
                raise TfkitError(f"manifest metadata {name!r}: kind must be numeric or categorical, "
                                 f"got {spec.get('kind')!r}")
            out.append((name, spec))
        return out

    def require_folds(self) -> int:
        """``n_folds`` of train records; a one-line error for records without folds."""
        if self.folds.get("n_folds") is None:
            raise TfkitError("manifest.json has no folds.n_folds: build the records with --split train")
        return self.n_folds

    def check_folds(self, folds: Sequence[int], option: str = "--folds") -> list[int]:
        """The sorted unique ``folds``, each one of ``0..n_folds-1`` (K-fold needs ``n_folds`` >= 2).

        Args:
            folds: fold indices asked for.
            option: the option named in the error.

        Returns:
            The folds, sorted and unique.

        Example:
            >>> Manifest.from_dict({"folds": {"n_folds": 5}}).check_folds([2, 0, 2])
            [0, 2]
        """
        n_folds = self.require_folds()
        out = sorted(set(int(f) for f in folds))
        bad = [f for f in out if not 0 <= f < n_folds]
        if bad:
            raise TfkitError(f"{option}: fold(s) {bad} do not exist (the records have folds 0..{n_folds - 1})")
        if n_folds < 2:
            raise TfkitError(f"the records have {n_folds} fold; K-fold training needs at least 2")
        return out

    def same_source(self, other: Mapping[str, Any]) -> bool:
        """Whether ``other`` describes the same folds and shard checksums (the same training records)."""
        def shards(m: Mapping[str, Any]) -> list:
            return sorted((s["file"], s["sha256"]) for s in m.get("shards", []))

        return self.get("folds") == other.get("folds") and shards(self) == shards(other)


# Which model tasks each kind of records can feed (Manifest.kind); "auto" takes the
# first (single-label records: binary for 2 classes, else multiclass).
TASKS_OF_KIND = {
    "single": ("multiclass", "binary", "regression"),
    "multilabel": ("multilabel",),
    "regression": ("regression", "distribution"),
}


def resolve_task(task: str = "auto", num_classes: int | None = None, manifest: Mapping[str, Any] | None = None) -> str:
    """The task a model trains for: ``auto`` resolved, and checked against the records.

    ``auto`` is the records' task when a manifest is given (multiclass if it has
    none), else binary for 2 classes and multiclass otherwise. With a manifest,
    a softmax over labels that are not exclusive is refused before any
    training (multi-label records train ``multilabel``, one sigmoid per label),
    and ``distribution`` (a softmax over ordered bins) needs regression records
    with a column per bin (:data:`TASKS_OF_KIND`).

    Args:
        task: ``cfg.model.task``: ``auto`` or one of :data:`TASKS`.
        num_classes: number of classes (labels for multilabel, bins for
            distribution; ignored for regression).
        manifest: the records' manifest; its labels are checked against the task.

    Returns:
        One of :data:`TASKS`.

    Example:
        >>> resolve_task("auto", 2), resolve_task("auto", 10)
        ('binary', 'multiclass')
        >>> resolve_task("auto", manifest={"task": "multiclass", "classes": list("abc")})
        'multiclass'
    """
    if task == "auto":
        if manifest is not None:
            resolved = manifest.get("task") or "multiclass"
        else:
            resolved = "binary" if num_classes == 2 else "multiclass"
    else:
        resolved = task
    if resolved not in TASKS:
        raise TfkitError(f"model.task: unknown task {task!r} (expected auto or one of: {', '.join(TASKS)})")
    if manifest is not None:
        _check_task_records(resolved, Manifest.from_dict(manifest))
    elif resolved in ("multiclass", "multilabel", "distribution") and num_classes is not None and num_classes < 2:
        raise TfkitError(f"model.task={resolved} needs at least 2 {'bins' if resolved == 'distribution' else 'classes'}, "
                         f"got {num_classes}")
    return resolved


def _check_task_records(task: str, manifest: Manifest) -> None:
    kind, classes = manifest.kind, manifest.classes
    if task not in TASKS_OF_KIND[kind]:
        raise TfkitError(_task_mismatch(task, kind))
    if task == "binary" and len(classes) not in (0, 2):
        raise TfkitError(f"model.task=binary needs 2 classes, the records have {len(classes)}: {classes}")
    if task == "regression" and kind == "single" and classes and classes != [str(i) for i in range(len(classes))]:
        # Records store the index of the label in the class list: it equals the
        # value only for ordinal grades 0..K-1, so anything else would train on ranks.
        raise TfkitError(f"model.task=regression needs ordinal integer labels 0..K-1 (e.g. grades), the records "
                         f"have classes {classes[:8]}{'...' if len(classes) > 8 else ''}")
    if task == "distribution" and len(manifest.targets) < 2:
        raise TfkitError("model.task=distribution needs regression records with one column per bin "
                         f"(--target-cols with 2 or more columns), the records have {manifest.targets}")


def _task_mismatch(task: str, kind: str) -> str:
    if kind == "multilabel" and task in ("multiclass", "binary"):
        return (f"model.task={task} puts a softmax over labels that are not exclusive (the records are multi-label: "
                "several labels per image); use multilabel (one sigmoid per label)")
    if kind == "single" and task == "multilabel":
        return ("model.task=multilabel needs several labels per image; tfkit records store one class index per "
                "image (use multiclass, or build the records with --label-sep or --label-cols)")
    return f"model.task={task} does not fit {kind} records (they train {', '.join(TASKS_OF_KIND[kind])})"
