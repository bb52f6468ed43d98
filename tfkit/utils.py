"""Small helpers every stage shares: the error type the CLI reports, atomic
writes of files and folders (nothing half-written ever looks complete), and seeding.

Example::

    with atomic_write("out/cv.json") as f:
        f.write("{}")
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator


class TfkitError(Exception):
    """A user-facing error: the CLI prints its one-line message and exits non-zero.

    The message should name the row, file or option at fault and say what was
    expected and what arrived.
    """


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path``
    only when the block finishes without an exception.

    Args:
        path: final file name.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: text encoding (ignored for binary mode).

    Yields:
        The open file object.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions open() would have.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import, rather
    # than racing other threads that create files.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False, what: str = "output folder") -> Iterator[Path]:
    """Build a folder under a hidden temporary name beside ``out``; rename it to ``out`` on success.

    A non-empty ``out`` is refused unless ``overwrite``; it is replaced only after the
    new contents are complete. On any exception (or a kill) ``out`` is untouched and
    the temporary folder is removed (or, after a kill, removed by the next run).

    Args:
        out: final folder.
        overwrite: allow replacing a non-empty ``out``.
        what: noun used in the error message.

    Yields:
        The temporary folder to fill.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "x"
        >>> with atomic_dir(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> sorted(p.name for p in out.iterdir())
        ['a.txt']
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TfkitError(f"{what} {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TfkitError(f"{what} {out} is not empty (pass --overwrite to replace its contents)")
    parent = out.absolute().parent
    tmp = parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(parent, out.name)
        tmp.mkdir()
    except OSError as e:  # a read-only place, a file on the way: one line, not a traceback
        raise TfkitError(f"{what} {out}: cannot create it ({e.strerror or e})") from None
    try:
        yield tmp
        old = None
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_tmp(parent: Path, name: str) -> None:
    # Leftovers of killed builds: .<name>.tmp-<pid>-<hex> whose pid is gone.
    for p in parent.glob(f".{glob_escape(name)}.tmp-*"):
        m = re.match(r".*\.tmp-(\d+)-[0-9a-f]+$", p.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def glob_escape(s: str) -> str:
    """``s`` with glob's special characters escaped, to match it literally in ``Path.glob``."""
    return re.sub(r"([*?\[])", r"[\1]", s)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays appear in metrics; json cannot serialise them.
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: str | os.PathLike, frame: Any, **kwargs: Any) -> None:
    """Write a pandas DataFrame to CSV atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_write(path) as f:
        frame.to_csv(f, **kwargs)


def read_id_csv(path: str | os.PathLike, id_col: str, where: str, missing: str, id_hint: str = "") -> Any:
    """A CSV of one row per id (ids read as strings), checked: the file, its id column, each id once.

    Args:
        path: the CSV.
        id_col: its id column.
        where: the start of each message, naming the option and the file (e.g. ``"train.pseudo sub.csv"``).
        missing: the whole message when the file does not exist.
        id_hint: said after the id column's name, e.g. ``" (predict.id_column)"``.

    Returns:
        The DataFrame.

    Raises:
        TfkitError: one line: no such file, no id column (the columns listed), or an id twice (named).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "sub.csv")
        >>> _ = Path(path).write_text("id,p\\n007,0.5\\n007,0.1\\n")
        >>> read_id_csv(path, "id", "--subs sub.csv", "--subs: file not found")
        Traceback (most recent call last):
        ...
        tfkit.utils.TfkitError: --subs sub.csv: id '007' appears twice
    """
    import pandas as pd

    if not Path(path).is_file():
        raise TfkitError(missing)
    frame = pd.read_csv(path, dtype={id_col: str})
    if id_col not in frame.columns:
        raise TfkitError(f"{where}: no id column {id_col!r}{id_hint}; columns: {', '.join(frame.columns)}")
    dup = frame[id_col].duplicated()
    if dup.any():
        raise TfkitError(f"{where}: id {frame[id_col][dup].iloc[0]!r} appears twice")
    return frame


def prepare_out_dir(path: str | os.PathLike, overwrite: bool, what: str = "output folder") -> Path:
    """Create ``path`` or refuse a non-empty one unless ``overwrite``.

    Raises:
        TfkitError: the folder exists, is not empty and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TfkitError(f"{what} {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise TfkitError(f"{what} {path} is not empty (pass --overwrite to replace its contents)")
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only place, a file on the way: one line, not a traceback
        raise TfkitError(f"{what} {path}: cannot create it ({e.strerror or e})") from None
    return path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) TensorFlow/Keras."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(seed)
    elif "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(seed)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display on
    servers, CI or Kaggle workers), imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically, close it, return the path.

    Example::

        plt = pyplot()
        fig, ax = plt.subplots(); ax.plot([1, 2])
        save_figure(fig, "out/curve.png")
    """
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path
