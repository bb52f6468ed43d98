"""Fold-sharded TFRecords: the builder (images + CSV -> shards + manifest) and the reader.

Format: each shard holds one fold and carries fold, shard index
and example count in its name (``train03-001-1234.tfrec``; test: ``test-000-359.tfrec``),
so a fold is a set of files and counts are known without reading them. Every
example is a ``tf.train.Example`` with ``image`` (JPEG, 3 channels), ``id``,
``group``, ``label`` (class index, -1 when unknown), ``fold`` (-1 for test),
``height``, ``width`` and ``meta/<col>`` (float for numeric columns, NaN when
missing; int64 vocab index for categorical ones, -1 when missing/unknown).
``manifest.json`` holds the class list, feature schema, metadata vocabularies,
fold settings and per-shard sha256; ``folds.csv`` holds id,fold.

Builder design (why it is fast and reproducible):

* The parent validates the CSV, resolves every image path, assigns folds, sorts
  rows by (fold, original row order) and fixes every shard's rows *before* any
  image is read, then produces records strictly in that order
  (:func:`_records_in_order`). The output bytes therefore do not depend on ``workers``.
  With ``skip_bad``, images found unreadable while writing make a second pass: folds
  are assigned again without those rows and the shards rewritten, so the records are
  exactly those of the CSV without them (folds stay balanced over what is written).
* Pass-through JPEGs (already upright 8-bit RGB of the wanted size, judged from
  their headers by :func:`jpeg_header`) never leave the parent: one thread reads
  them with kernel prefetching, checks them (:func:`check_jpeg`) and frames them,
  and a writer thread writes and hashes the shard: a plain copy's speed.
* Images to re-encode go in batches to worker processes, which never import
  TensorFlow (3-7 s each) and use Pillow. Records are serialized by the small
  hand-written ``tf.train.Example`` / TFRecord encoder below, checked against
  TensorFlow's own parser in the tests; its CRC32C comes from ``google-crc32c``,
  TensorFlow's C++ library or NumPy (:func:`crc32c_backend`).
* Pool start method: ``fork`` when TensorFlow has not been imported in this process
  (a forked child costs milliseconds and inherits Pillow/NumPy already imported);
  ``forkserver`` when it has (forking a process whose TensorFlow thread pools are
  running can deadlock the child); ``spawn`` where fork does not exist. A script read
  from stdin (``python - < build.py``) has no file that such children could import
  again, so there the workers are threads.
* Everything is written in a hidden temporary folder beside ``out`` and renamed at
  the end: a killed build leaves no folder that looks complete, and a re-run
  succeeds (stale temporary folders of dead builds are removed).

Image handling: JPEG, PNG, BMP, TIFF, WebP, GIF; grayscale, palette, RGBA/LA
(alpha dropped, as ``tf.io.decode_image(channels=3)`` does), CMYK and 16-bit
(scaled to 8 bits) become 8-bit RGB; EXIF orientation is applied. With ``size``,
the shorter side is resized to ``size`` (bicubic, antialiased) and the centre is
cropped to ``size x size`` (nothing is squashed; the borders of the longer side
are lost). A JPEG that is already RGB, upright (no EXIF rotation) and of the
requested size (any size without ``size``) is stored byte-for-byte untouched
(pass-through) after an integrity check (``verify``: a 1/8-scale decode, or the
JPEG structure only).

Example:
    >>> m = build_records(csv="train.csv", images="images", out="records", size=256)  # doctest: +SKIP
    >>> files = shard_files("records", folds=[0])  # doctest: +SKIP
    >>> parse = make_parser(load_manifest("records"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import math
import multiprocessing as mp
import os
import re
import shutil
import stat
import struct
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

from tfkit import __version__
from tfkit.utils import TfkitError, read_json, write_csv, write_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MISSING = frozenset({"", "nan", "NaN", "NA", "N/A", "n/a", "null", "NULL", "None"})
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z_]+?)(?P<fold>\d+)?(?:-(?P<shard>\d+))?-(?P<count>\d+)\.tfrec(?:ord)?$")


# --------------------------------------------------------------------------- atomic folder


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
        >>> with atomic_dir("/tmp/x", overwrite=True) as tmp:  # doctest: +SKIP
        ...     (tmp / "a.txt").write_text("hi")
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TfkitError(f"{what} {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TfkitError(f"{what} {out} is not empty (pass --overwrite to replace its contents)")
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(parent, out.name)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
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


# --------------------------------------------------------------------------- TFRecord / Example encoding

_CRC_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected
_CRC_BLOCK = 1024


def _crc_tables() -> tuple[Any, Any, list[int]]:
    import numpy as np

    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _CRC_POLY if c & 1 else c >> 1
        table[i] = c
    # pos[i, v]: contribution of byte value v at position i of a block (init 0).
    pos = np.empty((_CRC_BLOCK, 256), np.uint32)
    x = table.copy()
    pos[_CRC_BLOCK - 1] = x
    for i in range(_CRC_BLOCK - 2, -1, -1):
        x = table[x & 0xFF] ^ (x >> 8)
        pos[i] = x
    # shift[j, v]: register byte j holding v, advanced through one block of zeros.
    v = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32)[:, None])).astype(np.uint32)
    for _ in range(_CRC_BLOCK):
        v = table[v & 0xFF] ^ (v >> 8)
    flat_offsets = (np.arange(_CRC_BLOCK, dtype=np.intp) * 256)[None, :]
    return pos.ravel(), (tuple(v[j].tolist() for j in range(4)), flat_offsets), table.tolist()


_CRC_STATE: tuple[Any, Any, list[int]] | None = None


def _crc32c_numpy(data: bytes, crc: int = 0) -> int:
    """Pure NumPy CRC32C (~0.5 GB/s): the fallback when no C implementation loads."""
    global _CRC_STATE
    import numpy as np

    if _CRC_STATE is None:
        _CRC_STATE = _crc_tables()
    pos_flat, (shift, offsets), table = _CRC_STATE
    n = len(data)
    reg = crc ^ 0xFFFFFFFF
    if n < 4:
        for b in data:
            reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
        return reg ^ 0xFFFFFFFF
    # Starting from register ``reg`` equals XOR-ing reg's little-endian bytes into the
    # first 4 bytes and starting from 0; from 0, leading zeros do not change the CRC,
    # so the message is front-padded to whole blocks and each block's CRC is one
    # vectorised table gather + XOR reduction.
    nb = -(-n // _CRC_BLOCK)
    buf = np.zeros(nb * _CRC_BLOCK, np.uint8)
    pad = nb * _CRC_BLOCK - n
    buf[pad:] = np.frombuffer(data, np.uint8)
    buf[pad : pad + 4] ^= np.frombuffer(reg.to_bytes(4, "little"), np.uint8)
    # one fused add into intp indices + np.take: ~5x faster than astype + fancy indexing
    idx = np.add(buf.reshape(nb, _CRC_BLOCK), offsets, dtype=np.intp)
    blocks = np.bitwise_xor.reduce(np.take(pos_flat, idx), axis=1).tolist()
    z0, z1, z2, z3 = shift
    s = 0
    for g in blocks:
        s = z0[s & 0xFF] ^ z1[(s >> 8) & 0xFF] ^ z2[(s >> 16) & 0xFF] ^ z3[s >> 24] ^ g
    return s ^ 0xFFFFFFFF


# TensorFlow's C++ library carries absl's hardware CRC32C. Its symbol is found by
# pattern because absl's versioned namespace (lts_YYYYMMDD) changes between TF
# releases; "St17basic_string_view" (not "NSt3__1...") pins the libstdc++ layout of
# string_view {size, pointer}, which the ctypes signature below relies on.
_ABSL_CRC_SYMBOL = re.compile(
    rb"_ZN4absl(?:\d+lts_\d+)?12crc_internal20ExtendCrc32cInternalEN\w*?8crc32c_tE"
    rb"St17basic_string_viewIcSt11char_traitsIcEE(?=\x00)"
)


def _elf_dynamic_names(path: Path) -> bytes:
    """The dynamic string table (exported symbol names) of an ELF64 little-endian file."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return b""
        (shoff,) = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQII", table, i * shentsize) for i in range(shnum)]
        for _, sh_type, _, _, _, _, link, _ in sections:
            if sh_type == 11 and link < shnum:  # SHT_DYNSYM -> its string table
                f.seek(sections[link][4])
                return f.read(sections[link][5])
    return b""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    # TF's library logs oneDNN/absl banners from static initialisers when loaded.
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tensorflow_crc32c() -> Callable[[bytes, int], int] | None:
    """absl's CRC32C from TensorFlow's ``libtensorflow_framework`` through ctypes, or None.

    TensorFlow is a dependency anyway and loading its C++ library takes ~0.05 s,
    where importing TensorFlow's Python package takes ~4 s. Linux x86-64 only, and
    adopted only after it agrees with :func:`_crc32c_numpy` on test vectors.
    """
    import ctypes
    import importlib.util
    import platform

    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:
            return None
        lib_path = next((Path(p) / "libtensorflow_framework.so.2" for p in spec.submodule_search_locations
                         if (Path(p) / "libtensorflow_framework.so.2").is_file()), None)
        if lib_path is None:
            return None
        match = _ABSL_CRC_SYMBOL.search(_elf_dynamic_names(lib_path))
        if match is None:
            return None
        if "tensorflow" in sys.modules:
            lib = ctypes.CDLL(str(lib_path))
        else:
            with _quiet_stderr():
                lib = ctypes.CDLL(str(lib_path))
        fn = getattr(lib, match.group(0).decode())
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_size_t, ctypes.c_char_p]
    except (OSError, AttributeError, ValueError, ImportError):
        return None

    def tf_crc(data: bytes, crc: int = 0) -> int:
        return fn(crc, len(data), bytes(data))  # releases the GIL while it runs

    probe = bytes(range(256)) * 5 + b"tfkit"
    if tf_crc(b"123456789") != 0xE3069283 or tf_crc(probe, 0x1234567) != _crc32c_numpy(probe, 0x1234567):
        return None
    return tf_crc


