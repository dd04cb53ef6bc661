"""Label Studio formats: brush RLE, export bundle, parsing labelled exports, label tiles."""

from __future__ import annotations

import copy
import csv
import io
import json
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from PIL import Image

from damnet import labels, storage
from damnet.errors import DamnetError
from damnet.labels import (
    LabelExportError,
    labeling_config,
    parse_label_studio_export,
    polygon_to_mask,
    read_mask_folder,
    read_mask_pngs,
    rle_decode,
    rle_decode_values,
    rle_encode,
    rle_encode_values,
    simulate_label_studio_export,
    write_export,
    write_label_tiles,
)
from damnet.tiling import TilingConfig, ingest, read_label, read_tile

ROOT = Path(__file__).resolve().parents[1]
LS_PYTHON = ROOT / ".venv-ls" / "bin" / "python"
LS_CHECK = Path(__file__).with_name("ls_check.py")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """A tiled region of 4 tiles of 64 px on a 96 px scene (the edge tiles end at the scene's
    edge, so neighbours overlap)."""
    from damnet.synthetic import write_region

    root = tmp_path_factory.mktemp("labels-region")
    write_region(str(root / "raw"), "source", n_scenes=1, size=96, seed=0, progress=False)
    manifest = ingest(str(root / "raw"), str(root / "region"), TilingConfig(size=64, require_labels=True),
                      progress=False)
    return str(root / "region"), manifest["tiles"]


def _truth(tile_id: str) -> np.ndarray:
    """Hand-made ground truth per tile; the last tile has no change at all."""
    mask = np.zeros((64, 64), np.uint8)
    k = int(int(tile_id[-5:]) > 0) + 2 * int(int(tile_id.split("_r")[1][:5]) > 0)  # 0..3, row-major
    if k < 3:
        mask[5 + 7 * k:30 + 5 * k, 10:40 + k] = 1
        mask[50:55, 3 * k:20 + 3 * k] = 1
    return mask


def _export(out: str, region, prefix: str | None = None) -> tuple[list[dict], dict]:
    region_uri, tiles = region
    ids = [t["tile_id"] for t in tiles]
    sets = {tid: "audit" if i == 3 else "train" for i, tid in enumerate(ids)}
    scores = {tid: [0.8, 0.25, None, 0.5][i] for i, tid in enumerate(ids)}
    # The "model" is off by a few pixels; tile 2 gets no pre-annotation.
    masks = {tid: np.roll(_truth(tid), 3, axis=1) for tid in ids if tid != ids[2]}
    summary = write_export(out, "testville", region_uri, tiles, sets, scores, masks,
                           model_version="damnet-test-1", image_url_prefix=prefix)
    return json.loads(storage.storage_for(out).get_text(storage.join(out, "tasks.json"))), summary


@pytest.fixture(scope="module")
def exported(region, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels-export") / "export"
    tasks, summary = _export(str(out), region)
    return out, tasks, summary


def _truth_of_task(task: dict) -> np.ndarray:
    return _truth(task["data"]["tile_id"])


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- RLE


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 64), (64, 64), (5, 13107), (1, 70000)])
@pytest.mark.parametrize("kind", ["empty", "full", "random", "sparse"])
def test_rle_round_trip(shape, kind):
    rng = np.random.default_rng(sum(shape))
    mask = {"empty": np.zeros(shape, np.uint8), "full": np.ones(shape, np.uint8),
            "random": (rng.random(shape) < 0.5).astype(np.uint8),
            "sparse": (rng.random(shape) < 0.01).astype(np.uint8)}[kind]
    rle = rle_encode(mask)
    assert all(type(v) is int and 0 <= v <= 255 for v in rle)
    back = rle_decode(rle, *shape)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, mask)
    # Boolean masks and 0/255 masks encode the same.
    assert rle_encode(mask.astype(bool)) == rle == rle_encode(mask * 255)


