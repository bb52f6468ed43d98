"""Image files -> the bytes a record stores: JPEG header parsing, pass-through checks, re-encoding.

Handled: JPEG, PNG, BMP, TIFF, WebP, GIF; grayscale, palette, RGBA/LA (alpha dropped,
as ``tf.io.decode_image(channels=3)`` does), CMYK and 16-bit (scaled to 8 bits) become
8-bit RGB; EXIF orientation is applied. With ``size``, the shorter side is resized to
``size`` (bicubic, antialiased) and the centre is cropped to ``size x size`` (nothing is
squashed; the borders of the longer side are lost). A JPEG that is already RGB, upright
(no EXIF rotation) and of the requested size (any size without ``size``) is stored
byte-for-byte untouched (pass-through) after an integrity check (``verify``: a
1/8-scale decode, or the JPEG structure only). Pillow is imported only when an image
is decoded.

Example:
    >>> passes_through(jpeg_header(b"not a jpeg"), None)
    False
"""

from __future__ import annotations

import io
import os
import struct
from typing import Any, NamedTuple, Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


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
        >>> raw = b"\\xff\\xd8...no end marker"
        >>> check_jpeg(raw, None, verify="markers")
        Traceback (most recent call last):
        ...
        ValueError: truncated JPEG (no end-of-image marker)
    """
    if b"\xff\xd9" not in raw[-64:]:
        # complete JPEGs end with EOI (decoders tolerate a little padding after it)
        raise ValueError("truncated JPEG (no end-of-image marker)")
    if verify == "decode":
        from PIL import Image

        img = Image.open(io.BytesIO(raw))
        img.draft("RGB", (max(1, header.width // 8), max(1, header.height // 8)))
        img.load()  # Pillow releases the GIL while decoding


def read_image_file(path: str) -> bytes:
    """The bytes of an image file; ValueError("zero-byte file") when it is empty."""
    with open(path, "rb", buffering=0) as f:  # unbuffered: one read, no tty probe
        raw = f.readall()
    if not raw:
        raise ValueError("zero-byte file")
    return raw


class StoredImage(NamedTuple):
    """An image as a record stores it, with the size of the file it came from."""

    data: bytes | tuple[bytes, ...]  # encoded image, or one PNG per channel
    height: int  # stored size
    width: int
    passed_through: bool  # the file's own bytes
    source_height: int  # the file's size, upright (EXIF orientation applied)
    source_width: int
    bit_depth: int = 8  # of the channel PNGs (16 when a channel file is 16-bit)


def store_image(path: str, size: int | None, quality: int, verify: str = "decode") -> StoredImage:
    """Read one image file and return the JPEG bytes to store, with the file's own size.

    Args:
        path: image file.
        size: square output side (shorter side resized, centre crop) or None to keep.
        quality: JPEG quality when re-encoding.
        verify: integrity check of a passed-through JPEG (see :func:`check_jpeg`).

    Returns:
        A :class:`StoredImage`: the file's own bytes when :func:`passes_through`, else a
        re-encoded upright 8-bit RGB JPEG.

    Raises:
        ValueError: empty or truncated file; OSError/other Pillow errors for unreadable images.

    Example (an image folder at hand)::

        stored = store_image("images/a.jpg", 256, 95)
        stored.height, stored.source_height  # 256 and the file's own height
    """
    from PIL import Image, ImageOps

    raw = read_image_file(path)
    header = jpeg_header(raw)
    if passes_through(header, size):
        check_jpeg(raw, header, verify)
        return StoredImage(raw, header.height, header.width, True, header.height, header.width)
    img = Image.open(io.BytesIO(raw))
    source = img.size  # (width, height) of the file, before any reduced-scale decode
    if size is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
        # Let libjpeg decode at a reduced scale while both sides stay >= 2*size
        # (keeps antialiasing quality, much faster for large photos).
        img.draft(img.mode, (2 * size, 2 * size))
    img.load()
    loaded = img.size
    img = ImageOps.exif_transpose(img)
    if img.size != loaded:  # turned a quarter by its EXIF orientation
        source = source[::-1]
    img = _to_rgb8(img)
    if size is not None:
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return StoredImage(buf.getvalue(), img.height, img.width, False, source[1], source[0])


def encode_image(path: str, size: int | None, quality: int, verify: str = "decode") -> tuple[bytes, int, int, bool]:
    """:func:`store_image` without the source size: ``(jpeg_bytes, height, width, passed_through)``.

    Example (an image folder at hand)::

        data, h, w, passed_through = encode_image("images/a.jpg", 256, 95)
    """
    return store_image(path, size, quality, verify)[:4]


def _channel_array(img: Any) -> Any:
    """One grey channel of a file as uint8 or uint16 (16-bit files stay 16-bit: nothing is lost)."""
    import numpy as np

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
    if img.mode == "F":
        return np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("L"))  # L, 1, P, LA, RGB(A), CMYK: luminance, alpha dropped


def _fit_channel(arr: Any, size: int) -> Any:
    """Shorter side to ``size`` (bicubic, antialiased), centre crop: as RGB images are resized."""
    import numpy as np
    from PIL import Image, ImageOps

    top = 65535 if arr.dtype == np.uint16 else 255
    img = ImageOps.fit(Image.fromarray(arr.astype(np.float32)), (size, size),
                       method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    return np.clip(np.rint(np.asarray(img)), 0, top).astype(arr.dtype)


def store_channels(paths: Sequence[str], size: int | None) -> StoredImage:
    """Read one grey file per channel and return a lossless PNG per channel (8- or 16-bit).

    Args:
        paths: the channel files, in channel order.
        size: square output side (shorter side resized, centre crop) or None to keep.

    Returns:
        A :class:`StoredImage` whose ``data`` is a tuple of PNG bytes, one per channel.

    Raises:
        ValueError: channel files of different sizes; OSError/other Pillow errors for unreadable files.

    Example (files ``images/a_red.png``, ``images/a_green.png`` at hand)::

        stored = store_channels(["images/a_red.png", "images/a_green.png"], None)
        len(stored.data)  # 2
    """
    from PIL import Image, ImageOps

    arrays = []
    for path in paths:
        img = Image.open(io.BytesIO(read_image_file(path)))
        img.load()
        arrays.append(_channel_array(ImageOps.exif_transpose(img)))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        sizes = ", ".join(f"{os.path.basename(p)} {a.shape[0]}x{a.shape[1]}" for p, a in zip(paths, arrays))
        raise ValueError(f"channel files differ in size: {sizes}")
    source_h, source_w = arrays[0].shape
    if size is not None:
        arrays = [_fit_channel(a, size) for a in arrays]
    pngs = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    depth = 16 if any(a.dtype.itemsize == 2 for a in arrays) else 8
    h, w = arrays[0].shape
    return StoredImage(tuple(pngs), h, w, False, source_h, source_w, depth)


def bad_image_reason(e: BaseException) -> str:
    """The per-row reason a build reports for an image that failed to read or decode."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "cannot identify image file" in msg:
        return "not an image file (Pillow cannot identify it)"
    if msg in ("zero-byte file", "truncated JPEG (no end-of-image marker)") or msg.startswith("channel files differ"):
        return msg
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"cannot read file ({e.strerror})"
    return f"corrupt or unreadable image ({type(e).__name__}: {msg})"
