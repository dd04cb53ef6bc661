"""Region validation with Great Expectations: good regions pass, broken ones fail readably."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from affine import Affine
from conftest import SHARED_DATA, write_png, write_tif
from rasterio.warp import transform as warp_transform
from scipy import ndimage

from damnet import storage
from damnet.errors import DamnetError
from damnet.synthetic import generate_scene, write_region
from damnet.tiling import TilingConfig, ingest, load_manifest
from damnet.validation import (
    ValidationConfig,
    ValidationFailed,
    ValidationReport,
    build_suite,
    estimate_shift,
    frechet_distance,
    misregistration_px,
    post_grid,
    validate_region,
)
from damnet.validation.report import _exception_message

TILE = TilingConfig(size=64)
UTM31 = "EPSG:32631"


# ----------------------------------------------------------------------------- fixtures


def _transform(gsd=0.5, x0=500_000.0, y0=4_000_000.0):
    return Affine(gsd, 0, x0, 0, -gsd, y0)


def _pair(root: Path, name: str, pre, post, crs=UTM31, post_crs=None, transform=None,
          post_transform=None, **extra) -> None:
    write_tif(root / "pre" / f"{name}.tif", pre, crs=crs, transform=transform or _transform(), **extra)
    write_tif(root / "post" / f"{name}.tif", post, crs=post_crs or crs,
              transform=post_transform or transform or _transform(), **extra)


@pytest.fixture(scope="module")
def scene():
    return generate_scene("source", size=256, seed=7)


@pytest.fixture(scope="module")
def bad_regions(tmp_path_factory, scene):
    """Tiled regions, each broken in one way, made from one synthetic scene."""
    root = tmp_path_factory.mktemp("bad")
    pre, post = scene.pre, scene.post
    raw = {}
    # (a) The post image 6 px to the right of where it belongs.
    _pair(root / "raw" / "shifted", "s", pre, np.roll(post, 6, axis=2))
    # (b) Data only in an L along the top and left edges: most tiles are mostly nodata.
    rows, cols = np.indices(pre.shape[1:])
    keep = (rows < 24) | (cols < 24)
    holed = [np.where(keep, np.maximum(img, 1), 0).astype(np.uint8) for img in (pre, post)]
    _pair(root / "raw" / "nodata", "s", *holed, nodata=0)
    # (c) Night-time dark imagery.
    _pair(root / "raw" / "dark", "s", pre // 40, post // 40)
    # (d) A sliver: two tiles.
    _pair(root / "raw" / "few", "s", pre[:, :64, :128], post[:, :64, :128])
    # (e) Grids: pair a's post scene had twice the pixel size; pair b is in another CRS
    # with another pixel size, and its post scene in yet another CRS (over the same place).
    _pair(root / "raw" / "grid", "a", pre, post[:, ::2, ::2], post_transform=_transform(1.0))
    (x0,), (y0,) = warp_transform("EPSG:32632", UTM31, [500_000.0], [4_000_000.0])
    _pair(root / "raw" / "grid", "b", pre, post, crs="EPSG:32632", transform=_transform(0.6),
          post_crs=UTM31, post_transform=_transform(0.6, x0, y0))
    for name in ("shifted", "nodata", "dark", "few", "grid"):
        ingest(str(root / "raw" / name), str(root / name), TILE)
        raw[name] = str(root / name)
    return raw


@pytest.fixture(scope="module")
def source2(tmp_path_factory):
    """A second sample of the source style (another seed): same domain, other scenes."""
    root = tmp_path_factory.mktemp("source2")
    write_region(str(root / "raw"), "source", n_scenes=2, size=256, seed=2)
    ingest(str(root / "raw"), str(root / "tiles"), TILE)
    return str(root / "tiles")


@pytest.fixture(scope="module")
def good(tiny_regions, tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "good"
    return validate_region(tiny_regions["source"], str(out)), out


# ----------------------------------------------------------------------------- misregistration


def _texture(seed=4, size=160):
    return generate_scene("source", size=size, seed=seed).pre


@pytest.mark.parametrize("shift", [(0, 4), (-3, 4), (4, 0), (2.5, 0)])
def test_phase_correlation_finds_a_known_shift(shift):
    img = _texture()
    moved = ndimage.shift(img.astype(float), (0, *shift), order=3, mode="nearest")
    crop = (slice(None), slice(16, 144), slice(16, 144))
    dx, dy, psr = estimate_shift(img[crop], moved[crop])
    assert (dy, dx) == pytest.approx(shift, abs=0.25)
    assert psr > ValidationConfig().min_shift_psr
    assert misregistration_px(img[crop], moved[crop]) == pytest.approx(math.hypot(*shift), abs=0.3)


def test_phase_correlation_ignores_invalid_pixels_and_finds_no_shift_when_there_is_none():
    img = _texture()[:, :128, :128]
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 4, img.shape), 0, 255)
    assert misregistration_px(img, noisy) < 0.5
    valid = np.ones(img.shape[1:], bool)
    valid[:, 80:] = False
    moved = np.roll(img, 4, axis=1)
    moved[:, :, 80:] = np.random.default_rng(1).integers(0, 255, moved[:, :, 80:].shape)
    dx, dy, _ = estimate_shift(img, moved, valid)
    assert (dx, dy) == pytest.approx((0, 4), abs=0.3)


def test_blank_or_mostly_invalid_tiles_have_no_estimate():
    flat = np.full((3, 64, 64), 120, np.uint8)
    assert math.isnan(misregistration_px(flat, flat))
    img = _texture()[:, :64, :64]
    valid = np.zeros((64, 64), bool)
    valid[:8, :8] = True
    assert math.isnan(misregistration_px(img, img, valid))


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(x, x + 3.0) == pytest.approx(3.0 * math.sqrt(6), rel=1e-6)
    assert frechet_distance(x, 2 * x) > frechet_distance(x, 1.1 * x)


def test_post_grid_is_read_from_the_ingest_note():
    note = ("/r/post/a.tif: post image resampled onto the pre grid (EPSG:32633 1 m -> "
            "EPSG:32631 0.5 m, bilinear)")
    assert post_grid({"notes": [note]}) == ("EPSG:32633", 1.0)
    assert post_grid({"notes": []}) is None
    assert post_grid({"notes": [note.replace("EPSG:32633", "no CRS")]}) == (None, 1.0)


def test_config_is_checked():
    with pytest.raises(ValueError, match="max_nodata_fraction"):
        ValidationConfig(max_nodata_fraction=1.5)
    with pytest.raises(ValueError, match="mostly"):
        ValidationConfig(mostly=0)
    with pytest.raises(ValueError, match="brightness_low"):
        ValidationConfig(brightness_low=200, brightness_high=100)
    with pytest.raises(ValueError, match="severity"):
        ValidationConfig(tile_misregistration_severity="fatal")
    suite = build_suite(ValidationConfig(same_grid=False))
    assert suite.name == "damnet-region"
    columns = {e["kwargs"].get("column") for e in suite.to_json_dict()["expectations"]}
    assert {"misregistration_px", "nodata_fraction", "mean_post_b"} <= columns
    assert not columns & {"crs_pre", "pixel_size", "res_ratio"}


# ----------------------------------------------------------------------------- whole regions


def test_a_good_region_passes_and_writes_every_output(good, tiny_regions):
    report, out = good
    assert report.success, report.summary()
    assert report.failures == []
    manifest = load_manifest(tiny_regions["source"])
    assert report.statistics["tiles"] == len(manifest["tiles"]) == 32
    assert report.statistics["evaluated_expectations"] >= 20
    assert report.statistics["misregistration_px"]["median"] < 1.0
    summary = report.summary()
    assert summary.startswith("PASSED") and str(out / "data_docs" / "index.html") in summary

    index = out / "data_docs" / "index.html"
    assert index.is_file() and "damnet-region" in index.read_text()
    assert list((out / "data_docs" / "validations").rglob("*.html"))
    assert (out / "data_docs" / "static").is_dir()

    table = pd.read_csv(out / "tiles.csv")
    assert len(table) == 32 and set(table["tile_id"]) == {t["tile_id"] for t in manifest["tiles"]}
    assert {"misregistration_px", "nodata_fraction", "mean_post_g", "crs_pre", "res_x"} <= set(table)
    # The tables' statistics agree with what ingest recorded for each tile.
    first = manifest["tiles"][0]
    row = table.set_index("tile_id").loc[first["tile_id"]]
    assert row["mean_pre_r"] == pytest.approx(first["stats"]["pre"]["mean"][0], abs=0.01)

    suite = json.loads((out / "expectations.json").read_text())
    assert suite["name"] == "damnet-region"
    assert len(suite["expectations"]) == report.statistics["evaluated_expectations"]

    again = ValidationReport.load(str(out))
    assert again == report
    assert again == ValidationReport.load(str(out / "validation.json"))
    assert json.loads((out / "validation.json").read_text())["format"] == "damnet.validation/1"
    report.raise_for_failure()  # passes quietly


BAD = {
    # region: (words the summary must contain, check keys that must fail)
    "shifted": (["pair_misregistration_px: 1 of 1 pair(s) with an estimate shifted above 4 px: s 6.",
                 "expect_column_values_to_be_between"],
                {"pair_misregistration"}),
    "nodata": (["nodata_fraction", "above 0.5", "nodata_fraction mean over the region"],
               {"nodata", "nodata_mean"}),
    "dark": (["mean_pre_r", "outside [5, 250] DN", "std_pre_r"], {"mean_pre_r", "std_post_g"}),
    "few": (["tiles: 2 in the region, expected at least 4", "expect_table_row_count_to_be_between"],
            {"min_tiles"}),
    "grid": (["crs_pre: 2 distinct values (EPSG:32631, EPSG:32632)", "pixel_size: 2 distinct",
              "res_ratio", "crs_pre vs crs_post: 16 of 32 tiles differ (e.g. EPSG:32632 vs EPSG:32631"],
             {"single_crs", "single_pixel_size", "pixel_size_between_dates", "crs_between_dates"}),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_broken_region_fails_naming_the_expectation(name, bad_regions, tmp_path):
    words, keys = BAD[name]
    report = validate_region(bad_regions[name], str(tmp_path / "out"))
    summary = report.summary()
    assert not report.success
    assert summary.startswith("FAILED"), summary
    for word in words:
        assert word in summary, summary
    failed = {r["check"] for r in report.results if not r["success"]}
    assert keys <= failed, summary
    assert ValidationReport.load(str(tmp_path / "out")) == report
    with pytest.raises(ValidationFailed) as caught:
        report.raise_for_failure()
    assert isinstance(caught.value, DamnetError)
    assert str(caught.value) == summary
    assert caught.value.report is report


def test_a_shifted_post_image_is_seen_in_every_tile(bad_regions, tmp_path):
    report = validate_region(bad_regions["shifted"], str(tmp_path / "out"),
                             ValidationConfig(tile_misregistration_severity="critical"))
    table = pd.read_csv(tmp_path / "out" / "tiles.csv")
    assert table["misregistration_px"].median() == pytest.approx(6, abs=0.5)
    assert table["pair_misregistration_px"].iloc[0] == pytest.approx(6, abs=0.3)
    line = next(f for f in report.failures if f.startswith("misregistration_px"))
    assert re.match(r"misregistration_px: (\d+) of \1 tiles above 4 px \(worst \d", line), line
    assert "tile s_r" in line and "pair estimates: s 6." in line


def test_the_grid_checks_see_the_post_scene_as_ingest_found_it(bad_regions, tmp_path):
    report = validate_region(bad_regions["grid"], str(tmp_path / "out"))
    table = pd.read_csv(tmp_path / "out" / "tiles.csv").set_index("pair")
    assert set(table.loc["a", "res_post"]) == {1.0} and set(table.loc["a", "res_x"]) == {0.5}
    assert set(table.loc["b", "res_post"]) == {0.6} and set(table.loc["b", "crs_post"]) == {UTM31}
    assert set(table.loc["a", "crs_post"]) == {UTM31} and set(table["res_ratio"]) == {2.0, 1.0}
    assert sum("resampled onto the pre grid" in n for n in report.notes) == 2


def test_thresholds_come_from_the_config(tiny_regions, tmp_path):
    strict = ValidationConfig(min_tiles=100, brightness_low=120, mostly=1.0)
    report = validate_region(tiny_regions["source"], str(tmp_path / "out"), strict)
    assert not report.success
    assert "tiles: 32 in the region, expected at least 100" in report.summary()
    assert any(f.startswith("mean_pre_r: ") and "outside [120, 250] DN" in f for f in report.failures)


def test_domain_distance_is_larger_for_a_target_style(tiny_regions, source2, tmp_path):
    src = tiny_regions["source"]
    near = validate_region(source2, str(tmp_path / "near"), source_uri=src)
    far = validate_region(tiny_regions["target"], str(tmp_path / "far"), source_uri=src)
    dn, df = near.domain_distance, far.domain_distance
    assert dn["source_uri"] == src and dn["samples"]["source"] == 64
    assert df["frechet_dn"] > 3 * dn["frechet_dn"]
    assert df["max_abs_band_mean_shift"] > 2 * dn["max_abs_band_mean_shift"]
    assert abs(df["brightness_ratio"] - 1) > abs(dn["brightness_ratio"] - 1)
    # Informational: a region of another domain is not a failure for being far away.
    assert far.success, far.summary()
    assert "Domain distance to" in far.summary() and "Frechet" in far.summary()
    assert ValidationReport.load(str(tmp_path / "far")).domain_distance == df


def test_rerunning_replaces_the_data_docs(tiny_regions, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        validate_region(tiny_regions["source"], str(out))
    assert len(list((out / "data_docs" / "validations").rglob("*.html"))) == 1


def test_a_missing_region_or_source_is_a_user_error(tiny_regions, tmp_path):
    with pytest.raises(DamnetError, match="no such file"):
        validate_region(str(tmp_path / "nothing"), str(tmp_path / "out"))
    with pytest.raises(DamnetError, match="manifest.json: no such file"):
        validate_region(tiny_regions["source"], str(tmp_path / "out"), source_uri=str(tmp_path / "nothing"))
    assert not (tmp_path / "out").exists()


def test_an_expectation_that_cannot_run_is_named():
    assert _exception_message({"raised_exception": True, "exception_message": "boom\ntrace"}) == "boom"
    assert _exception_message({"m": {"raised_exception": True, "exception_message": "no column"}}) == "no column"
    assert _exception_message({"raised_exception": False, "exception_message": None}) is None


def test_great_expectations_leaves_the_warnings_of_the_process_alone():
    # Importing GE routes every warning to logging; the import is contained. A fresh
    # interpreter, since GE is imported once per process.
    code = ("import warnings; before = warnings.showwarning; from damnet.validation import build_suite; "
            "build_suite(); assert warnings.showwarning is before, warnings.showwarning")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_results_go_to_s3(tiny_regions, s3_bucket):
    out = f"s3://{s3_bucket}/validation/source"
    report = validate_region(tiny_regions["source"], out)
    assert report.success, report.summary()
    keys = set(storage.storage_for(out).list(out + "/"))
    for name in ("validation.json", "tiles.csv", "expectations.json", "data_docs/index.html"):
        assert f"{out}/{name}" in keys
    assert any("/data_docs/validations/" in k for k in keys)
    assert report.paths["data_docs"] == f"{out}/data_docs/index.html"
    assert ValidationReport.load(out) == report
    client = boto3.client("s3", endpoint_url=storage.S3Storage().client.meta.endpoint_url)
    index = client.get_object(Bucket=s3_bucket, Key="validation/source/data_docs/index.html")
    assert b"damnet-region" in index["Body"].read()


# ----------------------------------------------------------------------------- estimated where it can be


def test_unrelated_dates_give_an_unknown_pair_estimate_not_a_failure(tmp_path):
    # Everything changed between the dates (two unrelated scenes): there is no shift to
    # measure, and the correlation peak of such a pair is the change, not a shift.
    a, b = generate_scene("source", size=256, seed=11), generate_scene("source", size=256, seed=12)
    _pair(tmp_path / "raw", "s", a.pre, b.post)
    ingest(str(tmp_path / "raw"), str(tmp_path / "tiles"), TILE)
    report = validate_region(str(tmp_path / "tiles"), str(tmp_path / "out"))
    assert report.statistics["pair_misregistration_px"] == {"s": None}
    assert not any(r["check"] == "pair_misregistration" and not r["success"] for r in report.results)
    assert "Misregistration unknown for 1 of 1 pair(s)" in report.summary()
    table = pd.read_csv(tmp_path / "out" / "tiles.csv")
    assert table["pair_shift_agreeing"].max() < ValidationConfig().min_agreeing_patches


@pytest.mark.parametrize("shift", [(0, 0), (5, 0), (-3, 4)])
def test_a_pair_whose_content_partly_changed_is_measured_on_what_stayed(tmp_path, shift):
    # The post scene: the pre scene moved by `shift`, with 5 of its 16 blocks of 64 px replaced by
    # another scene (new buildings everywhere there).
    a, other = generate_scene("source", size=256, seed=21), generate_scene("source", size=256, seed=22)
    dx, dy = shift
    post = np.roll(a.post, (dy, dx), axis=(1, 2))
    for r, c in ((0, 0), (64, 128), (128, 64), (192, 192), (0, 192)):
        post[:, r:r + 64, c:c + 64] = other.post[:, r:r + 64, c:c + 64]
    _pair(tmp_path / "raw", "s", a.pre, post)
    ingest(str(tmp_path / "raw"), str(tmp_path / "tiles"), TILE)
    report = validate_region(str(tmp_path / "tiles"), str(tmp_path / "out"))
    table = pd.read_csv(tmp_path / "out" / "tiles.csv").iloc[0]
    assert (table["pair_shift_x_px"], table["pair_shift_y_px"]) == pytest.approx(shift, abs=0.6)
    pair_failed = any(r["check"] == "pair_misregistration" and not r["success"] for r in report.results)
    assert pair_failed == (math.hypot(*shift) > ValidationConfig().max_misregistration_px)


def test_moved_shadows_do_not_flag_tiles_of_a_co_registered_region(tiny_regions, tmp_path):
    # target_season: another sun, long shadows; the scenes are co-registered (< 0.5 px). Each
    # 64 px tile's strongest peak may be its moved shadows; a tile whose surface also holds the
    # pair's shift follows the pair.
    report = validate_region(tiny_regions["target"], str(tmp_path / "out"),
                             ValidationConfig(tile_misregistration_severity="critical"))
    table = pd.read_csv(tmp_path / "out" / "tiles.csv")
    assert (table["pair_misregistration_px"] < 1).all()
    flagged = (table["misregistration_px"] > ValidationConfig().max_misregistration_px).sum()
    assert flagged <= 0.03 * len(table), table.sort_values("misregistration_px").tail()
    assert report.success, report.summary()


def test_nodata_counts_only_missing_pixels_inside_the_scene(tmp_path):
    # A scene smaller than a tile (40 x 100 at 64 px): the tiles are padded, the padding is not
    # nodata; a 10 x 20 corner without data is.
    img = generate_scene("source", size=128, seed=3).pre[:, :40, :100].copy()
    img[:, :10, :20] = 0
    img[:, 10:, :] = np.maximum(img[:, 10:, :], 1)
    img[:, :10, 20:] = np.maximum(img[:, :10, 20:], 1)
    _pair(tmp_path / "raw", "s", img, img, nodata=0)
    ingest(str(tmp_path / "raw"), str(tmp_path / "tiles"), TILE)
    report = validate_region(str(tmp_path / "tiles"), str(tmp_path / "out"), ValidationConfig(min_tiles=1))
    table = pd.read_csv(tmp_path / "out" / "tiles.csv").set_index("tile_id")
    assert table["padding_fraction"].tolist() == pytest.approx([24 / 64, 24 / 64])
    assert table.loc["s_r00000_c00000", "nodata_fraction"] == pytest.approx(200 / (40 * 64))
    assert table.loc["s_r00000_c00036", "nodata_fraction"] == 0
    assert not any(r["check"].startswith("nodata") and not r["success"] for r in report.results), report.summary()


# ----------------------------------------------------------------------------- real pairs (../shared/data)

REAL = {  # dataset folder -> pairs used (small, so the test stays quick)
    "dsifn-cd": None,  # all 10: land-cover change over most of each 256 px pair
    "sztaki-airchange": ["Szada_1", "Szada_2"],  # 952 x 640: edge tiles
    "oscd-rgb": ["beirut", "norcia", "rennes"],
    "levir-cd": ["test_12", "train_386_0512_0768", "train_412_0512_0768"],
}


def _real_region(root: Path, dataset: str, shift: tuple[int, int]) -> str:
    """Ingest pairs of a real dataset; with ``shift`` (dx, dy) > 0 the post image is cropped so
    that its content sits ``shift`` pixels off the pre image's (written as PNG to ``root``)."""
    import rasterio

    folder = SHARED_DATA / dataset
    if not folder.is_dir():
        pytest.skip(f"../shared/data/{dataset} is absent: validation on real pairs not checked")
    names = REAL[dataset] or sorted(p.stem for p in (folder / "A").glob("*.png"))
    raw = root / f"raw-{dataset}-{shift[0]}-{shift[1]}"
    dx, dy = shift
    for name in names:
        for d in ("A", "B"):
            with rasterio.open(folder / d / f"{name}.png") as src:
                img = src.read()[:3]
            h, w = img.shape[1:]
            img = img[:, : h - dy, : w - dx] if d == "A" else img[:, dy:, dx:]
            write_png(raw / d / f"{name}.png", img)
    out = root / f"tiles-{dataset}-{dx}-{dy}"
    ingest(str(raw), str(out), TilingConfig(size=256))
    return str(out)


@pytest.mark.parametrize("dataset", list(REAL))
def test_real_co_registered_pairs_pass_and_the_same_pairs_shifted_fail(dataset, tmp_path):
    limit = ValidationConfig().max_misregistration_px
    report = validate_region(_real_region(tmp_path, dataset, (0, 0)), str(tmp_path / "same"))
    pairs = report.statistics["pair_misregistration_px"]
    assert report.success, report.summary()
    assert any(v is not None for v in pairs.values()), f"no pair of {dataset} could be measured"
    assert all(v is None or v <= limit for v in pairs.values()), pairs
    for shift in ((5, 0), (6, 8)):
        report = validate_region(_real_region(tmp_path, dataset, shift), str(tmp_path / f"moved{shift[0]}"))
        moved = report.statistics["pair_misregistration_px"]
        assert not report.success, report.summary()
        assert any(f.startswith("pair_misregistration_px") for f in report.failures), report.summary()
        # Where a pair is measured both ways, the shift is what was added (pairs carry their own
        # offset of up to ~2 px on top).
        for name, before in pairs.items():
            if before is not None and moved[name] is not None:
                assert moved[name] == pytest.approx(math.hypot(*shift), abs=before + 1.0), (name, before)