def test_rle_matches_label_studio_sdk_bit_for_bit():
    """Reference streams printed by label_studio_sdk.converter.brush (mask2rle / encode_rle)."""
    assert rle_encode(np.zeros((1, 1), np.uint8)) == [0, 0, 0, 4, 57, 27, 252, 96, 0]
    assert rle_encode(np.ones((1, 2), np.uint8)) == [0, 0, 0, 8, 57, 27, 252, 255, 224]
    mask = np.array([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], np.uint8)
    sdk = [0, 0, 0, 60, 57, 27, 252, 96, 19, 255, 198, 1, 133, 255, 239, 128, 71, 254]
    assert rle_encode(mask) == sdk
    np.testing.assert_array_equal(rle_decode(sdk, 3, 5), mask)
    # A run longer than 65536 values is split, as the sdk does.
    full = [0, 4, 226, 0, 57, 27, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            254, 31, 255, 240]
    assert rle_encode(np.ones((200, 400), np.uint8)) == full
    values = np.concatenate([np.full(65537, 7), [1], np.full(3, 200)]).astype(np.uint8)
    stream = [0, 1, 0, 5, 57, 27, 255, 255, 255, 7, 224, 0, 0, 224, 0, 197, 144]
    assert rle_encode_values(values) == stream
    np.testing.assert_array_equal(rle_decode_values(stream), values)


def test_rle_decode_takes_any_nonzero_alpha_as_change():
    """Label Studio's own brush exports have soft edges (alpha 1..254); 0/1 sdk masks too."""
    alpha = np.array([0, 1, 128, 254, 255, 0], np.uint8)
    rgba = np.stack([alpha, alpha, alpha, alpha], axis=-1).reshape(-1)
    np.testing.assert_array_equal(rle_decode(rle_encode_values(rgba), 2, 3), [[0, 1, 1], [1, 1, 0]])


def test_rle_decode_rejects_corrupt_streams():
    rle = rle_encode(np.eye(8, dtype=np.uint8))
    with pytest.raises(ValueError, match="holds 256 values, 512 expected"):
        rle_decode(rle, 8, 16)
    with pytest.raises(ValueError, match="truncated"):
        rle_decode(rle[:-3], 8, 8)
    with pytest.raises(ValueError, match="bytes"):
        rle_decode(rle[:-1] + [256], 8, 8)
    with pytest.raises(ValueError, match="integers"):
        rle_decode(rle[:-1] + [1.5], 8, 8)
    with pytest.raises(ValueError, match="absurdly long"):
        rle_decode(rle + [0] * 1000, 8, 8)
    with pytest.raises(ValueError, match="empty"):
        rle_decode([], 8, 8)


def test_rle_is_vectorised_for_1024_masks():
    import time

    rng = np.random.default_rng(0)
    mask = (rng.random((1024, 1024)) < 0.5).astype(np.uint8)  # worst case: ~500k runs
    started = time.perf_counter()
    back = rle_decode(rle_encode(mask), 1024, 1024)
    assert time.perf_counter() - started < 10
    np.testing.assert_array_equal(back, mask)


def test_polygon_to_mask_uses_percent_coordinates():
    square = polygon_to_mask([[0, 0], [50, 0], [50, 50], [0, 50]], 4, 8)
    expected = np.zeros((4, 8), np.uint8)
    expected[:2, :4] = 1
    np.testing.assert_array_equal(square, expected)
    assert polygon_to_mask([[0, 0], [100, 0], [100, 100], [0, 100]], 30, 50).all()
    tri = polygon_to_mask([[0, 0], [100, 0], [0, 100]], 100, 100)
    assert 4800 < tri.sum() < 5200 and tri[5, 5] == 1 and tri[95, 95] == 0
    with pytest.raises(ValueError, match="3"):
        polygon_to_mask([[0, 0], [10, 10]], 10, 10)


