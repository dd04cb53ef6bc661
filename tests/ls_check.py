"""Check a Label Studio export written by ``damnet.labels.write_export`` with label-studio-sdk itself.

Run with the interpreter of the venv that has label-studio-sdk (not damnet's)::

    .venv-ls/bin/python tests/ls_check.py EXPORT_DIR [--annotations LS_EXPORT.json]

Checks, and exits 1 listing every mismatch:

* ``label_config.xml`` passes ``LabelInterface.validate()``;
* every task has a value for every ``$variable`` of the config's object tags, its images
  exist as 8-bit RGB PNGs of the tile size;
* every prediction passes ``LabelInterface.validate_prediction``;
* every brush RLE decodes with the sdk's ``decode_rle`` to the tile's RGBA size, its alpha
  channel equals ``masks/<tile_id>.png``, and ``mask2rle`` of that PNG gives the very same
  RLE (bit-for-bit compatibility of the encoder);
* ``bundle.csv`` lists the same tiles;
* with ``--annotations``: every annotation of that Label Studio-style export passes
  ``LabelInterface.validate_annotation``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image


def check(root: Path, annotations: Path | None = None) -> list[str]:
    problems: list[str] = []
    config = (root / "label_config.xml").read_text()
    li = LabelInterface(config)
    try:
        li.validate()
    except Exception as exc:  # the sdk raises its own validation error types
        return [f"label_config.xml: invalid: {exc}"]
    tasks = json.loads((root / "tasks.json").read_text())
    if not isinstance(tasks, list) or not tasks:
        return ["tasks.json: not a non-empty list"]
    ids = [t.get("id") for t in tasks]
    if ids != list(range(1, len(tasks) + 1)):
        problems.append(f"tasks.json: ids are not 1..{len(tasks)}: {ids[:10]}")
    for task in tasks:
        data = task["data"]
        tid = data.get("tile_id")
        where = f"task {task.get('id')} ({tid})"
        w, h = data.get("width"), data.get("height")
        for obj in li.objects:
            if obj.value_is_variable and data.get(obj.value_name) is None:
                problems.append(f"{where}: data has no '{obj.value_name}' for <{obj.tag} name={obj.name}>")
        for key in ("pre", "post"):
            rel = data.get(key, "")
            path = root / rel
            if "://" in rel or not path.is_file():
                problems.append(f"{where}: image {rel!r} is not a file of the export")
                continue
            with Image.open(path) as im:
                if im.format != "PNG" or im.mode != "RGB" or im.size != (w, h):
                    problems.append(f"{where}: {rel} is {im.format} {im.mode} {im.size}, "
                                    f"expected PNG RGB {(w, h)}")
        mask_path = root / "masks" / f"{tid}.png"
        preds = task.get("predictions") or []
        if bool(preds) != mask_path.is_file():
            problems.append(f"{where}: {len(preds)} prediction(s) but masks/{tid}.png "
                            f"{'exists' if mask_path.is_file() else 'is missing'}")
        for pred in preds:
            errors = li.validate_prediction(pred, return_errors=True)
            problems += [f"{where}: prediction invalid: {e}" for e in errors]
            for res in pred.get("result", []):
                if res.get("type") != "brushlabels":
                    continue
                if (res.get("original_width"), res.get("original_height")) != (w, h):
                    problems.append(f"{where}: result size {res.get('original_width')}x"
                                    f"{res.get('original_height')} != tile {w}x{h}")
                    continue
                rle = res["value"]["rle"]
                try:
                    flat = decode_rle(rle)
                except Exception as exc:  # the sdk's decoder raises whatever a bad stream causes
                    problems.append(f"{where}: the sdk cannot decode the RLE: {type(exc).__name__}: {exc}")
                    continue
                if flat.size != w * h * 4:
                    problems.append(f"{where}: RLE decodes to {flat.size} values, expected {w * h * 4}")
                    continue
                alpha = flat.reshape(h, w, 4)[..., 3]
                if not mask_path.is_file():
                    continue
                with Image.open(mask_path) as im:
                    png = np.asarray(im)
                if png.shape != (h, w) or not np.array_equal(alpha > 0, png > 0):
                    problems.append(f"{where}: decoded RLE differs from masks/{tid}.png "
                                    f"({int(np.sum((alpha > 0) != (png > 0)))} pixels)")
                if mask2rle(((png > 0) * 255).astype(np.uint8)) != rle:
                    problems.append(f"{where}: RLE is not what the sdk's mask2rle gives for masks/{tid}.png")
    with open(root / "bundle.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if [r["tile_id"] for r in rows] != [t["data"]["tile_id"] for t in tasks]:
        problems.append("bundle.csv: tile ids differ from tasks.json")
    if annotations is not None:
        for item in json.loads(annotations.read_text()):
            for ann in item.get("annotations", []):
                where = f"{annotations.name}: task {item.get('id')} annotation {ann.get('id')}"
                for i, res in enumerate(ann.get("result", [])):
                    errors = li.validate_region(res, return_errors=True, region_index=i)
                    problems += [f"{where}: {e}" for e in errors]
                if not li.validate_annotation(ann):
                    problems.append(f"{where}: not valid for the config")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--annotations", type=Path, default=None,
                        help="a Label Studio JSON export whose annotations to validate too")
    args = parser.parse_args(argv)
    try:
        problems = check(args.export_dir, args.annotations)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems = [f"cannot check the export: {type(exc).__name__}: {exc}"]
    if problems:
        print(f"{args.export_dir}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{args.export_dir}: OK, checked with label-studio-sdk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
