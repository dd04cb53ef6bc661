"""Real inputs read as they come: band selection in multi-band GeoTIFFs (OSCD Sentinel-2),
labels in any image mode or anti-aliased, read with the documented label threshold."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, rng_image, write_png, write_tif
from PIL import Image, ImageDraw, ImageFilter
from rasterio.windows import Window

from damnet.data import TileSet
from damnet.errors import ImageryError, ImageryErrors
from damnet.imagery import label_reading, parse_bands, read_label_window
from damnet.tiling import TilingConfig, ingest, read_tile

OSCD_S2 = SHARED_DATA / "oscd-s2"
OSCD_RGB = SHARED_DATA / "oscd-rgb"
needs_oscd_s2 = pytest.mark.skipif(
    not OSCD_S2.is_dir(), reason="../shared/data/oscd-s2 is absent: OSCD GeoTIFF ingest not checked")
needs_oscd_rgb = pytest.mark.skipif(
    not OSCD_RGB.is_dir(), reason="../shared/data/oscd-rgb is absent: real mixed-mode labels not checked")


def _oscd_region(root, cities, label_from=None):
    """A region folder of symlinks to some OSCD cities (the data stays in ../shared)."""
    for sub in ("pre", "post", "label"):
        (root / sub).mkdir(parents=True)
        for city in cities:
            src = (label_from / f"{city}.png") if sub == "label" and label_from else OSCD_S2 / sub / f"{city}.tif"
            (root / sub / src.name).symlink_to(src)
    return root


def _scene(path, bands=None, window=None):
    with rasterio.open(path) as src:
        return src.read(bands, window=window)


# --------------------------------------------------------------------------- band selection


@needs_oscd_s2
@pytest.mark.parametrize("bands", ["3,2,1", "B04,B03,B02"])
def test_oscd_geotiffs_ingest_with_band_selection(tmp_path, bands, caplog):
    # bercy: pre and post on one grid; hongkong: the post grid is 538x693 against 540x695.
    root = _oscd_region(tmp_path / "in", ["bercy", "hongkong"])
    with caplog.at_level(logging.WARNING):
        manifest = ingest(str(root), str(tmp_path / "out"),
                          TilingConfig(size=256, bands=parse_bands(bands), require_labels=True))
    pairs = {p["name"]: p for p in manifest["pairs"]}
    assert [n for n in pairs["hongkong"]["notes"] if "post image resampled" in n]
    assert not pairs["bercy"]["notes"]
    counts = {name: sum(t["pair"] == name for t in manifest["tiles"]) for name in pairs}
    assert counts == {"bercy": 4, "hongkong": 9}  # 360x395 and 540x695 px at 256
    for tile in manifest["tiles"]:
        pre, post, valid, label = read_tile(str(tmp_path / "out"), tile)
        w = tile["window"]
        win = Window(w["col_off"], w["row_off"], w["width"], w["height"])
        city = tile["pair"]
        # Band 3 (B04, red) is the tile's first band, through the pair's recorded stretch.
        red = _scene(OSCD_S2 / "pre" / f"{city}.tif", 3, win).astype(np.float32)
        st = pairs[city]["stretch"]["pre"]
        expected = np.clip(np.round((red - st["low"][0]) / (st["high"][0] - st["low"][0]) * 255), 0, 255)
        h, ww = red.shape
        assert np.abs(pre[0, :h, :ww].astype(int) - expected).max() <= 1
        # Labels are the 0/1 GeoTIFF's pixels; the resampled post covers the whole tile.
        truth = _scene(OSCD_S2 / "label" / f"{city}.tif", 1, win)
        np.testing.assert_array_equal(label[:h, :ww], truth)
        assert valid[:h, :ww].mean() > 0.99
        # Co-registered dates: the post tile looks like the pre tile (real change is small).
        corr = np.corrcoef(pre[0, :h, :ww].ravel(), post[0, :h, :ww].ravel())[0, 1]
        assert corr > 0.5, (tile["tile_id"], corr)
    # The tiles feed the loop: a TileSet batch of 3-band 8-bit tiles with 0/1 labels.
    tiles = TileSet(str(tmp_path / "out"))
    batch = tiles.batch(list(range(len(tiles))))
    assert tuple(batch.pre.shape) == (13, 3, 256, 256) and str(batch.pre.dtype) == "torch.uint8"
    assert set(batch.label.unique().tolist()) == {0, 1}


@needs_oscd_s2
def test_l1c_reflectances_get_a_per_scene_percentile_stretch(tmp_path):
    # Raw L1C numbers (0..10000+, bright clouds beyond) must not squash the scene into a few
    # grey levels: each band's 2-98 % of the scene spread over 0..255.
    root = _oscd_region(tmp_path / "in", ["bercy"])
    manifest = ingest(str(root), str(tmp_path / "out"), TilingConfig(size=256, bands=(3, 2, 1)))
    scene = np.zeros((3, 395, 360), np.uint8)
    for tile in manifest["tiles"]:
        pre, _, _, _ = read_tile(str(tmp_path / "out"), tile)
        r, c = tile["window"]["row_off"], tile["window"]["col_off"]
        h, w = min(256, 395 - r), min(256, 360 - c)
        scene[:, r:r + h, c:c + w] = pre[:, :h, :w]
    for band in scene:
        assert (band == 0).mean() == pytest.approx(0.02, abs=0.01)
        assert (band == 255).mean() == pytest.approx(0.02, abs=0.01)
        assert np.unique(band).size > 200


@needs_oscd_s2
def test_a_band_the_file_lacks_is_one_error_naming_the_file(tmp_path):
    root = _oscd_region(tmp_path / "in", ["bercy"])
    for bands, words in (((3, 2, 5), "band 5 does not exist"),
                         (("B04", "B03", "B05"), "no band described 'B05'")):
        with pytest.raises(ImageryErrors) as info:
            ingest(str(root), str(tmp_path / "out"), TilingConfig(size=256, bands=bands))
        [err] = [e for e in info.value.errors if e.path.endswith("pre/bercy.tif")]
        assert words in err.problem and "4 band(s)" in err.problem and "B08 nir" in err.problem
        assert "\n" not in str(err)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bands_by_description_and_their_errors(tmp_path):
    img = rng_image(0, (4, 64, 64), np.uint16)
    for d in ("pre", "post"):
        path = write_tif(tmp_path / "in" / d / "s.tif", img)
        with rasterio.open(path, "r+") as dst:
            for i, name in enumerate(("blue", "green", "red", "red edge"), 1):
                dst.set_band_description(i, name)
    # "red" is a word of two descriptions: ambiguous, named; "red edge" is exact.
    with pytest.raises(ImageryErrors, match=r"pre/s.tif: has 2 bands \(3, 4\) described 'red'"):
        ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=64, bands=("red", "green", "blue")))
    by_name = ingest(str(tmp_path / "in"), str(tmp_path / "a"),
                     TilingConfig(size=64, bands=("RED EDGE", "Green", "blue")))
    by_number = ingest(str(tmp_path / "in"), str(tmp_path / "b"), TilingConfig(size=64, bands=(4, 2, 1)))
    np.testing.assert_array_equal(read_tile(str(tmp_path / "a"), by_name["tiles"][0])[0],
                                  read_tile(str(tmp_path / "b"), by_number["tiles"][0])[0])
    for text in ("3,2", "0,1,2", "3,,1"):
        with pytest.raises(ValueError, match="three 1-based band numbers or band descriptions"):
            parse_bands(text)
    assert parse_bands(" B04, B03 ,B02") == ("B04", "B03", "B02")
    assert parse_bands("3,2,1") == (3, 2, 1)
    # Equal settings are one tiling version however they are spelled.
    assert TilingConfig(bands=["3", "2", "1"], label_threshold=127.0) == TilingConfig(bands=(3, 2, 1))


def test_ingest_command_takes_bands_by_name_and_the_label_threshold():
    from components.cli import build_parser
    from components.ingest import config_from

    args = build_parser().parse_args(["ingest", "--region", "r", "--store", "s",
                                      "--bands", "B04,B03,B02", "--label-threshold", "200"])
    assert config_from(args) == TilingConfig(bands=("B04", "B03", "B02"), label_threshold=200)
    default = config_from(build_parser().parse_args(["ingest", "--region", "r", "--store", "s"]))
    assert default.label_threshold == 127 and default.bands is None


# --------------------------------------------------------------------------------- labels


def _mask(size=64):
    """A disc and a bar; anti-aliased versions blur their edges."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    draw.ellipse((8, 8, 36, 36), fill=255)
    draw.rectangle((44, 10, 52, 58), fill=255)
    return np.asarray(im)