def test_labeling_config_names_both_dates_and_the_change_tools():
    xml = labeling_config("Building change")
    assert xml == labeling_config("Building change")
    root = ET.fromstring(xml)  # noqa: S314 - our own string
    images = {e.get("name"): e.get("value") for e in root.iter("Image")}
    assert images == {"pre": "$pre", "post": "$post"}
    brush = next(root.iter("BrushLabels"))
    poly = next(root.iter("PolygonLabels"))
    assert (brush.get("name"), brush.get("toName")) == ("change", "post")
    assert (poly.get("name"), poly.get("toName")) == ("change_poly", "post")
    assert [e.get("value") for e in brush] == [e.get("value") for e in poly] == ["Building change"]
    assert root.find("Header") is not None
    odd = ET.fromstring(labeling_config('A "quoted" & <odd> label'))  # noqa: S314 - our own string
    assert next(odd.iter("Label")).get("value") == 'A "quoted" & <odd> label'


# --------------------------------------------------------------------------- export


def test_write_export_writes_tasks_images_masks_and_bundle(exported, region):
    out, tasks, summary = exported
    region_uri, tiles = region
    ids = [t["tile_id"] for t in tiles]
    assert summary["tasks"] == 4 and summary["with_prediction"] == 3
    assert summary["sets"] == {"train": 3, "audit": 1}
    assert (out / "label_config.xml").read_text() == labeling_config()
    assert [t["id"] for t in tasks] == [1, 2, 3, 4]
    for task, tile in zip(tasks, tiles, strict=True):
        data = task["data"]
        tid = tile["tile_id"]
        assert data["tile_id"] == tid and data["region"] == "testville"
        assert data["pre"] == f"images/{tid}_pre.png" and data["post"] == f"images/{tid}_post.png"
        assert data["bounds"] == tile["bounds"] and data["crs"] == "EPSG:32631"
        assert data["model_version"] == "damnet-test-1" and (data["width"], data["height"]) == (64, 64)
        pre, post, valid, _ = read_tile(region_uri, tile)
        for key, img in (("pre", pre), ("post", post)):
            with Image.open(out / data[key]) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 64))
                rgb = np.asarray(im)
            np.testing.assert_array_equal(rgb[valid], np.moveaxis(img, 0, -1)[valid])
            assert not rgb[~valid].any()  # nodata is black
    assert [t["data"]["set"] for t in tasks] == ["train", "train", "train", "audit"]
    assert [t["data"]["uncertainty"] for t in tasks] == [0.8, 0.25, None, 0.5]
    # Pre-annotations decode back to the model mask, and agree with masks/<id>.png.
    assert tasks[2]["predictions"] == [] and not (out / "masks" / f"{ids[2]}.png").exists()
    for task in (tasks[0], tasks[1], tasks[3]):
        (pred,) = task["predictions"]
        assert pred["model_version"] == "damnet-test-1"
        (res,) = pred["result"]
        assert (res["from_name"], res["to_name"], res["type"]) == ("change", "post", "brushlabels")
        assert (res["original_width"], res["original_height"], res["image_rotation"]) == (64, 64, 0)
        assert res["value"]["format"] == "rle" and res["value"]["brushlabels"] == ["Building change"]
        model = np.roll(_truth(task["data"]["tile_id"]), 3, axis=1)
        np.testing.assert_array_equal(rle_decode(res["value"]["rle"], 64, 64), model)
        with Image.open(out / "masks" / f"{task['data']['tile_id']}.png") as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), model * 255)
    assert [t["predictions"][0]["score"] for t in tasks if t["predictions"]] == [0.2, 0.75, 0.5]
    with open(out / "bundle.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["tile_id", "set", "uncertainty", "pre_png", "post_png", "mask_png", "bounds",
                             "crs"]
    assert [r["tile_id"] for r in rows] == ids
    assert rows[2]["mask_png"] == "" and rows[2]["uncertainty"] == ""
    assert rows[0]["mask_png"] == f"masks/{ids[0]}.png"
    assert json.loads(rows[0]["bounds"]) == tiles[0]["bounds"] and rows[0]["crs"] == "EPSG:32631"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_write_export_to_s3_with_url_prefix(region, s3_bucket):
    out = f"s3://{s3_bucket}/exports/testville"
    tasks, summary = _export(out, region, prefix="https://data.example/testville/")
    tid = tasks[0]["data"]["tile_id"]
    assert tasks[0]["data"]["pre"] == f"https://data.example/testville/images/{tid}_pre.png"
    store = storage.storage_for(out)
    keys = {u[len(out) + 1:] for u in store.list(out + "/")}
    assert {"tasks.json", "label_config.xml", "bundle.csv", f"images/{tid}_pre.png",
            f"images/{tid}_post.png", f"masks/{tid}.png"} <= keys
    assert len(keys) == 3 + 8 + 3
    with Image.open(io.BytesIO(store.get_bytes(f"{out}/images/{tid}_post.png"))) as im:
        assert (im.mode, im.size) == ("RGB", (64, 64))
    assert summary["tasks_json"] == f"{out}/tasks.json"


