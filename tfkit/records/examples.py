"""The features of each example: id, group, label (or target), fold and metadata, then the image.

The label is stored by task: ``label`` int64 (single), ``label`` int64 list of positive
class indices (multilabel) or ``target`` float list (regression). The image is one
encoded image, or one PNG per channel (a BytesList in channel order).

Example:
    >>> enc = ExampleEncoder(ids=["a"], groups=["g"], labels=[1], folds=[0], meta={}, meta_spec={})
    >>> enc.record(0, b"jpeg", 4, 4) == image_record(enc.entries(0), b"jpeg", 4, 4)
    True
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tfkit.records.metadata import MetadataEncoder
from tfkit.records.tfrecord import (
    bytes_list_entry,
    example_from_entries,
    feature_entry,
    float_list_entry,
    image_record,
    int64_list_entry,
    tfrecord_frame,
)


class ExampleEncoder:
    """Frames the record of the row at each position of a build (positions index every list).

    Args:
        ids, groups: per position.
        labels: per position, the class index, the tuple of positive class indices, or
            the tuple of targets (as ``kind`` says).
        folds: per position (-1 for the test split).
        meta: ``{col: per-position cell text}`` of the metadata columns.
        meta_spec: :func:`tfkit.records.metadata.metadata_spec` of those columns.
        kind: ``"single"``, ``"multilabel"`` or ``"regression"``.
    """

    def __init__(self, ids: Sequence[str], groups: Sequence[str], labels: Sequence[Any], folds: Sequence[int],
                 meta: Mapping[str, Sequence[str]], meta_spec: Mapping[str, Mapping[str, Any]],
                 kind: str = "single") -> None:
        self.ids, self.groups, self.labels, self.folds = ids, groups, labels, folds
        self.label_entry = {"single": lambda v: feature_entry("label", int(v)),
                            "multilabel": lambda v: int64_list_entry("label", v),
                            "regression": lambda v: float_list_entry("target", v)}[kind]
        self.meta = meta
        self.meta_values = MetadataEncoder(meta_spec)

    def entries(self, j: int) -> bytes:
        """The serialized features of position ``j`` other than the image and its size."""
        parts = [
            feature_entry("id", self.ids[j]),
            feature_entry("group", self.groups[j]),
            self.label_entry(self.labels[j]),
            feature_entry("fold", int(self.folds[j])),
        ]
        for c, texts in self.meta.items():
            parts.append(feature_entry(f"meta/{c}", self.meta_values.value(c, texts[j])))
        return b"".join(parts)

    def record(self, j: int, image: bytes | tuple[bytes, ...], height: int, width: int) -> bytes:
        """The framed TFRecord of position ``j`` with its encoded image (or channel PNGs)."""
        if isinstance(image, tuple):
            size = feature_entry("height", height) + feature_entry("width", width)
            return tfrecord_frame(example_from_entries(self.entries(j) + bytes_list_entry("image", image) + size))
        return image_record(self.entries(j), image, height, width)
