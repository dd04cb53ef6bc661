"""Label formats for external labelers (Label Studio), without a model or a server.

Export: :func:`write_export` writes, under ``OUT`` (a local folder or ``s3://`` prefix)::

    OUT/label_config.xml           # Label Studio labeling config (see labeling_config)
    OUT/images/<tile_id>_pre.png   # 8-bit RGB quicklook of the pre date, nodata black
    OUT/images/<tile_id>_post.png  # same for the post date
    OUT/masks/<tile_id>.png        # model pre-annotation, single band 0/255 (if given)
    OUT/bundle.csv                 # tile_id,set,uncertainty,pre_png,post_png,mask_png,bounds,crs
    OUT/tasks.json                 # Label Studio tasks; written last: the commit point

Every file is written atomically (``damnet.storage``), and ``tasks.json`` last, so a reader
that finds ``tasks.json`` finds everything it points to. Each task in ``tasks.json``::

    {"id": 1,                              # 1-based, in the order of the tiles given
     "data": {"pre": URL, "post": URL, "tile_id": ..., "region": ..., "bounds": [4 floats],
              "crs": "EPSG:..." | None, "set": "train" | "audit",
              "uncertainty": float | None, "model_version": ..., "width": W, "height": H},
     "predictions": [{"model_version": ..., "score": 1 - uncertainty (0..1) | None,
                      "result": [BRUSH_RESULT]}]}          # [] when there is no mask

    BRUSH_RESULT = {"id": ..., "from_name": "change", "to_name": "post", "type": "brushlabels",
                    "original_width": W, "original_height": H, "image_rotation": 0,
                    "value": {"format": "rle", "rle": [bytes...], "brushlabels": [LABEL]}}

Import: :func:`parse_label_studio_export` reads Label Studio's full JSON export (brush and
polygon results) and :func:`read_mask_folder` reads a folder of ``<tile_id>.png`` masks;
both check everything and raise one :class:`LabelExportError` listing every problem.
:func:`write_label_tiles` then writes georeferenced 0/1 label tiles that
:func:`damnet.tiling.read_label` reads.

Brush RLE (Label Studio's ``rle-pack`` bit stream, as in ``label_studio_sdk.converter.brush``):
a big-endian bit stream of a 32-bit value count, 5 bits ``word size - 1``, four 4-bit
``run-length field size - 1`` entries, then blocks ``[repeat bit][2-bit size index][count - 1]``
followed by one word (repeat) or ``count`` words (literal), zero-padded to whole bytes. The
values are the RGBA bytes of the image, row-major, so a (H, W) mask is ``H * W * 4`` values.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta

import numpy as np

from damnet import storage
from damnet.errors import DamnetError

log = logging.getLogger(__name__)

DEFAULT_LABEL = "Building change"
BRUSH_FROM = "change"
POLYGON_FROM = "change_poly"
IMAGE_PRE = "pre"
IMAGE_POST = "post"
SETS = ("train", "audit")

#: Tile ids become file names; anything outside this pattern (or containing "..") is refused.
SAFE_TILE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Label Studio exports larger than this are refused before parsing.
MAX_EXPORT_BYTES = 200 * 1024 * 1024
#: A mask PNG larger than this (bytes) is refused before decoding.
MAX_MASK_FILE_BYTES = 64 * 1024 * 1024
#: Masks (and RLE value counts / 4) larger than this many pixels are refused.
MAX_MASK_PIXELS = 8192 * 8192

# The encoder settings label-studio-sdk's ``encode_rle`` uses (and so ``mask2rle``).
_WORD_SIZE = 8
_RLE_SIZES = (3, 4, 8, 16)
_MAX_CHUNK = 1 << 16


class LabelExportError(DamnetError):
    """A label export (JSON file or mask folder) cannot be used; every problem is listed.

    Args:
        source: the file or folder that is wrong.
        problems: one line per problem, in words a user understands.
    """

    def __init__(self, source: object, problems: list[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source}: {len(self.problems)} problem(s) in the label export:\n{lines}")


# --------------------------------------------------------------------------- brush RLE


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


def rle_decode_values(rle: list[int] | bytes, expected: int | None = None) -> np.ndarray:
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


def polygon_to_mask(points_percent: Iterable, height: int, width: int) -> np.ndarray:
    """Rasterise a Label Studio polygon into a (height, width) uint8 0/1 mask.

    ``points_percent`` is ``[[x, y], ...]`` in percent of the image width and height (the
    ``value.points`` of a ``polygonlabels`` result), so ``[100, 100]`` is the bottom-right
    corner of the image. Pixels whose centre lies inside the polygon are 1.
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


