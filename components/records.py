"""The store's layout, step records, the content digests of inputs and the step keys.

Layout of a store (a local folder or an ``s3://`` prefix; see docs/pipeline.md)::

    STORE/imagery/<region>/                 imagery as the ops team drops it (default input)
    STORE/labels/<region>/                  label exports coming back from the labelers
    STORE/regions/<region>/steps/<step>.json   the step record: the commit point of a step
    STORE/regions/<region>/<step>/<key>/       that step's outputs for one set of inputs

``<key>`` is a hash of the step's name, the package version, its parameters and the content
hashes of its inputs (:func:`step_key`); :mod:`components.step` runs a step under it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from damnet import __version__, storage
from damnet.errors import DamnetError

RECORD_FORMAT = "damnet.step/1"

#: A step record as stored in ``steps/<step>.json`` (see :func:`components.step.run_step`).
Record = dict[str, Any]


class StepError(DamnetError):
    """A step cannot run: a missing upstream step, a bad argument."""


class StaleRecord(StepError):
    """An upstream record was made from a record of its own upstream that has been replaced since."""


class StepInput(TypedDict):
    """One input of a step: where it is and what identifies its content."""

    uri: str
    digest: str  #: content hash, an upstream record's key or a registry NAME/VERSION
    requested: NotRequired[str]  #: a registry reference as given, before it was pinned
    step: NotRequired[str]  #: the upstream step whose record key ``digest`` is (:func:`input_of`)
    region: NotRequired[str]  #: that step's region


@dataclass(frozen=True)
class Layout:
    store: str
    region: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Layout:
        return cls(storage.absolute(args.store), args.region)

    @property
    def region_uri(self) -> str:
        return storage.join(self.store, "regions", self.region)

    @property
    def imagery(self) -> str:
        return storage.join(self.store, "imagery", self.region)

    @property
    def inbox(self) -> str:
        return storage.join(self.store, "labels", self.region)

    @property
    def latest_validation(self) -> str:
        """Where every validate run records its outcome and report, passed or failed (a failed
        run has no step record)."""
        return storage.join(self.region_uri, "validate", "latest.json")

    def record_uri(self, step: str) -> str:
        return storage.join(self.region_uri, "steps", f"{step}.json")

    def step_dir(self, step: str, key: str) -> str:
        return storage.join(self.region_uri, step, key)

    def of(self, region: str) -> Layout:
        return Layout(self.store, region)


def read_record(layout: Layout, step: str) -> Record | None:
    uri = layout.record_uri(step)
    store = storage.storage_for(uri)
    return json.loads(store.get_text(uri)) if store.exists(uri) else None


def upstream(layout: Layout, step: str, hint: str | None = None) -> Record:
    """The record of a step this one depends on; a clear error if it has not run, or if it (or
    any record it was made from, transitively) was made from a record that has been replaced
    since (:func:`check_current`)."""
    record = read_record(layout, step)
    if record is None:
        raise StepError(f"region {layout.region!r}: step {step!r} has not run yet in {layout.store} "
                        f"({hint or f'run: damnet {step} --region {layout.region}'})")
    check_current(layout, record)
    return record


def input_step(layout: Layout, item: Mapping[str, Any]) -> tuple[str, str] | None:
    """(region, step) whose record key ``item``'s digest is, or None for an input that is no
    step record (a content digest of files, a registry model pinned to its version).

    Records written before inputs named their step are read from the output's URI:
    ``STORE/regions/<region>/<step>/<key>[-suffix]/...``, or the ingest's former
    ``STORE/regions/<region>/tiles``."""
    if "step" in item:
        return item.get("region", layout.region), item["step"]
    prefix = storage.join(layout.store, "regions").rstrip("/") + "/"
    uri = item.get("uri", "")
    if not isinstance(uri, str) or not uri.startswith(prefix):
        return None
    parts = uri[len(prefix):].split("/")
    if len(parts) >= 2 and parts[1] == "tiles":
        return parts[0], "ingest"
    if len(parts) >= 3 and parts[1] != "steps" and parts[2].startswith(str(item.get("digest"))):
        return parts[0], parts[1]
    return None


def check_current(layout: Layout, record: Record) -> None:
    """Raise :class:`StaleRecord` unless every step input of ``record`` is the current record
    of that step, and so on up the graph (each record read once). When several records are
    stale, the error names the one to re-run first (none of its own upstream is stale).

    Inputs that are no step records (content digests, pinned registry versions) identify
    their content themselves and are not followed."""
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {}  #: record -> the records it was made from
    stale: list[tuple[Record, str, Mapping[str, Any], str, str, Record | None]] = []
    todo = [record]
    while todo:
        rec = todo.pop(0)
        here = layout.of(rec.get("region", layout.region))
        node = (here.region, rec["step"])
        if node in edges:
            continue
        edges[node] = []
        for name, item in sorted(rec.get("inputs", {}).items()):
            edge = input_step(here, item) if isinstance(item, dict) else None
            if edge is None:
                continue
            edges[node].append(edge)
            current = read_record(layout.of(edge[0]), edge[1])
            if current is None or current["key"] != item["digest"]:
                stale.append((rec, name, item, *edge, current))
            if current is not None:
                todo.append(current)
    if not stale:
        return
    bad = {(r.get("region", layout.region), r["step"]) for r, *_ in stale}

    def upstream_of(node: tuple[str, str]) -> set[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()
        work = list(edges.get(node, []))
        while work:
            n = work.pop()
            if n not in seen:
                seen.add(n)
                work.extend(edges.get(n, []))
        return seen

    first = next((s for s in stale if not upstream_of((s[0].get("region", layout.region), s[0]["step"])) & bad),
                 stale[0])
    raise StaleRecord(_stale_message(layout, *first))


def _stale_message(layout: Layout, rec: Record, name: str, item: Mapping[str, Any], region: str, step: str,
                   current: Record | None) -> str:
    where = "" if region == rec.get("region", layout.region) else f" of region {region!r}"
    now = "has no record now" if current is None else f"is now key {current['key']}"
    stale_region = rec.get("region", layout.region)
    return (f"region {stale_region!r}: the {rec['step']!r} record (key {rec['key']}) was made from the "
            f"{step!r} record{where} key {item['digest']} (input {name!r}), but {step!r}{where} {now}; "
            f"re-run {rec['step']} first (then the steps after it): "
            f"damnet {rec['step']} --region {stale_region}")


def input_of(record: Record, output: str) -> StepInput:
    """The ``output`` of an upstream step as an input: its URI, identified by the record's key
    (and the step and region it comes from, so later steps can check it is still current)."""
    return {"uri": record["outputs"][output], "digest": record["key"], "step": record["step"],
            "region": record["region"]}


def write_json(uri: str, data: Any) -> None:
    storage.storage_for(uri).put_text(uri, json.dumps(data, indent=1, default=str))


def read_json(uri: str) -> Any:
    return json.loads(storage.storage_for(uri).get_text(uri))


def file_digest(uri: str) -> str:
    """sha256 of a file's content (local or s3://)."""
    return storage.storage_for(uri).digest(uri)


