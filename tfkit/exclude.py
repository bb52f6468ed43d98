"""Lists of image ids to leave out of a training set (``build-records --exclude``,
``tfkit clean``).

A list is a CSV with an id column (named like the training CSV's id column, or
``id``), such as the ``flagged.csv`` that ``tfkit clean`` writes. Every listed id
must exist in the CSV it is applied to: a list made for another dataset (or
ids spelled differently) fails in one line instead of silently excluding nothing.

Example:
    >>> frame = pd.DataFrame({"id": ["a", "b", "c"], "label": [0, 1, 0]})
    >>> without_ids(frame, {"b"}, "id", "train.csv")["id"].tolist()
    ['a', 'c']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from tfkit.utils import TfkitError


def read_id_list(path: str | os.PathLike, id_col: str = "id") -> list[str]:
    """The ids listed in ``path`` (column ``id_col``, else ``id``), stripped, in file order.

    Args:
        path: CSV file.
        id_col: preferred id column name.

    Returns:
        The ids (strings).

    Raises:
        TfkitError: missing file, unreadable CSV or no id column.
    """
    path = Path(path)
    if not path.is_file():
        raise TfkitError(f"--exclude {path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for malformed files
        raise TfkitError(f"--exclude {path}: cannot read CSV: {str(e).splitlines()[0]}")
    col = id_col if id_col in frame.columns else "id"
    if col not in frame.columns:
        raise TfkitError(f"--exclude {path}: no id column {id_col!r} (columns: {', '.join(frame.columns)})")
    return [str(i).strip() for i in frame[col].tolist()]


def checked_ids(ids: Iterable[str], known: Iterable[str], list_name: str, source: str) -> frozenset[str]:
    """``ids`` as a set, after checking each one is among ``known``.

    Args:
        ids: the listed ids.
        known: the ids of the table they apply to.
        list_name: the list, for the message.
        source: the table, for the message.

    Raises:
        TfkitError: an id that ``known`` does not hold (the first is named).
    """
    wanted, have = frozenset(ids), frozenset(known)
    unknown = sorted(wanted - have)
    if unknown:
        raise TfkitError(f"{list_name}: {len(unknown)} listed id(s) are not in {source} (e.g. {unknown[0]!r}); "
                         "is it the list made for this CSV?")
    return wanted


def excluded_rows(path: str | os.PathLike, ids: pd.Series, id_col: str, source: str | os.PathLike) -> frozenset[int]:
    """Positions of the rows of a table whose id the list ``path`` names (``build-records --exclude``).

    Args:
        path: the id list.
        ids: the table's id column (values are stripped).
        id_col: its name (the list's preferred id column).
        source: the table, for the message.

    Returns:
        Row positions, 0-based.

    Raises:
        TfkitError: a listed id that the table does not hold.
    """
    key = ids.astype(str).str.strip()
    listed = checked_ids(read_id_list(path, id_col), key, f"--exclude {path}", str(source))
    return frozenset(int(i) for i in (key.isin(listed)).to_numpy().nonzero()[0])


def without_ids(frame: pd.DataFrame, ids: Iterable[str], id_col: str, source: str) -> pd.DataFrame:
    """``frame`` without the rows whose ``id_col`` is in ``ids`` (every id must be present).

    Args:
        frame: the table (e.g. a training CSV read with ``dtype=str``).
        ids: ids to drop.
        id_col: its id column.
        source: the table's name, for the message.

    Returns:
        The remaining rows, order kept.
    """
    if id_col not in frame.columns:
        raise TfkitError(f"{source}: no id column {id_col!r} (columns: {', '.join(frame.columns)})")
    key = frame[id_col].astype(str).str.strip()
    drop = checked_ids([str(i) for i in ids], key, "ids to drop", source)
    return frame[~key.isin(drop)].reset_index(drop=True)
