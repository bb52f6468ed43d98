"""Checks of the files and folders a command reads and writes, run before any work starts.

A command that will fail on its input should fail first, in one line that names
the file, and before it writes anything: a shard that turns out truncated
after an hour of training, or a ``--out`` that is a file discovered after
predicting, costs the user the hour. The config itself is checked elsewhere
(the ``train``/``tune``/``predict`` config validation); this module owns the
files:

* records: ``manifest.json`` readable, its shard names plain file names inside
  the folder, the shards on disk exactly the manifest's, each shard's size and
  sha256 equal to the manifest's (the shard is named otherwise), stored image
  size as the manifest says, every class of the manifest present in the labels
  and no label outside it (a manifest whose class list was padded or cut);
* outputs: a file path that is a directory, a folder path that is a file, a
  parent that cannot be written;
* run folders: ``train --out`` that is non-empty but not a run folder (it would
  be overwritten), or a run trained on other records (resuming it would mix
  folds and leak).

Hashing reads every byte: about 0.6 GB/s per core here, in threads.

Example (``check_records`` needs a records folder)::

    manifest = check_records("records")

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> check_out_file(folder, "--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tfkit.utils.TfkitError: --out ... is a folder; give a file name such as .../submission.csv
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from tfkit.utils import TfkitError

__all__ = ["check_records", "check_labels", "check_image_size", "check_out_file", "check_out_dir", "check_run_out",
           "is_run_folder", "sha256_file"]

_HEX = set("0123456789abcdef")
_CHUNK = 1 << 20


def _is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)  # gs://, s3://: checked through the manifest only


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (hashlib releases the GIL: threads overlap)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not folder.exists():
        raise TfkitError(f"records folder {folder} not found")
    if not folder.is_dir():
        raise TfkitError(f"records folder {folder} is not a folder")
    if not path.is_file():
        raise TfkitError(f"{path} not found (is {folder} a folder written by tfkit build-records?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise TfkitError(f"{path}: not UTF-8 text (byte {e.start}); rebuild the records") from None
    except json.JSONDecodeError as e:
        raise TfkitError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); rebuild the records") from None
    if not isinstance(manifest, dict):
        raise TfkitError(f"{path}: expected a JSON object, got {type(manifest).__name__}; rebuild the records")
    for key, kind in (("classes", list), ("shards", list)):
        if not isinstance(manifest.get(key, []), kind):
            raise TfkitError(f"{path}: '{key}' must be a list, got {type(manifest[key]).__name__}")
    return manifest


def _shard_entries(folder: Path, manifest: Mapping[str, Any]) -> list[tuple[str, int | None, str | None]]:
    """``(name, count, sha256)`` of each manifest shard; names must be plain file names inside the folder."""
    path = folder / "manifest.json"
    out = []
    for i, s in enumerate(manifest.get("shards") or []):
        name = s.get("file") if isinstance(s, dict) else None
        if not isinstance(name, str) or not name:
            raise TfkitError(f"{path}: shards[{i}] has no file name")
        # A name with a directory part could point anywhere (../../etc/passwd): refuse it.
        if name != os.path.basename(name) or name in (".", "..") or "\\" in name or os.path.isabs(name):
            raise TfkitError(f"{path}: shard name {name!r} leaves the records folder (expected a plain file name)")
        digest = s.get("sha256")
        if digest is not None and (not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX):
            raise TfkitError(f"{path}: shard {name} has a malformed sha256 {digest!r}")
        count = s.get("count")
        out.append((name, count if isinstance(count, int) else None, digest))
    return out


def check_records(records: str | os.PathLike, verify: bool = True, threads: int = 2) -> dict:
    """Check a records folder before it is used; return its manifest.

    Args:
        records: records folder (``gs://`` folders get the manifest checks only).
        verify: also hash every shard against the manifest's sha256.
        threads: hashing threads.

    Returns:
        The manifest dict.

    Raises:
        TfkitError: naming the folder, the manifest or the first bad shard.

    Example (needs a records folder written by ``tfkit build-records``)::

        check_records("records")["classes"]  # ['0', '1', '2']
    """
    if _is_remote(records):
        from tfkit.records import load_manifest

        return load_manifest(records)
    folder = Path(records)
    manifest = _read_manifest(folder)
    entries = _shard_entries(folder, manifest)
    on_disk = sorted(n for n in os.listdir(folder) if n.endswith((".tfrec", ".tfrecord")))
    listed = {name for name, _, _ in entries}
    if not entries and not on_disk:
        raise TfkitError(f"{folder}: no shard files (the records are empty; rebuild them)")
    extra = [n for n in on_disk if n not in listed]
    if extra:
        raise TfkitError(f"{folder / extra[0]}: shard not listed in manifest.json (a shard of other records? "
                         "rebuild the records or remove it)")
    missing = [n for n in sorted(listed) if n not in on_disk]
    if missing:
        raise TfkitError(f"{folder / missing[0]}: shard listed in manifest.json is missing")
    if verify:
        _verify_shards(folder, entries, threads)
    return manifest


def _verify_shards(folder: Path, entries: Sequence[tuple[str, int | None, str | None]], threads: int) -> None:
    todo = [(name, digest) for name, _, digest in entries if digest is not None]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        digests = list(pool.map(lambda item: sha256_file(folder / item[0]), todo))
    for (name, want), got in zip(todo, digests):
        if got != want:
            size = (folder / name).stat().st_size
            raise TfkitError(f"{folder / name}: shard is truncated or corrupted (sha256 differs from manifest.json; "
                             f"{size} bytes on disk); rebuild the records or restore the shard")


def check_labels(labels: Sequence[int], manifest: Mapping[str, Any], records: str | os.PathLike) -> None:
    """Labels of train records against the manifest's classes (an edited class list).

    Args:
        labels: every example's class index (``tfkit.data.read_index(...)["label"]``).
        manifest: the records' manifest.
        records: folder named in the message.

    Raises:
        TfkitError: a label outside the class list (classes cut), or a class
            without any example (classes padded: a train split's classes are
            the labels it was built from).
    """
    import numpy as np

    classes = list(manifest.get("classes") or [])
    if not classes or manifest.get("task") == "regression":
        return
    labels = np.asarray(labels, dtype=np.int64)
    known = labels[labels >= 0]
    if known.size and int(known.max()) >= len(classes):
        raise TfkitError(f"{records}/manifest.json lists {len(classes)} classes but the shards hold label index "
                         f"{int(known.max())}: the class list was cut; rebuild the records")
    if manifest.get("split", "train") == "train":
        empty = sorted(set(range(len(classes))) - set(np.unique(known).tolist()))
        if empty:
            names = [str(classes[i]) for i in empty[:5]]
            raise TfkitError(f"{records}/manifest.json lists {len(classes)} classes but {len(empty)} have no example "
                             f"({', '.join(names)}{'...' if len(empty) > 5 else ''}): the class list was padded; "
                             "rebuild the records")


def check_image_size(records: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """The first stored JPEG of each shard against the manifest's ``image.size`` (an edited manifest).

    Reads one example per shard (its JPEG header only), so a manifest whose size
    was changed fails here, naming the shard, instead of as a shape error mid-training.

    Raises:
        TfkitError: a stored image whose size differs from the manifest's.
    """
    size = (manifest.get("image") or {}).get("size")
    if not size or (manifest.get("image") or {}).get("format", "jpeg") != "jpeg" or _is_remote(records):
        return
    import tensorflow as tf

    from tfkit.records import make_parser

    parse = make_parser(manifest)
    want = [int(size[0]), int(size[1])]
    for name, _, _ in _shard_entries(Path(records), manifest):
        path = str(Path(records) / name)
        for raw in tf.data.TFRecordDataset(path).take(1):
            got = tf.io.extract_jpeg_shape(parse(raw)["image"]).numpy()[:2].tolist()
            if got != want:
                raise TfkitError(f"{path}: stored images are {got[0]}x{got[1]} but manifest.json says "
                                 f"{want[0]}x{want[1]}: the manifest was edited; rebuild the records")


def _probe_writable(folder: Path, option: str, path: Path) -> None:
    """Create and remove a temporary file in ``folder``: the one check that holds for root,
    read-only mounts and ACLs alike (``os.access`` says yes to root everywhere)."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".tfkit-probe-", dir=folder)
    except OSError as e:
        raise TfkitError(f"{option} {path}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def _writable_ancestor(path: Path, option: str) -> None:
    probe = path.parent if str(path.parent) else Path(".")
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise TfkitError(f"{option} {path}: {probe} is a file, not a folder")
    _probe_writable(probe, option, path)


def check_out_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """A file tfkit will write (atomically): not a directory, and its folder writable.

    Raises:
        TfkitError: naming the option and the path.
    """
    p = Path(path)
    if p.is_dir():
        raise TfkitError(f"{option} {p} is a folder; give a file name such as {p / 'submission.csv'}")
    _writable_ancestor(p, option)
    return p


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """A folder tfkit will create or write into: not a file, and writable.

    Raises:
        TfkitError: naming the option and the path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise TfkitError(f"{option} {p} is a file, not a folder")
    if p.is_dir():
        _probe_writable(p, option, p)
    else:
        _writable_ancestor(p, option)
    return p


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a folder ``tfkit train`` wrote: a ``config.yaml`` and no shards."""
    p = Path(path)
    if not (p / "config.yaml").is_file():
        return False
    return not any(n.endswith((".tfrec", ".tfrecord")) for n in os.listdir(p))


def check_run_out(out: str | os.PathLike, manifest: Mapping[str, Any], records: str | os.PathLike) -> Path:
    """``train --out``: a new or empty folder, or a run of these very records (resume).

    Args:
        out: the run folder asked for.
        manifest: the training records' manifest.
        records: the records folder (named in the message).

    Raises:
        TfkitError: ``out`` is a file or not writable; non-empty but not a run
            folder (training would overwrite its files); or a run trained on
            records with other folds or shards (a resume would mix folds: leaked scores).
    """
    p = check_out_dir(out, "--out")
    if not p.is_dir() or not any(p.iterdir()):
        return p
    if not is_run_folder(p):
        raise TfkitError(f"--out {p} is not empty and is not a tfkit run folder (no config.yaml, or it holds shards); "
                         "training would overwrite its files: choose a new or empty folder")
    own = p / "manifest.json"
    if own.is_file():
        try:
            old = json.loads(own.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise TfkitError(f"{own}: not valid JSON; the run folder is damaged: choose a new --out") from None
        from tfkit.manifest import Manifest

        if not Manifest.from_dict(manifest).same_source(old):
            raise TfkitError(f"--out {p} was trained on other records than {records} (folds or shard checksums differ); "
                             "resuming would mix folds and leak: choose a new --out")
    return p