def tree_digest(uri: str) -> str:
    """sha256 over every file under a folder or prefix: relative names and content
    fingerprints (on S3 the listing's ETag and size, so nothing is downloaded)."""
    h = hashlib.sha256()
    prefix = uri.rstrip("/") + "/"
    entries = storage.storage_for(uri).listing(prefix)
    for key in sorted(entries):
        h.update(f"{key[len(prefix):]}={entries[key]}\n".encode())
    return h.hexdigest()


def step_key(step: str, inputs: Mapping[str, StepInput], params: dict) -> str:
    blob = json.dumps({"step": step, "version": __version__, "params": params,
                       "inputs": {k: v["digest"] for k, v in inputs.items()}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def output_folder(layout: Layout, name: str, key: str, current: Record | None = None) -> str:
    """Where a run of step ``name`` with ``key`` writes: ``<step>/<key>/``, except for a forced
    re-run over committed outputs of the same key, which gets a folder of its own so a
    failure half-way cannot damage what the record points to. Derived from that record, not
    random: every DDP rank gets the same folder, and a retry of the forced run resumes its
    checkpoint."""
    current = current if current is not None else read_record(layout, name)
    if current is None or current.get("key") != key:
        return layout.step_dir(name, key)
    suffix = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:8]
    return layout.step_dir(name, f"{key}-{suffix}")


def outputs_exist(record: Record) -> bool:
    """Are the record's outputs (local paths and s3:// URIs) still there?"""
    for uri in record.get("outputs", {}).values():
        if isinstance(uri, str) and (storage.is_s3(uri) or uri.startswith("/")):
            if storage.is_s3(uri):
                store = storage.storage_for(uri)
                if not (store.exists(uri) or store.list(uri.rstrip("/") + "/")):
                    return False
            elif not Path(uri).exists():
                return False
    return True