def _label_image(mode: str, mask: np.ndarray) -> Image.Image:
    on = mask > 127
    h, w = mask.shape
    if mode == "L 0/255":
        return Image.fromarray(mask)
    if mode == "L 0/1":
        return Image.fromarray(on.astype(np.uint8))
    if mode == "1":
        return Image.fromarray(mask).convert("1")
    if mode == "LA":
        return Image.fromarray(np.dstack([mask, np.full((h, w), 255, np.uint8)]), "LA")
    if mode == "RGB red":  # change painted red on black
        return Image.fromarray(np.dstack([mask, np.zeros((h, w, 2), np.uint8)]))
    if mode == "RGBA on transparent white":  # unpainted pixels: white but fully transparent
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[..., 3] = mask
        return Image.fromarray(rgba, "RGBA")
    if mode == "P white=change at index 0":  # index order says nothing: the colours do
        im = Image.fromarray(np.where(on, 0, 1).astype(np.uint8), "P")
        im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
        return im
    raise AssertionError(mode)


def _levir_with_label(root, label: Image.Image, size=64):
    write_png(root / "A" / "a.png", rng_image(1, (3, size, size)))
    write_png(root / "B" / "a.png", rng_image(2, (3, size, size)))
    (root / "label").mkdir(parents=True, exist_ok=True)
    label.save(root / "label" / "a.png")
    return root