def _google_crc32c() -> Callable[[bytes, int], int] | None:
    try:
        import google_crc32c as g  # the optional [fast] extra
    except ImportError:
        return None
    if g.implementation != "c":
        return None
    return lambda data, crc=0: g.extend(crc, data)


CRC32C_BACKENDS: dict[str, Callable[[], Callable[[bytes, int], int] | None]] = {
    "google-crc32c": _google_crc32c,
    "tensorflow": _tensorflow_crc32c,
    "numpy": lambda: _crc32c_numpy,
}
_crc_impl: tuple[str, Callable[[bytes, int], int]] | None = None
_crc_lock = threading.Lock()


def crc32c_backend() -> str:
    """Name of the CRC32C implementation in use, picked on first use.

    ``TFKIT_CRC32C`` (``google-crc32c``, ``tensorflow`` or ``numpy``) forces one;
    otherwise the first that loads of ``google-crc32c`` (C extension, the optional
    ``[fast]`` extra), ``tensorflow`` (absl's hardware CRC32C in TensorFlow's own
    C++ library, loaded without importing TensorFlow) and ``numpy`` (~0.5 GB/s).
    All three give identical results (tested), so shard bytes never depend on it.

    Returns:
        ``"google-crc32c"``, ``"tensorflow"`` or ``"numpy"``.

    Example:
        >>> crc32c_backend() in CRC32C_BACKENDS
        True
    """
    global _crc_impl
    with _crc_lock:
        if _crc_impl is not None:
            return _crc_impl[0]
        forced = os.environ.get("TFKIT_CRC32C", "").strip()
        if forced and forced not in CRC32C_BACKENDS:
            raise TfkitError(f"TFKIT_CRC32C must be one of {', '.join(CRC32C_BACKENDS)}, got {forced!r}")
        for name in [forced] if forced else list(CRC32C_BACKENDS):
            fn = CRC32C_BACKENDS[name]()
            if fn is not None:
                _crc_impl = (name, fn)
                break
        else:
            raise TfkitError(f"TFKIT_CRC32C={forced}: that CRC32C implementation cannot be loaded here")
    return _crc_impl[0]


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, as TFRecord framing uses; ``crc`` continues a previous one.

    Args:
        data: bytes to checksum.
        crc: CRC32C of the bytes before ``data`` (0 to start).

    Returns:
        The CRC32C as an unsigned 32-bit int: ``crc32c(b, crc32c(a)) == crc32c(a + b)``.

    Example:
        >>> hex(crc32c(b"123456789"))
        '0xe3069283'
    """
    if _crc_impl is None:
        crc32c_backend()
    return _crc_impl[1](data, crc)


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
        b'\\n\\x0c'
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        feat = _ld(1, _ld(1, bytes(value)))  # Feature.bytes_list{value}
    elif isinstance(value, (bool, int)) or type(value).__name__.startswith("int"):
        feat = _ld(3, _ld(1, _varint(int(value))))  # Feature.int64_list, packed
    else:
        feat = _ld(2, _ld(1, struct.pack("<f", float(value))))  # Feature.float_list, packed
    return _ld(1, _ld(1, key.encode("utf-8")) + _ld(2, feat))


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


# --------------------------------------------------------------------------- image encoding


def _to_rgb8(img: Any) -> Any:
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img)
        if img.mode == "F":
            arr8 = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        else:
            # 16-bit range 0..65535 -> 0..255 with rounding
            arr8 = ((np.clip(arr.astype(np.int64), 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")  # L, LA, RGBA, CMYK, YCbCr, 1: alpha dropped


VERIFY_MODES = ("decode", "markers")


class JpegHeader(NamedTuple):
    """What a JPEG's headers say, read without decoding (see :func:`jpeg_header`)."""

    height: int
    width: int
    components: int
    precision: int
    sof: int  # frame marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
    orientation: int | None  # EXIF orientation; None without one, -1 when unreadable


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _exif_orientation(tiff: bytes) -> int | None:
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return -1
    e = "<" if tiff[:2] == b"II" else ">"
    magic, ifd = struct.unpack_from(e + "HI", tiff, 2)
    if magic != 42 or ifd + 2 > len(tiff):
        return -1
    (count,) = struct.unpack_from(e + "H", tiff, ifd)
    for k in range(count):
        p = ifd + 2 + 12 * k
        if p + 12 > len(tiff):
            return -1
        tag, typ = struct.unpack_from(e + "HH", tiff, p)
        if tag == 0x0112:
            return struct.unpack_from(e + "H", tiff, p + 8)[0] if typ == 3 else -1
    return None


