"""Writing imported labels as georeferenced label tiles on the image tiles' grid."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from damnet import storage
from damnet.errors import DamnetError
from damnet.labels.export import check_tile_id, tile_size


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
        elif np.shape(mask) != tile_size(tiles_by_id[tid]):
            problems.append(f"tile {tid}: mask shape {np.shape(mask)}, the tile is "
                            f"{tile_size(tiles_by_id[tid])}")
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
