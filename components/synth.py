"""Generate a synthetic region of bi-temporal GeoTIFF scenes in a named domain style.

Writes ``pre/``, ``post/``, ``label/`` (0/255) and ``region.json`` under --out (a local path
or s3:// URI). With --labels-out the labels go there instead, so a target region can be
handed to the pipeline without its ground truth.
"""

from __future__ import annotations

import argparse

from damnet.synthetic import write_region


def run(args: argparse.Namespace) -> None:
    region = write_region(args.out, args.style, n_scenes=args.scenes, size=args.size,
                          seed=args.seed, labels_uri=args.labels_out,
                          quicklook_uri=args.quicklook)
    changed = sum(s["change_fraction"] for s in region["scenes"]) / len(region["scenes"])
    print(f"{args.out}: {len(region['scenes'])} scene(s) of {args.size}x{args.size} px in style "
          f"{args.style!r} ({region['gsd']} m, {region['crs']}), changed pixels {changed:.1%}")
