"""Exporting tiles to Label Studio: the labeling config, tasks with pre-annotations, and the files.

:func:`write_export` writes, under ``OUT`` (a local folder or ``s3://`` prefix)::

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
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping

import numpy as np

from damnet import storage
from damnet.errors import DamnetError
from damnet.labels.rle import rle_encode

DEFAULT_LABEL = "Building change"
BRUSH_FROM = "change"
POLYGON_FROM = "change_poly"
IMAGE_PRE = "pre"
IMAGE_POST = "post"
SETS = ("train", "audit")

#: Tile ids become file names; anything outside this pattern (or containing "..") is refused.
SAFE_TILE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


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


def tile_size(tile: Mapping) -> tuple[int, int]:
    """(height, width) of a manifest tile."""
    return int(tile["window"]["height"]), int(tile["window"]["width"])


def _finite_or_none(value: float | None) -> float | None:
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
        if mask is not None and np.shape(mask) != tile_size(tile):
            problems.append(f"tile {tid}: pre-annotation mask has shape {np.shape(mask)}, "
                            f"the tile is {tile_size(tile)}")
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
        h, w = tile_size(tile)
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
