"""The builder: images + CSV -> fold-sharded TFRecords, ``manifest.json`` and ``folds.csv``.

Every example is a ``tf.train.Example`` with ``image`` (JPEG, 3 channels), ``id``,
``group``, ``label`` (class index, -1 when unknown), ``fold`` (-1 for test),
``height``, ``width`` and ``meta/<col>`` (float for numeric columns, NaN when
missing; int64 vocab index for categorical ones, -1 when missing/unknown).
``manifest.json`` holds the class list, feature schema, metadata vocabularies,
fold settings and per-shard sha256; ``folds.csv`` holds id,fold.

Why it is fast and reproducible:

* The parent validates the CSV, resolves every image path, assigns folds, sorts
  rows by (fold, original row order) and fixes every shard's rows *before* any
  image is read, then produces records strictly in that order
  (:func:`tfkit.records.workers.records_in_order`). The output bytes therefore do
  not depend on ``workers``. With ``skip_bad``, images found unreadable while writing
  make a second pass: folds are assigned again without those rows and the shards
  rewritten, so the records are exactly those of the CSV without them (folds stay
  balanced over what is written).
* Everything is written in a hidden temporary folder beside ``out`` and renamed at
  the end (:func:`tfkit.utils.atomic_dir`): a killed build leaves no folder that looks
  complete, and a re-run succeeds (stale temporary folders of dead builds are removed).
* TensorFlow is never imported (tested): records are framed by
  :mod:`tfkit.records.tfrecord`.

Example:
    >>> m = build_records(csv="train.csv", images="images", out="records", size=256)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tfkit import __version__
from tfkit.records.checksum import crc32c_backend
from tfkit.records.images import IMAGE_EXTENSIONS, VERIFY_MODES
from tfkit.records.shards import shard_name
from tfkit.records.tfrecord import feature_entry, image_record
from tfkit.records.workers import records_in_order, worker_pool
from tfkit.utils import TfkitError, atomic_dir, read_json, write_csv, write_json

MISSING = frozenset({"", "nan", "NaN", "NA", "N/A", "n/a", "null", "NULL", "None"})


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _canon_label(s: str) -> str:
    # "1", "1.0" and " 1" name the same class when labels are numeric.
    s = s.strip()
    if _is_number(s):
        f = float(s)
        if f.is_integer():
            return str(int(f))
    return s


def sort_classes(names: Iterable[str]) -> list[str]:
    """Sort class names: numerically when every name is a number, else as strings.

    Example:
        >>> sort_classes(["10", "2", "1"])
        ['1', '2', '10']
    """
    names = sorted(set(names))
    if names and all(_is_number(n) for n in names):
        return sorted(names, key=float)
    return names


def _row_name(csv: Path, i: int, ident: str | None = None) -> str:
    # i is the 0-based data row; line numbers count the header as line 1.
    return f"{csv.name} line {i + 2}" + (f" (id {ident!r})" if ident is not None else "")


def _index_images(images: Path) -> dict[str, tuple[str, int | None]]:
    """Map file stem -> (file name, size) for every image in ``images`` (first extension by priority).

    The size is known (one lstat, no path resolution) for regular files; it is None
    for symlinks and anything else, which are then resolved and checked in full.
    """
    rank = {e: k for k, e in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, str, int | None]] = {}
    with os.scandir(images) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            r = rank.get(ext.lower())
            if r is not None and (stem not in best or (r, entry.name) < best[stem][:2]):
                regular = entry.is_file(follow_symlinks=False)
                best[stem] = (r, entry.name, entry.stat(follow_symlinks=False).st_size if regular else None)
    return {k: v[1:] for k, v in best.items()}


def _resolve_inside(images_real: str, candidate: str) -> tuple[str | None, str | None]:
    real = os.path.realpath(candidate)
    if real != images_real and not real.startswith(images_real.rstrip(os.sep) + os.sep):
        return None, f"image path {candidate} escapes the images folder {images_real}"
    try:
        st = os.stat(real)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        return None, f"image {candidate} not found"
    if st.st_size == 0:
        return None, f"image {candidate} is a zero-byte file"
    return real, None


def _metadata_spec(frame: Any, cols: Sequence[str], train_spec: Mapping[str, Any] | None) -> dict[str, dict]:
    import numpy as np

    spec: dict[str, dict] = {}
    for col in cols:
        if train_spec is not None and col in train_spec:
            spec[col] = dict(train_spec[col])
            continue
        vals = [v.strip() for v in frame[col].tolist() if v.strip() not in MISSING]
        if vals and all(_is_number(v) for v in vals):
            arr = np.array([float(v) for v in vals], np.float64)
            spec[col] = {"kind": "numeric", "mean": float(arr.mean()), "std": float(arr.std())}
        else:
            spec[col] = {"kind": "categorical", "vocab": sorted(set(vals))}
    return spec


def _meta_value(spec: Mapping[str, Any], text: str) -> float | int:
    t = text.strip()
    if spec["kind"] == "numeric":
        return float(t) if t not in MISSING and _is_number(t) else float("nan")
    vocab = spec.setdefault("_index", {v: k for k, v in enumerate(spec["vocab"])})
    return vocab.get(t, -1)

def _write_all(fh: Any, digest: Any, records: list[bytes]) -> None:
    for rec in records:
        fh.write(rec)
        digest.update(rec)


def _preload_crc32c(fn: Callable) -> Callable:
    """Pick the CRC32C implementation in a thread while ``fn`` reads the CSV and assigns
    folds (TensorFlow's library takes ~0.2 s to load from a cold disk); ``fn`` calls
    :func:`crc32c_backend` (which waits for it) before it writes anything to stderr."""

    def preload() -> None:
        with contextlib.suppress(TfkitError):  # raised again, in the caller, on first use
            crc32c_backend()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        loader = threading.Thread(target=preload, name="tfkit-crc32c", daemon=True)
        loader.start()
        try:
            return fn(*args, **kwargs)
        finally:
            loader.join()

    return run


@_preload_crc32c
def build_records(
    csv: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike = "records",
    id_col: str = "id",
    path_col: str | None = None,
    label_col: str | None = "label",
    group_col: str | None = None,
    meta_cols: Sequence[str] | None = None,
    n_folds: int = 5,
    seed: int = 42,
    size: int | None = None,
    quality: int = 95,
    workers: int = 0,
    split: str = "train",
    shard_size: int = 2048,
    skip_bad: bool = False,
    overwrite: bool = False,
    classes_from: str | os.PathLike | None = None,
    verify: str = "decode",
    progress: bool = True,
) -> dict:
    """Turn a folder of images plus a CSV into fold-sharded TFRecords with a manifest.

    Args:
        csv: CSV with one row per image.
        images: images folder; every image must resolve (symlinks followed) inside it.
        out: output folder (created atomically; a non-empty one needs ``overwrite``).
        id_col: unique id column.
        path_col: column of paths relative to ``images``; without it an image is
            ``<id><ext>`` for the first of ``IMAGE_EXTENSIONS`` present.
        label_col: label column (required for train; optional for test).
        group_col: column kept together in one fold (e.g. patient_id); default the id.
        meta_cols: extra columns stored as ``meta/<col>``: numeric when every
            non-missing value is a number (float, NaN missing), else categorical (vocab index).
        n_folds: number of folds (train).
        seed: fold seed.
        size: square output side: shorter side resized to ``size`` then centre-cropped;
            None keeps the original size.
        quality: JPEG quality for re-encoded images.
        workers: processes that re-encode images, and threads that run ``verify="decode"``
            checks (0 = all cores). Output bytes do not depend on it.
        split: ``"train"`` (labels required, folds assigned) or ``"test"`` (fold -1).
        shard_size: maximum examples per shard (a fold's rows are split evenly).
        skip_bad: skip bad rows (missing/zero-byte/corrupt/non-image file, missing or
            unknown label, escaping path, duplicate id) and list them in ``manifest["skipped"]``.
        overwrite: replace a non-empty ``out``.
        classes_from: test split: the train records' ``manifest.json`` (or folder); gives the
            class list and the metadata vocabularies so indices match the train records.
        verify: integrity check of JPEGs passed through untouched: ``"decode"`` (default,
            reads every byte) or ``"markers"`` (truncation only, ~10x cheaper); see
            :func:`encode_image`. Re-encoded images are always fully decoded.
        progress: show a tqdm progress bar.

    Returns:
        The manifest dict (also written to ``out/manifest.json``).

    Raises:
        TfkitError: one line naming the row or file at fault.

    Example:
        >>> m = build_records("train.csv", "images", "records", size=32, n_folds=5)  # doctest: +SKIP
        >>> m["classes"], [s["file"] for s in m["shards"]][:1]  # doctest: +SKIP
        (['0', '1', ...], ['train00-000-288.tfrec'])
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    csv, images = Path(csv), Path(images)
    meta_cols = list(meta_cols or [])
    if split not in ("train", "test"):
        raise TfkitError(f"--split must be train or test, got {split!r}")
    if size is not None and size < 1:
        raise TfkitError(f"--size must be a positive integer, got {size}")
    if not 1 <= int(quality) <= 100:
        raise TfkitError(f"--quality must be in 1..100, got {quality}")
    if shard_size < 1:
        raise TfkitError(f"--shard-size must be >= 1, got {shard_size}")
    if verify not in VERIFY_MODES:
        raise TfkitError(f"--verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    if split == "train" and n_folds < 2:
        raise TfkitError(f"--folds must be >= 2, got {n_folds}")
    if not csv.is_file():
        raise TfkitError(f"CSV {csv} not found")
    if not images.is_dir():
        raise TfkitError(f"images folder {images} not found")
    out_p = Path(out)
    if out_p.is_dir() and any(out_p.iterdir()) and not overwrite:
        raise TfkitError(f"output folder {out_p} is not empty (pass --overwrite to replace its contents)")

    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for malformed files
        raise TfkitError(f"cannot read CSV {csv}: {str(e).splitlines()[0]}")
    required = [id_col] + ([label_col] if split == "train" else []) + [c for c in (path_col, group_col) if c] + meta_cols
    missing_cols = [c for c in dict.fromkeys(required) if c not in frame.columns]
    if missing_cols:
        raise TfkitError(
            f"CSV {csv} has no column(s) {', '.join(map(repr, missing_cols))}; it has: {', '.join(frame.columns)}"
        )

    train_manifest = None
    if classes_from is not None:
        cf = Path(classes_from)
        cf = cf / "manifest.json" if cf.is_dir() else cf
        if not cf.is_file():
            raise TfkitError(f"--classes-from {classes_from}: manifest.json not found")
        train_manifest = read_json(cf)

    skipped: list[dict] = []

    def bad(i: int, ident: str, file: str | None, reason: str) -> None:
        if not skip_bad:
            raise TfkitError(f"{_row_name(csv, i, ident)}: {reason} (pass --skip-bad to skip such rows)")
        skipped.append({"row": int(i), "id": ident, "file": file, "reason": reason})

    # ---- labels / classes
    has_labels = label_col is not None and label_col in frame.columns
    if split == "train":
        labels_txt = [v.strip() for v in frame[label_col].tolist()]
        classes = (
            list(train_manifest["classes"]) if train_manifest
            else sort_classes(_canon_label(v) for v in labels_txt if v not in MISSING)
        )
    else:
        labels_txt = [v.strip() for v in frame[label_col].tolist()] if has_labels else [""] * len(frame)
        classes = list(train_manifest["classes"]) if train_manifest else []
        if has_labels and not train_manifest and any(v not in MISSING for v in labels_txt):
            crc32c_backend()  # the preloading thread may be silencing stderr while TF's library loads
            print(f"tfkit: note: labels in {csv.name} are stored as -1: pass --classes-from "
                  "to store them as class indices", file=sys.stderr)
    class_index = {c: k for k, c in enumerate(classes)}
    if split == "train" and len(classes) < 2:
        raise TfkitError(f"CSV {csv} column {label_col!r} has {len(classes)} distinct label(s); need at least 2")

    # ---- per-row validation (cheap checks; image decoding happens in workers)
    images_real = os.path.realpath(images)
    stem_index = None if path_col else _index_images(images)
    ids = frame[id_col].tolist()
    rel_paths = frame[path_col].tolist() if path_col else None
    seen: dict[str, int] = {}
    keep: list[int] = []
    label_idx: list[int] = []
    paths: list[str] = []
    for i, ident in enumerate(ids):
        ident = ident.strip()
        if ident in MISSING:
            bad(i, ident, None, f"missing id in column {id_col!r}")
            continue
        if ident in seen:
            bad(i, ident, None, f"duplicate id {ident!r} (first at line {seen[ident] + 2})")
            continue
        seen[ident] = i
        lab = labels_txt[i]
        if split == "train" and lab in MISSING:
            bad(i, ident, None, f"missing label in column {label_col!r}")
            continue
        if lab in MISSING or not class_index:
            li = -1
        else:
            li = class_index.get(_canon_label(lab), class_index.get(lab, -2))
            if li == -2:
                bad(i, ident, None, f"unknown class {lab!r} in column {label_col!r}; known classes: "
                    f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")
                continue
        if path_col:
            rel = rel_paths[i].strip()
            if rel in MISSING:
                bad(i, ident, None, f"missing path in column {path_col!r}")
                continue
            candidate = os.path.join(images, rel)
        else:
            name, size_known = stem_index.get(ident, (None, None))
            if name is None:
                found = [images / (ident + e) for e in IMAGE_EXTENSIONS if (images / (ident + e)).is_file()]
                if not found:
                    real = os.path.realpath(images / ident)
                    inside = real == images_real or real.startswith(images_real.rstrip(os.sep) + os.sep)
                    bad(i, ident, str(images / ident),
                        f"no image named {ident}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}> in {images}"
                        if inside else f"id {ident!r} makes an image path that escapes the images folder {images_real}")
                    continue
                candidate = str(found[0])
            elif size_known is not None:  # a regular file directly in the folder: inside by construction
                if size_known == 0:
                    bad(i, ident, os.path.join(images, name), f"image {os.path.join(images, name)} is a zero-byte file")
                    continue
                keep.append(i)
                label_idx.append(li)
                paths.append(os.path.join(images_real, name))
                continue
            else:
                candidate = os.path.join(images, name)
        real, err = _resolve_inside(images_real, candidate)
        if err:
            bad(i, ident, candidate, err)
            continue
        keep.append(i)
        label_idx.append(li)
        paths.append(real)
    if not keep:
        raise TfkitError(f"CSV {csv}: no usable rows (all {len(frame)} rows are bad; see --skip-bad)")

    if group_col:
        group_txt = frame[group_col].tolist()
        for i in keep:
            if group_txt[i].strip() in MISSING:
                raise TfkitError(f"{_row_name(csv, i, ids[i].strip())}: missing group in column {group_col!r}")

    n_workers = int(workers) if workers and workers > 0 else (os.cpu_count() or 1)
    n_workers = max(1, min(n_workers, len(keep)))
    sizes: set[tuple[int, int]] = set()

    # Waits for the preloading thread: before forking (a thread inside dlopen at fork
    # time can deadlock the child) and before the progress bar writes to stderr.
    crc32c_backend()
    with atomic_dir(out_p, overwrite=overwrite) as tmp, contextlib.ExitStack() as stack:
        pool = worker_pool(n_workers, stack)
        bar = stack.enter_context(tqdm(total=len(keep), unit="img", desc="build-records", disable=not progress))
        # Writing and sha256 (both release the GIL) run in a thread of their own, in
        # record order, 16 records at a time, while this thread reads and frames the
        # next ones: they are half the CPU time of pass-through.
        writer = ThreadPoolExecutor(1, thread_name_prefix="tfkit-writer")
        stack.callback(writer.shutdown, wait=True, cancel_futures=True)
        while True:  # once, or again without the images found bad (--skip-bad)
            sub = frame.iloc[keep].reset_index(drop=True)
            ids_k = [ids[i].strip() for i in keep]
            groups = [g.strip() for g in sub[group_col].tolist()] if group_col else list(ids_k)

            # ---- folds, fixed before any image is read
            if split == "train":
                from tfkit.folds import assign_folds

                fold_frame = pd.DataFrame({"id": ids_k, "label": label_idx, "group": groups})
                if n_folds > len(set(groups)):
                    raise TfkitError(f"--folds {n_folds} exceeds the number of groups ({len(set(groups))}) in {csv}")
                # n_bins=0: class indices are categories; with > 50 classes assign_folds
                # would otherwise read them as a numeric target and bin index ranges.
                folds = np.asarray(assign_folds(fold_frame, n_folds, "label", "group", seed=seed, n_bins=0),
                                   dtype=np.int64)
            else:
                folds = np.full(len(keep), -1, np.int64)

            meta_spec = _metadata_spec(sub, meta_cols, (train_manifest or {}).get("metadata"))
            order = sorted(range(len(keep)), key=lambda j: (int(folds[j]), j))

            # ---- shards: each fold's rows split evenly into ceil(n / shard_size) shards
            plan: list[tuple[int, int, list[int]]] = []  # (fold, shard index, row positions)
            for f in sorted(set(int(f) for f in folds)):
                rows = [j for j in order if folds[j] == f]
                n_sh = math.ceil(len(rows) / shard_size)
                for s, chunk in enumerate(np.array_split(np.array(rows, dtype=np.int64), n_sh)):
                    plan.append((f, s, chunk.tolist()))

            meta_vals = {c: sub[c].tolist() for c in meta_cols}

            def entries_for(j: int) -> bytes:
                parts = [
                    feature_entry("id", ids_k[j]),
                    feature_entry("group", groups[j]),
                    feature_entry("label", int(label_idx[j])),
                    feature_entry("fold", int(folds[j])),
                ]
                for c in meta_cols:
                    parts.append(feature_entry(f"meta/{c}", _meta_value(meta_spec[c], meta_vals[c][j])))
                return b"".join(parts)

            shards_out: list[dict] = []
            sizes.clear()
            n_passed = 0
            written_ids: list[tuple[str, int]] = []
            found_bad: set[int] = set()  # CSV rows whose image could not be read
            results = records_in_order(
                [j for _, _, rows in plan for j in rows], paths,
                lambda j, data, h, w: image_record(entries_for(j), data, h, w),
                size, int(quality), verify, n_workers, pool, stack,
            )
            writing: deque = deque()
            for f, s, rows in plan:
                part = tmp / f".shard-{f}-{s}.part"
                digest = hashlib.sha256()
                recs: list[bytes] = []
                count = 0
                with open(part, "wb") as fh:
                    for _ in rows:
                        j, rec, h, w, passed, err = next(results)
                        bar.update(1)
                        if err is not None:
                            bad(keep[j], ids_k[j], paths[j], err)
                            found_bad.add(keep[j])
                            continue
                        recs.append(rec)
                        if len(recs) == 16:
                            writing.append(writer.submit(_write_all, fh, digest, recs))
                            recs = []
                            if len(writing) > 8:  # bounds the records waiting to be written
                                writing.popleft().result()
                        count += 1
                        sizes.add((h, w))
                        n_passed += bool(passed)
                        written_ids.append((ids_k[j], int(folds[j])))
                    writing.append(writer.submit(_write_all, fh, digest, recs))
                    while writing:
                        writing.popleft().result()
                if count == 0:
                    part.unlink()
                    continue
                name = shard_name(split, f, s, count)
                os.replace(part, tmp / name)
                shards_out.append({"file": name, "fold": f, "count": count, "sha256": digest.hexdigest()})
            if split != "train" or not found_bad or len(found_bad) == len(keep):
                break
            # The folds were balanced counting images that turned out to be unreadable:
            # balance them again without those rows and write the shards again, so the
            # records are exactly those of the CSV without them (a second pass, only then).
            keep_pos = [p for p, i in enumerate(keep) if i not in found_bad]
            keep, label_idx, paths = ([xs[p] for p in keep_pos] for xs in (keep, label_idx, paths))
            for p in tmp.iterdir():
                p.unlink()
            if progress:
                bar.write(f"tfkit: {len(found_bad)} unreadable image(s) skipped; assigning folds without them "
                          "and writing the shards again", file=sys.stderr)
            bar.reset(total=len(keep))
        bar.close()
        if not shards_out:
            raise TfkitError(f"CSV {csv}: every image was bad; nothing to write")

        features = {"image": "bytes", "id": "bytes", "group": "bytes", "label": "int64", "fold": "int64",
                    "height": "int64", "width": "int64"}
        for c in meta_cols:
            features[f"meta/{c}"] = "float32" if meta_spec[c]["kind"] == "numeric" else "int64"
        for spec in meta_spec.values():
            spec.pop("_index", None)
        manifest = {
            "tfkit_version": __version__,
            "split": split,
            "n_examples": int(sum(s["count"] for s in shards_out)),
            "classes": classes,
            "task": ("binary" if len(classes) == 2 else "multiclass") if classes else None,
            "image": {
                "size": [size, size] if size else (list(next(iter(sizes))) if len(sizes) == 1 else None),
                "channels": 3, "format": "jpeg", "quality": int(quality),
                "resize": "shorter side to size, centre crop" if size else None,
                "passed_through": int(n_passed),
                "verify": verify,
            },
            "features": features,
            "metadata": meta_spec,
            "folds": {
                "n_folds": int(n_folds) if split == "train" else 0,
                "method": "tfkit.folds.assign_folds (triple-stratified: groups, classes, group sizes)"
                if split == "train" else None,
                "seed": int(seed), "label_col": label_col if has_labels else None, "group_col": group_col,
            },
            "shards": shards_out,
            "skipped": sorted(skipped, key=lambda d: d["row"]),
            "columns": {"id": id_col, "label": label_col if has_labels else None, "group": group_col,
                        "path": path_col},
            "source": {"csv": str(csv), "images": str(images)},
        }
        write_csv(tmp / "folds.csv", pd.DataFrame(written_ids, columns=["id", "fold"]))
        write_json(tmp / "manifest.json", manifest)
    if progress:
        print(f"wrote {manifest['n_examples']} examples in {len(shards_out)} shards to {out_p}"
              + (f" ({len(skipped)} bad rows skipped)" if skipped else ""), file=sys.stderr)
    return manifest
