"""What the nightly DAG looks for in the store (runs on the worker, not at parse time)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def scan_store(store: str, source_regions: tuple[str, ...] = ("source",)) -> dict[str, list[str]]:
    """Regions whose imagery changed since their last ingest, whose labels arrived since their
    last import, and which have a champion to re-score."""
    import re

    from components.step import REGION_PATTERN, Layout, file_digest, read_record, tree_digest
    from damnet import storage
    from damnet_ops.labels import labels_present

    imagery_root = storage.join(store, "imagery").rstrip("/") + "/"
    names = sorted({key[len(imagery_root):].split("/", 1)[0]
                    for key in storage.storage_for(imagery_root).list(imagery_root)})
    regions = [n for n in names if re.fullmatch(REGION_PATTERN, n) and n not in source_regions]
    out: dict[str, list[str]] = {"new_imagery": [], "labels_ready": [], "rescore": []}
    for name in regions:
        layout = Layout(store, name)
        ingest = read_record(layout, "ingest")
        if ingest is None or ingest["inputs"]["imagery"]["digest"] != tree_digest(layout.imagery):
            out["new_imagery"].append(name)
            continue
        labels = labels_present(store, name)
        imported = read_record(layout, "import-labels")
        if labels and read_record(layout, "export-labels") is not None:
            digest = file_digest(labels) if labels.endswith(".json") else tree_digest(labels)
            if imported is None or imported["inputs"]["labels"]["digest"] != digest:
                out["labels_ready"].append(name)
        promote = read_record(layout, "promote")
        if promote is not None and imported is not None:
            out["rescore"].append(name)
    log.info("scan of %s: %s", store, out)
    return out