def _ingested_label(root, out, **config):
    manifest = ingest(str(root), str(out), TilingConfig(size=64, **config))
    [tile] = manifest["tiles"]
    return read_tile(str(out), tile)[3], manifest


@pytest.mark.parametrize("mode", ["L 0/255", "L 0/1", "1", "LA", "RGB red",
                                  "RGBA on transparent white", "P white=change at index 0"])
def test_labels_in_every_mode_read_the_same(tmp_path, mode):
    mask = _mask()
    root = _levir_with_label(tmp_path / "in", _label_image(mode, mask))
    label, _ = _ingested_label(root, tmp_path / "out")
    np.testing.assert_array_equal(label, (mask > 127).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_anti_aliased_labels_follow_the_threshold(tmp_path, mode):
    blurred = np.asarray(Image.fromarray(_mask()).filter(ImageFilter.GaussianBlur(2)))
    assert np.unique(blurred).size > 50
    image = Image.fromarray(blurred).convert(mode)
    root = _levir_with_label(tmp_path / "in", image)
    label, manifest = _ingested_label(root, tmp_path / "out")
    np.testing.assert_array_equal(label, (blurred > 127).astype(np.uint8))
    assert any("value levels" in n and "> 127" in n for n in manifest["pairs"][0]["notes"])
    strict, strict_manifest = _ingested_label(root, tmp_path / "out", label_threshold=200)
    np.testing.assert_array_equal(strict, (blurred > 200).astype(np.uint8))
    assert 0 < strict.sum() < label.sum()
    assert strict_manifest["version"] != manifest["version"]


def test_class_numbers_need_an_explicit_threshold(tmp_path):
    classes = np.zeros((64, 64), np.uint8)
    classes[5:20, 5:20] = 1  # new building
    classes[30:40, 30:60] = 2  # demolished
    root = _levir_with_label(tmp_path / "in", Image.fromarray(classes))
    with pytest.raises(ImageryErrors, match=r"label/a.png: label has non-zero values \(up to 2\) "
                       r"but none above the label threshold 127.*set the label threshold to 0"):
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64))
    label, _ = _ingested_label(root, tmp_path / "out", label_threshold=0)
    np.testing.assert_array_equal(label, (classes > 0).astype(np.uint8))


@pytest.mark.parametrize("data,words", [
    (np.stack([_mask()] * 2), "label has 2 bands (gray, undefined)"),
    (_mask().astype(np.uint16) * 4, "label values reach 1020"),
    (np.where(_mask() > 0, -1.0, 0.0).astype(np.float32), "label has negative values"),
])
def test_labels_that_cannot_be_read_are_one_error_naming_the_file(tmp_path, data, words):
    root = _levir_with_label(tmp_path / "in", Image.new("L", (64, 64)))
    (root / "label" / "a.png").unlink()
    write_tif(root / "label" / "a.tif", data, crs=None)
    with pytest.raises(ImageryErrors) as info:
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64))
    [err] = info.value.errors
    assert err.path.endswith("label/a.tif") and words in err.problem, err.problem