# --------------------------------------------------------------------------- config and export


def labeling_config(label: str = DEFAULT_LABEL) -> str:
    """Label Studio labeling config (XML): both dates, a change brush and change polygons.

    Images are named ``pre`` and ``post`` (task fields ``$pre`` and ``$post``); the brush
    (``change``) and the polygon tool (``change_poly``) label the post image.
    """
    from xml.sax.saxutils import quoteattr

    value = quoteattr(label)
    return (
        "<View>\n"
        '  <Header value="Mark on the post image every building that was built, demolished or '
        'changed between the two dates (brush or polygons). Correct the model suggestion; '
        'submit an empty annotation when nothing changed."/>\n'
        '  <View style="display: flex; gap: 8px;">\n'
        '    <View style="flex: 50%;">\n'
        '      <Header value="Before (pre date)" size="5"/>\n'
        f'      <Image name="{IMAGE_PRE}" value="${IMAGE_PRE}" zoom="true" zoomControl="true"/>\n'
        "    </View>\n"
        '    <View style="flex: 50%;">\n'
        '      <Header value="After (post date): label here" size="5"/>\n'
        f'      <Image name="{IMAGE_POST}" value="${IMAGE_POST}" zoom="true" zoomControl="true"/>\n'
        "    </View>\n"
        "  </View>\n"
        f'  <BrushLabels name="{BRUSH_FROM}" toName="{IMAGE_POST}">\n'
        f'    <Label value={value} background="#ff2d55"/>\n'
        "  </BrushLabels>\n"
        f'  <PolygonLabels name="{POLYGON_FROM}" toName="{IMAGE_POST}" strokeWidth="2" '
        'pointSize="small" opacity="0.5">\n'
        f'    <Label value={value} background="#ffcc00"/>\n'
        "  </PolygonLabels>\n"
        "</View>\n"
    )


def check_tile_id(tile_id: object) -> str | None:
    """Why ``tile_id`` cannot be used in a file name, or None when it is safe."""
    if not isinstance(tile_id, str) or not SAFE_TILE_ID.fullmatch(tile_id):
        return f"tile id {tile_id!r} may only use letters, digits, '_', '.' and '-'"
    if ".." in tile_id:
        return f"tile id {tile_id!r} must not contain '..'"
    return None


def _tile_size(tile: Mapping) -> tuple[int, int]:
    """(height, width) of a manifest tile."""
    return int(tile["window"]["height"]), int(tile["window"]["width"])


def _finite_or_none(value: object) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def brush_result(mask: np.ndarray, label: str = DEFAULT_LABEL, result_id: str | None = None) -> dict:
    """One Label Studio ``brushlabels`` result (``change`` on ``post``) holding ``mask`` (H, W)."""
    h, w = mask.shape
    out = {
        "from_name": BRUSH_FROM,
        "to_name": IMAGE_POST,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle_encode(mask), "brushlabels": [label]},
    }
    if result_id is not None:
        out = {"id": result_id, **out}
    return out


