"""Images in, framed records out, in row order: the reading thread and the re-encoding workers.

Pass-through JPEGs (already upright 8-bit RGB of the wanted size, judged from their
headers) never leave the parent: one thread reads them with kernel prefetching,
checks them and frames them. Images to re-encode go in batches to worker processes,
which never import TensorFlow (3-7 s each) and use Pillow. Results come back strictly
in the order asked for, so the output bytes do not depend on the number of workers.

Pool start method: ``fork`` when TensorFlow has not been imported in this process (a
forked child costs milliseconds and inherits Pillow/NumPy already imported);
``forkserver`` when it has (forking a process whose TensorFlow thread pools are running
can deadlock the child); ``spawn`` where fork does not exist. A script read from stdin
(``python - < build.py``) has no file that such children could import again, so there
the workers are threads.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from tfkit.records.images import (
    bad_image_reason,
    check_jpeg,
    jpeg_header,
    passes_through,
    read_image_file,
    store_channels,
    store_image,
)

class Encoded(NamedTuple):
    """One row's image as a worker or the reading thread returns it (``data`` None when it is bad)."""

    row: int
    data: bytes | None  # encoded image; the framed record once :class:`RecordStream` yields it
    height: int
    width: int
    passed: bool  # stored byte-for-byte (pass-through)
    error: str | None  # why the image cannot be used
    source_height: int = 0  # the file's own size, upright
    source_width: int = 0
    bit_depth: int = 8


class EncodeOptions(NamedTuple):
    """How images are stored (see :func:`tfkit.records.images.encode_image`)."""

    size: int | None
    quality: int
    verify: str


def encode_row(row: int, path: str | tuple[str, ...], options: EncodeOptions) -> Encoded:
    """Re-encode one image, or the channel files of one image (in a worker); any failure becomes the row's reason."""
    try:
        if isinstance(path, tuple):
            img = store_channels(path, options.size)
        else:
            img = store_image(path, options.size, options.quality, options.verify)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image, reported per row
        return Encoded(row, None, 0, 0, False, bad_image_reason(e))
    return Encoded(row, img.data, img.height, img.width, img.passed_through, None, img.source_height,
                   img.source_width, img.bit_depth)


def _encode_chunk(tasks: list[tuple[int, str, EncodeOptions]]) -> list[Encoded]:
    """Worker (process): re-encode a run of images (one message per run, not per image)."""
    return [encode_row(*t) for t in tasks]


def main_reimportable() -> bool:
    """Whether a ``spawn``/``forkserver`` child can import ``__main__`` again.

    It cannot when the main script has no file (``python - < script.py``: its
    ``__file__`` is ``"<stdin>"``): each child then dies at start and the pool waits
    for ever.
    """
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.isfile(path)


def start_method() -> str:
    methods = mp.get_all_start_methods()
    if "fork" in methods and "tensorflow" not in sys.modules:
        return "fork"
    if "forkserver" in methods:
        return "forkserver"
    return "spawn"


def worker_pool(n_workers: int, stack: contextlib.ExitStack) -> Callable[[], Any] | None:
    """The re-encoding pool, started on first use and closed with ``stack``; None for one worker.

    Args:
        n_workers: processes (threads where processes cannot start, see the module doc).
        stack: owns the pool's lifetime.

    Returns:
        ``pool()`` giving the started pool, or None when ``n_workers`` is 1 (the caller
        re-encodes in its own thread).
    """
    if n_workers <= 1:
        return None
    ctx = mp.get_context(start_method())
    if ctx.get_start_method() != "fork" and not main_reimportable():
        # Threads instead of processes (Pillow releases the GIL while it decodes,
        # resizes and encodes): same bytes, less parallel.
        from multiprocessing.pool import ThreadPool

        pool = functools.cache(lambda: stack.enter_context(ThreadPool(n_workers)))
    else:
        pool = functools.cache(lambda: stack.enter_context(ctx.Pool(n_workers)))
    if ctx.get_start_method() == "fork":
        pool()  # fork before any thread starts (tqdm's monitor, the I/O threads)
    return pool


def _prefetcher(paths: Iterable[str], ahead: int) -> Callable[[], None]:
    """Ask the kernel to start reading files ``ahead`` rows before they are needed.

    A single reading thread otherwise waits for the disk on every file; the kernel
    reads the hinted files in parallel in the background (on this project's cloud SSD
    a cold pass-through went from 3,000 to 4,400 img/s). A no-op where
    ``posix_fadvise`` does not exist.
    """
    if not hasattr(os, "posix_fadvise"):
        return lambda: None
    todo = iter(paths)

    def advise_next() -> None:
        path = next(todo, None)
        if path is None:
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # the read reports it
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    for _ in range(ahead):
        advise_next()
    return advise_next


def _files(path: str | tuple[str, ...]) -> tuple[str, ...]:
    return path if isinstance(path, tuple) else (path,)


class _Batch:
    """Re-encoding tasks sent to the pool together; ``result`` is the async result, then the list."""

    __slots__ = ("tasks", "result")

    def __init__(self) -> None:
        self.tasks: list[tuple[int, str, EncodeOptions]] = []
        self.result: Any = None


