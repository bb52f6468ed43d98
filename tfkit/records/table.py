"""The CSV side of a build: read the table, find each row's image file, report bad rows.

Every check here is cheap (no image is decoded); rows that fail are reported through
:class:`BadRows`, which raises a one-line error naming the row, or records the row as
skipped with ``--skip-bad``.

Example:
    >>> row_name(Path("train.csv"), 0, "img_7")
    "train.csv line 2 (id 'img_7')"
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

from tfkit.records.images import IMAGE_EXTENSIONS
from tfkit.records.spec import BuildSpec
from tfkit.utils import TfkitError, read_json

MISSING = frozenset({"", "nan", "NaN", "NA", "N/A", "n/a", "null", "NULL", "None"})


def read_table(spec: BuildSpec) -> Any:
    """The CSV as a DataFrame of stripped-nothing strings, its required columns checked.

    Raises:
        TfkitError: unreadable CSV, or a required column missing (the columns it has are listed).
    """
    import pandas as pd

    try:
        frame = pd.read_csv(spec.csv, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for malformed files
        raise TfkitError(f"cannot read CSV {spec.csv}: {str(e).splitlines()[0]}")
    missing_cols = [c for c in spec.required_columns() if c not in frame.columns]
    if missing_cols:
        raise TfkitError(
            f"CSV {spec.csv} has no column(s) {', '.join(map(repr, missing_cols))}; it has: {', '.join(frame.columns)}"
        )
    return frame


def read_train_manifest(classes_from: Path | None) -> dict | None:
    """The train records' manifest named by ``--classes-from`` (a folder or its manifest.json), or None."""
    if classes_from is None:
        return None
    path = classes_from / "manifest.json" if classes_from.is_dir() else classes_from
    if not path.is_file():
        raise TfkitError(f"--classes-from {classes_from}: manifest.json not found")
    return read_json(path)


def row_name(csv: Path, i: int, ident: str | None = None) -> str:
    """How errors name CSV data row ``i`` (0-based; line numbers count the header as line 1)."""
    return f"{csv.name} line {i + 2}" + (f" (id {ident!r})" if ident is not None else "")


class BadRows:
    """Collects the rows a build cannot use: the first one raises, unless ``skip_bad``.

    Args:
        csv: the CSV, for the row names in messages.
        skip_bad: record bad rows in :attr:`skipped` instead of raising.
    """

    def __init__(self, csv: Path, skip_bad: bool) -> None:
        self.csv = csv
        self.skip_bad = skip_bad
        self.skipped: list[dict] = []

    def report(self, i: int, ident: str, file: str | None, reason: str) -> None:
        """Row ``i`` (id ``ident``, image ``file``) is bad for ``reason``.

        Raises:
            TfkitError: ``"<csv> line N (id 'x'): reason"`` unless ``skip_bad``.
        """
        if not self.skip_bad:
            raise TfkitError(f"{row_name(self.csv, i, ident)}: {reason} (pass --skip-bad to skip such rows)")
        self.skipped.append({"row": int(i), "id": ident, "file": file, "reason": reason})

    def sorted(self) -> list[dict]:
        """The skipped rows in CSV order, as the manifest lists them."""
        return sorted(self.skipped, key=lambda d: d["row"])


def index_images(images: Path) -> dict[str, tuple[str, int | None]]:
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


# (path, None) when found; (None, (file named in the message, reason)) when not
Located = tuple[str | None, tuple[str | None, str] | None]


