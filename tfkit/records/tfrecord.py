"""``tf.train.Example`` serialisation and TFRecord framing, written by hand (no TensorFlow).

The builder's workers must not import TensorFlow (3-7 s each), so examples are
encoded here: protobuf wire format for ``Features`` maps of bytes/int64/float
scalars, then TFRecord framing (length, masked CRC32C of the length, data, masked
CRC32C of the data). Checked against TensorFlow's own parser in the tests.

Example:
    >>> rec = tfrecord_frame(example_from_entries(feature_entry("label", 3)))
    >>> len(rec)
    34
"""

from __future__ import annotations

import functools
import struct
from typing import Sequence

from tfkit.records.checksum import crc32c

def _mask(c: int) -> int:
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    """Frame one serialized record as TFRecord: length, masked CRC32C of length, data, masked CRC32C.

    Args:
        data: serialized ``tf.train.Example``.

    Returns:
        The bytes to append to a ``.tfrec`` file.

    Example:
        >>> len(tfrecord_frame(b"abc"))
        19
    """
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _mask(crc32c(length))) + data + struct.pack("<I", _mask(crc32c(data)))


_SMALL_VARINTS = tuple(bytes([i]) for i in range(128))


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    n &= 0xFFFFFFFFFFFFFFFF  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld_head(field: int, length: int) -> bytes:
    # the bytes before a length-delimited field's payload (wire type 2)
    return _varint((field << 3) | 2) + _varint(length)


def _ld(field: int, payload: bytes) -> bytes:
    return _ld_head(field, len(payload)) + payload


def _entry(key: str, feature: bytes) -> bytes:
    return _ld(1, _ld(1, key.encode("utf-8")) + _ld(2, feature))


def feature_entry(key: str, value: bytes | int | float) -> bytes:
    """Serialize one ``Features.feature`` map entry (bytes, int64 or float scalar).

    Args:
        key: feature name.
        value: ``bytes``/``str`` -> BytesList, ``int`` -> Int64List, ``float`` -> FloatList.

    Returns:
        The protobuf bytes of the map entry; concatenate entries and wrap with
        :func:`example_from_entries`.

    Example:
        >>> feature_entry("label", 3)[:2]
        b'\\n\\x0e'
    """
    if isinstance(value, (str, bytes, bytearray)):
        return bytes_list_entry(key, [value])
    if isinstance(value, (bool, int)) or type(value).__name__.startswith("int"):
        return int64_list_entry(key, [value])
    return float_list_entry(key, [value])


def bytes_list_entry(key: str, values: Sequence[bytes | str]) -> bytes:
    """A map entry holding a BytesList (``str`` values are UTF-8 encoded).

    Example:
        >>> bytes_list_entry("id", ["x"]) == feature_entry("id", b"x")
        True
    """
    items = (v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values)
    return _entry(key, _ld(1, b"".join(_ld(1, v) for v in items)))  # Feature.bytes_list{value...}


def int64_list_entry(key: str, values: Sequence[int]) -> bytes:
    """A map entry holding an Int64List (packed; empty when ``values`` is).

    Example:
        >>> int64_list_entry("label", [3]) == feature_entry("label", 3)
        True
    """
    packed = b"".join(_varint(int(v)) for v in values)
    return _entry(key, _ld(3, _ld(1, packed) if values else b""))  # Feature.int64_list


def float_list_entry(key: str, values: Sequence[float]) -> bytes:
    """A map entry holding a FloatList (packed float32; empty when ``values`` is).

    Example:
        >>> float_list_entry("target", [0.5]) == feature_entry("target", 0.5)
        True
    """
    packed = struct.pack(f"<{len(values)}f", *(float(v) for v in values))
    return _entry(key, _ld(2, _ld(1, packed) if values else b""))  # Feature.float_list


def example_from_entries(entries: bytes) -> bytes:
    """Wrap concatenated :func:`feature_entry` bytes into a serialized ``tf.train.Example``."""
    return _ld(1, entries)


_IMAGE_KEY = _ld(1, b"image")


@functools.lru_cache(maxsize=1024)
def _size_entries(height: int, width: int) -> bytes:
    return feature_entry("height", height) + feature_entry("width", width)


def image_record(entries: bytes, image: bytes, height: int, width: int) -> bytes:
    """The framed TFRecord of one example holding an encoded image.

    Equal to ``tfrecord_frame(example_from_entries(entries + feature_entry("image", image)
    + feature_entry("height", height) + feature_entry("width", width)))``, but the image
    bytes (the bulk) are checksummed in place and copied once, not four times.

    Args:
        entries: the example's other :func:`feature_entry` bytes.
        image: encoded image bytes.
        height, width: image size.

    Returns:
        The bytes to append to a ``.tfrec`` file.

    Example:
        >>> image_record(b"", b"jpeg", 1, 1) == tfrecord_frame(example_from_entries(
        ...     feature_entry("image", b"jpeg") + feature_entry("height", 1) + feature_entry("width", 1)))
        True
    """
    n = len(image)
    bytes_list = _ld_head(1, n)  # BytesList.value
    feature = _ld_head(1, len(bytes_list) + n)  # Feature.bytes_list
    value = _ld_head(2, len(feature) + len(bytes_list) + n)  # map entry value
    entry_len = len(_IMAGE_KEY) + len(value) + len(feature) + len(bytes_list) + n
    tail = _size_entries(height, width)
    body_len = len(entries) + len(_ld_head(1, entry_len)) + entry_len + len(tail)
    head = _ld_head(1, body_len) + entries + _ld_head(1, entry_len) + _IMAGE_KEY + value + feature + bytes_list
    length = struct.pack("<Q", len(head) + n + len(tail))
    crc = crc32c(tail, crc32c(image, crc32c(head)))
    return b"".join((length, struct.pack("<I", _mask(crc32c(length))), head, image, tail, struct.pack("<I", _mask(crc))))
