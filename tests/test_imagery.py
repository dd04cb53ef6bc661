"""Reading imagery: GeoTIFF pairs and LEVIR folders, co-registration, and every bad input."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import SHARED_DATA, rng_image, write_png, write_tif
from rasterio.warp import Resampling, calculate_default_transform, reproject

from damnet.errors import ImageryError, ImageryErrors
from damnet.synthetic import generate_scene
from damnet.tiling import TilingConfig, ingest, read_tile


def _scene_region(root, size=256, seed=1, style="source"):
    scene = generate_scene(style, size=size, seed=seed)
    for sub, data in (("pre", scene.pre), ("post", scene.post), ("label", scene.label * 255)):
        write_tif(root / sub / "s.tif", data, crs=scene.crs, transform=scene.transform)
    return scene


def test_geotiff_round_trip_keeps_crs_transform_and_pixels(tmp_path):
    scene = _scene_region(tmp_path / "in", size=300)
    manifest = ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=128))
    assert len(manifest["tiles"]) == 9  # ceil(300 / 128) ** 2
    for tile in manifest["tiles"]:
        col, row = tile["window"]["col_off"], tile["window"]["row_off"]
        with rasterio.open(tmp_path / "out" / tile["files"]["pre"]) as t:
            assert t.crs == scene.crs
            assert t.transform == scene.transform @ Affine.translation(col, row)
            assert list(t.bounds) == pytest.approx(tile["bounds"])
        pre, post, valid, label = read_tile(str(tmp_path / "out"), tile)
        h, w = min(128, 300 - row), min(128, 300 - col)
        assert np.array_equal(pre[:, :h, :w], scene.pre[:, row:row + h, col:col + w])
        assert np.array_equal(label[:h, :w], scene.label[row:row + h, col:col + w])
        assert valid[:h, :w].all() and not valid[h:, :].any() and not valid[:, w:].any()
        assert tile["nodata_fraction"] == pytest.approx(1 - h * w / 128**2, abs=1e-6)
        assert tile["crs"] == "EPSG:32631"


@pytest.mark.parametrize("dst_crs,res", [("EPSG:32631", 0.6), ("EPSG:3857", 0.55)])
def test_mismatched_grid_is_resampled_onto_the_pre_grid(tmp_path, dst_crs, res, caplog):
    scene = generate_scene("source", size=256, seed=2)
    root = tmp_path / "in"
    write_tif(root / "pre" / "s.tif", scene.pre, crs=scene.crs, transform=scene.transform)
    # The later scene arrives from another sensor: other CRS / resolution, shifted origin.
    left, top = scene.transform.c + 3.1, scene.transform.f - 2.2
    bounds = (left, top - 256 * 0.5, left + 256 * 0.5, top)
    dst_t, w, h = calculate_default_transform(scene.crs, dst_crs, 256, 256, *bounds, resolution=res)
    moved = np.zeros((3, h, w), np.uint8)
    reproject(scene.post, moved, src_transform=scene.transform, src_crs=scene.crs,
              dst_transform=dst_t, dst_crs=dst_crs, resampling=Resampling.bilinear)
    write_tif(root / "post" / "s.tif", moved, crs=dst_crs, transform=dst_t, nodata=0)
    with caplog.at_level(logging.WARNING):
        manifest = ingest(str(root), str(tmp_path / "out"), TilingConfig(size=128))
    notes = manifest["pairs"][0]["notes"]
    assert len(notes) == 1 and "resampled onto the pre grid" in notes[0] and "post" in notes[0]
    assert any("resampled" in r.message for r in caplog.records)
    # Back on the pre grid, the post tiles match the original post image, and the strip the
    # shifted post scene does not cover (6.2 px left, 4.4 px top) is masked.
    agree, covered = [], np.zeros((256, 256), bool)
    for tile in manifest["tiles"]:
        _, post, valid, _ = read_tile(str(tmp_path / "out"), tile)
        r, c = tile["window"]["row_off"], tile["window"]["col_off"]
        covered[r:r + 128, c:c + 128] |= valid[: 256 - r, : 256 - c]
        ref = np.zeros_like(post)
        hh, ww = min(128, 256 - r), min(128, 256 - c)
        ref[:, :hh, :ww] = scene.post[:, r:r + hh, c:c + ww]
        inner = valid & np.pad(np.ones((hh, ww), bool), ((0, 128 - hh), (0, 128 - ww)))
        agree.append(np.abs(post[:, inner].astype(int) - ref[:, inner]).mean())
    assert np.mean(agree) < 12, agree
    assert covered[8:, 10:].mean() > 0.99
    if dst_crs == "EPSG:32631":  # (in EPSG:3857 the footprint is also rotated by ~0.7 deg)
        assert not covered[:, :6].any() and not covered[:4, :].any()


def test_uint16_is_stretched_per_scene_and_bands_are_selected(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(900, 200, size=(4, 128, 128)).clip(0, 2047).astype(np.uint16)
    base[3] = 7  # a near-infrared band nobody asked for
    write_tif(tmp_path / "in" / "pre" / "s.tif", base)
    write_tif(tmp_path / "in" / "post" / "s.tif", base)
    with pytest.raises(ImageryErrors, match="4 bands"):
        ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=128))
    manifest = ingest(str(tmp_path / "in"), str(tmp_path / "out"),
                      TilingConfig(size=128, bands=(3, 2, 1)))
    pre, _, _, _ = read_tile(str(tmp_path / "out"), manifest["tiles"][0])
    assert pre.dtype == np.uint8
    stretch = manifest["pairs"][0]["stretch"]["pre"]
    assert stretch["low"][0] == pytest.approx(np.percentile(base[2], 2), rel=0.05)
    # Band 3 of the input became the first (red) band of the tile.
    expected = np.clip((base[2] - stretch["low"][0]) / (stretch["high"][0] - stretch["low"][0]), 0, 1)
    assert np.abs(pre[0] / 255 - expected).max() < 0.01
    assert (pre[0] == 0).mean() == pytest.approx(0.02, abs=0.01)


def test_nodata_is_carried_as_a_mask(tmp_path):
    img = rng_image(1, (3, 96, 96))
    img[:, :, :40] = 0
    for d in ("pre", "post"):
        write_tif(tmp_path / "in" / d / "s.tif", img, nodata=0)
    manifest = ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=96))
    _, _, valid, _ = read_tile(str(tmp_path / "out"), manifest["tiles"][0])
    assert not valid[:, :40].any() and valid[:, 40:].mean() > 0.99
    assert manifest["tiles"][0]["nodata_fraction"] == pytest.approx(40 / 96, abs=0.01)


# ----------------------------------------------------------------------------- bad input


def _levir(root, names=("a",), size=(64, 64), label=True, bands=3):
    for i, name in enumerate(names):
        write_png(root / "A" / f"{name}.png", rng_image(i, (bands, *size)))
        write_png(root / "B" / f"{name}.png", rng_image(i + 10, (bands, *size)))
        if label:
            write_png(root / "label" / f"{name}.png", (rng_image(i, (1, *size))[0] > 128) * 255)
    return root


def _error(root, tmp_path, **config):
    with pytest.raises(ImageryErrors) as info:
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64, **config))
    assert not (tmp_path / "out" / "manifest.json").exists()
    return info.value


def test_corrupt_file_is_named(tmp_path):
    root = _levir(tmp_path / "in", names=("good", "bad"))
    (root / "B" / "bad.png").write_bytes(b"\x89PNG this is not an image at all")
    err = _error(root, tmp_path)
    assert len(err.errors) == 1
    assert err.errors[0].path.endswith("B/bad.png")
    assert "cannot be read" in err.errors[0].problem


def test_truncated_geotiff_is_named(tmp_path):
    _scene_region(tmp_path / "in", size=256)
    path = tmp_path / "in" / "post" / "s.tif"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # The header is intact, so this shows only when the missing blocks are read.
    with pytest.raises(ImageryErrors, match=r"post/s.tif: cannot be read"):
        ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=64))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_different_crs_without_overlap(tmp_path):
    img = rng_image(0, (3, 64, 64))
    write_tif(tmp_path / "in" / "pre" / "s.tif", img, crs="EPSG:32631")
    write_tif(tmp_path / "in" / "post" / "s.tif", img, crs="EPSG:32635")  # same numbers, 24 deg east
    err = _error(tmp_path / "in", tmp_path)
    assert err.errors[0].path.endswith("post/s.tif")
    assert "does not overlap" in str(err) and "EPSG:32635" in str(err)


def test_geotiff_pair_without_crs(tmp_path):
    img = rng_image(0, (3, 64, 64))
    write_tif(tmp_path / "in" / "pre" / "s.tif", img, crs=None)
    write_tif(tmp_path / "in" / "post" / "s.tif", img)
    err = _error(tmp_path / "in", tmp_path)
    assert err.errors[0].path.endswith("pre/s.tif") and "no CRS" in str(err)


@pytest.mark.parametrize("bands,words", [(4, "4 bands (RGBA)"), (1, "1 band")])
def test_rgba_or_single_band_where_rgb_is_expected(tmp_path, bands, words):
    root = _levir(tmp_path / "in", bands=bands)
    err = _error(root, tmp_path)
    assert err.errors[0].path.endswith("A/a.png")
    assert words in str(err) and "RGB" in str(err)


def test_missing_label_when_labels_are_required(tmp_path):
    root = _levir(tmp_path / "in", names=("a", "b"))
    (root / "label" / "b.png").unlink()
    err = _error(root, tmp_path, require_labels=True)
    assert len(err.errors) == 1 and err.errors[0].path.endswith("A/b.png")
    assert "no label" in str(err)
    # Without the requirement the unlabelled pair is fine.
    manifest = ingest(str(root), str(tmp_path / "out2"), TilingConfig(size=64))
    assert sorted(t["change_fraction"] is None for t in manifest["tiles"]) == [False, True]


def test_sizes_that_disagree_between_a_and_b(tmp_path):
    root = _levir(tmp_path / "in")
    write_png(root / "B" / "a.png", rng_image(3, (3, 64, 80)))
    err = _error(root, tmp_path)
    assert err.errors[0].path.endswith("B/a.png")
    assert "80x64" in str(err) and "64x64" in str(err)


def test_image_without_partner(tmp_path):
    root = _levir(tmp_path / "in", names=("a", "b"))
    (root / "B" / "b.png").unlink()
    err = _error(root, tmp_path)
    assert err.errors[0].path.endswith("A/b.png") and "no partner" in str(err)


def test_label_with_values_but_none_above_the_threshold(tmp_path):
    # Read with the 0..255 threshold this would be "no change" everywhere: refused, named.
    root = _levir(tmp_path / "in")
    write_png(root / "label" / "a.png", np.full((64, 64), 7, np.uint8))
    with pytest.raises(ImageryErrors, match=r"label/a.png: label has non-zero values \(up to 7\) "
                       "but none above the label threshold 127"):
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64))


def test_not_a_region_folder(tmp_path):
    (tmp_path / "in" / "images").mkdir(parents=True)
    with pytest.raises(ImageryError, match="not a region folder"):
        ingest(str(tmp_path / "in"), str(tmp_path / "out"))


def test_skip_bad_gives_one_warning_line_per_bad_pair(tmp_path, caplog):
    root = _levir(tmp_path / "in", names=("good", "rgba"))
    write_png(root / "A" / "rgba.png", rng_image(5, (4, 64, 64)))
    with caplog.at_level(logging.WARNING):
        manifest = ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64, skip_bad=True))
    assert [t["pair"] for t in manifest["tiles"]] == ["good"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "A/rgba.png" in warnings[0] and "RGBA" in warnings[0]
    assert len(manifest["skipped"]) == 1


@pytest.mark.skipif(not (SHARED_DATA / "levir-cd").is_dir(),
                    reason="../shared/data/levir-cd is absent: real LEVIR-CD quirks not checked")
def test_real_levir_sample_with_its_two_quirks(tmp_path):
    levir = SHARED_DATA / "levir-cd"
    # test_113_0256: RGBA and unlabelled. Strict ingest names both problems.
    err = _error(levir, tmp_path, require_labels=True)
    assert [e.path.split("/")[-1] for e in err.errors] == ["test_113_0256.png"]
    assert "no label" in str(err)
    err = _error(levir, tmp_path)
    assert "test_113_0256.png" in str(err) and "RGBA" in str(err)
    manifest = ingest(str(levir), str(tmp_path / "out"),
                      TilingConfig(size=256, require_labels=True, skip_bad=True))
    expected = 0
    for png in sorted((levir / "label").glob("*.png")):
        with rasterio.open(png) as src:
            expected += math.ceil(src.width / 256) * math.ceil(src.height / 256)
    assert len(manifest["tiles"]) == expected
    # train_386_0512_0768 has no changed pixel; the 0/255 labels became 0/1.
    empty = [t for t in manifest["tiles"] if t["pair"] == "train_386_0512_0768"]
    assert empty and all(t["change_fraction"] == 0 for t in empty)
    assert any(t["change_fraction"] > 0 for t in manifest["tiles"])
    _, _, _, label = read_tile(str(tmp_path / "out"), manifest["tiles"][0])
    assert set(np.unique(label)) <= {0, 1}
