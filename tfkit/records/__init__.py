"""Fold-sharded TFRecords: the builder (images + CSV -> shards + manifest) and the reader.

One job per module, and only the reader needs TensorFlow:

* :mod:`~tfkit.records.builder`: :func:`build_records`, a short orchestration of the steps below.
* :mod:`~tfkit.records.spec`: :class:`BuildSpec`, the build's options validated once.
* :mod:`~tfkit.records.table`: the CSV: reading it, finding each row's image, bad rows.
* :mod:`~tfkit.records.targets`: classes and each row's label.
* :mod:`~tfkit.records.metadata`: metadata columns (kind, statistics, stored values).
* :mod:`~tfkit.records.examples`: the features of each example.
* :mod:`~tfkit.records.workers`: images in, framed records out, in row order
  (pass-through thread, re-encoding worker processes).
* :mod:`~tfkit.records.writer`: shard files written, hashed and named.
* :mod:`~tfkit.records.images`: JPEG headers, pass-through checks, decoding and re-encoding.
* :mod:`~tfkit.records.tfrecord`: ``tf.train.Example`` serialisation and TFRecord framing.
* :mod:`~tfkit.records.checksum`: CRC32C from the fastest implementation that loads.
* :mod:`~tfkit.records.shards`: shard file names (split, fold, shard index, count).
* :mod:`~tfkit.records.reader`: manifest, shard files, feature mapping, example parser
  (imports TensorFlow, inside its functions).
* :mod:`~tfkit.records.schemas`: known external schemas (SIIM-ISIC 2020).

Every name below is importable from ``tfkit.records`` as before the split; each is
loaded from its module on first use, so ``import tfkit.records`` (and building records)
never imports TensorFlow.

Example:
    >>> import tfkit.records
    >>> tfkit.records.parse_shard_name("train03-001-1234.tfrec")["fold"]
    3
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "builder": ("build_records", "sort_classes", "MISSING", "BuildSpec"),
    "images": ("IMAGE_EXTENSIONS", "VERIFY_MODES", "JpegHeader", "jpeg_header", "passes_through", "check_jpeg",
               "encode_image", "store_image", "store_channels", "StoredImage"),
    "tfrecord": ("tfrecord_frame", "feature_entry", "bytes_list_entry", "int64_list_entry", "float_list_entry",
                 "example_from_entries", "image_record"),
    "checksum": ("CRC32C_BACKENDS", "crc32c_backend", "crc32c", "use_crc32c_backend"),
    "shards": ("SHARD_RE", "shard_name", "parse_shard_name", "count_from_names"),
    "reader": ("load_manifest", "source_sizes", "shard_files", "FeatureMapping", "feature_spec", "make_parser",
               "make_image_decoder"),
    "schemas": ("SIIM_ISIC_2020",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
# the atomic folder moved to tfkit.utils (datasets and other stages use it too)
_ELSEWHERE = {"atomic_dir": "tfkit.utils", "glob_escape": "tfkit.utils"}

__all__ = sorted([*_HOME, *_ELSEWHERE])


def __getattr__(name: str) -> Any:
    """Load a public name from the module that holds it (PEP 562), on first use."""
    if name in _HOME:
        module = importlib.import_module(f"{__name__}.{_HOME[name]}")
    elif name in _ELSEWHERE:
        module = importlib.import_module(_ELSEWHERE[name])
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
