"""Import the labelers' answers: a Label Studio JSON export or a folder of mask PNGs.

Input: --labels (default: STORE/labels/REGION/export.json, else STORE/labels/REGION/masks/)
and the exported tasks. Everything is checked first (known task ids, sizes, binary values,
no duplicate or conflicting annotations, file names that stay inside the folder); a
malformed export is rejected with the list of its problems and nothing is stored.
Outputs: georeferenced label tiles and labels.json (tile id -> label tile and set).
"""

from __future__ import annotations

import argparse

from components.inputs import tiles_of
from components.labels_status import labels_present
from components.records import (
    Layout,
    StepError,
    StepInput,
    file_digest,
    input_of,
    read_json,
    tree_digest,
    upstream,
    write_json,
)
from components.step import RunOptions, run_step
from damnet import labels, storage


def default_labels(layout: Layout) -> str:
    found = labels_present(layout)
    if found is None:
        raise StepError(f"region {layout.region!r}: no labels yet: expected a Label Studio export at "
                        f"{storage.join(layout.inbox, 'export.json')} or mask PNGs under "
                        f"{storage.join(layout.inbox, 'masks')}/")
    return found


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    export = upstream(layout, "export-labels")
    tiles, t_rec = tiles_of(layout, labels=None)
    source = storage.absolute(args.labels) if args.labels else default_labels(layout)
    is_json = source.lower().endswith(".json")
    if is_json and not storage.storage_for(source).exists(source):
        raise StepError(f"{source}: no such label export")
    digest = file_digest(source) if is_json else tree_digest(source)
    inputs: dict[str, StepInput] = {"labels": {"uri": source, "digest": digest}, "tasks": input_of(export, "tasks")}

    def body(run):
        tasks = read_json(export["outputs"]["tasks"])
        if is_json:
            data = storage.storage_for(source).get_bytes(source)
            masks = labels.parse_label_studio_export(data, source, tasks)
        else:
            masks = labels.read_mask_folder(source, tasks)
        if not masks:
            raise StepError(f"{source}: holds no labels for any of the {len(tasks)} exported task(s)")
        sets = {t["data"]["tile_id"]: t["data"]["set"] for t in tasks}
        by_id = {t["tile_id"]: t for t in tiles.tiles}
        written = labels.write_label_tiles(masks, by_id, run.path("tiles"))
        table = {tid: {"uri": uri, "set": sets[tid], "change_fraction": float(masks[tid].mean())}
                 for tid, uri in sorted(written.items())}
        write_json(run.path("labels.json"), table)
        run.outputs.update(labels=run.path("labels.json"), tiles=run.path("tiles"))
        counts = {s: sum(1 for v in table.values() if v["set"] == s) for s in ("train", "audit")}
        run.metrics.update(labelled_tiles=len(table), train_tiles=counts["train"], audit_tiles=counts["audit"],
                           missing_tiles=len(tasks) - len(table))
        print(f"  {len(table)} labelled tile(s) imported ({counts['train']} train, {counts['audit']} audit)"
              + (f"; {len(tasks) - len(table)} task(s) not labelled yet" if len(table) < len(tasks) else ""))

    run_step("import-labels", inputs, {}, body, layout, RunOptions.from_args(args))
