"""Label Studio's brush RLE, encoded and decoded bit for bit, and polygons rasterised.

Brush RLE (Label Studio's ``rle-pack`` bit stream, as in ``label_studio_sdk.converter.brush``):
a big-endian bit stream of a 32-bit value count, 5 bits ``word size - 1``, four 4-bit
``run-length field size - 1`` entries, then blocks ``[repeat bit][2-bit size index][count - 1]``
followed by one word (repeat) or ``count`` words (literal), zero-padded to whole bytes. The
values are the RGBA bytes of the image, row-major, so a (H, W) mask is ``H * W * 4`` values.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Masks (and RLE value counts / 4) larger than this many pixels are refused.
MAX_MASK_PIXELS = 8192 * 8192

# The encoder settings label-studio-sdk's ``encode_rle`` uses (and so ``mask2rle``).
_WORD_SIZE = 8
_RLE_SIZES = (3, 4, 8, 16)
_MAX_CHUNK = 1 << 16


def _header_bits() -> tuple[int, int]:
    """(value, width) of the fixed part of the header after the 32-bit count."""
    value = _WORD_SIZE - 1
    for size in _RLE_SIZES:
        value = (value << 4) | (size - 1)
    return value, 5 + 4 * len(_RLE_SIZES)


def rle_encode_values(values: np.ndarray) -> list[int]:
    """Encode a flat uint8 array as Label Studio brush RLE (a list of byte values).

    Bit-for-bit the output of ``label_studio_sdk.converter.brush.encode_rle(values)`` with its
    defaults (word size 8, run-length field sizes 3, 4, 8, 16): runs of one value are literal
    blocks of 1, longer runs are repeat blocks using the smallest field that holds them, runs
    over 256 use the 16-bit field (split every 65536 values), and the stream is padded with
    1 to 8 zero bits.
    """
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        raise ValueError("cannot encode an empty array")
    if flat.size >= 1 << 32:
        raise ValueError(f"{flat.size} values do not fit the 32-bit count of the RLE header")
    if flat.dtype != np.uint8:
        if flat.min() < 0 or flat.max() > 255:
            raise ValueError("RLE values must be in 0..255")
        flat = flat.astype(np.uint8)
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.append(change, flat.size - 1)
    lengths = np.diff(np.append(-1, ends)).astype(np.int64)
    vals = flat[ends].astype(np.int64)

    # Runs longer than 256 become (L - 1) // 65536 full chunks plus one final chunk, all
    # with the 16-bit field; shorter runs are one chunk.
    long = lengths > 256
    n_full = np.where(long, (lengths - 1) // _MAX_CHUNK, 0)
    per_run = n_full + 1
    run_of = np.repeat(np.arange(lengths.size), per_run)
    first = np.cumsum(per_run) - per_run
    k = np.arange(run_of.size) - first[run_of]
    is_last = k == n_full[run_of]
    clen = np.where(is_last, lengths[run_of] - _MAX_CHUNK * n_full[run_of], _MAX_CHUNK)
    cval = vals[run_of]
    clong = long[run_of]

    field = np.select([clong, clen <= 8, clen <= 16], [16, 3, 4], 8)
    index = np.select([field == 3, field == 4, field == 8], [0, 1, 2], 3)
    repeat = ((clen > 1) | clong).astype(np.int64)  # a long run's last chunk repeats, even of 1
    codes = (((repeat << 2 | index) << field | (clen - 1) * repeat) << _WORD_SIZE) | cval
    widths = 3 + field + _WORD_SIZE

    head, head_width = _header_bits()
    offsets = 32 + head_width + np.cumsum(widths) - widths
    total = int(offsets[-1] + widths[-1]) if widths.size else 32 + head_width
    pad = 8 - total % 8  # the sdk always pads, a whole zero byte when already aligned
    bits = np.zeros(total + pad, dtype=np.uint8)
    header = (flat.size << head_width) | head
    hw = 32 + head_width
    bits[:hw] = (header >> np.arange(hw - 1, -1, -1, dtype=np.int64)) & 1
    for b in range(int(widths.max())):
        sel = b < widths
        bits[offsets[sel] + b] = (codes[sel] >> (widths[sel] - 1 - b)) & 1
    return np.packbits(bits).tolist()


def rle_encode(mask: np.ndarray) -> list[int]:
    """Encode a (H, W) 0/1 (or boolean / 0-255) mask as a Label Studio brush RLE.

    Non-zero pixels become RGBA (255, 255, 255, 255), the others (0, 0, 0, 0): the result
    equals ``label_studio_sdk.converter.brush.mask2rle(mask * 255)`` bit for bit, the form
    the sdk's examples use for pre-annotations.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    rgba = np.repeat((mask > 0).astype(np.uint8).ravel() * np.uint8(255), 4)
    return rle_encode_values(rgba)


def _rle_bytes(rle: object) -> np.ndarray:
    if isinstance(rle, bytes | bytearray):
        return np.frombuffer(bytes(rle), dtype=np.uint8)
    if not isinstance(rle, list | tuple | np.ndarray):
        raise ValueError(f"RLE must be a list of byte values, got {type(rle).__name__}")
    if len(rle) == 0:
        raise ValueError("RLE is empty")
    if isinstance(rle, list | tuple) and not all(type(v) is int for v in rle):
        raise ValueError("RLE must hold integers 0..255 only")
    arr = np.asarray(rle)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError("RLE must be a flat list of integers 0..255")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError("RLE values must be bytes (0..255)")
    return arr.astype(np.uint8)


