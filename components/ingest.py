"""Check, co-register and tile a region's imagery into tiles and a tile manifest.

Input: a region folder or s3:// prefix with A/ B/ [label/] (LEVIR style) or pre/ post/
[label/] (GeoTIFF pairs). Output: OUT/manifest.json and OUT/tiles/<version>/...
"""

from __future__ import annotations

import argparse

from damnet.imagery import parse_bands
from damnet.tiling import TilingConfig, ingest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imagery", required=True, help="region folder or s3:// prefix")
    p.add_argument("--out", required=True, help="where tiles and manifest.json go")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--bands", default=None, help="1-based R,G,B bands of multi-band imagery")
    p.add_argument("--require-labels", action="store_true")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad pairs with a warning line each instead of failing")


def config_from(args: argparse.Namespace) -> TilingConfig:
    try:
        return TilingConfig(size=args.tile_size, overlap=args.overlap,
                            bands=parse_bands(args.bands), require_labels=args.require_labels,
                            skip_bad=args.skip_bad)
    except ValueError as exc:
        raise SystemExit(f"damnet ingest: {exc}") from None


def run(args: argparse.Namespace) -> None:
    manifest = ingest(args.imagery, args.out, config_from(args))
    print(summary(args.out, manifest))


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
