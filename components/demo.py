"""The main job on embedded defaults: a source domain and a new target region, end to end.

Today it generates a labelled source region and an unlabelled target region into a local
store, ingests and tiles both, writes quicklooks and prints what it made. Later steps
(adaptation, micro-label selection, fine-tuning, promotion through the region DAGs) grow
from here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from components.ingest import summary
from damnet import storage
from damnet.synthetic import SOURCE_STYLE, TARGET_STYLES, write_region
from damnet.tiling import TilingConfig, ingest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="local folder or s3:// prefix")
    p.add_argument("--region", default="newtown", help="name of the new target region")
    p.add_argument("--target-style", default="target_season", choices=TARGET_STYLES)
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    started = time.time()
    out = args.out if storage.is_s3(args.out) else str(Path(args.out).resolve())
    raw = storage.join(out, "raw")
    plan = [
        ("source", SOURCE_STYLE, True),
        (args.region, args.target_style, False),
    ]
    for name, style, labelled in plan:
        print(f"[{name}] generating {args.scenes} scene(s) in style {style!r} ...", flush=True)
        write_region(
            storage.join(raw, name), style, n_scenes=args.scenes, size=args.size,
            seed=args.seed + (0 if labelled else 1),
            # The target's ground truth stays outside the imagery the pipeline sees.
            labels_uri=None if labelled else storage.join(out, "truth", name, "label"),
            quicklook_uri=storage.join(out, "quicklooks", f"{name}.png"),
        )
        config = TilingConfig(size=args.tile_size, require_labels=labelled)
        print(f"[{name}] ingesting and tiling ...", flush=True)
        manifest = ingest(storage.join(raw, name), storage.join(out, "regions", name), config)
        print(summary(storage.join(out, "regions", name), manifest), flush=True)
    print(f"\nDone in {time.time() - started:.0f} s.")
    print(f"  quicklooks: {storage.join(out, 'quicklooks')}/")
    print(f"  tiles and manifests: {storage.join(out, 'regions')}/<region>/manifest.json")