class _Bits:
    """Big-endian bit reader over a byte array (reads of up to 32 bits)."""

    def __init__(self, data: np.ndarray) -> None:
        self.buf = data.tobytes() + bytes(8)
        self.data = data
        self.n = data.size * 8
        self.pos = 0

    def read(self, width: int) -> int:
        end = self.pos + width
        if end > self.n:
            raise ValueError("RLE ends in the middle of a value (truncated or corrupt)")
        start = self.pos >> 3
        window = int.from_bytes(self.buf[start:start + 6], "big")
        value = (window >> (48 - (self.pos & 7) - width)) & ((1 << width) - 1)
        self.pos = end
        return value

    def words(self, count: int, width: int) -> np.ndarray:
        end = self.pos + count * width
        if end > self.n:
            raise ValueError("RLE ends in the middle of a value (truncated or corrupt)")
        lo, hi = self.pos >> 3, (end + 7) >> 3
        bits = np.unpackbits(self.data[lo:hi])[self.pos - 8 * lo: end - 8 * lo]
        weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
        self.pos = end
        return bits.reshape(count, width).astype(np.int64) @ weights


def rle_decode_values(rle: list[int] | bytes | np.ndarray, expected: int | None = None) -> np.ndarray:
    """Decode a brush RLE into its flat uint8 values (like the sdk's ``decode_rle``).

    ``expected`` (a value count, ``H * W * 4``) is checked against the header before any
    memory is allocated. Raises ``ValueError`` for a stream that is not valid: truncated,
    runs past the declared count, a word size over 8 bits, or a count over the pixel limit.
    The loop runs once per run or literal block, never per pixel.
    """
    data = _rle_bytes(rle)
    bits = _Bits(data)
    if bits.n < 53:
        raise ValueError("RLE is shorter than its 53-bit header")
    num = bits.read(32)
    word = bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    if expected is not None and num != expected:
        raise ValueError(f"RLE holds {num} values, {expected} expected")
    if num > MAX_MASK_PIXELS * 4:
        raise ValueError(f"RLE declares {num} values, more than the limit of {MAX_MASK_PIXELS * 4}")
    if word > 8:
        raise ValueError(f"RLE word size {word} bits is not supported (8-bit image values only)")
    vals: list[int] = []
    lens: list[int] = []
    i = 0
    while i < num:
        head = bits.read(3)
        j = i + 1 + bits.read(sizes[head & 3])
        if j > num:
            raise ValueError(f"RLE run reaches value {j}, past the declared {num} values")
        if head >> 2:
            vals.append(bits.read(word))
            lens.append(j - i)
        else:
            words = bits.words(j - i, word)
            vals.extend(words.tolist())
            lens.extend([1] * (j - i))
        i = j
    return np.repeat(np.asarray(vals, dtype=np.uint8), np.asarray(lens, dtype=np.int64))


def rle_decode(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """Decode a brush RLE of a (height, width) image into a (H, W) uint8 0/1 mask.

    A pixel is change when its alpha byte is non-zero, the rule Label Studio's editor uses to
    draw a brush region (its own brush exports have soft, partly transparent edges). Raises
    ``ValueError`` when the RLE is corrupt or is not of a (height, width) RGBA image.
    """
    if height <= 0 or width <= 0 or height * width > MAX_MASK_PIXELS:
        raise ValueError(f"mask size {width}x{height} is out of range")
    data = _rle_bytes(rle)
    # Literal blocks cost at least one word per value; anything far longer is not a mask.
    limit = 2 * height * width * 4 + 64
    if data.size > limit:
        raise ValueError(f"RLE has {data.size} bytes, absurdly long for a {width}x{height} mask")
    flat = rle_decode_values(data, expected=height * width * 4)
    return (flat.reshape(height, width, 4)[..., 3] > 0).astype(np.uint8)


def polygon_to_mask(points_percent: Iterable | None, height: int, width: int) -> np.ndarray:
    """Rasterise a Label Studio polygon into a (height, width) uint8 0/1 mask.

    ``points_percent`` is ``[[x, y], ...]`` in percent of the image width and height (the
    ``value.points`` of a ``polygonlabels`` result), so ``[100, 100]`` is the bottom-right
    corner of the image. Pixels whose centre lies inside the polygon are 1. Anything that is not
    such a list (None: a result without points) raises ``ValueError``.
    """
    from affine import Affine
    from rasterio.features import rasterize

    pts = np.asarray(points_percent, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 3:
        raise ValueError("a polygon needs at least 3 [x, y] points")
    if not np.isfinite(pts).all():
        raise ValueError("polygon points must be finite numbers")
    xy = pts * np.array([width / 100.0, height / 100.0])
    ring = [tuple(p) for p in xy] + [tuple(xy[0])]
    geom = {"type": "Polygon", "coordinates": [ring]}
    return rasterize([(geom, 1)], out_shape=(height, width), transform=Affine.identity(),
                     fill=0, dtype="uint8", all_touched=False)
