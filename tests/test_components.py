"""Each pipeline step on a tiny synthetic region (local store, MLflow on SQLite), bad inputs included."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import TINY, exported_region

from components.cli import main
from damnet.synthetic import write_region


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """A store with a trained source model and region 'newtown' adapted, selected and exported."""
    root = tmp_path_factory.mktemp("components")
    with pytest.MonkeyPatch.context() as mp:
        store, r = exported_region(root, mp, root / "truth" / "label", train_steps=20, adapt_steps=6,
                                   select=("--reference", "source"))
        yield {"root": root, "store": store, "args": r, "truth": root / "truth" / "label", "mp": mp}
        mlflow.set_tracking_uri(None)


def record(region, step) -> dict:
    return json.loads((region["store"] / "regions" / "newtown" / "steps" / f"{step}.json").read_text())


def test_export_holds_tasks_for_train_and_audit_tiles_with_metadata(region):
    rec = record(region, "export-labels")
    tasks = json.loads(Path(rec["outputs"]["tasks"]).read_text())
    selection = json.loads(Path(record(region, "select")["outputs"]["selection"]).read_text())
    assert sorted(t["data"]["tile_id"] for t in tasks) == sorted(selection["train"] + selection["audit"])
    for t in tasks:
        d = t["data"]
        assert d["region"] == "newtown" and d["set"] in ("train", "audit")
        assert d["model_version"] == f"adapt-{record(region, 'adapt')['key']}"
        assert len(d["bounds"]) == 4 and d["crs"].startswith("EPSG:")
        assert (Path(rec["outputs"]["export"]) / d["pre"]).exists()
    assert "<BrushLabels" in Path(rec["outputs"]["label_config"]).read_text()


def test_select_asks_the_source_model_for_a_second_opinion(region):
    """With --reference source, the select step also asks the source model adapt started from."""
    rec = record(region, "select")
    assert rec["inputs"]["reference"] == record(region, "adapt")["inputs"]["source_model"]
    scores = json.loads(Path(rec["outputs"]["selection"]).read_text())["scores"]
    dis = [s["disagreement"] for s in scores.values()]
    assert all(0 <= d <= 1 for d in dis) and max(dis) > 0  # 6 adversarial steps moved the model
    lines = Path(rec["outputs"]["scores"]).read_text().splitlines()
    assert lines[0].endswith(",disagreement") and all(line.split(",")[-1] for line in lines[1:])


def test_select_refuses_a_budget_above_the_label_share(region, capsys):
    assert main(["select", *region["args"], "--budget", "10", "--max-label-share", "0.01"]) == 2
    assert "above --max-label-share" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["garbage", "unknown-task", "wrong-size"])
def test_a_malformed_label_export_is_rejected_and_nothing_is_stored(region, bad, capsys):
    tasks = json.loads(Path(record(region, "export-labels")["outputs"]["tasks"]).read_text())
    export = region["root"] / f"bad-{bad}.json"
    if bad == "garbage":
        export.write_text("{not json")
    else:
        answered = [dict(t, annotations=[{"id": 1, "was_cancelled": False, "result": [{
            "from_name": "change", "to_name": "post", "type": "brushlabels",
            "original_width": 64 if bad == "unknown-task" else 50, "original_height": 64,
            "value": {"format": "rle", "rle": [0, 0, 0, 1], "brushlabels": ["Building change"]}}]}])
            for t in tasks]
        if bad == "unknown-task":
            answered[0]["data"] = dict(answered[0]["data"], tile_id="scene_999_r00000_c00000")
            answered[0]["id"] = 999
        export.write_text(json.dumps(answered))
    before = sorted(p for p in region["store"].rglob("*") if "import-labels" in str(p))
    assert main(["import-labels", *region["args"], "--labels", str(export)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {export}: ") and "problem(s) in the label export" in err
    assert sorted(p for p in region["store"].rglob("*") if "import-labels" in str(p)) == before


def test_labels_round_trip_then_finetune_evaluate_and_promote(region, capsys):
    a = region["args"]
    small = ["--min-audit-tiles", "4", "--min-change-tiles", "1"]  # the fixture's audit set is 4 tiles
    assert main(["import-labels", *a]) == 2  # nothing in the inbox yet
    assert "no labels yet" in capsys.readouterr().err
    assert main(["simulate-labeler", *a, "--truth", str(region["truth"])]) == 0
    assert main(["import-labels", *a]) == 0
    labels = json.loads(Path(record(region, "import-labels")["outputs"]["labels"]).read_text())
    assert {v["set"] for v in labels.values()} == {"train", "audit"}
    # Imported labels equal the ground truth under each tile.
    import rasterio

    from damnet.tiling import read_label
    for tid, v in labels.items():
        tile = next(t for t in json.loads(Path(record(region, "ingest")["outputs"]["manifest"]).read_text())
                    ["tiles"] if t["tile_id"] == tid)
        w = tile["window"]
        with rasterio.open(region["truth"] / f"{tile['pair']}.tif") as src:
            truth = src.read(1, window=((w["row_off"], w["row_off"] + 64), (w["col_off"], w["col_off"] + 64)))
        np.testing.assert_array_equal(read_label(v["uri"]), (truth > 0).astype(np.uint8))

    assert main(["finetune", *a, "--steps", "8", *TINY]) == 0
    assert main(["evaluate", *a]) == 0
    ev = record(region, "evaluate")
    metrics = json.loads(Path(ev["outputs"]["metrics"]).read_text())
    assert set(metrics) == {"candidate", "champion"}  # the champion is the source model here
    assert metrics["champion"]["model"].startswith("models:/damnet-source/")
    assert {"audit", "source_holdout"} <= set(metrics["candidate"])
    # Each audit tile's confusion matrix (what the gate resamples), for both models.
    audit_ids = {t for t, v in labels.items() if v["set"] == "audit"}
    for who in ("candidate", "champion"):
        per_tile = metrics[who]["audit"]["per_tile"]
        assert set(per_tile) == audit_ids
        assert [sum(c[k] for c in per_tile.values()) for k in range(4)] == [
            metrics[who]["audit"][k] for k in ("tp", "fp", "fn", "tn")]
    assert Path(ev["outputs"]["pr_curves"]).stat().st_size > 1000

    client = mlflow.MlflowClient()
    # A promotion that dies after registering, before its decision: the retry finds that
    # version instead of registering the candidate twice.
    import damnet.registry

    with pytest.MonkeyPatch.context() as mp:
        def crash(*args, **kwargs):
            raise ConnectionError("tracking server went away")

        mp.setattr(damnet.registry, "record_decision", crash)
        with pytest.raises(ConnectionError):
            main(["promote", *a, "--margin", "1", *small])
    assert [str(v.version) for v in client.search_model_versions("name='damnet-newtown'")] == ["1"]
    assert not (region["store"] / "regions/newtown/steps/promote.json").exists()
    # A gate no model can pass: refused, recorded, champion untouched.
    assert main(["promote", *a, "--margin", "1", *small]) == 3
    err = capsys.readouterr().err
    assert "was not promoted" in err and re.search("does not clear the margin 1|a tie never promotes", err)
    v1 = client.get_model_version("damnet-newtown", "1")
    assert v1.tags["damnet.decision"] == "rejected"
    assert str(client.get_model_version_by_alias("damnet-newtown", "challenger").version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("damnet-newtown", "champion")
    # With the default evidence bar, 4 audit tiles cannot decide, whatever the margin.
    assert main(["promote", *a, "--margin", "-1", "--max-source-drop", "1"]) == 3
    assert "not enough audit evidence: 4 audit tiles, the gate needs at least 10" in capsys.readouterr().err
    # A required metric that evaluation does not produce: refused.
    assert main(["promote", *a, "--margin", "-1", "--required", "audit_f1,source_f1,kappa"]) == 3
    assert "lacks required metric(s): kappa" in capsys.readouterr().err
    # A gate it passes: champion.
    assert main(["promote", *a, "--margin", "-1", "--max-source-drop", "1", *small]) == 0
    champion = client.get_model_version_by_alias("damnet-newtown", "champion")
    assert champion.tags["damnet.decision"] == "promoted"
    assert re.fullmatch(r"[01]\.\d\d-[01]\.\d\d", champion.tags["damnet.audit_f1_ci"])
    assert champion.tags["damnet.audit_tiles"] == "4" and champion.tags["damnet.evidence"] == "enough"
    # Re-running evaluation and the same promotion does nothing new, although the champion
    # is now the candidate itself (it keeps the comparison it won).
    capsys.readouterr()
    assert main(["evaluate", *a]) == 0
    assert main(["promote", *a, "--margin", "-1", "--max-source-drop", "1", *small]) == 0
    out = capsys.readouterr().out
    assert "evaluate: up to date" in out and "promote: up to date" in out
    assert len(client.search_model_versions("name='damnet-newtown'")) == 4

    # The champion is what predict uses by default; the report shows the decision.
    assert main(["predict", *a, "--tile", "128", "--overlap", "32"]) == 0
    assert main(["report", *a]) == 0
    page = Path(record(region, "report")["outputs"]["report"]).read_text()
    assert "promoted to champion" in page and "scene_000" in page
    assert "audit F1 90% interval" in page and "Audit evidence: 4 tile(s)" in page
    assert f"{champion.tags['damnet.audit_f1_ci'].split('-')[0]}-" in page
    # Where the imagery and labels came from, both label shares by name, and what "champion" was.
    assert "Synthetic imagery:" in page and "SIMULATED labels:</b> 6 of 6 annotation(s)" in page
    assert re.search(r"micro-labels: \d+\.\d\d % of tiles; with audit tiles: \d+\.\d\d %", page)
    assert "source model damnet-source v1 (this region has no champion yet)" in page
    # --max-tiles caps the tiles shown (2 train + 4 audit selected); each shows pre | post |
    # prediction, audit tiles their label too, with a scale bar from the tile's geotransform.
    assert main(["report", *a, "--max-tiles", "5", "--force"]) == 0
    page = Path(record(region, "report")["outputs"]["report"]).read_text()
    assert page.count('<div class="tile">') == 5 and "The first 5 of the 6 selected tiles" in page
    assert page.count(' prediction" src="data:image/png') == 5 + 1  # 5 tiles, 1 scene
    assert page.count(' label" src="data:image/png') == 3
    assert '<div class="bar" style="width:' in page and "no georeference" not in page

    # The nightly check: the champion on its audit set, against its F1 at promotion.
    assert main(["rescore", *a]) == 0
    assert client.get_model_version("damnet-newtown", champion.version).tags["damnet.drift"] == "ok"
    client.set_model_version_tag("damnet-newtown", champion.version, "damnet.audit_f1", "0.99")
    assert main(["rescore", *a, "--force"]) == 2
    assert "audit F1 fell to" in capsys.readouterr().err
    assert client.get_model_version("damnet-newtown", champion.version).tags["damnet.drift"] == "flagged"


def test_validation_failure_stops_with_a_summary_and_keeps_the_data_docs(region, capsys):
    store = region["store"]
    # Too few tiles for this bar: fails.
    assert main(["validate", "--store", str(store), "--region", "newtown", "--min-tiles", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: FAILED") and "1000" in err
    assert not (store / "regions/newtown/steps/validate.json").exists()
    docs = list((store / "regions/newtown/validate").rglob("data_docs/index.html"))
    assert docs, "the Data Docs of a failed validation are kept"
    # The region report shows the failed validation, why it failed, and links its Data Docs.
    assert main(["report", "--store", str(store), "--region", "newtown", "--force"]) == 0
    page = Path(record(region, "report")["outputs"]["report"]).read_text()
    assert "Validation has not run" not in page
    assert '<span class="bad">failed</span>' in page and "expected at least 1000" in page
    assert f'href="{docs[0]}"' in page
    assert main(["validate", "--store", str(store), "--region", "newtown", "--min-tiles", "4"]) == 0
    assert record(region, "validate")["metrics"]["passed"] == 1.0
    assert main(["report", "--store", str(store), "--region", "newtown", "--force"]) == 0
    page = Path(record(region, "report")["outputs"]["report"]).read_text()
    assert "expected at least 1000" not in page and "Great Expectations suite" in page
    assert '<span class="bad">failed</span>' not in page


def test_tiles_that_the_region_no_longer_has_are_one_clear_error(region):
    from damnet.data import TileSet
    from damnet.errors import DamnetError

    tiles = record(region, "ingest")["outputs"]["tiles"]
    with pytest.raises(DamnetError, match=r"unknown tile id\(s\) \['gone_r00000_c00000'\]; was the region re-ingested"):
        TileSet(tiles, tile_ids=["gone_r00000_c00000"])


def test_steps_refuse_upstream_records_of_an_earlier_ingest(region, capsys):
    store = region["store"]
    s = ["--store", str(store)]
    r = [*s, "--region", "oldtown"]
    write_region(str(store / "imagery" / "oldtown"), "target_season", n_scenes=1, size=256, seed=3)
    for argv in (["ingest", *r, "--tile-size", "64"], ["adapt", *r, "--steps", "2", *TINY]):
        assert main(argv) == 0, argv
    adapt_before = json.loads((store / "regions/oldtown/steps/adapt.json").read_text())
    # The region is re-ingested with other settings: its tiles are a new version.
    assert main(["ingest", *r, "--tile-size", "128"]) == 0
    capsys.readouterr()
    assert main(["select", *r, "--budget", "1", "--audit", "1", "--max-label-share", "0.5"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"the 'adapt' record \(key \w+\) was made from the 'ingest' record key \w+ \(input 'tiles'\), "
                     r"but 'ingest' is now key \w+", err) and "damnet adapt --region oldtown" in err
    assert not (store / "regions/oldtown/steps/select.json").exists()
    assert json.loads((store / "regions/oldtown/steps/adapt.json").read_text()) == adapt_before
    # After re-running adapt on the new tiles, selection goes on.
    assert main(["adapt", *r, "--steps", "2", *TINY]) == 0
    assert main(["select", *r, "--budget", "1", "--audit", "1", "--max-label-share", "0.5"]) == 0


def test_pretraining_continues_from_the_source_model_and_adapt_starts_from_it(region):
    import torch

    store = region["store"]
    r = ["--store", str(store), "--region", "hilltown"]
    write_region(str(store / "imagery" / "hilltown"), "target_sensor", n_scenes=1, size=256, seed=4)
    assert main(["ingest", *r, "--tile-size", "64"]) == 0
    assert main(["pretrain", *r, "--steps", "2", *TINY]) == 0
    pre = json.loads((store / "regions/hilltown/steps/pretrain.json").read_text())
    assert pre["inputs"]["source_model"]["uri"].startswith("models:/damnet-source/")
    encoder = torch.load(pre["outputs"]["encoder"], weights_only=True)
    assert all(k.startswith("encoder.") for k in encoder)
    assert main(["adapt", *r, "--steps", "2", "--use-pretrain", "yes", *TINY]) == 0
    adapt = json.loads((store / "regions/hilltown/steps/adapt.json").read_text())
    assert adapt["inputs"]["pretrain"]["digest"] == pre["key"]


def test_adapt_with_histogram_matching_gives_a_model_that_reads_the_region_through_its_tables(region):
    """--match-histograms: the adapted model carries the region's tables (so select, finetune,
    evaluate and predict read the region the same way) and the step key records the strength."""
    from damnet import registry

    store = region["store"]
    r = ["--store", str(store), "--region", "duskville"]
    write_region(str(store / "imagery" / "duskville"), "target_sensor", n_scenes=1, size=256, seed=5)
    assert main(["ingest", *r, "--tile-size", "64"]) == 0
    assert main(["adapt", *r, "--steps", "2", "--match-histograms", "0.5", *TINY]) == 0
    adapt = json.loads((store / "regions/duskville/steps/adapt.json").read_text())
    assert adapt["params"]["match_histograms"] == 0.5
    model, _ = registry.load_model(adapt["outputs"]["model"])
    assert model.matching  # a sensor shift: the tables are not the identity
    assert main(["select", *r, "--budget", "1", "--audit", "1", "--max-label-share", "0.5"]) == 0
