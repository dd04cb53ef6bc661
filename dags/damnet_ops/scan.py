"""What the nightly DAG looks for in the store (runs on the worker, not at parse time)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def scan_store(store: str, source_regions: tuple[str, ...] = ("source",)) -> dict:
    """Regions whose imagery changed since their last ingest, whose labels arrived since their
    last import, and which have a champion to re-score.

    Regions are those with imagery under STORE/imagery/ and those ingested before (from any
    imagery URI: the ingest record says which). ``conf`` holds the trigger conf of each region
    with new imagery: its imagery URI, tile size, bands and label threshold as last ingested,
    so a re-run tiles the region the way its first run did.
    """
    import re

    from components.step import REGION_PATTERN, Layout, file_digest, read_record, tree_digest
    from damnet import storage
    from damnet_ops.labels import labels_present

    def children(prefix: str, suffix: str = "") -> set[str]:
        prefix = storage.join(store, prefix).rstrip("/") + "/"
        return {key[len(prefix):].split("/", 1)[0] for key in storage.storage_for(prefix).list(prefix)
                if not suffix or key.endswith(suffix)}

    names = children("imagery") | children("regions", "/steps/ingest.json")
    regions = sorted(n for n in names if re.fullmatch(REGION_PATTERN, n) and n not in source_regions)
    out: dict = {"new_imagery": [], "labels_ready": [], "rescore": [], "conf": {}}
    for name in regions:
        layout = Layout(store, name)
        ingest = read_record(layout, "ingest")
        imagery = (ingest or {}).get("inputs", {}).get("imagery", {}).get("uri") or layout.imagery
        if not storage.storage_for(imagery).list(imagery.rstrip("/") + "/"):
            log.warning("region %s: its imagery %s is gone; not re-running it", name, imagery)
            continue
        if ingest is None or ingest["inputs"]["imagery"]["digest"] != tree_digest(imagery):
            out["new_imagery"].append(name)
            conf = {"region": name}
            if ingest is not None:
                if imagery.rstrip("/") != layout.imagery.rstrip("/"):
                    conf["imagery"] = imagery
                tiling = ingest.get("params", {}).get("tiling", {})
                if tiling.get("size"):
                    conf["tile_size"] = tiling["size"]
                if tiling.get("bands"):  # e.g. [3, 2, 1]: the region's imagery has other than 3 bands
                    conf["bands"] = ",".join(str(b) for b in tiling["bands"])
                if tiling.get("label_threshold") is not None:
                    conf["label_threshold"] = tiling["label_threshold"]
            out["conf"][name] = conf
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
