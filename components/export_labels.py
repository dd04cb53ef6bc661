"""Export the micro-label and audit tiles as Label Studio tasks (and a plain mask bundle).

Inputs: the selection, the adapted model (its predictions become pre-annotations, so
labelers correct instead of draw) and the region's tiles. Outputs: tasks.json,
label_config.xml, images/ (8-bit PNG quicklooks of both dates), masks/ and bundle.csv for
other tools. Labelers return a Label Studio JSON export (or a folder of mask PNGs) to
STORE/labels/REGION/, where import-labels looks by default.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from components.inputs import tiles_of
from components.records import Layout, input_of, read_json, upstream
from components.step import RunOptions, run_step
from damnet import labels, registry
from damnet.data import TileSet
from damnet.device import resolve_device
from damnet.evaluate import change_probability


def predicted_masks(model, tiles, device: str = "auto", batch_size: int = 8) -> dict[str, np.ndarray]:
    """tile id -> (H, W) 0/1 mask predicted by ``model`` (the labelers' starting point)."""
    dev = resolve_device(device)
    model.to(dev).eval()
    out = {}
    for b in tiles.iter_batches(batch_size):
        b = b.to(dev)
        with torch.no_grad():
            prob = change_probability(model, b.pre, b.post)
        pred = ((prob >= 0.5) & b.valid).to(torch.uint8).cpu().numpy()
        for i, m in zip(b.index.tolist(), pred, strict=True):
            out[tiles.ids[i]] = m
    return out


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    tiles, t_rec = tiles_of(layout, labels=None)
    select = upstream(layout, "select")
    adapt = upstream(layout, "adapt")
    inputs = {"selection": input_of(select, "selection"), "model": input_of(adapt, "model"),
              "tiles": input_of(t_rec, "tiles")}
    params = {"image_url_prefix": args.image_url_prefix}

    def body(run):
        sel = read_json(select["outputs"]["selection"])
        sets = {t: "train" for t in sel["train"]} | {t: "audit" for t in sel["audit"]}
        chosen = TileSet(t_rec["outputs"]["tiles"], tile_ids=list(sets), labels=None)
        model, _ = registry.load_model(adapt["outputs"]["model"])
        masks = predicted_masks(model, chosen, args.device)
        summary = labels.write_export(
            run.out, layout.region, t_rec["outputs"]["tiles"], chosen.tiles, sets,
            {t: sel["scores"][t]["entropy"] for t in sets}, masks, model_version=f"adapt-{adapt['key']}",
            image_url_prefix=args.image_url_prefix)
        run.outputs.update(tasks=summary["tasks_json"], label_config=summary["label_config"],
                           bundle=summary["bundle"], images=run.path("images"), export=run.out)
        run.metrics.update(tasks=summary["tasks"], train_tasks=summary["sets"]["train"],
                           audit_tasks=summary["sets"]["audit"])
        run.info.update(inbox=layout.inbox)
        run.artifact(summary["label_config"])
        print(f"  {summary['tasks']} Label Studio task(s) in {summary['tasks_json']}")
        print(f"  labelers: import tasks.json with label_config.xml; return the JSON export to "
              f"{layout.inbox}/export.json (or mask PNGs to {layout.inbox}/masks/)")

    run_step("export-labels", inputs, params, body, layout, RunOptions.from_args(args))
