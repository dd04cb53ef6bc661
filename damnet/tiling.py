"""Tiling a region into georeferenced tiles and a tile manifest.

``ingest`` turns a region folder (local or ``s3://``) into::

    OUT/manifest.json                      # the commit point, written last
    OUT/tiles/<version>/A/<tile_id>.tif    # pre image, 3 x uint8, internal nodata mask
    OUT/tiles/<version>/B/<tile_id>.tif    # post image on the pre grid
    OUT/tiles/<version>/label/<tile_id>.tif  # 0/1 change label, when the region has labels

``<version>`` is a hash of the input files' contents and the tiling settings. Re-ingesting
the same inputs finds the finished manifest and does nothing; a run that fails half-way
leaves the previous manifest and the tiles it points to untouched.

Tiles are read window by window, so a scene larger than memory tiles with bounded RAM.
The grid starts at the top-left of the area both dates cover and steps by
``size - overlap``. The last tile of a row or column is moved back to end at the area's
edge (:func:`window_starts`, the rule :mod:`damnet.predict` uses too), so every tile holds
real pixels and every pixel is covered at least once; that last tile overlaps its
neighbour by more than ``overlap`` unless the area's size fits the grid. Only along a side
where the area is smaller than one tile does a tile reach past the area: the padding is
masked, counted in the tile's ``padding_fraction`` and never in its ``nodata_fraction``,
which is the share of the tile's pixels *inside the area* that have no data (either date).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from damnet import __version__, storage, vsis3
from damnet.errors import ImageryError, ImageryErrors
from damnet.imagery import (
    DEFAULT_LABEL_THRESHOLD,
    Band,
    OpenPair,
    PairFiles,
    check_label_threshold,
    check_region,
    opened,
    parse_bands,
)
from damnet.progress import Progress

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "damnet.tiles/1"


@dataclass(frozen=True)
class TilingConfig:
    """How a region is cut.

    ``bands``: R, G, B as 1-based band numbers or band descriptions (``("B04", "B03",
    "B02")``), None: the imagery must have exactly 3 bands. ``label_threshold``: a label
    pixel is change when its value (0..255; 0/1 labels read as 0/255; colour labels: the
    largest component) is above it (:class:`damnet.imagery.LabelReading`).
    """

    size: int = 256
    overlap: int = 0
    bands: tuple[Band, ...] | None = None
    require_labels: bool = False
    skip_bad: bool = False
    label_threshold: int = DEFAULT_LABEL_THRESHOLD

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"tile size must be at least 32 pixels, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ValueError(f"overlap must be in [0, size), got {self.overlap} for size {self.size}")
        # Normalised, so that equal settings give equal tiling versions: (3, 2, 1) whether
        # given as "3,2,1", ["3", "2", "1"] or (3, 2, 1); 127 whether 127 or 127.0.
        object.__setattr__(self, "bands", parse_bands(self.bands))
        object.__setattr__(self, "label_threshold", check_label_threshold(self.label_threshold))


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Offsets of windows of ``size`` stepping by ``stride`` that cover ``[0, length)``.

    The last window is moved back to end at ``length`` (so it sees real pixels rather than
    padding); only when ``length < size`` does the single window reach past the end.
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return starts


def tile_windows(area: Window, size: int, overlap: int = 0) -> list[Window]:
    """Windows of ``size`` that cover ``area``, neighbours sharing at least ``overlap`` pixels.

    The last row/column is moved back to end at the area's edge (:func:`window_starts`);
    only along a side where ``area`` is smaller than ``size`` does a window reach past it,
    and callers pad and mask that part.
    """
    stride = size - overlap
    col0, row0 = int(area.col_off), int(area.row_off)
    return [
        Window(col0 + col, row0 + row, size, size)
        for row in window_starts(int(area.height), size, stride)
        for col in window_starts(int(area.width), size, stride)
    ]


def inside_area(window: dict | Window, area: dict | Window) -> tuple[int, int]:
    """``(rows, cols)`` of a tile window that lie inside ``area`` (its top-left block:
    windows start inside the area), for manifest dicts or :class:`Window` s alike."""

    def get(w, key):
        return int(w[key] if isinstance(w, dict) else getattr(w, key))

    rows = min(get(window, "height"), get(area, "row_off") + get(area, "height") - get(window, "row_off"))
    cols = min(get(window, "width"), get(area, "col_off") + get(area, "width") - get(window, "col_off"))
    return max(rows, 0), max(cols, 0)


def nodata_and_padding(valid: np.ndarray, rows: int, cols: int) -> tuple[float, float]:
    """``(nodata_fraction, padding_fraction)`` of a tile whose valid mask is ``valid`` and
    whose top-left ``rows`` x ``cols`` block lies inside the area: the share of the pixels
    inside the area without data, and the share of the tile outside the area (padding)."""
    inside = valid[:rows, :cols]
    padding = 1.0 - inside.size / valid.size if valid.size else 0.0
    nodata = 1.0 - float(inside.mean()) if inside.size else 1.0
    return nodata, padding


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rel(root: Path, path: Path | None) -> str | None:
    return None if path is None else path.relative_to(root).as_posix()


def _band_stats(img: np.ndarray, valid: np.ndarray) -> dict:
    if not valid.any():
        return {"mean": [None] * img.shape[0], "std": [None] * img.shape[0]}
    px = img[:, valid].astype(np.float32)
    return {"mean": [round(float(v), 3) for v in px.mean(1)],
            "std": [round(float(v), 3) for v in px.std(1)]}


def _write_tile(uri: str, data: np.ndarray, transform: Affine, crs, mask: np.ndarray | None) -> None:
    profile = {
        "driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
        "count": data.shape[0], "dtype": data.dtype.name, "transform": transform,
        "compress": "deflate",
    }
    if crs is not None:
        profile["crs"] = crs
    # Tiles of plain (LEVIR-style) images carry pixel coordinates and no CRS on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with (storage.storage_for(uri).writing(uri, suffix=".tif") as tmp,
              rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
              rasterio.open(tmp, "w", **profile) as dst):
            dst.write(data)
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)


def read_tile(region_uri: str, tile: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """``(pre, post, valid, label)`` of one manifest tile: (3,H,W) uint8 x2, (H,W) bool, (H,W) 0/1."""
    out = []
    for key in ("pre", "post"):
        with storage.local_copy(storage.join(region_uri, tile["files"][key])) as p, rasterio.open(p) as src:
            out.append((src.read(), src.read_masks(1) > 0))
    label = None
    if tile["files"].get("label"):
        label = read_label(storage.join(region_uri, tile["files"]["label"]))
    return out[0][0], out[1][0], out[0][1] & out[1][1], label


def read_label(uri: str) -> np.ndarray:
    """A label tile (file or URI) as (H, W) uint8 0/1."""
    with storage.local_copy(uri) as path, rasterio.open(path) as src:
        return (src.read(1) > 0).astype(np.uint8)


def load_manifest(region_uri: str) -> dict:
    uri = storage.join(region_uri, MANIFEST)
    return json.loads(storage.storage_for(uri).get_text(uri))


def _version(root: Path, pairs: list[PairFiles], config: TilingConfig,
             listing: dict[str, str] | None = None) -> str:
    """Hash of the settings and the inputs' contents: each file's sha256, or for a remote
    folder read in place its listing's fingerprint (``"<ETag> <size>"``: nothing downloaded)."""
    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for p in pairs:
        for path in (p.pre, p.post, p.label):
            if path is not None:
                rel = _rel(root, path)
                digest = _sha256(path) if listing is None else listing[str(rel)]
                h.update(f"{rel}={digest}\n".encode())
    return h.hexdigest()[:16]


