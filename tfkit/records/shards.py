"""The files of a records folder: shard names (``train03-001-1234.tfrec`` = split, fold, shard
index, example count) beside ``manifest.json``, ``folds.csv`` and ``sizes.csv``.

Each shard holds one fold and carries fold, shard index and example count in its name
(test: ``test-000-359.tfrec``), so a fold is a set of files and counts are known without
reading them. Other tools' names such as ``train00-2182.tfrec`` parse too (fold from the
digits after the split name, count after the last dash).

Example:
    >>> shard_name("train", 3, 1, 1234)
    'train03-001-1234.tfrec'
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from tfkit.utils import TfkitError

MANIFEST_FILE = "manifest.json"  # classes, task, image format, features, folds, shards (sha256)
FOLDS_FILE = "folds.csv"  # id,fold of every example, in file order
SOURCE_SIZES = "sizes.csv"  # id,height,width of each image file before resizing (upright)

SHARD_RE = re.compile(r"^(?P<split>[A-Za-z_]+?)(?P<fold>\d+)?(?:-(?P<shard>\d+))?-(?P<count>\d+)\.tfrec(?:ord)?$")


def shard_name(split: str, fold: int, shard: int, count: int) -> str:
    """The file name of one shard; the fold is left out for the test split (fold -1).

    Example:
        >>> shard_name("test", -1, 0, 359)
        'test-000-359.tfrec'
    """
    if split == "train":
        return f"{split}{fold:02d}-{shard:03d}-{count}.tfrec"
    return f"{split}-{shard:03d}-{count}.tfrec"


def parse_shard_name(name: str) -> dict | None:
    """Split a shard file name into split, fold, shard and count (None if it does not match).

    Example:
        >>> parse_shard_name("train03-001-1234.tfrec")
        {'split': 'train', 'fold': 3, 'shard': 1, 'count': 1234}
        >>> parse_shard_name("test-000-20.tfrec")["fold"] is None
        True
    """
    m = SHARD_RE.match(os.path.basename(name))
    if not m:
        return None
    g = m.groupdict()
    return {
        "split": g["split"],
        "fold": int(g["fold"]) if g["fold"] is not None else None,
        "shard": int(g["shard"]) if g["shard"] is not None else None,
        "count": int(g["count"]),
    }


def count_from_names(files: Iterable[str]) -> int:
    """Total examples of shard files, read from their names (no file is opened).

    Raises:
        TfkitError: a name carries no count.

    Example:
        >>> count_from_names(["train00-000-10.tfrec", "train01-000-12.tfrec"])
        22
    """
    total = 0
    for f in files:
        info = parse_shard_name(f)
        if info is None:
            raise TfkitError(f"shard name {os.path.basename(f)} carries no count (expected e.g. train03-001-1234.tfrec)")
        total += info["count"]
    return total