def _check_export_inputs(tiles: list[dict], sets: Mapping, masks: Mapping) -> None:
    problems = []
    seen = set()
    for tile in tiles:
        tid = tile.get("tile_id")
        why = check_tile_id(tid)
        if why:
            problems.append(why)
            continue
        if tid in seen:
            problems.append(f"tile {tid}: listed twice")
        seen.add(tid)
        if sets.get(tid) not in SETS:
            problems.append(f"tile {tid}: set must be one of {SETS}, got {sets.get(tid)!r}")
        mask = masks.get(tid)
        if mask is not None and np.shape(mask) != _tile_size(tile):
            problems.append(f"tile {tid}: pre-annotation mask has shape {np.shape(mask)}, "
                            f"the tile is {_tile_size(tile)}")
    if problems:
        raise DamnetError(f"{len(problems)} problem(s) in the tiles to export:\n"
                          + "\n".join(f"  - {p}" for p in problems))


def _image_paths(tile_id: str) -> tuple[str, str, str]:
    return f"images/{tile_id}_pre.png", f"images/{tile_id}_post.png", f"masks/{tile_id}.png"


def build_tasks(region: str, tiles: list[dict], sets: Mapping[str, str],
                scores: Mapping[str, float | None], masks: Mapping[str, np.ndarray],
                model_version: str, image_url_prefix: str | None = None,
                label: str = DEFAULT_LABEL) -> list[dict]:
    """Label Studio tasks (see the module docstring) for ``tiles``, ids 1.. in that order.

    ``sets`` maps every tile id to ``"train"`` or ``"audit"``; ``scores`` to the model's
    uncertainty (or None); ``masks`` to a (H, W) 0/1 pre-annotation, absent for tiles
    without one (their ``predictions`` list is then empty).
    Image URLs are ``image_url_prefix + "images/<tile_id>_pre.png"`` (post likewise), or the
    relative path when no prefix is given.
    """
    _check_export_inputs(tiles, sets, masks)
    prefix = image_url_prefix or ""
    tasks = []
    for n, tile in enumerate(tiles, start=1):
        tid = tile["tile_id"]
        h, w = _tile_size(tile)
        pre, post, _ = _image_paths(tid)
        uncertainty = _finite_or_none(scores.get(tid))
        data = {
            "pre": prefix + pre,
            "post": prefix + post,
            "tile_id": tid,
            "region": region,
            "bounds": list(tile.get("bounds") or []),
            "crs": tile.get("crs"),
            "set": sets[tid],
            "uncertainty": uncertainty,
            "model_version": model_version,
            "width": w,
            "height": h,
        }
        predictions = []
        mask = masks.get(tid)
        if mask is not None:
            # Label Studio ranks by prediction score (confidence, 0..1): least sure first.
            score = None if uncertainty is None else round(min(1.0, max(0.0, 1.0 - uncertainty)), 6)
            predictions.append({
                "model_version": model_version,
                "score": score,
                "result": [brush_result(np.asarray(mask), label, result_id=f"pred-{n}")],
            })
        tasks.append({"id": n, "data": data, "predictions": predictions})
    return tasks


