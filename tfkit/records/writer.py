"""Writing shard files: records appended in order, hashed, and named with their count when complete.

Writing and sha256 (both release the GIL) run in a thread of their own, in record
order, 16 records at a time, while the caller reads and frames the next ones: they
are half the CPU time of pass-through.

Example:
    >>> import contextlib, tempfile
    >>> with contextlib.ExitStack() as stack:
    ...     writer = ShardWriter(Path(tempfile.mkdtemp()), stack)
    ...     with writer.open("train", 0, 0) as shard:
    ...         shard.add(b"record")
    ...         shard.close()["file"]
    'train00-000-1.tfrec'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tfkit.records.shards import shard_name

BATCH = 16  # records handed to the writing thread at once
AHEAD = 8  # batches that may wait to be written (bounds the memory they hold)


def _write_all(fh: Any, digest: Any, records: list[bytes]) -> None:
    for rec in records:
        fh.write(rec)
        digest.update(rec)


class ShardWriter:
    """Opens shards in ``folder``, all written by one thread that ``stack`` shuts down.

    Args:
        folder: where the shards go (the build's temporary folder).
        stack: owns the writing thread.
    """

    def __init__(self, folder: Path, stack: contextlib.ExitStack) -> None:
        self.folder = folder
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="tfkit-writer")
        stack.callback(self.thread.shutdown, wait=True, cancel_futures=True)

    def open(self, split: str, fold: int, shard: int) -> "ShardFile":
        """A new shard (a hidden part file until it is closed)."""
        return ShardFile(self, split, fold, shard)


class ShardFile:
    """One shard being written; :meth:`close` renames it to its final name."""

    def __init__(self, writer: ShardWriter, split: str, fold: int, shard: int) -> None:
        self.writer, self.split, self.fold, self.shard = writer, split, fold, shard
        self.part = writer.folder / f".shard-{fold}-{shard}.part"
        self.fh = open(self.part, "wb")
        self.digest = hashlib.sha256()
        self.pending: list[bytes] = []
        self.writing: deque = deque()
        self.count = 0

    def __enter__(self) -> "ShardFile":
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None and not self.fh.closed:  # a failed build: stop writing, keep nothing
            for fut in self.writing:
                fut.cancel() or fut.exception()
            self.fh.close()

    def add(self, record: bytes) -> None:
        """Append one framed record."""
        self.pending.append(record)
        self.count += 1
        if len(self.pending) == BATCH:
            self.writing.append(self.writer.thread.submit(_write_all, self.fh, self.digest, self.pending))
            self.pending = []
            if len(self.writing) > AHEAD:
                self.writing.popleft().result()

    def close(self) -> dict | None:
        """Finish the shard: ``{"file", "fold", "count", "sha256"}``, or None (removed) when empty."""
        try:
            self.writing.append(self.writer.thread.submit(_write_all, self.fh, self.digest, self.pending))
            while self.writing:
                self.writing.popleft().result()
        finally:
            self.fh.close()
        if self.count == 0:
            self.part.unlink()
            return None
        name = shard_name(self.split, self.fold, self.shard, self.count)
        os.replace(self.part, self.writer.folder / name)
        return {"file": name, "fold": self.fold, "count": self.count, "sha256": self.digest.hexdigest()}
