"""What steps read from upstream: a region's tiles, the source region's training tiles and
holdout, the imported micro labels, models given by registry URI or file."""

from __future__ import annotations

import re

from components import tracking
from components.records import (
    Layout,
    Record,
    StepError,
    StepInput,
    file_digest,
    input_of,
    read_json,
    read_record,
    upstream,
)
from damnet import storage
from damnet.data import TileSet
from damnet.errors import redact_secrets


def tiles_of(layout: Layout, labels: str | None = "manifest") -> tuple[TileSet, Record]:
    """The region's tiles (from its ingest record) and that record."""
    record = upstream(layout, "ingest")
    tiles = TileSet(record["outputs"]["tiles"], labels=labels)
    if len(tiles) == 0:
        raise StepError(f"{record['outputs']['manifest']}: region {layout.region!r} has no tiles "
                        "(all imagery was nodata or skipped at ingest)")
    return tiles, record


def source_training_tiles(layout: Layout) -> tuple[TileSet, Record]:
    """Labelled source tiles less the source holdout (from the source ``train`` record if any)."""
    tiles, record = tiles_of(layout)
    if not tiles.has_labels():
        raise StepError(f"region {layout.region!r} has tiles without labels; a source region "
                        "must be fully labelled")
    train = _read_split(layout)
    if train is not None:
        keep = set(train["holdout"])
        tiles = tiles.subset([i for i, t in enumerate(tiles.ids) if t not in keep])
    return tiles, record


def source_holdout(layout: Layout) -> TileSet | None:
    split = _read_split(layout)
    if split is None or not split["holdout"]:
        return None
    tiles, _ = tiles_of(layout)
    keep = set(split["holdout"])
    return tiles.subset([i for i, t in enumerate(tiles.ids) if t in keep])


def source_split_input(layout: Layout) -> dict[str, StepInput]:
    """``{"source_split": ...}``: the source ``train`` record whose holdout split a step used
    (:func:`source_training_tiles`, :func:`source_holdout`), or ``{}`` before the source trained."""
    record = _split_record(layout)
    return {} if record is None else {"source_split": input_of(record, "split")}


def _split_record(layout: Layout) -> Record | None:
    """The source region's current ``train`` record (checked: :func:`upstream`), if it has one."""
    return None if read_record(layout, "train") is None else upstream(layout, "train")


def _read_split(layout: Layout) -> dict | None:
    record = _split_record(layout)
    if record is None:
        return None
    return read_json(record["outputs"]["split"])


def micro_labels(layout: Layout, which: str) -> tuple[dict[str, str], Record]:
    """tile id -> label tile URI of the imported ``which`` set ("train" or "audit"), and the record."""
    record = upstream(layout, "import-labels")
    table = read_json(record["outputs"]["labels"])
    return {t: v["uri"] for t, v in table.items() if v["set"] == which}, record


def model_input(ref: str) -> StepInput:
    """A model reference as a step input: registry URIs are pinned to the version they resolve to."""
    from damnet.registry import ModelError

    if not ref.startswith("models:/"):
        if not storage.storage_for(ref).exists(ref):
            raise ModelError(f"{ref}: no such model file")
        return {"uri": ref, "digest": file_digest(ref)}
    import mlflow

    m = re.fullmatch(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))", ref)
    if not m:
        raise ModelError(f"{ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = m.groups()
    uri = mlflow.get_tracking_uri()
    # a server that does not answer: one error within DAMNET_MLFLOW_TIMEOUT (exit 75), not
    # minutes of MLflow's own retries (steps that open an MLflow run check this there too)
    tracking.check_tracking(uri, tracking.tracking_timeout())
    client = mlflow.MlflowClient()
    try:
        with tracking.reaching_tracking():
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except tracking.TrackingUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException: unknown model, alias or version
        raise ModelError(f"{ref}: not found in the MLflow registry at {tracking.redact(uri)} "
                         f"({redact_secrets(str(exc).splitlines()[0])})") from None
    pinned = f"models:/{name}/{mv.version}"
    return {"uri": pinned, "digest": f"{name}/{mv.version}", "requested": ref}