def jpeg_header(raw: bytes) -> JpegHeader | None:
    """Parse a JPEG's headers up to its first scan (microseconds; nothing is decoded).

    Args:
        raw: the file's bytes.

    Returns:
        A :class:`JpegHeader`, or None when ``raw`` is not a JPEG with a frame header
        and a scan (not a JPEG, or one cut short in its headers).

    Example:
        >>> jpeg_header(b"PNG...") is None
        True
    """
    if raw[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(raw)
    frame: tuple[int, int, int, int, int] | None = None
    orientation: int | None = None
    while pos + 4 <= n:
        if raw[pos] != 0xFF:
            return None
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a segment
            pos += 2
            continue
        end = pos + 2 + ((raw[pos + 2] << 8) | raw[pos + 3])
        if end > n or end < pos + 4 or marker == 0xD9:
            return None
        if marker == 0xDA:  # start of scan: the headers are over
            if frame is None:
                return None
            return JpegHeader(frame[2], frame[3], frame[4], frame[1], frame[0], orientation)
        if marker in _SOF_MARKERS and end - pos >= 10:
            precision, height, width, comps = struct.unpack_from(">BHHB", raw, pos + 4)
            frame = (marker, precision, height, width, comps)
        elif marker == 0xE1 and orientation is None and raw[pos + 4 : pos + 10] == b"Exif\x00\x00":
            try:  # the first Exif segment counts, as in Pillow
                orientation = _exif_orientation(raw[pos + 10 : end])
            except struct.error:
                orientation = -1
        pos = end
    return None


def passes_through(header: JpegHeader | None, size: int | None) -> bool:
    """Whether a JPEG is stored untouched: 8-bit 3-channel Huffman JPEG, upright, of the wanted size.

    Args:
        header: from :func:`jpeg_header`.
        size: requested square side, or None for any size.

    Returns:
        True to pass the bytes through; False to decode and re-encode.

    Example:
        >>> passes_through(JpegHeader(384, 384, 3, 8, 0xC0, None), 384)
        True
    """
    return (
        header is not None
        and header.sof in (0xC0, 0xC1, 0xC2)
        and header.precision == 8
        and header.components == 3
        and header.height > 0
        and header.width > 0
        and header.orientation in (None, 1)
        and (size is None or (header.width, header.height) == (size, size))
    )


def check_jpeg(raw: bytes, header: JpegHeader, verify: str = "decode") -> None:
    """Integrity check of a JPEG that is passed through; raises ValueError/OSError when it fails.

    Args:
        raw: the file's bytes.
        header: its :func:`jpeg_header`.
        verify: ``"decode"``: a 1/8-scale decode that still reads every entropy-coded
            byte (catches truncation and most corrupt data; ~0.7 ms for 512 px);
            ``"markers"``: the headers parse and the file ends with an end-of-image
            marker (catches truncation, not bit errors inside the data; microseconds).

    Example:
        >>> check_jpeg(open("a.jpg", "rb").read(), jpeg_header(open("a.jpg", "rb").read()))  # doctest: +SKIP
    """
    if b"\xff\xd9" not in raw[-64:]:
        # complete JPEGs end with EOI (decoders tolerate a little padding after it)
        raise ValueError("truncated JPEG (no end-of-image marker)")
    if verify == "decode":
        from PIL import Image

        img = Image.open(io.BytesIO(raw))
        img.draft("RGB", (max(1, header.width // 8), max(1, header.height // 8)))
        img.load()  # Pillow releases the GIL while decoding


def _read_image_file(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:  # unbuffered: one read, no tty probe
        raw = f.readall()
    if not raw:
        raise ValueError("zero-byte file")
    return raw


def encode_image(path: str, size: int | None, quality: int, verify: str = "decode") -> tuple[bytes, int, int, bool]:
    """Read one image file and return the JPEG bytes to store.

    Args:
        path: image file.
        size: square output side (shorter side resized, centre crop) or None to keep.
        quality: JPEG quality when re-encoding.
        verify: integrity check of a passed-through JPEG (see :func:`check_jpeg`).

    Returns:
        ``(jpeg_bytes, height, width, passed_through)``: the file's own bytes when
        :func:`passes_through`, else a re-encoded upright 8-bit RGB JPEG.

    Raises:
        ValueError: empty or truncated file; OSError/other Pillow errors for unreadable images.

    Example:
        >>> data, h, w, raw = encode_image("a.jpg", 256, 95)  # doctest: +SKIP
    """
    from PIL import Image, ImageOps

    raw = _read_image_file(path)
    header = jpeg_header(raw)
    if passes_through(header, size):
        check_jpeg(raw, header, verify)
        return raw, header.height, header.width, True
    img = Image.open(io.BytesIO(raw))
    if size is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
        # Let libjpeg decode at a reduced scale while both sides stay >= 2*size
        # (keeps antialiasing quality, much faster for large photos).
        img.draft(img.mode, (2 * size, 2 * size))
    img.load()
    img = ImageOps.exif_transpose(img)
    img = _to_rgb8(img)
    if size is not None:
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue(), img.height, img.width, False


def _bad_image_reason(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "cannot identify image file" in msg:
        return "not an image file (Pillow cannot identify it)"
    if msg in ("zero-byte file", "truncated JPEG (no end-of-image marker)"):
        return msg
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"cannot read file ({e.strerror})"
    return f"corrupt or unreadable image ({type(e).__name__}: {msg})"


# (row, image bytes or None, height, width, passed through, error or None)
_Encoded = tuple[int, bytes | None, int, int, bool, str | None]


def _encode_task(task: tuple[int, str, int | None, int, str]) -> _Encoded:
    """Worker (process): re-encode one image; any failure becomes a per-row reason."""
    pos, path, size, quality, verify = task
    try:
        data, h, w, passed = encode_image(path, size, quality, verify)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image, reported per row
        return pos, None, 0, 0, False, _bad_image_reason(e)
    return pos, data, h, w, passed, None


# --------------------------------------------------------------------------- builder


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _canon_label(s: str) -> str:
    # "1", "1.0" and " 1" name the same class when labels are numeric.
    s = s.strip()
    if _is_number(s):
        f = float(s)
        if f.is_integer():
            return str(int(f))
    return s


def sort_classes(names: Iterable[str]) -> list[str]:
    """Sort class names: numerically when every name is a number, else as strings.

    Example:
        >>> sort_classes(["10", "2", "1"])
        ['1', '2', '10']
    """
    names = sorted(set(names))
    if names and all(_is_number(n) for n in names):
        return sorted(names, key=float)
    return names


def _row_name(csv: Path, i: int, ident: str | None = None) -> str:
    # i is the 0-based data row; line numbers count the header as line 1.
    return f"{csv.name} line {i + 2}" + (f" (id {ident!r})" if ident is not None else "")


def _index_images(images: Path) -> dict[str, tuple[str, int | None]]:
    """Map file stem -> (file name, size) for every image in ``images`` (first extension by priority).

    The size is known (one lstat, no path resolution) for regular files; it is None
    for symlinks and anything else, which are then resolved and checked in full.
    """
    rank = {e: k for k, e in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, str, int | None]] = {}
    with os.scandir(images) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            r = rank.get(ext.lower())
            if r is not None and (stem not in best or (r, entry.name) < best[stem][:2]):
                regular = entry.is_file(follow_symlinks=False)
                best[stem] = (r, entry.name, entry.stat(follow_symlinks=False).st_size if regular else None)
    return {k: v[1:] for k, v in best.items()}


def _resolve_inside(images_real: str, candidate: str) -> tuple[str | None, str | None]:
    real = os.path.realpath(candidate)
    if real != images_real and not real.startswith(images_real.rstrip(os.sep) + os.sep):
        return None, f"image path {candidate} escapes the images folder {images_real}"
    try:
        st = os.stat(real)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        return None, f"image {candidate} not found"
    if st.st_size == 0:
        return None, f"image {candidate} is a zero-byte file"
    return real, None


def _metadata_spec(frame: Any, cols: Sequence[str], train_spec: Mapping[str, Any] | None) -> dict[str, dict]:
    import numpy as np

    spec: dict[str, dict] = {}
    for col in cols:
        if train_spec is not None and col in train_spec:
            spec[col] = dict(train_spec[col])
            continue
        vals = [v.strip() for v in frame[col].tolist() if v.strip() not in MISSING]
        if vals and all(_is_number(v) for v in vals):
            arr = np.array([float(v) for v in vals], np.float64)
            spec[col] = {"kind": "numeric", "mean": float(arr.mean()), "std": float(arr.std())}
        else:
            spec[col] = {"kind": "categorical", "vocab": sorted(set(vals))}
    return spec


def _meta_value(spec: Mapping[str, Any], text: str) -> float | int:
    t = text.strip()
    if spec["kind"] == "numeric":
        return float(t) if t not in MISSING and _is_number(t) else float("nan")
    vocab = spec.setdefault("_index", {v: k for k, v in enumerate(spec["vocab"])})
    return vocab.get(t, -1)


def _main_reimportable() -> bool:
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


def _start_method() -> str:
    methods = mp.get_all_start_methods()
    if "fork" in methods and "tensorflow" not in sys.modules:
        return "fork"
    if "forkserver" in methods:
        return "forkserver"
    return "spawn"


def _write_all(fh: Any, digest: Any, records: list[bytes]) -> None:
    for rec in records:
        fh.write(rec)
        digest.update(rec)


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


def _records_in_order(
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
            raw = _read_image_file(paths[j])
            header = jpeg_header(raw)
            if passes_through(header, size):
                if verify == "decode":
                    return "check", (j, raw, header, checkers().submit(check_jpeg, raw, header, verify)), len(raw)
                check_jpeg(raw, header, verify)
                rec = frame(j, raw, header.height, header.width)
                return "done", (j, rec, header.height, header.width, True, None), len(rec)
        except Exception as e:  # noqa: BLE001 - any read/decoder failure is a bad image, reported per row
            return "done", (j, None, 0, 0, False, _bad_image_reason(e)), 0
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
                yield j, None, 0, 0, False, _bad_image_reason(e)
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


def _preload_crc32c(fn: Callable) -> Callable:
    """Pick the CRC32C implementation in a thread while ``fn`` reads the CSV and assigns
    folds (TensorFlow's library takes ~0.2 s to load from a cold disk); ``fn`` calls
    :func:`crc32c_backend` (which waits for it) before it writes anything to stderr."""

    def preload() -> None:
        with contextlib.suppress(TfkitError):  # raised again, in the caller, on first use
            crc32c_backend()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        loader = threading.Thread(target=preload, name="tfkit-crc32c", daemon=True)
        loader.start()
        try:
            return fn(*args, **kwargs)
        finally:
            loader.join()

    return run


@_preload_crc32c
def build_records(
    csv: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike = "records",
    id_col: str = "id",
    path_col: str | None = None,
    label_col: str | None = "label",
    group_col: str | None = None,
    meta_cols: Sequence[str] | None = None,
    n_folds: int = 5,
    seed: int = 42,
    size: int | None = None,
    quality: int = 95,
    workers: int = 0,
    split: str = "train",
    shard_size: int = 2048,
    skip_bad: bool = False,
    overwrite: bool = False,
    classes_from: str | os.PathLike | None = None,
    verify: str = "decode",
    progress: bool = True,
) -> dict:
    """Turn a folder of images plus a CSV into fold-sharded TFRecords with a manifest.

    Args:
        csv: CSV with one row per image.
        images: images folder; every image must resolve (symlinks followed) inside it.
        out: output folder (created atomically; a non-empty one needs ``overwrite``).
        id_col: unique id column.
        path_col: column of paths relative to ``images``; without it an image is
            ``<id><ext>`` for the first of ``IMAGE_EXTENSIONS`` present.
        label_col: label column (required for train; optional for test).
        group_col: column kept together in one fold (e.g. patient_id); default the id.
        meta_cols: extra columns stored as ``meta/<col>``: numeric when every
            non-missing value is a number (float, NaN missing), else categorical (vocab index).
        n_folds: number of folds (train).
        seed: fold seed.
        size: square output side: shorter side resized to ``size`` then centre-cropped;
            None keeps the original size.
        quality: JPEG quality for re-encoded images.
        workers: processes that re-encode images, and threads that run ``verify="decode"``
            checks (0 = all cores). Output bytes do not depend on it.
        split: ``"train"`` (labels required, folds assigned) or ``"test"`` (fold -1).
        shard_size: maximum examples per shard (a fold's rows are split evenly).
        skip_bad: skip bad rows (missing/zero-byte/corrupt/non-image file, missing or
            unknown label, escaping path, duplicate id) and list them in ``manifest["skipped"]``.
        overwrite: replace a non-empty ``out``.
        classes_from: test split: the train records' ``manifest.json`` (or folder); gives the
            class list and the metadata vocabularies so indices match the train records.
        verify: integrity check of JPEGs passed through untouched: ``"decode"`` (default,
            reads every byte) or ``"markers"`` (truncation only, ~10x cheaper); see
            :func:`encode_image`. Re-encoded images are always fully decoded.
        progress: show a tqdm progress bar.

    Returns:
        The manifest dict (also written to ``out/manifest.json``).

    Raises:
        TfkitError: one line naming the row or file at fault.

    Example:
        >>> m = build_records("train.csv", "images", "records", size=32, n_folds=5)  # doctest: +SKIP
        >>> m["classes"], [s["file"] for s in m["shards"]][:1]  # doctest: +SKIP
        (['0', '1', ...], ['train00-000-288.tfrec'])
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    csv, images = Path(csv), Path(images)
    meta_cols = list(meta_cols or [])
    if split not in ("train", "test"):
        raise TfkitError(f"--split must be train or test, got {split!r}")
    if size is not None and size < 1:
        raise TfkitError(f"--size must be a positive integer, got {size}")
    if not 1 <= int(quality) <= 100:
        raise TfkitError(f"--quality must be in 1..100, got {quality}")
    if shard_size < 1:
        raise TfkitError(f"--shard-size must be >= 1, got {shard_size}")
    if verify not in VERIFY_MODES:
        raise TfkitError(f"--verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    if split == "train" and n_folds < 2:
        raise TfkitError(f"--folds must be >= 2, got {n_folds}")
    if not csv.is_file():
        raise TfkitError(f"CSV {csv} not found")
    if not images.is_dir():
        raise TfkitError(f"images folder {images} not found")
    out_p = Path(out)
    if out_p.is_dir() and any(out_p.iterdir()) and not overwrite:
        raise TfkitError(f"output folder {out_p} is not empty (pass --overwrite to replace its contents)")

    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for malformed files
        raise TfkitError(f"cannot read CSV {csv}: {str(e).splitlines()[0]}")
    required = [id_col] + ([label_col] if split == "train" else []) + [c for c in (path_col, group_col) if c] + meta_cols
    missing_cols = [c for c in dict.fromkeys(required) if c not in frame.columns]
    if missing_cols:
        raise TfkitError(
            f"CSV {csv} has no column(s) {', '.join(map(repr, missing_cols))}; it has: {', '.join(frame.columns)}"
        )

    train_manifest = None
    if classes_from is not None:
        cf = Path(classes_from)
        cf = cf / "manifest.json" if cf.is_dir() else cf
        if not cf.is_file():
            raise TfkitError(f"--classes-from {classes_from}: manifest.json not found")
        train_manifest = read_json(cf)

    skipped: list[dict] = []

    def bad(i: int, ident: str, file: str | None, reason: str) -> None:
        if not skip_bad:
            raise TfkitError(f"{_row_name(csv, i, ident)}: {reason} (pass --skip-bad to skip such rows)")
        skipped.append({"row": int(i), "id": ident, "file": file, "reason": reason})

    # ---- labels / classes
    has_labels = label_col is not None and label_col in frame.columns
    if split == "train":
        labels_txt = [v.strip() for v in frame[label_col].tolist()]
        classes = (
            list(train_manifest["classes"]) if train_manifest
            else sort_classes(_canon_label(v) for v in labels_txt if v not in MISSING)
        )
    else:
        labels_txt = [v.strip() for v in frame[label_col].tolist()] if has_labels else [""] * len(frame)
        classes = list(train_manifest["classes"]) if train_manifest else []
        if has_labels and not train_manifest and any(v not in MISSING for v in labels_txt):
            crc32c_backend()  # the preloading thread may be silencing stderr while TF's library loads
            print(f"tfkit: note: labels in {csv.name} are stored as -1: pass --classes-from "
                  "to store them as class indices", file=sys.stderr)
    class_index = {c: k for k, c in enumerate(classes)}
    if split == "train" and len(classes) < 2:
        raise TfkitError(f"CSV {csv} column {label_col!r} has {len(classes)} distinct label(s); need at least 2")

    # ---- per-row validation (cheap checks; image decoding happens in workers)
    images_real = os.path.realpath(images)
    stem_index = None if path_col else _index_images(images)
    ids = frame[id_col].tolist()
    rel_paths = frame[path_col].tolist() if path_col else None
    seen: dict[str, int] = {}
    keep: list[int] = []
    label_idx: list[int] = []
    paths: list[str] = []
    for i, ident in enumerate(ids):
        ident = ident.strip()
        if ident in MISSING:
            bad(i, ident, None, f"missing id in column {id_col!r}")
            continue
        if ident in seen:
            bad(i, ident, None, f"duplicate id {ident!r} (first at line {seen[ident] + 2})")
            continue
        seen[ident] = i
        lab = labels_txt[i]
        if split == "train" and lab in MISSING:
            bad(i, ident, None, f"missing label in column {label_col!r}")
            continue
        if lab in MISSING or not class_index:
            li = -1
        else:
            li = class_index.get(_canon_label(lab), class_index.get(lab, -2))
            if li == -2:
                bad(i, ident, None, f"unknown class {lab!r} in column {label_col!r}; known classes: "
                    f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")
                continue
        if path_col:
            rel = rel_paths[i].strip()
            if rel in MISSING:
                bad(i, ident, None, f"missing path in column {path_col!r}")
                continue
            candidate = os.path.join(images, rel)
        else:
            name, size_known = stem_index.get(ident, (None, None))
            if name is None:
                found = [images / (ident + e) for e in IMAGE_EXTENSIONS if (images / (ident + e)).is_file()]
                if not found:
                    real = os.path.realpath(images / ident)
                    inside = real == images_real or real.startswith(images_real.rstrip(os.sep) + os.sep)
                    bad(i, ident, str(images / ident),
                        f"no image named {ident}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}> in {images}"
                        if inside else f"id {ident!r} makes an image path that escapes the images folder {images_real}")
                    continue
                candidate = str(found[0])
            elif size_known is not None:  # a regular file directly in the folder: inside by construction
                if size_known == 0:
                    bad(i, ident, os.path.join(images, name), f"image {os.path.join(images, name)} is a zero-byte file")
                    continue
                keep.append(i)
                label_idx.append(li)
                paths.append(os.path.join(images_real, name))
                continue
            else:
                candidate = os.path.join(images, name)
        real, err = _resolve_inside(images_real, candidate)
        if err:
            bad(i, ident, candidate, err)
            continue
        keep.append(i)
        label_idx.append(li)
        paths.append(real)
    if not keep:
        raise TfkitError(f"CSV {csv}: no usable rows (all {len(frame)} rows are bad; see --skip-bad)")

    if group_col:
        group_txt = frame[group_col].tolist()
        for i in keep:
            if group_txt[i].strip() in MISSING:
                raise TfkitError(f"{_row_name(csv, i, ids[i].strip())}: missing group in column {group_col!r}")

    n_workers = int(workers) if workers and workers > 0 else (os.cpu_count() or 1)
    n_workers = max(1, min(n_workers, len(keep)))
    sizes: set[tuple[int, int]] = set()

    # Waits for the preloading thread: before forking (a thread inside dlopen at fork
    # time can deadlock the child) and before the progress bar writes to stderr.
    crc32c_backend()
    with atomic_dir(out_p, overwrite=overwrite) as tmp, contextlib.ExitStack() as stack:
        pool = None
        if n_workers > 1:
            ctx = mp.get_context(_start_method())
            if ctx.get_start_method() != "fork" and not _main_reimportable():
                # Threads instead of processes (Pillow releases the GIL while it decodes,
                # resizes and encodes): same bytes, less parallel.
                from multiprocessing.pool import ThreadPool

                pool = functools.cache(lambda: stack.enter_context(ThreadPool(n_workers)))
            else:
                pool = functools.cache(lambda: stack.enter_context(ctx.Pool(n_workers)))
            if ctx.get_start_method() == "fork":
                pool()  # fork before any thread starts (tqdm's monitor, the I/O threads)
        bar = stack.enter_context(tqdm(total=len(keep), unit="img", desc="build-records", disable=not progress))
        # Writing and sha256 (both release the GIL) run in a thread of their own, in
        # record order, 16 records at a time, while this thread reads and frames the
        # next ones: they are half the CPU time of pass-through.
        writer = ThreadPoolExecutor(1, thread_name_prefix="tfkit-writer")
        stack.callback(writer.shutdown, wait=True, cancel_futures=True)
        while True:  # once, or again without the images found bad (--skip-bad)
            sub = frame.iloc[keep].reset_index(drop=True)
            ids_k = [ids[i].strip() for i in keep]
            groups = [g.strip() for g in sub[group_col].tolist()] if group_col else list(ids_k)

            # ---- folds, fixed before any image is read
            if split == "train":
                from tfkit.folds import assign_folds

                fold_frame = pd.DataFrame({"id": ids_k, "label": label_idx, "group": groups})
                if n_folds > len(set(groups)):
                    raise TfkitError(f"--folds {n_folds} exceeds the number of groups ({len(set(groups))}) in {csv}")
                # n_bins=0: class indices are categories; with > 50 classes assign_folds
                # would otherwise read them as a numeric target and bin index ranges.
                folds = np.asarray(assign_folds(fold_frame, n_folds, "label", "group", seed=seed, n_bins=0),
                                   dtype=np.int64)
            else:
                folds = np.full(len(keep), -1, np.int64)

            meta_spec = _metadata_spec(sub, meta_cols, (train_manifest or {}).get("metadata"))
            order = sorted(range(len(keep)), key=lambda j: (int(folds[j]), j))

            # ---- shards: each fold's rows split evenly into ceil(n / shard_size) shards
            plan: list[tuple[int, int, list[int]]] = []  # (fold, shard index, row positions)
            for f in sorted(set(int(f) for f in folds)):
                rows = [j for j in order if folds[j] == f]
                n_sh = math.ceil(len(rows) / shard_size)
                for s, chunk in enumerate(np.array_split(np.array(rows, dtype=np.int64), n_sh)):
                    plan.append((f, s, chunk.tolist()))

            meta_vals = {c: sub[c].tolist() for c in meta_cols}

            def entries_for(j: int) -> bytes:
                parts = [
                    feature_entry("id", ids_k[j]),
                    feature_entry("group", groups[j]),
                    feature_entry("label", int(label_idx[j])),
                    feature_entry("fold", int(folds[j])),
                ]
                for c in meta_cols:
                    parts.append(feature_entry(f"meta/{c}", _meta_value(meta_spec[c], meta_vals[c][j])))
                return b"".join(parts)

            shards_out: list[dict] = []
            sizes.clear()
            n_passed = 0
            written_ids: list[tuple[str, int]] = []
            found_bad: set[int] = set()  # CSV rows whose image could not be read
            results = _records_in_order(
                [j for _, _, rows in plan for j in rows], paths,
                lambda j, data, h, w: image_record(entries_for(j), data, h, w),
                size, int(quality), verify, n_workers, pool, stack,
            )
            writing: deque = deque()
            for f, s, rows in plan:
                part = tmp / f".shard-{f}-{s}.part"
                digest = hashlib.sha256()
                recs: list[bytes] = []
                count = 0
                with open(part, "wb") as fh:
                    for _ in rows:
                        j, rec, h, w, passed, err = next(results)
                        bar.update(1)
                        if err is not None:
                            bad(keep[j], ids_k[j], paths[j], err)
                            found_bad.add(keep[j])
                            continue
                        recs.append(rec)
                        if len(recs) == 16:
                            writing.append(writer.submit(_write_all, fh, digest, recs))
                            recs = []
                            if len(writing) > 8:  # bounds the records waiting to be written
                                writing.popleft().result()
                        count += 1
                        sizes.add((h, w))
                        n_passed += bool(passed)
                        written_ids.append((ids_k[j], int(folds[j])))
                    writing.append(writer.submit(_write_all, fh, digest, recs))
                    while writing:
                        writing.popleft().result()
                if count == 0:
                    part.unlink()
                    continue
                name = f"{split}{f:02d}-{s:03d}-{count}.tfrec" if split == "train" else f"{split}-{s:03d}-{count}.tfrec"
                os.replace(part, tmp / name)
                shards_out.append({"file": name, "fold": f, "count": count, "sha256": digest.hexdigest()})
            if split != "train" or not found_bad or len(found_bad) == len(keep):
                break
            # The folds were balanced counting images that turned out to be unreadable:
            # balance them again without those rows and write the shards again, so the
            # records are exactly those of the CSV without them (a second pass, only then).
            keep_pos = [p for p, i in enumerate(keep) if i not in found_bad]
            keep, label_idx, paths = ([xs[p] for p in keep_pos] for xs in (keep, label_idx, paths))
            for p in tmp.iterdir():
                p.unlink()
            if progress:
                bar.write(f"tfkit: {len(found_bad)} unreadable image(s) skipped; assigning folds without them "
                          "and writing the shards again", file=sys.stderr)
            bar.reset(total=len(keep))
        bar.close()
        if not shards_out:
            raise TfkitError(f"CSV {csv}: every image was bad; nothing to write")

        features = {"image": "bytes", "id": "bytes", "group": "bytes", "label": "int64", "fold": "int64",
                    "height": "int64", "width": "int64"}
        for c in meta_cols:
            features[f"meta/{c}"] = "float32" if meta_spec[c]["kind"] == "numeric" else "int64"
        for spec in meta_spec.values():
            spec.pop("_index", None)
        manifest = {
            "tfkit_version": __version__,
            "split": split,
            "n_examples": int(sum(s["count"] for s in shards_out)),
            "classes": classes,
            "task": ("binary" if len(classes) == 2 else "multiclass") if classes else None,
            "image": {
                "size": [size, size] if size else (list(next(iter(sizes))) if len(sizes) == 1 else None),
                "channels": 3, "format": "jpeg", "quality": int(quality),
                "resize": "shorter side to size, centre crop" if size else None,
                "passed_through": int(n_passed),
                "verify": verify,
            },
            "features": features,
            "metadata": meta_spec,
            "folds": {
                "n_folds": int(n_folds) if split == "train" else 0,
                "method": "tfkit.folds.assign_folds (triple-stratified: groups, classes, group sizes)"
                if split == "train" else None,
                "seed": int(seed), "label_col": label_col if has_labels else None, "group_col": group_col,
            },
            "shards": shards_out,
            "skipped": sorted(skipped, key=lambda d: d["row"]),
            "columns": {"id": id_col, "label": label_col if has_labels else None, "group": group_col,
                        "path": path_col},
            "source": {"csv": str(csv), "images": str(images)},
        }
        write_csv(tmp / "folds.csv", pd.DataFrame(written_ids, columns=["id", "fold"]))
        write_json(tmp / "manifest.json", manifest)
    if progress:
        print(f"wrote {manifest['n_examples']} examples in {len(shards_out)} shards to {out_p}"
              + (f" ({len(skipped)} bad rows skipped)" if skipped else ""), file=sys.stderr)
    return manifest


# --------------------------------------------------------------------------- reader


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def load_manifest(records_dir: str | os.PathLike) -> dict:
    """Read ``manifest.json`` of a records folder (local or ``gs://`` via ``tf.io.gfile``).

    Args:
        records_dir: folder written by :func:`build_records` (or the manifest path itself).

    Returns:
        The manifest dict.

    Example:
        >>> load_manifest("records")["classes"]  # doctest: +SKIP
        ['0', '1', ..., '9']
    """
    import json

    path = str(records_dir)
    if not path.endswith(".json"):
        path = path.rstrip("/") + "/manifest.json"
    if _is_remote(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise TfkitError(f"manifest {path} not found")
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    if not os.path.isfile(path):
        raise TfkitError(f"manifest {path} not found (is {records_dir} a folder written by tfkit build-records?)")
    return read_json(path)


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

    Example:
        >>> shard_files("records", folds=[0, 1])  # doctest: +SKIP
        ['records/train00-000-288.tfrec', 'records/train01-000-287.tfrec']
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


@dataclasses.dataclass(frozen=True)
class FeatureMapping:
    """Which keys and dtypes of a TFRecord schema feed tfkit's parsed fields.

    Args:
        image: key of the encoded image bytes.
        id: key of the example id (``id_dtype`` ``"string"`` or ``"int64"``; ints become strings).
        label: key of the integer class index (None: always -1). Missing in an example -> -1.
        group: key of the group (None: the id).
        fold: key of the fold (None: -1).
        id_dtype, group_dtype: ``"string"`` or ``"int64"``.
        meta: ``{name: (key, kind)}`` with kind ``"numeric"`` (read as float32; int64
            sources give ``"numeric_int64"``) or ``"categorical"`` (int64 index).

    Example:
        >>> m = FeatureMapping(image="img", id="name", label="y")
        >>> m.group is None
        True
    """

    image: str = "image"
    id: str = "id"
    label: str | None = "label"
    group: str | None = "group"
    fold: str | None = "fold"
    id_dtype: str = "string"
    group_dtype: str = "string"
    meta: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "FeatureMapping":
        """The mapping of records written by :func:`build_records`."""
        meta = {c: (f"meta/{c}", s["kind"]) for c, s in (manifest.get("metadata") or {}).items()}
        return cls(meta=meta)


#: The widely used public SIIM-ISIC 2020 melanoma TFRecords (Kaggle: Chris Deotte's
#: ``melanoma-{256..1024}x...`` sets): image bytes, image_name bytes, target int64 (absent in
#: test files), patient_id / sex / anatom_site_general_challenge / diagnosis int64 label
#: encodings, age_approx int64, width/height int64. File names ``train00-2182.tfrec`` give the
#: file index as the "fold".
SIIM_ISIC_2020 = FeatureMapping(
    image="image",
    id="image_name",
    label="target",
    group="patient_id",
    fold=None,
    id_dtype="string",
    group_dtype="int64",
    meta={
        "sex": ("sex", "categorical"),
        "age_approx": ("age_approx", "numeric_int64"),
        "anatom_site_general_challenge": ("anatom_site_general_challenge", "categorical"),
    },
)


def feature_spec(mapping: FeatureMapping) -> dict:
    """``tf.io.parse_single_example`` feature spec for a mapping (defaults for optional keys).

    Example:
        >>> spec = feature_spec(FeatureMapping())  # doctest: +SKIP
    """
    import tensorflow as tf

    def scalar(dtype: str, default: Any) -> Any:
        tfd = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[dtype]
        return tf.io.FixedLenFeature([], tfd, default_value=default)

    spec = {mapping.image: tf.io.FixedLenFeature([], tf.string)}
    spec[mapping.id] = scalar(mapping.id_dtype, "" if mapping.id_dtype == "string" else -1)
    if mapping.label:
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
        ``fn(serialized scalar tf.string) -> dict`` with ``image`` (encoded bytes), ``id``
        (tf.string), ``label`` (int64, -1 when absent), ``group`` (tf.string), ``fold``
        (int64) and ``meta`` ({col: float32 numeric | int64 categorical}). Graph-safe
        (usable in ``Dataset.map``).

    Example:
        >>> ds = tf.data.TFRecordDataset(shard_files("records")).map(make_parser(load_manifest("records")))  # doctest: +SKIP
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
            "label": ex[mapping.label] if mapping.label else tf.constant(-1, tf.int64),
            "group": as_str(ex[mapping.group], mapping.group_dtype) if mapping.group else ident,
            "fold": ex[mapping.fold] if mapping.fold else tf.constant(-1, tf.int64),
            "meta": meta,
        }

    return parse