class RecordStream:
    """Each row's framed record, or the reason it is bad, in ``rows`` order (iterate once).

    This thread reads every file (the kernel prefetching the next ones) and parses
    its JPEG header. A JPEG that passes through never leaves this process: it is
    checked (``--verify decode``: by ``n_workers`` threads, as Pillow releases the GIL
    while decoding) and framed here, so pass-through runs at the pace of a plain copy.
    Images to re-encode go, a batch at a time, to the ``n_workers`` processes of
    ``pool()`` (re-encoded here when ``pool`` is None). Measured alternatives: a
    thread pool for reading and framing was 30-50% slower (GIL hand-offs), and a
    message per image to the workers 25% slower.

    Args:
        rows: positions into ``paths``, in the order records are wanted.
        paths: image file of each position.
        frame: ``frame(position, image bytes, height, width)`` -> framed record.
        options: how images are stored.
        n_workers: worker processes (and checking threads).
        pool: :func:`worker_pool`'s result.
        stack: owns the checking threads.

    Yields:
        :class:`Encoded` with the framed record as ``data`` (None when ``error``).
    """

    MAX_BYTES = 256 << 20  # bound on the bytes of the records held in flight

    def __init__(self, rows: Sequence[int], paths: Sequence[str], frame: Callable[[int, bytes, int, int], bytes],
                 options: EncodeOptions, n_workers: int, pool: Callable[[], Any] | None,
                 stack: contextlib.ExitStack) -> None:
        self.rows, self.paths, self.frame, self.options = rows, paths, frame, options
        self.n_workers, self.pool = n_workers, pool
        self.batch = max(1, min(32, len(rows) // (n_workers * 8)))  # as imap's chunksize would
        self.window = max(128, 3 * self.batch * n_workers)  # rows in flight: keeps workers busy
        # rows not admitted yet: batches shrink near the end (guided scheduling) so no
        # worker is still busy with a full batch while the others idle
        self.left = len(rows)
        self.prefetch = _prefetcher((p for j in rows for p in _files(paths[j])), ahead=64)
        self.checkers = functools.cache(
            lambda: stack.enter_context(ThreadPoolExecutor(n_workers, "tfkit-verify")))
        self.filling: _Batch | None = None  # the batch of re-encode tasks not sent yet

    def __iter__(self) -> Iterator[Encoded]:
        todo = iter(self.rows)
        out: deque = deque()  # per row, in order: (kind, item, bytes held)
        held = 0
        while True:
            while len(out) < self.window and held < self.MAX_BYTES:
                j = next(todo, None)
                if j is None:
                    break
                out.append(self._admit(j))
                held += out[-1][2]
            if not out:
                return
            kind, item, nbytes = out.popleft()
            held -= nbytes
            yield self._finish(kind, item)

    def _admit(self, j: int) -> tuple[str, Any, int]:
        """Start row ``j``: check and frame it here, or queue it for a worker."""
        self.prefetch()
        self.left -= 1
        path = self.paths[j]
        started = None if isinstance(path, tuple) else self._pass_through(j, path)  # channel files: re-encoded
        if started is not None:
            return started
        task = (j, path, self.options)
        if self.pool is None:
            return "task", task, 0
        if self.filling is None:
            self.filling = _Batch()
        batch = self.filling
        batch.tasks.append(task)
        if len(batch.tasks) >= min(self.batch, 1 + self.left // (2 * self.n_workers)):
            self._send(batch)
        return "batch", (batch, len(batch.tasks) - 1), 0

    def _pass_through(self, j: int, path: str) -> tuple[str, Any, int] | None:
        """Read row ``j``'s file; a JPEG stored as it is is checked (or queued for a check) and framed.

        Returns:
            ``(kind, item, bytes held)``, or None when the image must be re-encoded.
        """
        verify = self.options.verify
        try:
            raw = read_image_file(path)
            header = jpeg_header(raw)
            if not passes_through(header, self.options.size):
                return None
            if verify == "decode":
                return "check", (j, raw, header, self.checkers().submit(check_jpeg, raw, header, verify)), len(raw)
            check_jpeg(raw, header, verify)
        except Exception as e:  # noqa: BLE001 - any read/decoder failure is a bad image, reported per row
            return "done", Encoded(j, None, 0, 0, False, bad_image_reason(e)), 0
        h, w = header.height, header.width
        rec = self.frame(j, raw, h, w)
        return "done", Encoded(j, rec, h, w, True, None, h, w), len(rec)

    def _send(self, batch: _Batch) -> None:
        batch.result = self.pool().apply_async(_encode_chunk, (batch.tasks,))
        if batch is self.filling:
            self.filling = None

    def _finish(self, kind: str, item: Any) -> Encoded:
        """Row's result, waiting for its check or its worker when needed."""
        if kind == "done":
            return item
        if kind == "check":
            j, raw, header, fut = item
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - as above
                return Encoded(j, None, 0, 0, False, bad_image_reason(e))
            h, w = header.height, header.width
            return Encoded(j, self.frame(j, raw, h, w), h, w, True, None, h, w)
        if kind == "task":
            res = encode_row(*item)
        else:
            batch, k = item
            if batch.result is None:
                self._send(batch)  # the next row to write waits on a batch that is not full yet
            if not isinstance(batch.result, list):
                batch.result = batch.result.get()
            res = batch.result[k]
        return res if res.error is not None else res._replace(data=self.frame(res.row, res.data, res.height, res.width))
