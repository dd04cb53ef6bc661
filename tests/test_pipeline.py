"""All steps chained on a tiny synthetic region, against S3 (moto) and a real MLflow server."""

from __future__ import annotations

import json

import boto3
import mlflow
import pytest
import rasterio

from components.cli import main
from damnet import storage
from damnet.synthetic import write_region

TINY = ["--batch-size", "4", "--crop", "64"]


def step(*argv: str) -> None:
    code = main(list(argv))
    assert code == 0, f"damnet {' '.join(argv)} exited with {code}"


@pytest.mark.slow
def test_a_region_runs_end_to_end_on_s3_with_an_mlflow_server(s3_bucket, mlflow_server, tmp_path, monkeypatch):
    tracking, artifact_bucket = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(tracking)
    store = f"s3://{s3_bucket}/store"
    common = ["--store", store, "--run-group", "e2e"]
    write_region(f"{store}/imagery/source", "source", n_scenes=1, size=256, seed=0)
    truth = tmp_path / "truth" / "label"
    write_region(f"{store}/imagery/newtown", "target_season", n_scenes=1, size=256, seed=1,
                 labels_uri=str(truth))
    region = [*common, "--region", "newtown"]
    try:
        step("ingest", *common, "--region", "source", "--tile-size", "64", "--require-labels")
        step("train", *common, "--steps", "20", *TINY)
        step("ingest", *region, "--tile-size", "64")
        step("validate", *region, "--min-tiles", "4")
        step("adapt", *region, "--steps", "6", *TINY)
        step("select", *region, "--budget", "2", "--audit", "4", "--max-label-share", "0.5")
        step("export-labels", *region)
        step("simulate-labeler", *region, "--truth", str(truth))
        step("import-labels", *region)
        step("finetune", *region, "--steps", "10", *TINY)
        step("evaluate", *region)
        # The chain is under test here, not model quality: a gate every candidate passes.
        step("promote", *region, "--margin", "-1", "--max-source-drop", "1", "--min-audit-tiles", "4",
             "--min-change-tiles", "1")
        step("predict", *region, "--tile", "128", "--overlap", "32")
        step("report", *region)

        client = mlflow.MlflowClient()
        champion = client.get_model_version_by_alias("damnet-newtown", "champion")
        assert champion.tags["damnet.decision"] == "promoted"
        assert "audit F1" in champion.tags["damnet.reasons"]
        assert client.get_model_version_by_alias("damnet-source", "champion") is not None

        # Every step is one MLflow run under the region run of this run group.
        exp = mlflow.get_experiment_by_name("damnet/newtown")
        runs = mlflow.search_runs([exp.experiment_id], output_format="list")
        parent = [r for r in runs if r.data.tags.get("damnet.kind") == "region"]
        assert len(parent) == 1
        children = {r.data.tags["damnet.step"] for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
        assert children == {"ingest", "validate", "adapt", "select", "export-labels", "import-labels",
                            "finetune", "evaluate", "promote", "predict", "report"}
    finally:
        mlflow.set_tracking_uri(None)

    records = {}
    s3 = storage.storage_for(store)
    for name in ("validate", "promote", "predict", "report"):
        records[name] = json.loads(s3.get_text(f"{store}/regions/newtown/steps/{name}.json"))

    # The change-probability COG lies exactly on the pre scene's grid.
    summary = json.loads(s3.get_text(records["predict"]["outputs"]["summary"]))
    with storage.local_copy(summary[0]["probability"]) as cog, rasterio.open(cog) as prob, \
            storage.local_copy(f"{store}/imagery/newtown/pre/scene_000.tif") as pre_path, \
            rasterio.open(pre_path) as pre:
        assert prob.crs == pre.crs
        assert prob.transform.almost_equals(pre.transform)
        assert (prob.width, prob.height) == (pre.width, pre.height)
        assert prob.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"

    page = s3.get_text(records["report"]["outputs"]["report"])
    assert "DAM-Net region report: newtown" in page
    assert "promoted to champion" in page
    assert page.count("data:image/png;base64,") >= 4  # plots, tiles and the change map

    # Artifacts went through the server to S3.
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=storage_endpoint(), region_name="us-east-1")
            .list_objects_v2(Bucket=artifact_bucket).get("Contents", [])]
    assert any(k.endswith("data_docs/index.html") for k in keys)
    assert any(k.endswith("report/index.html") for k in keys)


def storage_endpoint() -> str:
    import os

    return os.environ["DAMNET_S3_ENDPOINT_URL"]