def test_write_export_refuses_bad_input_before_writing(region, tmp_path):
    region_uri, tiles = region
    evil = [{**tiles[0], "tile_id": "../evil"}, tiles[1]]
    with pytest.raises(DamnetError) as err:
        write_export(str(tmp_path / "out"), "r", region_uri, evil, {tiles[1]["tile_id"]: "test"}, {},
                     {tiles[1]["tile_id"]: np.zeros((8, 8))}, "v")
    text = str(err.value)
    assert text.startswith("3 problem(s)")
    assert "'../evil'" in text and "'test'" in text and "(8, 8)" in text
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- import


def test_simulated_labels_parse_back_to_truth_and_become_georeferenced_tiles(exported, region, tmp_path):
    out, tasks, _ = exported
    region_uri, tiles = region
    export = simulate_label_studio_export(tasks, _truth_of_task, seed=3)
    assert export == simulate_label_studio_export(tasks, _truth_of_task, seed=3)
    assert all(len(t["annotations"]) == 1 and not t["annotations"][0]["was_cancelled"] for t in export)
    assert export[0]["predictions"] == tasks[0]["predictions"] and export[0]["data"] == tasks[0]["data"]
    assert export[3]["annotations"][0]["result"] == []  # nothing changed in that tile
    masks = parse_label_studio_export(json.dumps(export).encode(), "ls-export.json", tasks)
    assert set(masks) == {t["tile_id"] for t in tiles}
    for tid, mask in masks.items():
        np.testing.assert_array_equal(mask, _truth(tid))
    written = write_label_tiles(masks, {t["tile_id"]: t for t in tiles}, str(tmp_path / "labels"))
    for tile in tiles:
        uri = written[tile["tile_id"]]
        assert uri == str(tmp_path / "labels" / f"{tile['tile_id']}.tif")
        np.testing.assert_array_equal(read_label(uri), _truth(tile["tile_id"]))
        with rasterio.open(uri) as lab, rasterio.open(Path(region_uri) / tile["files"]["pre"]) as img:
            assert (lab.count, lab.dtypes[0]) == (1, "uint8")
            assert lab.crs == img.crs and lab.transform == img.transform
            assert set(np.unique(lab.read(1)).tolist()) <= {0, 1}


def test_label_tiles_without_crs_and_unsafe_ids(tmp_path):
    tile = {"tile_id": "plain_r00000_c00000", "crs": None, "transform": [1, 0, 0, 0, 1, 0],
            "window": {"col_off": 0, "row_off": 0, "width": 32, "height": 16}}
    mask = np.zeros((16, 32), np.uint8)
    mask[2:9, 4:20] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_label_tiles({tile["tile_id"]: mask}, {tile["tile_id"]: tile}, str(tmp_path / "a"))
    assert not [w for w in caught if "georeferenc" in str(w.message).lower()]
    with rasterio.open(written[tile["tile_id"]]) as src:
        assert src.crs is None and list(src.transform)[:6] == [1, 0, 0, 0, 1, 0]
    np.testing.assert_array_equal(read_label(written[tile["tile_id"]]), mask)
    bad = {"../evil": mask, "a/b": mask, "x..y": mask, tile["tile_id"]: mask[:8], "unknown": mask}
    with pytest.raises(DamnetError, match="5 problem") as err:
        write_label_tiles(bad, {tile["tile_id"]: tile}, str(tmp_path / "b"))
    assert "'../evil'" in str(err.value) and "'a/b'" in str(err.value)
    assert not (tmp_path / "b").exists()