def test_label_threshold_is_checked():
    for bad in (-1, 255, 12.5):
        with pytest.raises(ValueError, match="label threshold must be a whole number in 0..254"):
            TilingConfig(label_threshold=bad)


def test_label_folder_mismatches_are_named(tmp_path, caplog):
    root = _levir_with_label(tmp_path / "in", Image.fromarray(_mask()))
    (root / "label" / "a.png").rename(root / "label" / "a_cm.png")
    with pytest.raises(ImageryErrors, match=r"label/a_cm.png: label has no image named 'a_cm'"):
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64))
    (root / "label").rename(root / "labels")
    (root / "labels" / "a_cm.png").rename(root / "labels" / "a.png")
    with pytest.raises(ImageryErrors, match=r"A/a.png: has no label in label/ but labels are "
                       r"required \(found labels/: rename it to label/\)"):
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64, require_labels=True))
    with caplog.at_level(logging.WARNING):
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64))
    assert any("labels/" in r.getMessage() and "label/" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- real labels


@needs_oscd_rgb
def test_real_oscd_rgb_labels_match_the_geotiff_labels():
    # The PNG previews' labels come grey, RGB and RGBA, aguasclaras anti-aliased (166 levels);
    # read with the default threshold each equals the 0/1 GeoTIFF label of the same city.
    pngs = sorted((OSCD_RGB / "label").glob("*.png"))
    assert len(pngs) == 24
    kinds = set()
    for png in pngs:
        with rasterio.open(png) as src:
            reading = label_reading(src, png)
            read = reading.binary(src.read(list(reading.bands)))
        kinds.add(reading.kind)
        pixels = np.asarray(Image.open(png)).astype(int)
        value = pixels[..., :3].max(-1) if pixels.ndim == 3 else pixels
        np.testing.assert_array_equal(read, value > 127, err_msg=png.name)
        assert 0.002 < read.mean() < 0.12, png.name
        tif = OSCD_S2 / "label" / f"{png.stem}.tif"
        if tif.is_file():
            np.testing.assert_array_equal(read, _scene(tif, 1), err_msg=png.name)
    assert kinds == {"grey", "RGB", "RGBA"}
    with rasterio.open(OSCD_RGB / "label" / "aguasclaras.png") as src:
        fuzzy = label_reading(src, src.name)
    assert fuzzy.levels == 166 and fuzzy.changed == pytest.approx(0.0164, abs=5e-5)


@needs_oscd_s2
@needs_oscd_rgb
def test_geotiff_pair_with_a_png_label_on_the_pre_grid(tmp_path):
    # OSCD S2 scenes with the anti-aliased RGB PNG label (no CRS, same size as pre).
    root = _oscd_region(tmp_path / "in", ["aguasclaras"], label_from=OSCD_RGB / "label")
    manifest = ingest(str(root), str(tmp_path / "out"), TilingConfig(size=256, bands=(3, 2, 1)))
    notes = manifest["pairs"][0]["notes"]
    assert any("no CRS; taken to lie on the pre grid" in n for n in notes)
    assert any("166 value levels" in n for n in notes)
    truth = _scene(OSCD_S2 / "label" / "aguasclaras.tif", 1)
    for tile in manifest["tiles"]:
        label = read_tile(str(tmp_path / "out"), tile)[3]
        r, c = tile["window"]["row_off"], tile["window"]["col_off"]
        h, w = min(256, truth.shape[0] - r), min(256, truth.shape[1] - c)
        np.testing.assert_array_equal(label[:h, :w], truth[r:r + h, c:c + w])


@pytest.mark.skipif(not (SHARED_DATA / "sztaki-airchange").is_dir(),
                    reason="../shared/data/sztaki-airchange is absent: stray label value not checked")
def test_real_sztaki_label_with_a_stray_value():
    path = SHARED_DATA / "sztaki-airchange" / "label" / "Szada_6.png"
    raw = np.asarray(Image.open(path))
    r, c = np.argwhere(raw == 213)[0]
    read = read_label_window(path, Window(0, 0, raw.shape[1], raw.shape[0]))
    assert read[r, c] == 1  # 213 > 127: change, like its 255 neighbours
    np.testing.assert_array_equal(read, raw > 127)
    window = Window(int(c) - 4, int(r) - 4, 8, 8)
    assert read_label_window(path, window, threshold=213)[4, 4] == 0
    with pytest.raises(ImageryError, match=r"label/missing.png: cannot be read as an image"):
        read_label_window(path.with_name("missing.png"), window)
