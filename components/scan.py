"""Scan the store for work the nightly run starts: new imagery, returned labels, champions.

Regions are those with imagery under STORE/imagery/ and those ingested before (from any
imagery URI: the ingest record says which); the source region(s) are left out. Prints
which regions have imagery new or changed since their last ingest, which have labels that
arrived since their last import, and which have a champion to re-score. ``--json`` prints
the result as one JSON line, last: what the nightly DAG maps over::

    {"new_imagery": [...], "labels_ready": [...], "rescore": [...],
     "conf": {region: trigger conf of its region run}}

``conf`` holds the imagery URI, tile size, bands and label threshold of the region's last
ingest, so a re-run tiles the region the way its first run did. Writes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

from components.labels_status import labels_present
from components.records import Layout, file_digest, read_record, tree_digest
from components.spec import REGION_PATTERN
from damnet import storage

log = logging.getLogger(__name__)


def _children(store: str, prefix: str, suffix: str = "") -> set[str]:
    """Names of the folders right under STORE/prefix (holding a key ending in ``suffix``)."""
    prefix = storage.join(store, prefix).rstrip("/") + "/"
    return {key[len(prefix):].split("/", 1)[0] for key in storage.storage_for(prefix).list(prefix)
            if not suffix or key.endswith(suffix)}


def _rerun_conf(layout: Layout, ingest: dict | None, imagery: str) -> dict:
    """The trigger conf of a region run that tiles the region as its last ingest did."""
    conf: dict = {"region": layout.region}
    if ingest is None:
        return conf
    if imagery.rstrip("/") != layout.imagery.rstrip("/"):
        conf["imagery"] = imagery
    tiling = ingest.get("params", {}).get("tiling", {})
    if tiling.get("size"):
        conf["tile_size"] = tiling["size"]
    if tiling.get("bands"):  # e.g. [3, 2, 1]: the region's imagery has other than 3 bands
        conf["bands"] = ",".join(str(b) for b in tiling["bands"])
    if tiling.get("label_threshold") is not None:
        conf["label_threshold"] = tiling["label_threshold"]
    return conf


def _labels_ready(layout: Layout, imported: dict | None) -> bool:
    """Labels are in the inbox for an export, and differ from those last imported."""
    labels = labels_present(layout)
    if not labels or read_record(layout, "export-labels") is None:
        return False
    digest = file_digest(labels) if labels.endswith(".json") else tree_digest(labels)
    return imported is None or imported["inputs"]["labels"]["digest"] != digest


def scan_store(store: str, source_regions: tuple[str, ...] = ("source",)) -> dict:
    """Regions whose imagery changed since their last ingest, whose labels arrived since their
    last import, and which have a champion to re-score (see the module's doc)."""
    names = _children(store, "imagery") | _children(store, "regions", "/steps/ingest.json")
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
            out["conf"][name] = _rerun_conf(layout, ingest, imagery)
            continue
        imported = read_record(layout, "import-labels")
        if _labels_ready(layout, imported):
            out["labels_ready"].append(name)
        if read_record(layout, "promote") is not None and imported is not None:
            out["rescore"].append(name)
    return out


def run(args: argparse.Namespace) -> None:
    store = storage.absolute(args.store)
    sources = tuple(r.strip() for r in args.source_regions.split(",") if r.strip())
    found = scan_store(store, sources)
    log.info("scan of %s (run %s): %s", store, args.run_group, found)
    if args.json:
        print(json.dumps(found), flush=True)
        return
    for key, label in (("new_imagery", "new imagery"), ("labels_ready", "labels arrived"),
                       ("rescore", "champions to re-score")):
        print(f"{label}: {', '.join(found[key]) or '-'}")