def test_polygons_and_brush_are_united_and_identical_duplicates_accepted(exported):
    _, tasks, _ = exported
    export = simulate_label_studio_export(tasks, lambda t: np.zeros((64, 64), np.uint8))
    tid = tasks[0]["data"]["tile_id"]
    brush = np.zeros((64, 64), np.uint8)
    brush[:10, :10] = 1
    ann = export[0]["annotations"][0]
    ann["result"] = [
        labels.brush_result(brush, result_id="b1"),
        {"id": "p1", "from_name": "change_poly", "to_name": "post", "type": "polygonlabels",
         "original_width": 64, "original_height": 64, "image_rotation": 0,
         "value": {"points": [[50, 50], [100, 50], [100, 100], [50, 100]], "closed": True,
                   "polygonlabels": ["Building change"]}},
        {"id": "c1", "from_name": "comment", "to_name": "post", "type": "textarea",
         "value": {"text": ["ok"]}},
    ]
    export[0]["annotations"] += [copy.deepcopy(ann) | {"id": 77},
                                 {"id": 78, "result": [], "was_cancelled": True}]
    masks = parse_label_studio_export(json.dumps(export), "ls.json", tasks)
    expected = brush.copy()
    expected[32:, 32:] = 1
    np.testing.assert_array_equal(masks[tid], expected)


def test_malformed_export_lists_every_problem_and_writes_nothing(exported, region, tmp_path):
    _, tasks, _ = exported
    _, tiles = region
    ids = [t["data"]["tile_id"] for t in tasks]
    export = simulate_label_studio_export(tasks, _truth_of_task)
    # 1: wrong size (drawn on a 32x32 image)
    export[0]["annotations"][0]["result"][0]["original_width"] = 32
    # 2: corrupt RLE in a second annotation of tile 1 (its first annotation is fine)
    bad = copy.deepcopy(export[1]["annotations"][0])
    bad["id"] = 501
    bad["result"][0]["value"]["rle"] = bad["result"][0]["value"]["rle"][:20]
    # 3: conflicting duplicate annotation of tile 2
    other = copy.deepcopy(export[2]["annotations"][0])
    other["id"] = 502
    other["result"] = []
    export[1]["annotations"].append(bad)
    export[2]["annotations"].append(other)
    # 4: a cancelled-only task
    export[3]["annotations"][0]["was_cancelled"] = True
    # 5: unknown task id and no tile id; 6: unknown tile id
    export.append({"id": 999, "data": {"image": "x.png"}, "annotations": []})
    export.append({"id": 1, "data": {"tile_id": "elsewhere_r0_c0"}, "annotations": []})
    # 8: junk where ids belong
    export.append({"id": [1], "data": {"tile_id": ["x"]}, "annotations": {}})
    # 7: a brush result for `change` in a format other than RLE
    export[1]["annotations"][0]["result"].append(
        {"from_name": "change", "to_name": "post", "type": "brushlabels",
         "value": {"format": "imageDataURL", "brushlabels": ["Building change"]}})
    out = tmp_path / "labels"
    with pytest.raises(LabelExportError) as err:
        masks = parse_label_studio_export(json.dumps(export), "project-7-export.json", tasks)
        write_label_tiles(masks, {t["tile_id"]: t for t in tiles}, str(out))
    problems = err.value.problems
    text = str(err.value)
    assert len(problems) == 8, text
    assert text.startswith("project-7-export.json: 8 problem(s) in the label export:\n  - ")
    assert isinstance(err.value, DamnetError)
    expect = [f"tile {ids[0]}, annotation 1000, result 0 (change/brushlabels): drawn on a 32x64",
              "annotation 501, result 0 (change/brushlabels): RLE ends in the middle",
              f"tile {ids[2]}: 2 annotations disagree",
              f"tile {ids[3]}: not labelled",
              "unknown task id 999",
              "unknown tile id 'elsewhere_r0_c0'",
              "brush format 'imageDataURL' is not supported",
              "task #7 (id [1]): unknown tile id ['x']"]
    for fragment in expect:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert not out.exists()