def _up_to_date(store: storage.Storage, out_uri: str, version: str) -> dict | None:
    manifest_uri = storage.join(out_uri, MANIFEST)
    if not store.exists(manifest_uri):
        return None
    manifest = json.loads(store.get_text(manifest_uri))
    if manifest.get("version") != version:
        return None
    present = set(store.list(storage.join(out_uri, "tiles", version)))
    wanted = {storage.join(out_uri, f) for t in manifest["tiles"] for f in t["files"].values() if f}
    return manifest if wanted <= present else None


def _pair_record(root: Path, files: PairFiles, pair: OpenPair) -> dict:
    """The manifest record of one opened pair (its ``tiles`` count starts at 0)."""
    crs = pair.crs
    return {
        "name": files.name,
        "layout": files.layout,
        "files": {"pre": _rel(root, files.pre), "post": _rel(root, files.post),
                  "label": _rel(root, files.label)},
        "crs": crs.to_string() if crs else None,
        "transform": list(pair.transform)[:6],
        "width": pair.pre.width,
        "height": pair.pre.height,
        "area": {"col_off": int(pair.window.col_off), "row_off": int(pair.window.row_off),
                 "width": int(pair.window.width), "height": int(pair.window.height)},
        "dtype": {"pre": pair.pre.dtypes[0], "post": pair.post.dtypes[0]},
        "stretch": {"pre": asdict(pair.stretch_pre), "post": asdict(pair.stretch_post)},
        "notes": pair.notes,
        "tiles": 0,
    }


