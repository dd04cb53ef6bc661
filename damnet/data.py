"""Tiles as tensors: a region's tiles, and reproducible training batches drawn from them.

A :class:`TileSet` reads the tiles of a manifest (optionally keeping them in memory). A
:class:`Stream` draws training batches whose content is a pure function of
``(seed, stream name, step)``: a run resumed at step N sees exactly the batches an
uninterrupted run would, and DDP ranks take disjoint slices of the same global batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from damnet.errors import UnknownTiles
from damnet.tiling import load_manifest, read_label, read_tile


@dataclass
class Batch:
    """``pre``/``post`` (B, 3, H, W) uint8, ``label`` (B, H, W) int64 or None, ``valid`` (B, H, W) bool."""

    pre: torch.Tensor
    post: torch.Tensor
    label: torch.Tensor | None
    valid: torch.Tensor
    index: torch.Tensor  #: positions in the TileSet

    def to(self, device) -> Batch:
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return Batch(mv(self.pre), mv(self.post), None if self.label is None else mv(self.label),
                     mv(self.valid), self.index)


class TileSet:
    """The tiles of one region (``region_uri`` holds its ``manifest.json``).

    ``labels``: which tiles have labels the consumer may use - ``"manifest"`` (the label
    files the manifest lists), ``None`` (no labels), or a mapping ``tile_id -> label URI``
    (e.g. imported micro labels).
    """

    def __init__(self, region_uri: str, tile_ids: Sequence[str] | None = None,
                 labels: str | dict | None = "manifest", cache: bool = True) -> None:
        self.region_uri = region_uri
        manifest = load_manifest(region_uri)
        tiles = manifest["tiles"]
        if tile_ids is not None:
            by_id = {t["tile_id"]: t for t in tiles}
            missing = [i for i in tile_ids if i not in by_id]
            if missing:
                raise UnknownTiles(f"{region_uri}: unknown tile id(s) {missing[:5]}"
                                   f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}; was the "
                                   "region re-ingested since? re-run the steps after ingest (adapt, select, ...)")
            tiles = [by_id[i] for i in tile_ids]
        self.tiles = tiles
        self.labels = labels
        self.cache = cache
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def ids(self) -> list[str]:
        return [t["tile_id"] for t in self.tiles]

    def subset(self, indices: Sequence[int], labels: str | dict | None = "same") -> TileSet:
        out = TileSet.__new__(TileSet)
        out.region_uri = self.region_uri
        out.tiles = [self.tiles[i] for i in indices]
        out.labels = self.labels if labels == "same" else labels
        out.cache = self.cache
        out._cache = {}
        return out

    def has_labels(self) -> bool:
        if self.labels is None:
            return False
        if isinstance(self.labels, dict):
            return all(t["tile_id"] in self.labels for t in self.tiles)
        return all(t["files"].get("label") for t in self.tiles)

    def any_change(self) -> bool:
        """Whether any valid labelled pixel of these tiles is change (reads each label; meant for
        a few tiles, e.g. the micro set)."""
        for i in range(len(self)):
            _, _, label, valid = self.load(i)
            if label is not None and bool(np.any((label > 0) & (valid > 0))):
                return True
        return False

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(pre, post, label or None, valid) of tile ``i`` as numpy arrays."""
        if i in self._cache:
            return self._cache[i]
        tile = self.tiles[i]
        pre, post, valid, label = read_tile(self.region_uri, tile)
        if self.labels is None:
            label = None
        elif isinstance(self.labels, dict):
            label = read_label(self.labels[tile["tile_id"]])
        item = (pre, post, label, valid)
        if self.cache:
            self._cache[i] = item
        return item

    def batch(self, indices: Sequence[int]) -> Batch:
        items = [self.load(int(i)) for i in indices]
        label_arrays = [it[2] for it in items if it[2] is not None]
        labels = None if len(label_arrays) < len(items) else torch.from_numpy(
            np.stack(label_arrays).astype(np.int64))
        return Batch(torch.from_numpy(np.stack([it[0] for it in items])),
                     torch.from_numpy(np.stack([it[1] for it in items])), labels,
                     torch.from_numpy(np.stack([it[3] for it in items])),
                     torch.as_tensor(list(indices)))

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        """All tiles in order, ``batch_size`` at a time (memory bounded by one batch)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def ground_sample_distance(tiles: TileSet) -> float | None:
    """Median pixel size of the tiles in their CRS units (metres for the projected CRSs we ingest);
    None when it is unknown: no transforms, no CRS (plain PNGs: pixel size 1 means nothing) or
    a geographic CRS (degrees)."""
    sizes = [abs(t["transform"][0]) for t in tiles.tiles if t.get("transform") and _projected(t.get("crs"))]
    return float(np.median(sizes)) if sizes else None


def _projected(crs: str | None) -> bool:
    if not crs:
        return False
    from rasterio.crs import CRS

    try:
        return bool(CRS.from_user_input(crs).is_projected)
    except Exception:  # noqa: BLE001 - an unreadable CRS string: unknown units
        return False


def gsd_ratio(tiles: TileSet, reference: TileSet) -> float:
    """How many of ``tiles``' pixels span one pixel of ``reference`` (e.g. 0.5 m source, 1.2 m
    target: 2.4); 1.0 where either ground sample distance is unknown."""
    mine, ref = ground_sample_distance(tiles), ground_sample_distance(reference)
    return ref / mine if mine and ref else 1.0


class Stream:
    """Reproducible augmented batches from a TileSet: ``stream.batch(step)``.

    Random crops of ``crop`` pixels (None: whole tiles), flips and 90-degree rotations.
    ``scale`` > 1 zooms out: each crop covers ``crop * scale`` tile pixels (at most the whole
    tile), area-averaged down to ``crop`` pixels (labels: change where at least half the area is
    change; valid only where all of it is); < 1 zooms in (bilinear images, nearest labels).
    Used to train on the ground sample distance of another region (:func:`gsd_ratio`).
    """

    def __init__(self, tiles: TileSet, batch_size: int, crop: int | None = None,
                 seed: int = 0, name: str = "stream", augment: bool = True,
                 scale: float = 1.0) -> None:
        if len(tiles) == 0:
            raise ValueError(f"stream {name!r} has no tiles")
        if scale <= 0 or (scale != 1 and crop is None):
            raise ValueError(f"stream {name!r}: scale must be > 0 and needs a crop size "
                             f"(scale {scale}, crop {crop})")
        self.tiles, self.batch_size, self.crop = tiles, batch_size, crop
        self.seed, self.name, self.augment, self.scale = seed, name, augment, scale

    def rescaled(self, scale: float) -> Stream:
        """The same stream (same draws) at another zoom."""
        return Stream(self.tiles, self.batch_size, self.crop, self.seed, self.name, self.augment,
                      scale)

    def _window(self, size: int) -> tuple[int, int]:
        """(crop, window): output pixels and the tile pixels they cover, on tiles of ``size``."""
        crop = self.crop or size
        return crop, crop if self.scale == 1 else max(1, min(size, round(crop * self.scale)))

    def effective_scale(self) -> float:
        """The zoom batches get: ``scale``, unless the tile size caps the window."""
        crop, window = self._window(self.tiles.load(0)[0].shape[-1])
        return window / crop

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Batch:
        g = torch.Generator().manual_seed(_seed(self.seed, self.name, step))
        n = self.batch_size * world
        idx = torch.randint(len(self.tiles), (n,), generator=g)
        size = self.tiles.load(int(idx[0]))[0].shape[-1]
        crop, window = self._window(size)
        offs = torch.randint(size - window + 1, (n, 2), generator=g)
        flips = torch.randint(2, (n, 2), generator=g)
        rots = torch.randint(4, (n,), generator=g)
        mine = range(rank * self.batch_size, (rank + 1) * self.batch_size)
        b = self.tiles.batch([int(idx[i]) for i in mine])
        outs: dict[str, list] = {"pre": [], "post": [], "label": [], "valid": []}
        for j, i in enumerate(mine):
            r, c = int(offs[i, 0]), int(offs[i, 1])
            for key in outs:
                t = getattr(b, key)
                if t is None:
                    continue
                t = t[j][..., r : r + window, c : c + window]
                if window != crop:
                    t = _resize(t, crop, key)
                if self.augment:
                    if flips[i, 0]:
                        t = t.flip(-1)
                    if flips[i, 1]:
                        t = t.flip(-2)
                    t = torch.rot90(t, int(rots[i]), dims=(-2, -1))
                outs[key].append(t)
        label = torch.stack(outs["label"]) if outs["label"] else None  # none when the tiles have no labels
        return Batch(torch.stack(outs["pre"]), torch.stack(outs["post"]), label, torch.stack(outs["valid"]),
                     b.index)


def _resize(t: torch.Tensor, size: int, key: str) -> torch.Tensor:
    """One crop (C, h, w) image or (h, w) label/valid mask resized to ``size`` x ``size``."""
    down = t.shape[-1] > size
    x = t.float()[None] if t.dim() == 3 else t.float()[None, None]
    if key in ("pre", "post"):
        y = F.interpolate(x, size=(size, size), mode="area" if down else "bilinear",
                          align_corners=None if down else False)
        y = y.round().clamp(0, torch.iinfo(t.dtype).max) if not t.dtype.is_floating_point else y
        return y[0].to(t.dtype)
    if not down:
        return F.interpolate(x, size=(size, size), mode="nearest")[0, 0].to(t.dtype)
    y = F.interpolate(x, size=(size, size), mode="area")[0, 0]
    if key == "valid":
        return (y >= 1 - 1e-6).to(t.dtype)
    return (y >= 0.5).to(t.dtype)  # label: change where at least half the area is change


def split_ids(tile_ids: Sequence[str], holdout: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, holdout) tile ids: each id falls on one side by a hash of (seed, id), so the split
    is stable when tiles are added or removed; at least one tile on each side when possible."""
    ids = list(tile_ids)
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    held = [i for i in ids if _seed(seed, "holdout", i) / 0x7FFFFFFF < holdout]
    if holdout > 0 and not held and len(ids) > 1:
        held = [min(ids, key=lambda i: _seed(seed, "holdout", i))]
    if len(held) == len(ids) and ids:
        held = held[:-1]
    keep = set(held)
    return [i for i in ids if i not in keep], held
