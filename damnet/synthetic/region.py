"""Writing a synthetic region to storage: GeoTIFF pairs, labels and ``region.json``."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from damnet import storage
from damnet.progress import Progress
from damnet.synthetic.scene import generate_scene
from damnet.synthetic.styles import DomainStyle, get_style


def write_geotiff(uri: str, array: np.ndarray, transform: Affine, crs: CRS, **profile) -> None:
    """Write a (bands, H, W) or (H, W) array as a tiled, compressed GeoTIFF, atomically."""
    array = array[None] if array.ndim == 2 else array
    prof = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "tiled": array.shape[1] >= 256 and array.shape[2] >= 256,
        **profile,
    }
    with storage.storage_for(uri).writing(uri, suffix=".tif") as tmp, rasterio.open(
        tmp, "w", **prof
    ) as dst:
        dst.write(array)


def scene_seed(region_seed: int, index: int) -> int:
    """The :func:`generate_scene` seed of scene ``index`` of a region written with
    ``region_seed``: regions with different seeds never share a scene."""
    return region_seed * 1000 + index


def write_region(
    out_uri: str,
    style: DomainStyle | str,
    n_scenes: int = 4,
    size: int = 512,
    seed: int = 0,
    labels_uri: str | None = None,
    quicklook_uri: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Write a region as GeoTIFF pairs: ``pre/``, ``post/``, ``label/`` and ``region.json``.

    Labels go to ``labels_uri`` when given (ground truth kept apart from the imagery a
    pipeline sees), else to ``out_uri/label``. ``quicklook_uri`` gets a PNG of the first
    scene. Scene ``i`` is ``generate_scene(style, size, scene_seed(seed, i))``. Returns the
    region description that is also written to ``region.json``.
    """
    from damnet.quicklook import save_png, side_by_side

    style = get_style(style) if isinstance(style, str) else style
    scenes = []
    bar = Progress(range(n_scenes), desc=f"generate {style.name}", unit="scene", enabled=progress)
    for i in bar:
        scene = generate_scene(style, size=size, seed=scene_seed(seed, i))
        name = f"scene_{i:03d}.tif"
        write_geotiff(storage.join(out_uri, "pre", name), scene.pre, scene.transform, scene.crs)
        write_geotiff(storage.join(out_uri, "post", name), scene.post, scene.transform, scene.crs)
        write_geotiff(storage.join(labels_uri or storage.join(out_uri, "label"), name),
                      scene.label * 255, scene.transform, scene.crs)
        if quicklook_uri and i == 0:
            save_png(quicklook_uri, side_by_side(scene.pre, scene.post, scene.label))
        scenes.append({"name": name, **scene.info})
    region = {
        "style": style.name,
        "description": style.description,
        "seed": seed,
        "size": size,
        "gsd": style.gsd,
        "crs": style.crs,
        "scenes": scenes,
        "style_parameters": style.to_dict(),
    }
    storage.storage_for(out_uri).put_text(storage.join(out_uri, "region.json"),
                                          json.dumps(region, indent=2))
    return region