@pytest.mark.parametrize(("data", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b'{"tasks": []}', "got a JSON dict"),
])
def test_garbage_export_is_one_clear_problem(exported, data, fragment):
    with pytest.raises(LabelExportError) as err:
        parse_label_studio_export(data, "upload.json", exported[1])
    assert len(err.value.problems) == 1 and fragment in err.value.problems[0]
    assert str(err.value).startswith("upload.json: 1 problem(s)")


def test_a_mask_linked_from_outside_the_label_folder_is_refused(exported, tmp_path):
    """A label import reads only what was delivered into the folder, not what a link points at."""
    _, tasks, _ = exported
    ids = [t["data"]["tile_id"] for t in tasks]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes(_png(_truth(ids[1]) * 255))
    folder = tmp_path / "masks"
    folder.mkdir()
    (folder / f"{ids[0]}.png").write_bytes(_png(_truth(ids[0]) * 255))
    (folder / f"{ids[1]}.png").symlink_to(elsewhere / "secret.png")
    with pytest.raises(LabelExportError) as err:
        read_mask_folder(str(folder), tasks)
    assert err.value.problems == [f"{ids[1]}.png: a link to {(elsewhere / 'secret.png').resolve()}, outside the label "
                                  "folder; copy the mask into the folder instead"]
    # a link that stays inside the folder is a file of the folder like any other
    (folder / f"{ids[1]}.png").unlink()
    (folder / "copy.bin").write_bytes(_png(_truth(ids[1]) * 255))
    (folder / f"{ids[1]}.png").symlink_to(folder / "copy.bin")
    with pytest.raises(LabelExportError) as err:
        read_mask_folder(str(folder), tasks)
    assert [p.split(":")[0] for p in err.value.problems] == ["copy.bin"]


def test_oversized_export_is_refused_unparsed(exported, monkeypatch):
    monkeypatch.setattr(labels.parse, "MAX_EXPORT_BYTES", 1000)
    with pytest.raises(LabelExportError, match="limit"):
        parse_label_studio_export("[" + " " * 2000 + "]", "big.json", exported[1])


def test_mask_folder_is_read_and_checked(exported, tmp_path):
    _, tasks, _ = exported
    ids = [t["data"]["tile_id"] for t in tasks]
    good = tmp_path / "good"
    good.mkdir()
    (good / f"{ids[0]}.png").write_bytes(_png(_truth(ids[0]) * 255))
    (good / f"{ids[1]}.png").write_bytes(_png(_truth(ids[1])))  # 0/1 is fine too
    (good / f"{ids[2]}.png").write_bytes(_png(_truth(ids[2]) * 255, "RGB"))  # grey RGB too
    masks = read_mask_folder(str(good), tasks)
    assert set(masks) == set(ids[:3])
    for tid in ids[:3]:
        np.testing.assert_array_equal(masks[tid], _truth(tid))

    bad = tmp_path / "bad"
    (bad / "sub").mkdir(parents=True)
    (bad / f"{ids[0]}.png").write_bytes(_png(_truth(ids[0]) * 255))  # fine
    grey = (_truth(ids[1]) * 200).astype(np.uint8)
    grey[0, 0] = 255
    (bad / f"{ids[1]}.png").write_bytes(_png(grey))  # non-binary
    (bad / f"{ids[2]}.png").write_bytes(_png(np.zeros((32, 64), np.uint8)))  # wrong size
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[..., 0] = 255
    (bad / f"{ids[3]}.png").write_bytes(_png(colour))  # red: not a grey mask
    (bad / "nowhere_r0_c0.png").write_bytes(_png(np.zeros((64, 64), np.uint8)))  # unknown id
    (bad / "sub" / f"{ids[0]}.png").write_bytes(_png(np.zeros((64, 64), np.uint8)))  # sub-folder
    (bad / "notes.txt").write_text("hello")
    with pytest.raises(LabelExportError) as err:
        read_mask_folder(str(bad), tasks)
    problems = err.value.problems
    assert len(problems) == 6, problems
    for name in (f"{ids[1]}.png", f"{ids[2]}.png", f"{ids[3]}.png", "nowhere_r0_c0.png",
                 f"sub/{ids[0]}.png", "notes.txt"):
        assert sum(p.startswith(name + ":") for p in problems) == 1, (name, problems)
    assert "not a binary mask (values 0, 200, 255)" in str(err.value)
    assert f"{ids[2]}.png: 64x32 pixels, the tile is 64x64" in str(err.value)
    assert f"sub/{ids[0]}.png: file names cannot escape the region folder" in str(err.value)
    assert str(err.value).startswith(f"{bad}: 6 problem(s)")