def write_export(out_uri: str, region: str, region_uri: str, tiles: list[dict],
                 sets: Mapping[str, str], scores: Mapping[str, float | None],
                 masks: Mapping[str, np.ndarray], model_version: str,
                 image_url_prefix: str | None = None, label: str = DEFAULT_LABEL) -> dict:
    """Write a Label Studio export of ``tiles`` (manifest tiles of ``region_uri``) to ``out_uri``.

    Files are listed in the module docstring; ``tasks.json`` is written last. Give
    ``image_url_prefix`` (ending in ``/``) when Label Studio reads the images from elsewhere,
    e.g. ``"s3://bucket/exports/region/"`` with an S3 source storage connected to the
    project, or a web server's URL. Returns a
    summary: ``{"out", "tasks", "with_prediction", "tasks_json", "label_config", "bundle",
    "sets": {"train": n, "audit": n}}``. Raises :class:`~damnet.errors.DamnetError` before
    writing anything when a tile id is unsafe, a set is missing, or a mask has the wrong shape.
    """
    from PIL import Image

    from damnet.quicklook import save_png, to_display
    from damnet.tiling import read_tile

    tasks = build_tasks(region, tiles, sets, scores, masks, model_version, image_url_prefix, label)
    store = storage.storage_for(out_uri)
    store.put_text(storage.join(out_uri, "label_config.xml"), labeling_config(label))
    rows = []
    for tile, task in zip(tiles, tasks, strict=True):
        tid = tile["tile_id"]
        pre_rel, post_rel, mask_rel = _image_paths(tid)
        pre, post, valid, _ = read_tile(region_uri, tile)
        for img, rel in ((pre, pre_rel), (post, post_rel)):
            rgb = to_display(img).copy()
            rgb[~valid] = 0
            save_png(storage.join(out_uri, rel), np.ascontiguousarray(rgb))
        mask = masks.get(tid)
        if mask is not None:
            uri = storage.join(out_uri, mask_rel)
            with store.writing(uri, suffix=".png") as tmp:
                Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(tmp, "PNG")
        data = task["data"]
        rows.append([tid, data["set"], "" if data["uncertainty"] is None else data["uncertainty"],
                     pre_rel, post_rel, mask_rel if mask is not None else "",
                     json.dumps(data["bounds"]), data["crs"] or ""])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["tile_id", "set", "uncertainty", "pre_png", "post_png", "mask_png", "bounds", "crs"])
    writer.writerows(rows)
    store.put_text(storage.join(out_uri, "bundle.csv"), buf.getvalue())
    tasks_uri = storage.join(out_uri, "tasks.json")
    store.put_text(tasks_uri, json.dumps(tasks, separators=(",", ":")))
    return {
        "out": out_uri,
        "tasks": len(tasks),
        "with_prediction": sum(1 for t in tasks if t["predictions"]),
        "sets": {s: sum(1 for t in tasks if t["data"]["set"] == s) for s in SETS},
        "tasks_json": tasks_uri,
        "label_config": storage.join(out_uri, "label_config.xml"),
        "bundle": storage.join(out_uri, "bundle.csv"),
    }


# --------------------------------------------------------------------------- import


class _Known:
    """Index of the exported tasks: tile ids, task ids and tile sizes."""

    def __init__(self, tasks: Iterable[Mapping]) -> None:
        self.by_tile: dict[str, tuple[int, int]] = {}
        self.tile_of_id: dict[object, str] = {}
        for task in tasks:
            data = task.get("data") or {}
            tid = data.get("tile_id")
            if not isinstance(tid, str):
                continue
            size = None
            if data.get("height") and data.get("width"):
                size = (int(data["height"]), int(data["width"]))
            else:
                for pred in task.get("predictions") or []:
                    for res in pred.get("result") or []:
                        if res.get("original_height") and res.get("original_width"):
                            size = (int(res["original_height"]), int(res["original_width"]))
            if size is None:
                raise DamnetError(f"the exported task of tile {tid} says nothing about the tile size")
            self.by_tile[tid] = size
            if "id" in task:
                self.tile_of_id[task["id"]] = tid


def _annotation_mask(results: object, size: tuple[int, int], where: str,
                     problems: list[str]) -> np.ndarray | None:
    """Union of the brush and polygon results of one annotation, or None on a problem."""
    h, w = size
    if not isinstance(results, list):
        problems.append(f"{where}: 'result' is not a list")
        return None
    mask = np.zeros((h, w), dtype=np.uint8)
    ok = True
    for k, res in enumerate(results):
        if not isinstance(res, dict):
            problems.append(f"{where}, result {k}: not an object")
            ok = False
            continue
        rtype = str(res.get("type", "")).lower()
        from_name = res.get("from_name")
        if from_name not in (BRUSH_FROM, POLYGON_FROM):
            continue  # other controls (comments, relations, ...) carry no change pixels
        rwhere = f"{where}, result {k} ({from_name}/{rtype or 'no type'})"
        ow, oh = res.get("original_width"), res.get("original_height")
        if (ow is not None and ow != w) or (oh is not None and oh != h):
            problems.append(f"{rwhere}: drawn on a {ow}x{oh} image, the tile is {w}x{h}")
            ok = False
            continue
        value = res.get("value")
        if not isinstance(value, dict):
            problems.append(f"{rwhere}: 'value' is missing")
            ok = False
            continue
        try:
            if rtype in ("brushlabels", "brush"):
                if value.get("format", "rle") != "rle" or "rle" not in value:
                    problems.append(f"{rwhere}: brush format {value.get('format')!r} is not supported "
                                    "(only 'rle')")
                    ok = False
                    continue
                part = rle_decode(value["rle"], h, w)
            elif rtype in ("polygonlabels", "polygon"):
                if res.get("image_rotation", 0) not in (0, None):
                    problems.append(f"{rwhere}: polygons on a rotated image are not supported")
                    ok = False
                    continue
                part = polygon_to_mask(value.get("points"), h, w)
            else:
                problems.append(f"{rwhere}: result type {rtype!r} is not supported for change labels")
                ok = False
                continue
        except (ValueError, TypeError) as exc:
            problems.append(f"{rwhere}: {exc}")
            ok = False
            continue
        mask |= part
    return mask if ok else None


