"""Check, co-register and tile a region's imagery into tiles and a tile manifest.

Input: --imagery (default STORE/imagery/REGION), a folder or s3:// prefix with A/ B/
[label/] (LEVIR style) or pre/ post/ [label/] (GeoTIFF pairs). Output, in the step's key
folder like every step's (the record, written last, is the one pointer to it):
STORE/regions/REGION/ingest/<key>/manifest.json and tiles/<version>/...
"""

from __future__ import annotations

import argparse

from components.records import Layout, StepError, StepInput, tree_digest
from components.step import RunOptions, run_step
from damnet import storage
from damnet.imagery import parse_bands
from damnet.tiling import MANIFEST, TilingConfig, ingest


def config_from(args: argparse.Namespace) -> TilingConfig:
    try:
        return TilingConfig(size=args.tile_size, overlap=args.overlap,
                            bands=parse_bands(args.bands), require_labels=args.require_labels,
                            skip_bad=args.skip_bad, label_threshold=args.label_threshold)
    except ValueError as exc:
        raise StepError(f"damnet ingest: {exc}") from None


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    imagery = storage.absolute(args.imagery) if args.imagery else layout.imagery
    config = config_from(args)
    params = {"tiling": {"size": config.size, "overlap": config.overlap, "bands": config.bands,
                         "require_labels": config.require_labels, "skip_bad": config.skip_bad,
                         "label_threshold": config.label_threshold}}
    inputs: dict[str, StepInput] = {"imagery": {"uri": imagery, "digest": tree_digest(imagery)}}

    def body(run):
        manifest = ingest(imagery, run.out, config)
        print(summary(run.out, manifest), flush=True)
        labelled = [t for t in manifest["tiles"] if t["change_fraction"] is not None]
        run.outputs.update(tiles=run.out, manifest=run.path(MANIFEST))
        run.metrics.update(tiles=len(manifest["tiles"]), pairs=len(manifest["pairs"]),
                           skipped=len(manifest["skipped"]), labelled_tiles=len(labelled))
        run.info.update(version=manifest["version"], notes=[n for p in manifest["pairs"] for n in p["notes"]],
                        skipped=manifest["skipped"])
        run.artifact(run.path(MANIFEST))

    run_step("ingest", inputs, params, body, layout, RunOptions.from_args(args))


def summary(out: str, manifest: dict) -> str:
    tiles = manifest["tiles"]
    labelled = [t for t in tiles if t["change_fraction"] is not None]
    lines = [f"{out}: {len(tiles)} tile(s) from {len(manifest['pairs'])} pair(s), "
             f"version {manifest['version']}"]
    if labelled:
        frac = sum(t["change_fraction"] for t in labelled) / len(labelled)
        lines.append(f"  labelled tiles: {len(labelled)}, mean changed pixels {frac:.2%}")
    for pair in manifest["pairs"]:
        for note in pair["notes"]:
            lines.append(f"  note: {note}")
    for skipped in manifest["skipped"]:
        lines.append(f"  skipped: {skipped}")
    return "\n".join(lines)
