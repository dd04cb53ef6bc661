"""Whether a region's labels came back: the label inbox, checked without running a step.

Looks in ``STORE/labels/REGION/`` for a Label Studio export (``export.json``), else for mask
PNGs (``masks/``), and prints the URI of what it found. ``--json`` prints one JSON line
``{"region": ..., "inbox": ..., "labels": URI or null}``: what the fine-tune DAG's labels
sensor reads. Always exits 0 when it could look; writes nothing, records nothing.

With ``--pull`` and a Label Studio server configured (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``), an empty inbox is not the end: it asks the region's project how many
tasks are done and, when all are, pulls the export into the inbox (``damnet labels-pull``);
the JSON line then has ``"server": {"url", "project", "tasks", "done"}`` too. Without a server,
``--pull`` changes nothing (the file drop). A server that cannot be reached exits 75.

Cheap on purpose (the sensor runs it every few minutes): ``python -m components.labels_status``
imports only the store layout, not the other steps.
"""

from __future__ import annotations

import argparse
import json
import sys

from components import spec
from components.records import Layout
from damnet import storage


def labels_present(layout: Layout) -> str | None:
    """The URI of the region's returned labels (the export, else the masks folder), or None."""
    export = storage.join(layout.inbox, "export.json")
    if storage.storage_for(export).exists(export):
        return export
    masks = storage.join(layout.inbox, "masks")
    if storage.storage_for(masks).list(masks.rstrip("/") + "/"):
        return masks
    return None


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    found = labels_present(layout)
    if not found and args.pull:
        from damnet.labelstudio import Server

        server = Server.from_env()
        if server is not None:
            from components.labels_pull import pull, report

            report(layout, server, pull(layout, server), args.json)
            return
    if args.json:
        print(json.dumps({"region": layout.region, "inbox": layout.inbox, "labels": found}))
    elif found:
        print(f"[{layout.region}] labels: {found}")
    else:
        print(f"[{layout.region}] no labels yet in {layout.inbox}")


def main(argv: list[str] | None = None) -> int:
    """``damnet labels-status`` without loading every step's module (see the module's doc)."""
    return spec.standalone("labels-status", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
