"""Reading records: the manifest, the shard files of some folds, and the example parser.

The only module of ``tfkit.records`` that imports TensorFlow (inside its functions:
for ``gs://`` paths and the parser), so building records never pays for it.

Example (a records folder written by ``tfkit build-records``)::

    files = shard_files("records", folds=[0])
    parse = make_parser(load_manifest("records"))
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping

from tfkit.records.shards import MANIFEST_FILE, SOURCE_SIZES, parse_shard_name
from tfkit.utils import TfkitError, read_json


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def load_manifest(records_dir: str | os.PathLike) -> dict:
    """Read ``manifest.json`` of a records folder (local or ``gs://`` via ``tf.io.gfile``).

    Args:
        records_dir: folder written by :func:`build_records` (or the manifest path itself).

    Returns:
        The manifest dict.

    Example (records of the digits)::

        load_manifest("records")["classes"]  # ['0', '1', ..., '9']
    """
    import json

    path = str(records_dir)
    if not path.endswith(".json"):
        path = path.rstrip("/") + "/" + MANIFEST_FILE
    if _is_remote(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise TfkitError(f"manifest {path} not found")
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    if not os.path.isfile(path):
        raise TfkitError(f"manifest {path} not found (is {records_dir} a folder written by tfkit build-records?)")
    return read_json(path)


def source_sizes(records_dir: str | os.PathLike) -> Any:
    """Each image's size before it was stored (the file's own size, upright), from ``sizes.csv``.

    The stored size is in the manifest (``image.size``) and in every example; this is
    the size of the files the records were built from, which is what an input size is
    chosen from.

    Args:
        records_dir: folder written by :func:`~tfkit.records.builder.build_records` (local or ``gs://``).

    Returns:
        pandas DataFrame with columns ``id`` (str), ``height``, ``width`` (int), in file order.

    Raises:
        TfkitError: no ``sizes.csv`` (records built before tfkit recorded it).

    Example (records of the digits)::

        source_sizes("records").value_counts(["height", "width"])  # (8, 8): 1437
    """
    import pandas as pd

    path = str(records_dir).rstrip("/") + "/" + SOURCE_SIZES
    if _is_remote(path):
        import tensorflow as tf

        found = tf.io.gfile.exists(path)
        opener = tf.io.gfile.GFile
    else:
        found, opener = os.path.isfile(path), open
    if not found:
        raise TfkitError(f"{path} not found: records built before tfkit recorded the original image sizes "
                         "(build them again to see them)")
    with opener(path) as f:
        return pd.read_csv(f, dtype={"id": str, "height": "int64", "width": "int64"}, keep_default_na=False)


def shard_files(
    records_dir: str | os.PathLike, folds: Iterable[int] | None = None, split: str | None = None
) -> list[str]:
    """Sorted shard paths of a records folder, optionally only some folds / one split.

    Also reads other tools' names such as ``train00-2182.tfrec`` (fold from the digits
    after the split name, count after the last dash).

    Args:
        records_dir: folder with ``*.tfrec`` files (local or ``gs://``).
        folds: keep only these folds (from the file names); None keeps all.
        split: keep only files whose name starts with this split (``train``/``test``).

    Returns:
        Sorted list of file paths.

    Example (records of the digits)::

        shard_files("records", folds=[0, 1])
        # ['records/train00-000-288.tfrec', 'records/train01-000-287.tfrec']
    """
    base = str(records_dir).rstrip("/")
    if _is_remote(base):
        import tensorflow as tf

        names = [os.path.basename(p) for p in tf.io.gfile.glob(base + "/*.tfrec*")]
    else:
        if not os.path.isdir(base):
            raise TfkitError(f"records folder {base} not found")
        names = [n for n in os.listdir(base) if n.endswith((".tfrec", ".tfrecord"))]
    wanted = None if folds is None else {int(f) for f in folds}
    files = []
    for n in sorted(names):
        info = parse_shard_name(n)
        if info is None:
            continue
        if split is not None and info["split"] != split:
            continue
        if wanted is not None and info["fold"] not in wanted:
            continue
        files.append(f"{base}/{n}")
    return files


@dataclasses.dataclass(frozen=True)
class FeatureMapping:
    """Which keys and dtypes of a TFRecord schema feed tfkit's parsed fields.

    Args:
        image: key of the encoded image bytes (a list of one PNG per channel when ``channels``).
        id: key of the example id (``id_dtype`` ``"string"`` or ``"int64"``; ints become strings).
        label: key of the label (None: always -1): an integer class index (single task;
            missing in an example -> -1), an int64 list of positive class indices
            (``"multilabel"``) or a float list of targets (``"regression"``).
        group: key of the group (None: the id).
        fold: key of the fold (None: -1).
        id_dtype, group_dtype: ``"string"`` or ``"int64"``.
        meta: ``{name: (key, kind)}`` with kind ``"numeric"`` (read as float32; int64
            sources give ``"numeric_int64"``) or ``"categorical"`` (int64 index).
        task: ``"single"``, ``"multilabel"`` or ``"regression"``.
        n_labels: classes (multilabel) or targets (regression) per example.
        channels: 0 for one encoded image; C for C single-channel PNGs.

    Example:
        >>> m = FeatureMapping(image="img", id="name", label="y", group=None)
        >>> m.group is None, m.fold
        (True, 'fold')
    """

    image: str = "image"
    id: str = "id"
    label: str | None = "label"
    group: str | None = "group"
    fold: str | None = "fold"
    id_dtype: str = "string"
    group_dtype: str = "string"
    meta: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    task: str = "single"
    n_labels: int = 0
    channels: int = 0

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "FeatureMapping":
        """The mapping of records written by :func:`build_records`."""
        meta = {c: (f"meta/{c}", s["kind"]) for c, s in (manifest.get("metadata") or {}).items()}
        task = manifest.get("task") if manifest.get("task") in ("multilabel", "regression") else "single"
        names = manifest.get("targets") if task == "regression" else manifest.get("classes")
        channels = len((manifest.get("image") or {}).get("channel_names") or ())
        label = "target" if task == "regression" else "label"
        return cls(label=label, meta=meta, task=task, n_labels=len(names or ()), channels=channels)


def feature_spec(mapping: FeatureMapping) -> dict:
    """``tf.io.parse_single_example`` feature spec for a mapping (defaults for optional keys).

    Example::

        spec = feature_spec(FeatureMapping())  # {"image": FixedLenFeature([], tf.string), ...}
    """
    import tensorflow as tf

    def scalar(dtype: str, default: Any) -> Any:
        tfd = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[dtype]
        return tf.io.FixedLenFeature([], tfd, default_value=default)

    spec = {mapping.image: tf.io.FixedLenFeature([mapping.channels] if mapping.channels else [], tf.string)}
    spec[mapping.id] = scalar(mapping.id_dtype, "" if mapping.id_dtype == "string" else -1)
    if mapping.label and mapping.task == "multilabel":
        spec[mapping.label] = tf.io.VarLenFeature(tf.int64)
    elif mapping.label and mapping.task == "regression":
        spec[mapping.label] = tf.io.FixedLenFeature([mapping.n_labels], tf.float32, [float("nan")] * mapping.n_labels)
    elif mapping.label:
        spec[mapping.label] = scalar("int64", -1)
    if mapping.group:
        spec[mapping.group] = scalar(mapping.group_dtype, "" if mapping.group_dtype == "string" else -1)
    if mapping.fold:
        spec[mapping.fold] = scalar("int64", -1)
    for key, kind in mapping.meta.values():
        if kind == "numeric":
            spec[key] = scalar("float32", float("nan"))
        else:  # categorical or numeric_int64
            spec[key] = scalar("int64", -1)
    return spec


def make_parser(manifest_or_mapping: Mapping[str, Any] | FeatureMapping | None = None) -> Callable:
    """Parse function for one serialized example -> tfkit's standard dict.

    Args:
        manifest_or_mapping: a tfkit manifest dict, a :class:`FeatureMapping`
            (e.g. :data:`SIIM_ISIC_2020`), or None for tfkit records without metadata.

    Returns:
        ``fn(serialized scalar tf.string) -> dict`` with ``image`` (encoded bytes; ``[C]``
        PNGs for multi-channel records, see :func:`make_image_decoder`), ``id`` (tf.string),
        ``label``, ``group`` (tf.string), ``fold`` (int64) and ``meta`` ({col: float32
        numeric | int64 categorical}). ``label`` is the int64 class index (-1 when absent)
        for single-label records, a float32 multi-hot ``[n_classes]`` for multi-label ones
        and float32 targets ``[n_targets]`` (NaN when unknown) for regression. Graph-safe
        (usable in ``Dataset.map``).

    Example::

        ds = tf.data.TFRecordDataset(shard_files("records")).map(make_parser(load_manifest("records")))
    """
    import tensorflow as tf

    if isinstance(manifest_or_mapping, FeatureMapping):
        mapping = manifest_or_mapping
    else:
        mapping = FeatureMapping.from_manifest(manifest_or_mapping or {})
    spec = feature_spec(mapping)

    def as_str(x: Any, dtype: str) -> Any:
        return tf.strings.as_string(x) if dtype == "int64" else x

    def parse(serialized: Any) -> dict:
        ex = tf.io.parse_single_example(serialized, spec)
        ident = as_str(ex[mapping.id], mapping.id_dtype)
        meta = {}
        for name, (key, kind) in mapping.meta.items():
            v = ex[key]
            meta[name] = tf.cast(v, tf.float32) if kind == "numeric_int64" else v
        return {
            "image": ex[mapping.image],
            "id": ident,
            "label": _label(tf, ex, mapping),
            "group": as_str(ex[mapping.group], mapping.group_dtype) if mapping.group else ident,
            "fold": ex[mapping.fold] if mapping.fold else tf.constant(-1, tf.int64),
            "meta": meta,
        }

    return parse


def _label(tf: Any, ex: Mapping[str, Any], mapping: FeatureMapping) -> Any:
    if not mapping.label:
        return tf.constant(-1, tf.int64)
    if mapping.task == "multilabel":  # positive indices -> multi-hot (none: all zeros)
        return tf.reduce_sum(tf.one_hot(ex[mapping.label].values, mapping.n_labels, dtype=tf.float32), axis=0)
    return ex[mapping.label]


def make_image_decoder(manifest: Mapping[str, Any] | None = None) -> Callable:
    """Decode function for the parsed ``image`` of a tfkit manifest's records.

    Args:
        manifest: the records' manifest (None: JPEG, 3 channels).

    Returns:
        ``fn(image) -> [H, W, C]`` tensor: uint8 RGB for JPEG records; for multi-channel
        records the channel PNGs stacked in channel order, uint8, or uint16 when the
        manifest's ``bit_depth`` is 16 (8-bit channels then scaled by 257, as TensorFlow
        decodes them). Graph-safe.

    Example::

        decode = make_image_decoder(manifest)
        ds = ds.map(lambda ex: {**ex, "image": decode(ex["image"])})
    """
    import tensorflow as tf

    image = (manifest or {}).get("image") or {}
    names = image.get("channel_names") or ()
    if not names:
        return lambda data: tf.io.decode_jpeg(data, channels=3)
    dtype = tf.uint16 if image.get("bit_depth") == 16 else tf.uint8

    def decode(data: Any) -> Any:
        return tf.stack([tf.io.decode_png(data[k], channels=1, dtype=dtype)[..., 0] for k in range(len(names))], -1)

    return decode
