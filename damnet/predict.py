"""Whole-scene inference: probability COG, binary change map and changed-building polygons.

:func:`predict_scene` runs a change model over the area both dates of an
:class:`~damnet.imagery.OpenPair` cover, in windows of ``tile`` pixels that overlap by
``overlap``, and writes three files under ``out_dir_uri`` (a local folder or ``s3://``
prefix; each write is atomic)::

    <name>_change_prob.tif      Cloud-Optimized GeoTIFF of the change probability
    <name>_change.tif           binary change map (tiled, deflate GeoTIFF)
    <name>_buildings.geojson    changed-building polygons

Output formats
--------------
* ``<name>_change_prob.tif``: one uint8 band, ``DN = round(254 * p)`` for a probability
  ``p`` in [0, 1], so ``p = DN / 254``; the band's scale (1/254) and offset (0) are set
  and repeated in the tags ``DN_TO_PROBABILITY`` and ``SCALE``. ``255`` is nodata: pixels
  outside the valid area of both dates. COG layout (GDAL's COG driver), 256 x 256 blocks,
  deflate with horizontal predictor, overviews (average resampling) down to one block.
* ``<name>_change.tif``: one uint8 band, 1 where ``p >= threshold`` (on the unquantised
  probability), 0 elsewhere and 255 (nodata) outside the valid area. No speck filtering:
  the raster is the plain thresholded map.
* ``<name>_buildings.geojson``: one Polygon feature per 4-connected group of changed
  pixels with at least ``min_area_px`` pixels; properties ``id`` (1, 2, ... in output
  order), ``area_px`` (pixels) and ``area`` (CRS units squared, e.g. m²; degrees² for a
  geographic CRS). Coordinates are in the scene's CRS, which the file names in a (2008
  GeoJSON style) named ``crs`` member: a deviation from RFC 7946, which allows WGS 84
  longitude/latitude only. Rings follow the RFC 7946 winding (exterior counter-clockwise,
  holes clockwise). Scenes without a CRS (LEVIR-style A/B images) get pixel coordinates
  (x = column, y = row, growing downwards), no ``crs`` member, and a property
  ``"coordinates": "pixel"`` on every feature.

All three rasters share the pre scene's CRS and grid, restricted to ``pair.window``: their
transform is ``pair.pre.window_transform(pair.window)``.

Bounded memory
--------------
Windows are visited row by row. The last window of a row or column is moved back to end at
the area's edge, so only an area smaller than one tile makes a window reach past it (the
padding is masked; the window shrinks to the area rounded up to 32 pixels). Each window's
probability map is weighted by a 2-D trapezoidal (linear-ramp) blending window that is
strictly positive everywhere, so scene borders covered by one window keep their
prediction, and the weighted sums are divided by the sum of the weights, so a constant
prediction stays constant and a model that works pixel by pixel gives exactly its
full-image result. The sums live in two rolling
accumulators of ``tile x area width`` float32 values; as soon as the windows move down, the
rows no later window touches are finished and written out. Nothing of the size of the scene
is ever held in memory. Finished rows are written in whole rows of 256 x 256 blocks (so each
compressed block is stored once): the binary map straight into its output file, the
probabilities into a deflate-compressed temporary GeoTIFF (system temporary folder) that
GDAL's COG driver then converts block by block, computing the overviews.

The polygons come from GDAL's polygonizer run on the finished binary raster on disk
(:func:`rasterio.features.shapes` on a :func:`rasterio.band`): it reads the raster one
scanline at a time, so polygons are joined across strip boundaries without ever loading
the raster, and memory grows with the number of polygons (changed areas and nodata
patches) only. The GeoJSON is written
feature by feature.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from damnet import storage, vsis3
from damnet.background import Behind, prefetched
from damnet.device import resolve_device
from damnet.imagery import OpenPair, check_region, opened
from damnet.progress import Progress
from damnet.tiling import window_starts  # the tiler's rule: last window ends at the edge

log = logging.getLogger(__name__)

#: Probability p is stored as round(PROB_SCALE * p); PROB_NODATA marks pixels without data.
PROB_SCALE = 254
PROB_NODATA = 255
#: Nodata value of the binary change map (its data values are 0 and 1).
CHANGE_NODATA = 255
#: Block size of every output raster.
BLOCK = 256

_PROFILE = {"driver": "GTiff", "count": 1, "dtype": "uint8", "tiled": True,
            "blockxsize": BLOCK, "blockysize": BLOCK, "bigtiff": "IF_SAFER"}


def blend_ramp(length: int, overlap: int) -> np.ndarray:
    """(length,) float32 weights: a linear ramp over ``overlap`` pixels at both ends, 1 between.

    The ramp runs ``0.5/overlap, 1.5/overlap, ...``, never reaching 0, and the falling ramp of
    one window plus the rising ramp of its neighbour ``length - overlap`` further sum to 1.
    """
    if overlap <= 0:
        return np.ones(length, dtype=np.float32)
    i = np.arange(length, dtype=np.float64) + 0.5
    ramp = np.minimum(1.0, np.minimum(i, length - i) / overlap)
    return ramp.astype(np.float32)


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """(height, width) float32 blending window: outer product of two :func:`blend_ramp`."""
    return blend_ramp(height, overlap)[:, None] * blend_ramp(width, overlap)[None, :]


def plan_windows(height: int, width: int, tile: int, overlap: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Window size and the (row, col) offsets, row-major, that cover a height x width area.

    Returns ``(tile_h, tile_w, offsets)``. The window is ``tile`` square, shrunk to the
    area rounded up to a multiple of 32 along a side where the area is smaller than a tile.
    """
    tile_h = min(tile, 32 * math.ceil(height / 32))
    tile_w = min(tile, 32 * math.ceil(width / 32))
    stride = tile - overlap
    rows = window_starts(height, tile_h, stride)
    cols = window_starts(width, tile_w, stride)
    return tile_h, tile_w, [(r, c) for r in rows for c in cols]