class ImageLocator:
    """Finds a row's image inside the images folder: by ``--path-col`` or as ``<id>.<ext>``.

    Every path is resolved (symlinks followed) and must stay inside the folder.

    Args:
        spec: the build (``images`` and ``path_col``).
    """

    def __init__(self, spec: BuildSpec) -> None:
        self.images = spec.images
        self.real = os.path.realpath(spec.images)
        self.by_stem = None if spec.path_col else index_images(spec.images)

    def by_path(self, rel: str) -> Located:
        """The image at ``rel``, a path relative to the images folder."""
        return self._resolve(os.path.join(self.images, rel))

    def by_id(self, stem: str) -> Located:
        """The image named ``<stem>.<ext>`` for the first extension of ``IMAGE_EXTENSIONS`` present."""
        name, size_known = self.by_stem.get(stem, (None, None))
        if name is None:
            found = [self.images / (stem + e) for e in IMAGE_EXTENSIONS if (self.images / (stem + e)).is_file()]
            if found:
                return self._resolve(str(found[0]))
            if self._inside(os.path.realpath(self.images / stem)):
                exts = "|".join(e[1:] for e in IMAGE_EXTENSIONS)
                return None, (str(self.images / stem), f"no image named {stem}.<{exts}> in {self.images}")
            return None, (str(self.images / stem),
                          f"id {stem!r} makes an image path that escapes the images folder {self.real}")
        if size_known is None:  # a symlink or other special file: resolve it in full
            return self._resolve(os.path.join(self.images, name))
        if size_known == 0:  # a regular file directly in the folder: inside by construction
            path = os.path.join(self.images, name)
            return None, (path, f"image {path} is a zero-byte file")
        return os.path.join(self.real, name), None

    def by_channels(self, stem: str, channels: Sequence[str]) -> tuple[tuple[str, ...] | None, Any]:
        """One file per channel, each named ``<stem>_<channel>.<ext>``; the first missing one is the problem."""
        paths = []
        for channel in channels:
            path, problem = self.by_id(f"{stem}_{channel}")
            if problem is not None:
                return None, problem
            paths.append(path)
        return tuple(paths), None

    def locate(self, ident: str, rel: str | None, channels: Sequence[str]) -> tuple[Any, Any]:
        """A row's image: by its relative path ``rel``, by channel files, or by its id."""
        if rel is not None:
            return self.by_path(rel)
        return self.by_channels(ident, channels) if channels else self.by_id(ident)

    def _inside(self, real: str) -> bool:
        return real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)

    def _resolve(self, candidate: str) -> Located:
        real = os.path.realpath(candidate)
        if not self._inside(real):
            return None, (candidate, f"image path {candidate} escapes the images folder {self.real}")
        try:
            st = os.stat(real)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            return None, (candidate, f"image {candidate} not found")
        if st.st_size == 0:
            return None, (candidate, f"image {candidate} is a zero-byte file")
        return real, None


@dataclasses.dataclass(frozen=True)
class Rows:
    """The usable rows of the CSV, in CSV order.

    Attributes:
        keep: CSV row index of each usable row.
        paths: its image file, or its channel files (``--channels``).
    """

    keep: list[int]
    paths: list[str | tuple[str, ...]]

    def without(self, bad: set[int]) -> "Rows":
        """These rows less the CSV rows in ``bad``."""
        pos = [p for p, i in enumerate(self.keep) if i not in bad]
        return Rows([self.keep[p] for p in pos], [self.paths[p] for p in pos])


def resolve_rows(spec: BuildSpec, frame: Any, label_errors: Mapping[int, str], bad: BadRows,
                 skip: Collection[int] = ()) -> Rows:
    """Check each row's id, label and image file, in that order; keep the rows that pass.

    Args:
        spec: the build.
        frame: the CSV (:func:`read_table`).
        label_errors: CSV row -> why its label cannot be used.
        bad: where bad rows go.
        skip: CSV rows left out unchecked (``--exclude``); other rows keep their line numbers.

    Returns:
        The usable rows.

    Raises:
        TfkitError: a bad row without ``skip_bad``, no usable row at all, or a kept row
            without a group.
    """
    locator = ImageLocator(spec)
    rel_paths = frame[spec.path_col].tolist() if spec.path_col else None
    seen: dict[str, int] = {}
    keep: list[int] = []
    paths: list[Any] = []
    for i, ident in enumerate(frame[spec.id_col].tolist()):
        if i in skip:
            continue
        ident = ident.strip()
        reason = _id_problem(spec, ident, seen)
        if reason is None:
            seen[ident] = i
            reason = label_errors.get(i)
        if reason is None and rel_paths is not None and rel_paths[i].strip() in MISSING:
            reason = f"missing path in column {spec.path_col!r}"
        if reason is not None:
            bad.report(i, ident, None, reason)
            continue
        path, problem = locator.locate(ident, rel_paths[i].strip() if rel_paths is not None else None, spec.channels)
        if problem is not None:
            bad.report(i, ident, *problem)
            continue
        keep.append(i)
        paths.append(path)
    if not keep:
        raise TfkitError(f"CSV {spec.csv}: no usable rows (all {len(frame)} rows are bad; see --skip-bad)")
    _check_groups(spec, frame, keep)
    return Rows(keep, paths)


def _id_problem(spec: BuildSpec, ident: str, seen: Mapping[str, int]) -> str | None:
    if ident in MISSING:
        return f"missing id in column {spec.id_col!r}"
    if ident in seen:
        return f"duplicate id {ident!r} (first at line {seen[ident] + 2})"
    return None


def _check_groups(spec: BuildSpec, frame: Any, keep: list[int]) -> None:
    if not spec.group_col:
        return
    groups = frame[spec.group_col].tolist()
    ids = frame[spec.id_col].tolist()
    for i in keep:
        if groups[i].strip() in MISSING:
            raise TfkitError(f"{row_name(spec.csv, i, ids[i].strip())}: missing group in column {spec.group_col!r}")
