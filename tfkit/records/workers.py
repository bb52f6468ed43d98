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
from typing import Any, Callable, Iterable, Iterator, Sequence

from tfkit.records.images import bad_image_reason, check_jpeg, encode_image, jpeg_header, passes_through, read_image_file

_Encoded = tuple[int, bytes | None, int, int, bool, str | None]


def _encode_task(task: tuple[int, str, int | None, int, str]) -> _Encoded:
    """Worker (process): re-encode one image; any failure becomes a per-row reason."""
    pos, path, size, quality, verify = task
    try:
        data, h, w, passed = encode_image(path, size, quality, verify)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image, reported per row
        return pos, None, 0, 0, False, bad_image_reason(e)
    return pos, data, h, w, passed, None

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


def _encode_chunk(tasks: list[tuple[int, str, int | None, int, str]]) -> list[_Encoded]:
    """Worker (process): re-encode a run of images (one message per run, not per image)."""
    return [_encode_task(t) for t in tasks]


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


def records_in_order(
    rows: Sequence[int],
    paths: Sequence[str],
    frame: Callable[[int, bytes, int, int], bytes],
    size: int | None,
    quality: int,
    verify: str,
    n_workers: int,
    pool: Callable[[], Any] | None,
    stack: contextlib.ExitStack,
) -> Iterator[tuple[int, bytes | None, int, int, bool, str | None]]:
    """Each row's framed record, or the reason it is bad, in ``rows`` order.

    This thread reads every file (the kernel prefetching the next ones) and parses
    its JPEG header. A JPEG that passes through never leaves this process: it is
    checked (``--verify decode``: by ``n_workers`` threads, as Pillow releases the GIL
    while decoding) and framed here, so pass-through runs at the pace of a plain copy.
    Images to re-encode go, a batch at a time, to the ``n_workers`` processes of
    ``pool()`` (re-encoded here when ``pool`` is None). Measured alternatives: a
    thread pool for reading and framing was 30-50% slower (GIL hand-offs), and a
    message per image to the workers 25% slower.

    Yields:
        ``(row, framed record or None, height, width, passed_through, error or None)``.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    batch = max(1, min(32, len(rows) // (n_workers * 8)))  # as imap's chunksize would
    window = max(128, 3 * batch * n_workers)  # rows in flight: keeps workers busy
    left = len(rows)  # rows not admitted yet: batches shrink near the end (guided
    # scheduling) so no worker is still busy with a full batch while the others idle
    max_bytes = 256 << 20  # and a bound on the bytes they hold
    prefetch = _prefetcher((paths[j] for j in rows), ahead=64)
    checkers = functools.cache(lambda: stack.enter_context(ThreadPoolExecutor(n_workers, "tfkit-verify")))
    todo = iter(rows)
    out: deque = deque()  # per row, in order: (kind, item, bytes held)
    held = 0
    filling: dict | None = None  # the batch of re-encode tasks not sent yet

    def send(holder: dict) -> None:
        nonlocal filling
        holder["result"] = pool().apply_async(_encode_chunk, (holder["tasks"],))
        if holder is filling:
            filling = None

    def admit(j: int) -> tuple[str, Any, int]:
        nonlocal filling, left
        prefetch()
        left -= 1
        try:
            raw = read_image_file(paths[j])
            header = jpeg_header(raw)
            if passes_through(header, size):
                if verify == "decode":
                    return "check", (j, raw, header, checkers().submit(check_jpeg, raw, header, verify)), len(raw)
                check_jpeg(raw, header, verify)
                rec = frame(j, raw, header.height, header.width)
                return "done", (j, rec, header.height, header.width, True, None), len(rec)
        except Exception as e:  # noqa: BLE001 - any read/decoder failure is a bad image, reported per row
            return "done", (j, None, 0, 0, False, bad_image_reason(e)), 0
        task = (j, paths[j], size, quality, verify)
        if pool is None:
            return "task", task, 0
        if filling is None:
            filling = {"tasks": [], "result": None}
        filling["tasks"].append(task)
        item = (filling, len(filling["tasks"]) - 1)
        if len(filling["tasks"]) >= min(batch, 1 + left // (2 * n_workers)):
            send(filling)
        return "batch", item, 0

    while True:
        while len(out) < window and held < max_bytes:
            j = next(todo, None)
            if j is None:
                break
            out.append(admit(j))
            held += out[-1][2]
        if not out:
            return
        kind, item, nbytes = out.popleft()
        held -= nbytes
        if kind == "done":
            yield item
            continue
        if kind == "check":
            j, raw, header, fut = item
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - as above
                yield j, None, 0, 0, False, bad_image_reason(e)
                continue
            yield j, frame(j, raw, header.height, header.width), header.height, header.width, True, None
            continue
        if kind == "task":
            j, data, h, w, passed, err = _encode_task(item)
        else:
            holder, k = item
            if holder["result"] is None:
                send(holder)  # the next row to write waits on a batch that is not full yet
            if not isinstance(holder["result"], list):
                holder["result"] = holder["result"].get()
            j, data, h, w, passed, err = holder["result"][k]
        yield j, (frame(j, data, h, w) if err is None else None), h, w, passed, err