class _RollingAccumulator:
    """Weighted sums of probabilities for ``rows`` consecutive rows of a ``height x width`` area.

    ``top`` is the area row held in buffer row 0. Windows must arrive in row-major order;
    :meth:`release` hands out finished rows and scrolls the buffer.
    """

    def __init__(self, rows: int, height: int, width: int) -> None:
        self.rows, self.height, self.width = rows, height, width
        self.top = 0
        self.sum = np.zeros((rows, width), dtype=np.float32)
        self.weight = np.zeros((rows, width), dtype=np.float32)

    def add(self, row: int, col: int, prob: np.ndarray,
            weight: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Add a window's (h, w) probability with (h, w) weights; yield the rows it finishes."""
        yield from self.release(row)
        h = min(prob.shape[0], self.height - row)
        w = min(prob.shape[1], self.width - col)
        r = row - self.top
        if r < 0 or r + h > self.rows:
            raise RuntimeError(f"window at row {row} is outside the rows {self.top}..{self.top + self.rows} "
                               "held; windows must come in row-major order")
        wt = weight[:h, :w]
        self.sum[r:r + h, col:col + w] += prob[:h, :w] * wt
        self.weight[r:r + h, col:col + w] += wt

    def release(self, upto: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row0, prob)`` strips for the rows before ``upto``: (n, width) float32, NaN
        where no weight was added (no valid pixel)."""
        upto = min(upto, self.height)
        while self.top < upto:
            n = min(upto - self.top, self.rows)
            s, w = self.sum[:n], self.weight[:n]
            prob = np.full((n, self.width), np.nan, dtype=np.float32)
            np.divide(s, w, out=prob, where=w > 0)
            yield self.top, prob
            for buf in (self.sum, self.weight):
                # Scroll up by n rows, n rows at a time: the copies never overlap, so numpy
                # needs no temporary buffer.
                for i in range(0, self.rows - n, n):
                    m = min(n, self.rows - n - i)
                    buf[i:i + m] = buf[i + n:i + n + m]
                buf[self.rows - n:] = 0
            self.top += n


def _check_settings(tile: int, overlap: int, batch_size: int) -> None:
    if tile < 32 or tile % 32:
        raise ValueError(f"tile must be a multiple of 32 (the model's stride), got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _window_batches(pair: OpenPair, tile_h: int, tile_w: int, offsets: Iterable[tuple[int, int]],
                    batch_size: int) -> Generator[list[tuple], None, None]:
    """Batches of ``(row, col, pre, post, valid)`` windows of ``pair.window`` (offsets relative
    to it), windows without any valid pixel left out."""
    col0, row0 = int(pair.window.col_off), int(pair.window.row_off)
    batch: list[tuple] = []
    for r, c in offsets:
        pre, post, valid, _ = pair.read(Window(col0 + c, row0 + r, tile_w, tile_h))
        if not valid.any():
            continue
        batch.append((r, c, pre, post, valid))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _infer(model: torch.nn.Module, dev: torch.device, batch: list[tuple]) -> np.ndarray:
    """(B, th, tw) float32 change probability of a batch of :func:`_window_batches`."""
    from damnet.evaluate import change_probability

    pre = torch.from_numpy(np.stack([b[2] for b in batch])).to(dev)
    post = torch.from_numpy(np.stack([b[3] for b in batch])).to(dev)
    with torch.no_grad():
        return change_probability(model, pre, post).float().cpu().numpy()


class _Plan:
    """The windows of a pair and the accumulator their probabilities are blended in."""

    def __init__(self, pair: OpenPair, tile: int, overlap: int) -> None:
        self.height, self.width = int(pair.window.height), int(pair.window.width)
        self.tile_h, self.tile_w, self.offsets = plan_windows(self.height, self.width, tile, overlap)
        self.weights = blend_weights(self.tile_h, self.tile_w, overlap)
        self.acc = _RollingAccumulator(self.tile_h, self.height, self.width)

    def blend(self, where: list[tuple], probs: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Add a batch's probabilities (``where``: the ``(row, col, valid)`` of each window);
        yield the strips they finish."""
        for (r, c, valid), prob in zip(where, probs, strict=True):
            yield from self.acc.add(r, c, prob, self.weights * valid)


def _model_batches(model: torch.nn.Module, pair: OpenPair, plan: _Plan, batch_size: int,
                   device: str | torch.device, progress: bool | None, stats: dict,
                   prefetch: int) -> Generator[tuple[list[tuple], np.ndarray], None, None]:
    """``(where, probs)`` for every batch of windows, read ``prefetch`` batches ahead:
    ``where`` holds each window's ``(row, col, valid)``, ``probs`` its (th, tw) probability."""
    dev = resolve_device(device) if isinstance(device, str) else device
    model.to(dev).eval()
    stats.update(windows=len(plan.offsets), windows_run=0)
    with Progress(plan.offsets, desc=f"predict {pair.files.name}", unit="window", leave=False,
                  enabled=progress) as bar:  # counts the windows read
        reads = _window_batches(pair, plan.tile_h, plan.tile_w, bar, batch_size)
        batches = prefetched(reads, prefetch)
        with contextlib.closing(batches):  # on an error too: the reader stops before the pair closes
            for batch in batches:
                probs = _infer(model, dev, batch)
                stats["windows_run"] += len(batch)
                yield [(r, c, valid) for r, c, _, _, valid in batch], probs  # the pixels are done


def probability_strips(
    model: torch.nn.Module,
    pair: OpenPair,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    stats: dict | None = None,
    prefetch: int = 1,
) -> Iterator[tuple[int, np.ndarray]]:
    """Blended change probability of ``pair.window``, strip by strip, top to bottom.

    Yields ``(row0, prob)``: ``prob`` is (n, W) float32 for the rows ``row0 .. row0 + n`` of
    the window (``W`` its width, ``n <= tile``), NaN where either date has no data.
    The model gets (B, 3, th, tw) uint8 tensors (th, tw multiples of 32) and returns
    (B, 2, th, tw) logits; windows without any valid pixel are not run. Windows are read in
    a background thread ``prefetch`` batches ahead of the model (0: no thread; the result
    is the same). ``stats``, when given, receives ``windows`` (all) and ``windows_run``.
    """
    _check_settings(tile, overlap, batch_size)
    plan = _Plan(pair, tile, overlap)
    stats = {} if stats is None else stats
    batches = _model_batches(model, pair, plan, batch_size, device, progress, stats, prefetch)
    with contextlib.closing(batches):
        for where, probs in batches:
            yield from plan.blend(where, probs)
    yield from plan.acc.release(plan.height)


def _crs_member(crs) -> dict | None:
    """GeoJSON (2008) named-CRS object for ``crs``; None without a CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    if epsg == 4326:
        name = "urn:ogc:def:crs:OGC:1.3:CRS84"  # longitude, latitude order, as written
    elif epsg is not None:
        name = f"urn:ogc:def:crs:EPSG::{epsg}"
    else:
        name = crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def _area_units(crs) -> str:
    if crs is None:
        return "pixel"
    if crs.is_geographic:
        return "degree^2"
    unit = crs.linear_units or "unknown"
    return f"{unit}^2"


def _signed_area(ring: list) -> float:
    """Shoelace area (positive for counter-clockwise) of a closed ring, relative to its
    first vertex to keep precision with large projected coordinates."""
    pts = np.asarray(ring, dtype=np.float64)
    x, y = pts[:, 0] - pts[0, 0], pts[:, 1] - pts[0, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _orient(rings: list) -> tuple[list, float]:
    """Rings wound the RFC 7946 way and the polygon's area (exterior minus holes)."""
    out, area = [], 0.0
    for i, ring in enumerate(rings):
        ring = [list(p) for p in ring]
        a = _signed_area(ring)
        if (i == 0) != (a > 0):
            ring.reverse()
        out.append(ring)
        area += abs(a) if i == 0 else -abs(a)
    return out, area


def write_polygons(change_tif: Path, out_path: Path, min_area_px: int, name: str) -> int:
    """Vectorise the 1-pixels of a binary map file into a GeoJSON file; return the count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(change_tif)
    with src, open(out_path, "w", encoding="utf-8") as out:
        crs, t = src.crs, src.transform
        pixel_area = abs(t.a * t.e - t.b * t.d)
        header: dict[str, object] = {"type": "FeatureCollection", "name": f"{name}_buildings"}
        member = _crs_member(crs)
        if member is not None:
            header["crs"] = member
        header["damnet"] = {"coordinates": "crs" if crs else "pixel",
                            "area_units": _area_units(crs), "min_area_px": min_area_px,
                            "connectivity": 4}
        out.write(json.dumps(header)[:-1] + ', "features": [\n')
        band = rasterio.band(src, 1)
        count = 0
        # The band is its own mask: 0 (no change) is skipped, nodata (255) comes out as
        # separate polygons and is dropped below.
        for geom, value in rasterio.features.shapes(band, mask=band, connectivity=4):
            if value != 1:
                continue
            rings, area = _orient(geom["coordinates"])
            area_px = round(area / pixel_area)
            if area_px < min_area_px:
                continue
            count += 1
            props = {"id": count, "area": area_px * pixel_area, "area_px": area_px}
            if crs is None:
                props["coordinates"] = "pixel"
            feature = {"type": "Feature", "id": count, "properties": props,
                       "geometry": {"type": "Polygon", "coordinates": rings}}
            out.write((",\n" if count > 1 else "") + json.dumps(feature))
        out.write("\n]}\n")
    return count


def _encode(prob: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, W) float32 probabilities (NaN: no data) -> uint8 DN, uint8 change map, bool valid."""
    valid = ~np.isnan(prob)
    dn = np.full(prob.shape, PROB_NODATA, dtype=np.uint8)
    change = np.full(prob.shape, CHANGE_NODATA, dtype=np.uint8)
    np.copyto(change, prob >= threshold, where=valid)
    prob = prob * PROB_SCALE
    np.rint(prob, out=prob)
    np.copyto(dn, prob, where=valid, casting="unsafe")
    return dn, change, valid


class _BlockRows:
    """Writes consecutive (n, W) uint8 rows to band 1 of ``ds`` in whole rows of blocks.

    Every (compressed) block is then written once, complete: a block written in parts
    would be compressed and stored again for every part. Holds fewer than two block rows.
    """

    def __init__(self, ds) -> None:
        self.ds, self.block = ds, ds.block_shapes[0][0]
        self.row0 = 0
        self.pending: list[np.ndarray] = []

    def write(self, rows: np.ndarray, final: bool = False) -> None:
        self.pending.append(rows)
        count = sum(p.shape[0] for p in self.pending)
        n = count if final else count - count % self.block
        if n == 0:
            return
        data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.ds.write(data[:n], 1, window=Window(0, self.row0, data.shape[1], n))
        self.row0 += n
        self.pending = [data[n:].copy()] if n < count else []

    def close(self) -> None:
        self.write(np.zeros((0, self.ds.width), np.uint8), final=True)
        if self.row0 != self.ds.height:
            raise RuntimeError(f"wrote {self.row0} rows of {self.ds.height}")


def _write_strips(model: torch.nn.Module, pair: OpenPair, prob_ds, change_ds, tile: int,
                  overlap: int, batch_size: int, threshold: float, device: str | torch.device,
                  progress: bool | None, stats: dict, prefetch: int) -> tuple[int, int]:
    """Run the model over ``pair`` and write the encoded probability and change rows to the
    two open datasets; return the counts of valid and changed pixels. Blending, encoding and
    writing run behind the model in a thread when ``prefetch`` > 0."""
    plan = _Plan(pair, tile, overlap)
    prob_rows, change_rows = _BlockRows(prob_ds), _BlockRows(change_ds)
    counts = [0, 0]

    def write(strips: Iterable[tuple[int, np.ndarray]]) -> None:
        for _, prob in strips:
            dn, change, valid = _encode(prob, threshold)
            prob_rows.write(dn)
            change_rows.write(change)
            counts[0] += int(np.count_nonzero(valid))
            counts[1] += int(np.count_nonzero(change == 1))
            del prob, dn, change, valid  # keep one strip alive at a time, not two

    behind: Behind[tuple[list[tuple], np.ndarray]] = Behind(lambda item: write(plan.blend(*item)), prefetch)
    batches = _model_batches(model, pair, plan, batch_size, device, progress, stats, prefetch)
    try:
        with contextlib.closing(batches):
            for item in batches:
                behind.put(item)
    except BaseException:
        behind.close(wait=False)  # the first error is the one to report
        raise
    behind.close()
    write(plan.acc.release(plan.height))
    prob_rows.close()
    change_rows.close()
    return counts[0], counts[1]


def _output_profile(pair: OpenPair) -> dict:
    area = pair.window
    profile = {**_PROFILE, "width": int(area.width), "height": int(area.height),
               "transform": pair.pre.window_transform(area)}
    if pair.crs is not None:
        profile["crs"] = pair.crs
    return profile


def predict_scene(
    model: torch.nn.Module,
    pair: OpenPair,
    out_dir_uri: str,
    name: str,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    threshold: float = 0.5,
    min_area_px: int = 16,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    prefetch: int = 1,
) -> dict:
    """Predict change over a whole scene pair and write the three outputs (see the module doc).

    The model takes (B, 3, H, W) uint8 pre and post tensors (H, W multiples of 32) and
    returns (B, 2, H, W) logits (class 1 = change). While the model runs, one background
    thread reads the next ``prefetch`` batches of windows and another blends, encodes and
    writes the finished rows (``prefetch`` 0: all in the calling thread; the files are the
    same either way). Returns a summary: ``name``, the URIs
    ``prob_uri``, ``change_uri``, ``buildings_uri``, ``width``/``height`` of the output
    grid, ``crs`` (string or None), ``valid_pixels``, ``changed_pixels``, ``changed_share``
    (changed / valid), ``polygons``, ``windows``, ``windows_run`` and ``seconds``.
    Nothing is written if anything fails.
    """
    _check_settings(tile, overlap, batch_size)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    started = time.time()
    uris = {key: storage.join(out_dir_uri, f"{name}{suffix}") for key, suffix in (
        ("prob_uri", "_change_prob.tif"), ("change_uri", "_change.tif"),
        ("buildings_uri", "_buildings.geojson"))}
    profile = _output_profile(pair)
    width = profile["width"]
    stats: dict = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        prob_out = stack.enter_context(
            storage.storage_for(uris["prob_uri"]).writing(uris["prob_uri"], suffix=".tif"))
        change_out = stack.enter_context(
            storage.storage_for(uris["change_uri"]).writing(uris["change_uri"], suffix=".tif"))
        poly_out = stack.enter_context(
            storage.storage_for(uris["buildings_uri"]).writing(uris["buildings_uri"], suffix=".geojson"))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="damnet-predict-")))
        prob_tmp = work / "prob.tif"
        with (rasterio.open(prob_tmp, "w", nodata=PROB_NODATA, compress="deflate", zlevel=1,
                            **profile) as prob_ds,
              rasterio.open(change_out, "w", nodata=CHANGE_NODATA, compress="deflate",
                            **profile) as change_ds):
            prob_ds.scales, prob_ds.offsets = (1 / PROB_SCALE,), (0.0,)
            prob_ds.set_band_description(1, "change probability")
            prob_ds.update_tags(DN_TO_PROBABILITY=f"DN / {PROB_SCALE}", SCALE=f"1/{PROB_SCALE}",
                                NODATA=str(PROB_NODATA), TILE=str(tile), OVERLAP=str(overlap))
            change_ds.set_band_description(1, "change (1) / no change (0)")
            change_ds.update_tags(THRESHOLD=str(threshold), NODATA=str(CHANGE_NODATA))
            valid_px, changed_px = _write_strips(model, pair, prob_ds, change_ds, tile, overlap,
                                                 batch_size, threshold, device, progress, stats,
                                                 prefetch)
        rasterio.shutil.copy(prob_tmp, prob_out, driver="COG", blocksize=BLOCK, compress="deflate",
                             predictor=2, overview_resampling="average", bigtiff="IF_SAFER")
        polygons = write_polygons(change_out, poly_out, min_area_px, name)
    summary = {
        "name": name, **uris,
        "width": width, "height": profile["height"],
        "crs": pair.crs.to_string() if pair.crs is not None else None,
        "valid_pixels": valid_px, "changed_pixels": changed_px,
        "changed_share": changed_px / valid_px if valid_px else 0.0,
        "polygons": polygons, "windows": stats["windows"], "windows_run": stats["windows_run"],
        "seconds": round(time.time() - started, 3),
    }
    log.info("%s: %d windows, %.2f%% changed, %d polygons in %.1f s", name, summary["windows"],
             100 * summary["changed_share"], polygons, summary["seconds"])
    return summary


def predict_region(
    model: torch.nn.Module,
    imagery_uri: str,
    out_dir_uri: str,
    bands: tuple[int, ...] | None = None,
    skip_bad: bool = False,
    **kw,
) -> list[dict]:
    """Run :func:`predict_scene` on every pair of a region folder (local or ``s3://``).

    Pairs are found by :func:`~damnet.imagery.discover_pairs` and each is opened once
    before any prediction starts; labels are not used. Unless ``skip_bad`` (then each bad
    pair is one warning), problems raise :class:`~damnet.errors.ImageryErrors` naming every
    file at fault. ``kw`` goes to :func:`predict_scene`; returns one summary per pair.
    """
    with vsis3.reading_tree(imagery_uri) as (root, listing):  # s3:// is read in place, by window
        good, _ = check_region(root, bands=bands, skip_bad=skip_bad, ignore_labels=True,
                               listing=listing)
        summaries = []
        for files in good:
            with opened(files, bands=bands) as pair:
                summaries.append(predict_scene(model, pair, out_dir_uri, files.name, **kw))
    return summaries