def test_mask_names_cannot_escape_the_folder(exported):
    _, tasks, _ = exported
    tid = tasks[0]["data"]["tile_id"]
    ok = _png(_truth(tid) * 255)
    files = {"../evil.png": ok, f"..\\{tid}.png": ok, f"{tid}.png": ok, "unknown.png": ok,
             f"{tid}.PNG": ok}
    with pytest.raises(LabelExportError) as err:
        read_mask_pngs(files, tasks, "upload.zip")
    problems = err.value.problems
    assert len(problems) == 4, problems
    assert sum("../evil.png: file names cannot escape the region folder" in p for p in problems) == 1
    assert sum("unknown.png: no exported task" in p for p in problems) == 1
    assert sum(f"tile {tid} already has a mask" in p for p in problems) == 1


def test_mask_folder_on_s3_with_a_key_that_escapes(exported, s3_bucket):
    _, tasks, _ = exported
    tid = tasks[0]["data"]["tile_id"]
    client = boto3.client("s3", endpoint_url=storage.S3Storage().client.meta.endpoint_url)
    client.put_object(Bucket=s3_bucket, Key=f"masks/{tid}.png", Body=_png(_truth(tid) * 255))
    masks = read_mask_folder(f"s3://{s3_bucket}/masks", tasks)
    np.testing.assert_array_equal(masks[tid], _truth(tid))
    client.put_object(Bucket=s3_bucket, Key="masks/../evil.png", Body=b"x")
    with pytest.raises(LabelExportError) as err:
        read_mask_folder(f"s3://{s3_bucket}/masks/", tasks)
    assert len(err.value.problems) == 1 and "../evil.png: file names cannot escape" in str(err.value)


# --------------------------------------------------------------------------- label-studio-sdk check


def _ls_check(export_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    if not LS_PYTHON.exists():
        pytest.skip(f"{LS_PYTHON} is missing (make test creates the label-studio-sdk venv)")
    return subprocess.run([str(LS_PYTHON), str(LS_CHECK), str(export_dir), *extra],
                          capture_output=True, text=True, timeout=120)


def test_export_passes_label_studio_sdk_checks(exported, tmp_path):
    out, tasks, _ = exported
    simulated = tmp_path / "ls-export.json"
    simulated.write_text(json.dumps(simulate_label_studio_export(tasks, _truth_of_task)))
    proc = _ls_check(out, "--annotations", str(simulated))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_label_studio_sdk_check_catches_a_corrupted_export(exported, tmp_path):
    out, tasks, _ = exported
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    tasks = json.loads((broken / "tasks.json").read_text())
    rle = tasks[0]["predictions"][0]["result"][0]["value"]["rle"]
    rle[-4] ^= 0x10  # one flipped bit in the run data
    tasks[1]["data"].pop("post")
    tasks[3]["predictions"][0]["result"][0]["value"]["brushlabels"] = ["Tree"]
    (broken / "tasks.json").write_text(json.dumps(tasks))
    tid = tasks[1]["data"]["tile_id"]
    (broken / "masks" / f"{tid}.png").write_bytes(_png(np.zeros((64, 64), np.uint8)))
    proc = _ls_check(broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "task 1 (" in err and "RLE" in err
    assert "task 2 (" in err and "data has no 'post'" in err and f"differs from masks/{tid}.png" in err
    assert "task 4 (" in err and "prediction invalid" in err and "Tree" in err