def parse_label_studio_export(data: bytes | str, source_name: str,
                              tasks: list[dict]) -> dict[str, np.ndarray]:
    """Change masks from a Label Studio JSON export: ``{tile_id: (H, W) uint8 0/1}``.

    ``data`` is the full JSON export (a list of tasks, each with ``annotations``); ``tasks``
    is the ``tasks.json`` that was imported, giving the tile ids and sizes. A task is matched
    by ``data.tile_id``, else by its ``id``. Within one annotation the brush (``change``) and
    polygon (``change_poly``) results are united; an annotation with no result means "no
    change". Cancelled (skipped) annotations are ignored. Tiles absent from the export are
    simply absent from the result. Every problem is collected and raised at once as a
    :class:`LabelExportError`: not JSON or not a list, unknown task or tile, sizes that do not
    match, corrupt or absurdly long RLE, unsupported results for the change controls, a task
    without a usable annotation, or annotations of one tile that disagree.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_EXPORT_BYTES:
        raise LabelExportError(source_name, [
            f"the export is {len(raw) / 1e6:.0f} MB, more than the {MAX_EXPORT_BYTES / 1e6:.0f} MB "
            "limit; export fewer tasks at a time"])
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise LabelExportError(source_name, [f"not valid JSON: {exc}"]) from None
    if not isinstance(items, list):
        raise LabelExportError(source_name, [
            f"expected Label Studio's JSON export (a list of tasks), got a JSON {type(items).__name__}"])
    known = _Known(tasks)
    problems: list[str] = []
    found: dict[str, list[tuple[str, np.ndarray]]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"task #{n + 1}: not an object")
            continue
        task_id = item.get("id")
        tdata = item.get("data") if isinstance(item.get("data"), dict) else {}
        tid = tdata.get("tile_id")
        label = f"task #{n + 1} (id {task_id})"
        if tid is not None:
            if not isinstance(tid, str) or tid not in known.by_tile:
                problems.append(f"{label}: unknown tile id {tid!r}")
                continue
        elif isinstance(task_id, int) and not isinstance(task_id, bool) and task_id in known.tile_of_id:
            tid = known.tile_of_id[task_id]
        else:
            problems.append(f"{label}: unknown task id {task_id!r} and no data.tile_id")
            continue
        where = f"{label}, tile {tid}"
        annotations = item.get("annotations")
        if not isinstance(annotations, list):
            annotations = []
        usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        if not usable:
            problems.append(f"{where}: not labelled (no annotation that was not cancelled)")
            continue
        for a in usable:
            mask = _annotation_mask(a.get("result"), known.by_tile[tid],
                                    f"{where}, annotation {a.get('id')}", problems)
            if mask is not None:
                found.setdefault(tid, []).append((f"{a.get('id')} (task {task_id})", mask))
    out = {}
    for tid, versions in found.items():
        first = versions[0][1]
        if any(not np.array_equal(first, m) for _, m in versions[1:]):
            names = ", ".join(name for name, _ in versions)
            problems.append(f"tile {tid}: {len(versions)} annotations disagree (annotations {names}); "
                            "keep one in Label Studio and export again")
            continue
        out[tid] = first
    if problems:
        raise LabelExportError(source_name, problems)
    missing = len(known.by_tile) - len(out)
    if missing:
        log.info("%s: %d of %d exported tiles have no labels in this export", source_name, missing,
                 len(known.by_tile))
    return out


def _mask_from_png(name: str, blob: bytes, size: tuple[int, int], problems: list[str]) -> np.ndarray | None:
    from PIL import Image

    h, w = size
    if len(blob) > MAX_MASK_FILE_BYTES:
        problems.append(f"{name}: {len(blob)} bytes, more than the {MAX_MASK_FILE_BYTES} byte limit")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as im:
                if im.format != "PNG":
                    problems.append(f"{name}: not a PNG file ({im.format})")
                    return None
                if im.size != (w, h):
                    problems.append(f"{name}: {im.size[0]}x{im.size[1]} pixels, the tile is {w}x{h}")
                    return None
                if im.mode not in ("1", "L", "I;16", "I", "RGB"):
                    problems.append(f"{name}: image mode {im.mode} is not supported; save a single-band "
                                    "(or grey RGB) PNG with 0/255 or 0/1 values")
                    return None
                arr = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        problems.append(f"{name}: cannot read the PNG: {exc}")
        return None
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            problems.append(f"{name}: an RGB mask must have equal bands (grey); this one is in colour")
            return None
        arr = arr[..., 0]
    values = np.unique(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        problems.append(f"{name}: not a binary mask (values {shown}); use 0/255 or 0/1")
        return None
    return (arr > 0).astype(np.uint8)


def read_mask_pngs(files: Mapping[str, bytes], tasks: list[dict], source_name: str) -> dict[str, np.ndarray]:
    """Masks from ``{file name: PNG bytes}``, names relative to the folder: see read_mask_folder."""
    known = _Known(tasks)
    problems: list[str] = []
    out: dict[str, np.ndarray] = {}
    seen: dict[str, str] = {}
    if not files:
        problems.append("no mask files found; expected <tile_id>.png files")
    for name in sorted(files):
        if "/" in name or "\\" in name or ".." in name:
            problems.append(f"{name}: file names cannot escape the region folder; "
                            "expected <tile_id>.png directly in the folder")
            continue
        if not name.lower().endswith(".png"):
            problems.append(f"{name}: not a .png file; expected <tile_id>.png")
            continue
        tid = name[:-4]
        if check_tile_id(tid) or tid not in known.by_tile:
            problems.append(f"{name}: no exported task has tile id {tid!r}")
            continue
        if tid in seen:
            problems.append(f"{name}: tile {tid} already has a mask ({seen[tid]})")
            continue
        seen[tid] = name
        mask = _mask_from_png(name, files[name], known.by_tile[tid], problems)
        if mask is not None:
            out[tid] = mask
    if problems:
        raise LabelExportError(source_name, problems)
    return out


def read_mask_folder(folder_uri: str, tasks: list[dict]) -> dict[str, np.ndarray]:
    """Masks from a folder (local or ``s3://``) of ``<tile_id>.png``: ``{tile_id: (H, W) 0/1}``.

    Each file must be named after a tile id of ``tasks`` (no sub-folders, no ``..``), have the
    tile's size, and be a binary PNG: single band or RGB with equal bands, values 0/255 or
    0/1. Every problem is collected and raised at once as a :class:`LabelExportError`.
    Tiles without a file are simply absent from the result.
    """
    store = storage.storage_for(folder_uri)
    base = folder_uri.rstrip("/") + "/"
    if storage.is_s3(folder_uri):
        uris = store.list(base)
        rel = {u[len(base):]: u for u in uris}
    else:
        root = storage.local_path(folder_uri)
        if not root.is_dir():
            raise LabelExportError(folder_uri, ["no such folder"])
        rel = {}
        for u in store.list(str(root)):
            rel[storage.local_path(u).relative_to(root).as_posix()] = u
    files: dict[str, bytes] = {}
    for name, uri in rel.items():
        # Names that cannot be a mask are reported by read_mask_pngs without being read.
        ok = "/" not in name and ".." not in name and name.lower().endswith(".png")
        files[name] = store.get_bytes(uri) if ok else b""
    return read_mask_pngs(files, tasks, folder_uri)


# --------------------------------------------------------------------------- label tiles


def write_label_tiles(masks: Mapping[str, np.ndarray], tiles_by_id: Mapping[str, dict],
                      out_uri: str) -> dict[str, str]:
    """Write each mask as ``out_uri/<tile_id>.tif``: single-band uint8 0/1 GeoTIFF.

    The tile's ``transform`` and ``crs`` (none when the tile has none) are copied, so the
    label lies exactly on the image tile; :func:`damnet.tiling.read_label` reads it back.
    Everything is checked (safe tile ids, known tiles, mask shapes) before anything is
    written. Returns ``{tile_id: uri}``.
    """
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    problems = []
    for tid, mask in masks.items():
        why = check_tile_id(tid)
        if why:
            problems.append(why)
        elif tid not in tiles_by_id:
            problems.append(f"tile {tid}: not in the region's manifest")
        elif np.shape(mask) != _tile_size(tiles_by_id[tid]):
            problems.append(f"tile {tid}: mask shape {np.shape(mask)}, the tile is "
                            f"{_tile_size(tiles_by_id[tid])}")
    if problems:
        raise DamnetError(f"{len(problems)} problem(s) in the labels to write:\n"
                          + "\n".join(f"  - {p}" for p in problems))
    store = storage.storage_for(out_uri)
    out = {}
    for tid in sorted(masks):
        tile = tiles_by_id[tid]
        arr = (np.asarray(masks[tid]) > 0).astype(np.uint8)
        profile = {"driver": "GTiff", "height": arr.shape[0], "width": arr.shape[1], "count": 1,
                   "dtype": "uint8", "transform": Affine(*tile["transform"][:6]),
                   "compress": "deflate"}
        if tile.get("crs"):
            profile["crs"] = tile["crs"]
        uri = storage.join(out_uri, f"{tid}.tif")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with store.writing(uri, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
                dst.write(arr, 1)
        out[tid] = uri
    return out


# --------------------------------------------------------------------------- simulated labeler


def simulate_label_studio_export(tasks: list[dict], truth: Callable[[dict], np.ndarray],
                                 annotator: str = "simulated-labeler", seed: int = 0) -> list[dict]:
    """SIMULATED labeler: what Label Studio's JSON export would hold if a person had labelled
    every task exactly as ``truth(task)`` says (a (H, W) 0/1 mask).

    Each task keeps its ``data`` and ``predictions`` and gets one submitted annotation
    ``{"id", "completed_by", "result", "was_cancelled": False, "ground_truth": False,
    "lead_time", "created_at", "updated_at", "task"}`` whose result is one brush region (none
    when the mask is empty, as a labeler who sees no change submits an empty annotation).
    For tests and demos only: no person looked at these tiles.
    """
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for n, task in enumerate(tasks):
        mask = (np.asarray(truth(task)) > 0).astype(np.uint8)
        result = []
        if mask.any():
            rid = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), 10))
            result.append({**brush_result(mask, result_id=rid), "origin": "manual"})
        stamp = (start + timedelta(minutes=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        item = copy.deepcopy(dict(task))
        item["annotations"] = [{
            "id": 1000 + n,
            "completed_by": {"id": 1, "email": f"{annotator}@example.invalid"},
            "result": result,
            "was_cancelled": False,
            "ground_truth": False,
            "lead_time": round(float(rng.uniform(20.0, 180.0)), 3),
            "created_at": stamp,
            "updated_at": stamp,
            "task": task.get("id"),
        }]
        out.append(item)
    return out
