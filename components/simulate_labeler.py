"""SIMULATED labeler: answer a region's exported tasks from known ground truth (demo, tests).

No person looks at anything: each task is "labelled" with the ground-truth mask of its
tile, read from --truth (a folder of label scenes named like the region's imagery pairs,
e.g. what ``damnet synth --labels-out`` wrote), and the result is written as a Label Studio
JSON export to STORE/labels/REGION/export.json, where import-labels looks for it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from components.inputs import tiles_of
from components.records import Layout, StepError, read_json, upstream
from damnet import labels, storage
from damnet.imagery import IMAGE_SUFFIXES, read_label_window


def truth_reader(truth_root: Path, tiles_by_id: dict):
    scenes = {p.stem: p for p in truth_root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}

    def truth(task: dict) -> np.ndarray:
        tile = tiles_by_id[task["data"]["tile_id"]]
        path = scenes.get(tile["pair"])
        if path is None:
            raise StepError(f"{truth_root}: no ground-truth scene for pair {tile['pair']!r}")
        w = tile["window"]
        # Read like ingest reads labels (any mode, default label threshold), no change outside.
        return read_label_window(path, Window(w["col_off"], w["row_off"], w["width"], w["height"]))

    return truth


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    export = upstream(layout, "export-labels")
    tiles, _ = tiles_of(layout, labels=None)
    tasks = read_json(export["outputs"]["tasks"])
    out = args.out or storage.join(layout.inbox, "export.json")
    with storage.local_tree(args.truth) as root:
        answered = labels.simulate_label_studio_export(
            tasks, truth_reader(Path(root), {t["tile_id"]: t for t in tiles.tiles}))
    storage.storage_for(out).put_text(out, json.dumps(answered))
    print(f"[{layout.region}] simulated labeler: answered {len(answered)} task(s) from {args.truth} -> {out}")
