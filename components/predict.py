"""Change maps of whole scenes: sliding-window inference with overlap blending.

Inputs: --model (default ``models:/damnet-REGION@champion``) and --imagery (default
STORE/imagery/REGION: pre/ post/ scene pairs or A/ B/ images, any size). Outputs per
scene: <scene>_change_prob.tif (Cloud-Optimized GeoTIFF, p = value / 254),
<scene>_change.tif (0/1), <scene>_buildings.geojson (changed-building polygons with area,
in the scene's CRS) and <scene>_overlay.png (a quicklook), plus summary.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from components.inputs import model_input
from components.records import Layout, StepInput, tree_digest, write_json
from components.step import RunOptions, run_step
from damnet import registry, storage, vsis3
from damnet.predict import predict_region
from damnet.quicklook import save_png

QUICKLOOK_PX = 1024


def overlay(image_path: str, change_uri: str, out_uri: str) -> None:
    """The (post) image at most QUICKLOOK_PX wide with predicted change in red."""
    with storage.local_copy(change_uri) as cpath, rasterio.open(cpath) as chg:
        scale = max(chg.width, chg.height) / QUICKLOOK_PX
        shape = (max(1, round(chg.height / max(scale, 1))), max(1, round(chg.width / max(scale, 1))))
        change = chg.read(1, out_shape=shape, resampling=Resampling.nearest)
        bounds = chg.bounds
    with rasterio.open(image_path) as src:
        window = src.window(*bounds) if src.crs is not None else None
        img = src.read([1, 2, 3], window=window, out_shape=(3, *shape), boundless=window is not None,
                       resampling=Resampling.average)
    rgb = np.moveaxis(img.astype(np.float32), 0, -1)
    lo, hi = np.percentile(rgb, (1, 99))
    rgb = np.clip((rgb - lo) / max(hi - lo, 1e-6) * 255, 0, 255)
    hit = change == 1
    rgb[hit] = 0.45 * rgb[hit] + 0.55 * np.array([255, 30, 30])
    save_png(out_uri, rgb.astype(np.uint8))


def _post_image(root: Path, listing: dict[str, str] | None, name: str) -> str | None:
    """The post image of scene ``name`` under ``root`` (a local folder, or ``/vsis3/...`` with the
    prefix's ``listing``), for its quicklook."""
    for sub in ("post", "B"):
        if listing is None:
            found = sorted((root / sub).glob(name + ".*"))
            if found:
                return str(found[0])
        else:
            keys = sorted(k for k in listing if k.startswith(f"{sub}/{name}."))
            if keys:
                return str(root / keys[0])
    return None


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    model_ref = model_input(args.model or f"models:/{registry.registered_name(layout.region)}@{registry.CHAMPION}")
    imagery = storage.absolute(args.imagery) if args.imagery else layout.imagery
    inputs: dict[str, StepInput] = {"model": model_ref, "imagery": {"uri": imagery, "digest": tree_digest(imagery)}}
    params = {"tile": args.tile, "overlap": args.overlap, "threshold": args.threshold,
              "min_area_px": args.min_area_px}

    def body(run):
        model, _ = registry.load_model(model_ref["uri"])
        scenes = []
        results = predict_region(model, imagery, run.out, tile=args.tile, overlap=args.overlap,
                                 batch_size=args.batch_size, threshold=args.threshold,
                                 min_area_px=args.min_area_px, device=args.device)
        with vsis3.reading_tree(imagery) as (root, listing):  # s3:// read in place, by window
            for r in results:
                post = _post_image(root, listing, r["name"])
                quicklook = run.path(f"{r['name']}_overlay.png")
                if post is not None:
                    overlay(post, r["change_uri"], quicklook)
                scenes.append({"name": r["name"], "probability": r["prob_uri"], "change": r["change_uri"],
                               "polygons_uri": r["buildings_uri"], "polygons": r["polygons"],
                               "changed_fraction": r["changed_share"], "crs": r["crs"],
                               "quicklook": quicklook if post is not None else None,
                               "seconds": r["seconds"]})
                print(f"  {r['name']}: {r['changed_share']:.2%} changed, {r['polygons']} polygon(s) "
                      f"-> {r['prob_uri']}")
        write_json(run.path("summary.json"), scenes)
        run.outputs.update(summary=run.path("summary.json"), maps=run.out)
        run.metrics.update(scenes=len(scenes), polygons=sum(s["polygons"] for s in scenes),
                           changed_fraction=float(np.mean([s["changed_fraction"] for s in scenes])))
        for s in scenes:
            if s["quicklook"]:
                run.artifact(s["quicklook"], "maps")

    run_step("predict", inputs, params, body, layout, RunOptions.from_args(args))