def _write_window(out_uri: str, tile_dir: str, pair: OpenPair, record: dict, win: Window,
                  size: int) -> dict | None:
    """Write the tiles of window ``win`` of ``pair`` (``record``: its manifest record) and
    return their manifest entry; None when the window holds no valid pixel."""
    pre, post, valid, label = pair.read(win)
    if not valid.any():
        return None
    row, col = int(win.row_off), int(win.col_off)
    tile_id = f"{record['name']}_r{row:05d}_c{col:05d}"
    transform = pair.transform @ Affine.translation(col, row)
    crs = pair.crs
    nodata, padding = nodata_and_padding(valid, *inside_area(win, pair.window))
    pre_file, post_file = f"{tile_dir}/A/{tile_id}.tif", f"{tile_dir}/B/{tile_id}.tif"
    out_files: dict[str, str | None] = {"pre": pre_file, "post": post_file, "label": None}
    _write_tile(storage.join(out_uri, pre_file), pre, transform, crs, valid)
    _write_tile(storage.join(out_uri, post_file), post, transform, crs, valid)
    if label is not None:
        label_file = f"{tile_dir}/label/{tile_id}.tif"
        out_files["label"] = label_file
        _write_tile(storage.join(out_uri, label_file), label[None], transform, crs, None)
    return {
        "tile_id": tile_id,
        "pair": record["name"],
        "sources": record["files"],
        "window": {"col_off": col, "row_off": row, "width": size, "height": size},
        "bounds": [round(v, 6) for v in window_bounds(win, pair.transform)],
        "crs": record["crs"],
        "transform": list(transform)[:6],
        "nodata_fraction": round(nodata, 6),
        "padding_fraction": round(padding, 6),
        "change_fraction": None if label is None else round(float(label[valid].mean()), 6),
        "stats": {"pre": _band_stats(pre, valid), "post": _band_stats(post, valid)},
        "files": out_files,
    }


def _tile_pair(root: Path, files: PairFiles, out_uri: str, tile_dir: str, config: TilingConfig,
               progress: bool | None) -> tuple[dict, list[dict]]:
    """Tile one pair: its manifest record and tiles. Raises :class:`ImageryError` naming the
    file when its pixels cannot be read, or when it yields no tile (no valid pixel where both
    dates overlap); the tiles written until then are deleted."""
    tiles: list[dict] = []
    try:
        with opened(files, bands=config.bands, require_labels=config.require_labels,
                    label_threshold=config.label_threshold) as pair:
            record = _pair_record(root, files, pair)
            bar = Progress(tile_windows(pair.window, config.size, config.overlap), desc=f"tile {files.name}",
                           unit="tile", leave=False, enabled=progress)
            for win in bar:
                tile = _write_window(out_uri, tile_dir, pair, record, win, config.size)
                if tile is not None:
                    tiles.append(tile)
                    record["tiles"] += 1
        if not tiles:
            raise ImageryError(files.pre, f"scene {files.name!r} has no valid pixel where both dates overlap "
                               f"(all nodata in {files.pre.name} or {files.post.name}): it gives no tile")
    except ImageryError:
        store = storage.storage_for(out_uri)
        for tile in tiles:
            for f in tile["files"].values():
                if f:
                    store.delete(storage.join(out_uri, f))
        raise
    return record, tiles


def ingest(in_uri: str, out_uri: str, config: TilingConfig | None = None,
           progress: bool | None = None) -> dict:
    """Check, co-register and tile a region; return (and write) its manifest.

    Raises :class:`~damnet.errors.ImageryErrors` listing every bad input unless
    ``config.skip_bad`` is set, in which case each bad pair is one warning line and is listed
    in the manifest's ``skipped``: pairs that cannot be opened, that cannot be read while
    tiling (e.g. a truncated GeoTIFF) and scenes that give no tile (all nodata).
    """
    config = config or TilingConfig()
    store = storage.storage_for(out_uri)
    started = time.time()
    with vsis3.reading_tree(in_uri) as (root, listing):  # s3:// is read in place, by window
        pairs, skipped = check_region(root, bands=config.bands,
                                      require_labels=config.require_labels,
                                      label_threshold=config.label_threshold,
                                      skip_bad=config.skip_bad, listing=listing)
        version = _version(root, pairs, config, listing)
        existing = _up_to_date(store, out_uri, version)
        if existing is not None:
            log.info("%s is up to date (version %s): nothing to do", out_uri, version)
            return existing
        tile_dir = f"tiles/{version}"
        pair_records, tiles, failed = [], [], []
        for files in pairs:
            try:
                record, pair_tiles = _tile_pair(root, files, out_uri, tile_dir, config, progress)
            except ImageryError as exc:  # damage that shows only when the pixels are read
                failed.append(exc)
                continue
            pair_records.append(record)
            tiles.extend(pair_tiles)
        if failed:
            if not config.skip_bad or not tiles:
                raise ImageryErrors(failed)
            for err in failed:
                log.warning("skipped: %s", err)
            skipped = [*skipped, *failed]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "code_version": __version__,
        "source": in_uri,
        "config": asdict(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 2),
        "pairs": pair_records,
        "skipped": [str(e) for e in skipped],
        "tiles": tiles,
    }
    store.put_text(storage.join(out_uri, MANIFEST), json.dumps(manifest, indent=1))
    return manifest
