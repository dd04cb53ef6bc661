"""Whole-scene inference: exact blending, bounded memory, COG / GeoTIFF / GeoJSON outputs, S3."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from conftest import write_png, write_tif
from torch import nn

from damnet import predict, storage
from damnet.errors import ImageryErrors
from damnet.evaluate import change_probability
from damnet.imagery import discover_pairs, open_pair, opened
from damnet.predict import (
    blend_ramp,
    blend_weights,
    plan_windows,
    predict_region,
    predict_scene,
    probability_strips,
)

GSD = 0.5
ORIGIN = Affine(GSD, 0, 500_000, 0, -GSD, 4_000_000)


class PixelModel(nn.Module):
    """A pixel-wise stand-in for ChangeNet: logit(change) = (post - pre)[band 0] / 16 - 2."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []
        self.anchor = nn.Parameter(torch.zeros(()))  # so .to() and .eval() behave as usual

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        assert pre.dtype == post.dtype == torch.uint8 and pre.shape == post.shape
        assert pre.shape[-1] % 32 == 0 and pre.shape[-2] % 32 == 0
        self.calls.append(tuple(pre.shape))
        d = (post[:, 0].float() - pre[:, 0].float()) / 16 - 2
        return torch.stack([torch.zeros_like(d), d], dim=1)


class FailingModel(PixelModel):
    def forward(self, pre, post):
        if len(self.calls) >= 2:
            raise RuntimeError("model broke")
        return super().forward(pre, post)


def _images(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pre = rng.integers(0, 256, size=(3, h, w)).astype(np.uint8)
    post = rng.integers(0, 256, size=(3, h, w)).astype(np.uint8)
    return pre, post


def _geotiff_pair(root, pre, post, name="scene", post_transform=ORIGIN, **extra):
    write_tif(root / "pre" / f"{name}.tif", pre, transform=ORIGIN, **extra)
    write_tif(root / "post" / f"{name}.tif", post, transform=post_transform)
    pairs, errors = discover_pairs(root)
    assert not errors
    return next(p for p in pairs if p.name == name)


def _direct(model, pre: np.ndarray, post: np.ndarray) -> np.ndarray:
    """The model on the whole (zero-padded) image at once: (H, W) probabilities."""
    h, w = pre.shape[1:]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    big = np.zeros((2, 3, ph, pw), np.uint8)
    big[0, :, :h, :w], big[1, :, :h, :w] = pre, post
    t = torch.from_numpy(big)
    return change_probability(model, t[:1], t[1:]).numpy()[0, :h, :w]


def _strips(model, pair, **kw) -> tuple[np.ndarray, list[int]]:
    rows, heights = [], []
    expected = 0
    for row0, prob in probability_strips(model, pair, progress=False, **kw):
        assert row0 == expected and prob.shape[1] == int(pair.window.width)
        expected += prob.shape[0]
        rows.append(prob)
        heights.append(prob.shape[0])
    assert expected == int(pair.window.height)
    return np.concatenate(rows), heights


# --- windows and weights -----------------------------------------------------------------


def test_blend_weights_are_positive_and_neighbours_sum_to_one():
    ramp = blend_ramp(64, 16)
    assert ramp.min() > 0 and ramp.max() == 1
    np.testing.assert_allclose(ramp[48:] + ramp[:16], 1.0, atol=1e-6)  # stride 48
    assert (blend_ramp(64, 0) == 1).all()
    w = blend_weights(32, 64, 8)
    assert w.shape == (32, 64) and w.min() > 0 and w.dtype == np.float32


@pytest.mark.parametrize("shape", [(600, 700), (256, 256), (100, 130), (257, 1000)])
@pytest.mark.parametrize("overlap", [0, 64])
def test_windows_cover_the_area_and_stay_inside_it(shape, overlap):
    h, w = shape
    th, tw, offsets = plan_windows(h, w, 256, overlap)
    assert th % 32 == 0 and tw % 32 == 0 and th <= 256 and tw <= 256
    cover = np.zeros(shape, int)
    for r, c in offsets:
        cover[r:r + th, c:c + tw] += 1
        # Only an area smaller than a window makes the window reach past it.
        assert r + th <= max(h, th) and c + tw <= max(w, tw)
    assert cover.min() >= 1
    assert offsets == sorted(offsets)  # row-major


# --- exact blending ------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "tile", "overlap", "batch"), [
    (200, 300, 64, 0, 4),
    (200, 300, 64, 16, 3),
    (97, 130, 64, 32, 1),
    (64, 64, 64, 32, 2),
    (40, 150, 96, 48, 5),
])
def test_blended_prediction_equals_the_full_image_prediction(tmp_path, h, w, tile, overlap, batch):
    pre, post = _images(h, w)
    model = PixelModel()
    with opened(_geotiff_pair(tmp_path, pre, post)) as pair:
        prob, heights = _strips(model, pair, tile=tile, overlap=overlap, batch_size=batch)
    np.testing.assert_allclose(prob, _direct(model, pre, post), rtol=0, atol=2e-6)
    assert max(heights) <= tile  # only strips of at most one window height are finished
    assert all(s[0] <= batch for s in model.calls)


def test_blending_on_a_partial_footprint_and_masked_pixels(tmp_path):
    """Post covers only part of pre (the output is that part); pre nodata stays NaN."""
    h, w = 150, 200
    pre, post = _images(h, w, seed=3)
    pre[:, 20:40, 30:90] = 0  # nodata=0 on every band: no data there
    shift = ORIGIN * Affine.translation(50, 10)  # post starts 50 columns right, 10 rows down
    files = _geotiff_pair(tmp_path, pre, post[:, :h - 10, :w - 50], post_transform=shift, nodata=0)
    model = PixelModel()
    with opened(files) as pair:
        assert (int(pair.window.col_off), int(pair.window.row_off)) == (50, 10)
        prob, _ = _strips(model, pair, tile=64, overlap=16, batch_size=4)
    assert prob.shape == (h - 10, w - 50)
    expected = _direct(model, pre[:, 10:, 50:], post[:, :h - 10, :w - 50])
    expected[10:30, :40] = np.nan  # rows 20..40, cols 50..90 of pre
    np.testing.assert_allclose(prob, expected, rtol=0, atol=2e-6)

    with opened(files) as pair:
        summary = predict_scene(model, pair, str(tmp_path / "out"), "scene", tile=64, overlap=16,
                                progress=False)
        window_transform = pair.pre.window_transform(pair.window)
    assert window_transform == ORIGIN * Affine.translation(50, 10)
    for suffix in ("_change_prob.tif", "_change.tif"):
        with rasterio.open(tmp_path / "out" / f"scene{suffix}") as src:
            assert (src.width, src.height) == (w - 50, h - 10)
            assert src.transform == window_transform and src.crs == "EPSG:32631"
            assert (src.read(1)[10:30, :40] == 255).all()
    assert summary["valid_pixels"] == (w - 50) * (h - 10) - 20 * 40


def test_block_rows_write_each_compressed_block_once(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.random((700, 300)) > 0.5).astype(np.uint8)
    profile = {**predict._PROFILE, "width": 300, "height": 700, "compress": "deflate"}
    # No block cache: as with a scene whose block rows do not fit GDAL's cache, every
    # write goes to the file at once, and a block written in parts would be stored twice.
    with rasterio.Env(GDAL_CACHEMAX=0), rasterio.open(tmp_path / "a.tif", "w", **profile) as dst:
        rows = predict._BlockRows(dst)
        for start, stop in ((0, 100), (100, 292), (292, 484), (484, 676), (676, 700)):
            rows.write(data[start:stop])
        rows.close()
    rasterio.shutil.copy(tmp_path / "a.tif", tmp_path / "b.tif", driver="GTiff", tiled=True,
                         blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(tmp_path / "a.tif") as src:
        assert (src.read(1) == data).all()
    # A block stored more than once would leave the file bigger than a clean copy of it.
    assert (tmp_path / "a.tif").stat().st_size == (tmp_path / "b.tif").stat().st_size


def test_a_real_changenet_runs_through_the_strips(tmp_path):
    torch.manual_seed(0)
    from damnet.models import ChangeNet, preset

    pre, post = _images(90, 140, seed=5)
    with opened(_geotiff_pair(tmp_path, pre, post)) as pair:
        prob, _ = _strips(ChangeNet(preset("tiny")), pair, tile=64, overlap=32, batch_size=4)
    assert prob.shape == (90, 140) and np.isfinite(prob).all()
    assert prob.min() >= 0 and prob.max() <= 1


# --- outputs -------------------------------------------------------------------------------


def _changed_scene(h=600, w=700):
    """Pre and post that differ on a 30x30 square (crossing strip and window borders),
    a 12x12 square ring around a 4x4 hole, and a 3x3 speck."""
    rng = np.random.default_rng(7)
    pre = rng.integers(1, 40, size=(3, h, w)).astype(np.uint8)
    post = pre.copy()
    post[:, 180:210, 250:280] += 200
    post[:, 400:412, 500:512] += 200
    post[:, 404:408, 504:508] = pre[:, 404:408, 504:508]
    post[:, 50:53, 60:63] += 200
    return pre, post


def _read_geojson(path):
    return json.loads(path.read_text())


def _bbox(ring):
    xs, ys = zip(*ring, strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def test_predict_scene_writes_a_cog_a_binary_map_and_polygons(tmp_path):
    pre, post = _changed_scene()
    files = _geotiff_pair(tmp_path / "in", pre, post)
    out = tmp_path / "out"
    with opened(files) as pair:
        summary = predict_scene(PixelModel(), pair, str(out), "scene", progress=False)

    assert sorted(p.name for p in out.iterdir()) == [
        "scene_buildings.geojson", "scene_change.tif", "scene_change_prob.tif"]
    changed = 900 + 128 + 9
    assert summary["changed_pixels"] == changed and summary["valid_pixels"] == 600 * 700
    assert summary["changed_share"] == pytest.approx(changed / (600 * 700))
    assert summary["polygons"] == 2 and summary["windows"] == 12  # 3 rows x 4 columns
    assert summary["prob_uri"] == str(out / "scene_change_prob.tif")

    with rasterio.open(out / "scene_change_prob.tif") as src:
        assert src.driver == "GTiff" and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
        assert src.overviews(1) == [2, 4]  # down to one block
        assert src.crs == "EPSG:32631" and src.transform == ORIGIN
        assert (src.width, src.height, src.dtypes[0], src.nodata) == (700, 600, "uint8", 255)
        assert src.scales == (pytest.approx(1 / 254),) and src.offsets == (0.0,)
        assert src.tags()["DN_TO_PROBABILITY"] == "DN / 254"
        dn = src.read(1)
    p = dn / 254
    assert dn.max() <= 254
    assert (p[180:210, 250:280] > 0.99).all() and p[0:40, 0:40].max() < 0.2

    with rasterio.open(out / "scene_change.tif") as src:
        assert src.profile["tiled"] and src.compression.name == "deflate"
        assert src.crs == "EPSG:32631" and src.transform == ORIGIN and src.nodata == 255
        binary = src.read(1)
    assert set(np.unique(binary)) == {0, 1}
    assert (binary == (p >= 0.5)).all() and binary.sum() == changed

    doc = _read_geojson(out / "scene_buildings.geojson")
    assert doc["type"] == "FeatureCollection"
    assert doc["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}}
    feats = sorted(doc["features"], key=lambda f: f["properties"]["area_px"])
    assert [f["properties"]["area_px"] for f in feats] == [128, 900]  # the speck is dropped
    assert [f["properties"]["area"] for f in feats] == [128 * GSD**2, 900 * GSD**2]
    assert sorted(f["properties"]["id"] for f in feats) == [1, 2]
    ring, square = feats[0]["geometry"]["coordinates"], feats[1]["geometry"]["coordinates"]
    assert len(square) == 1 and len(ring) == 2  # the ring keeps its hole
    x0, y0 = 500_000 + 250 * GSD, 4_000_000 - 210 * GSD
    assert _bbox(square[0]) == (x0, y0, x0 + 15, y0 + 15)
    assert predict._signed_area(square[0]) > 0 and predict._signed_area(ring[1]) < 0  # RFC 7946


def test_nodata_is_kept_out_of_every_output(tmp_path):
    pre, post = _changed_scene(300, 300)
    pre[:, 0:100, 0:100] = 0
    files = _geotiff_pair(tmp_path / "in", pre, post, nodata=0)
    with opened(files) as pair:
        summary = predict_scene(PixelModel(), pair, str(tmp_path / "out"), "s", tile=128,
                                overlap=32, progress=False)
    assert summary["valid_pixels"] == 300 * 300 - 100 * 100
    with rasterio.open(tmp_path / "out" / "s_change_prob.tif") as src:
        dn = src.read(1)
    with rasterio.open(tmp_path / "out" / "s_change.tif") as src:
        binary = src.read(1)
    assert (dn[:100, :100] == 255).all() and (binary[:100, :100] == 255).all()
    assert dn[100:].max() <= 254 and set(np.unique(binary[100:])) == {0, 1}
    # The speck at rows 50..53 lies in the nodata corner; the nodata area is no polygon.
    doc = _read_geojson(tmp_path / "out" / "s_buildings.geojson")
    assert sorted(f["properties"]["area_px"] for f in doc["features"]) == [900]


def test_plain_images_get_pixel_coordinates(tmp_path):
    pre, post = _changed_scene(100, 300)
    post[:, 20:40, 200:230] = 255
    write_png(tmp_path / "A" / "x.png", pre)
    write_png(tmp_path / "B" / "x.png", post)
    write_png(tmp_path / "label" / "x.png", np.full((2, 2), 7, np.uint8))  # ignored: not even read
    model = PixelModel()
    [summary] = predict_region(model, str(tmp_path), str(tmp_path / "out"), tile=256,
                               overlap=64, progress=False)
    assert summary["crs"] is None and summary["polygons"] == 1
    assert {s[-2:] for s in model.calls} == {(128, 256)}  # tiles shrink to the small image
    with rasterio.open(tmp_path / "out" / "x_change_prob.tif") as src:
        assert src.crs is None and src.transform == Affine.identity()
    doc = _read_geojson(tmp_path / "out" / "x_buildings.geojson")
    assert "crs" not in doc and doc["damnet"]["coordinates"] == "pixel"
    [feat] = doc["features"]
    assert feat["properties"] == {"id": 1, "area": 600.0, "area_px": 600, "coordinates": "pixel"}
    assert _bbox(feat["geometry"]["coordinates"][0]) == (200, 20, 230, 40)


def test_nothing_is_written_when_prediction_fails(tmp_path):
    pre, post = _images(300, 300)
    out = tmp_path / "out"
    out.mkdir()
    (out / "s_change.tif").write_bytes(b"old")
    with opened(_geotiff_pair(tmp_path / "in", pre, post)) as pair, \
            pytest.raises(RuntimeError, match="model broke"):
        predict_scene(FailingModel(), pair, str(out), "s", tile=64, overlap=0, batch_size=1,
                      progress=False)
    assert [p.name for p in out.iterdir()] == ["s_change.tif"]
    assert (out / "s_change.tif").read_bytes() == b"old"


def test_bad_settings_are_refused(tmp_path):
    pre, post = _images(64, 64)
    with opened(_geotiff_pair(tmp_path, pre, post)) as pair:
        for kw in ({"tile": 100}, {"tile": 64, "overlap": 64}, {"batch_size": 0}, {"threshold": 0}):
            with pytest.raises(ValueError):
                predict_scene(PixelModel(), pair, str(tmp_path / "o"), "s", **kw)
    assert not (tmp_path / "o").exists()


# --- regions -------------------------------------------------------------------------------


def test_bad_pairs_are_reported_by_file(tmp_path):
    pre, post = _images(64, 64)
    _geotiff_pair(tmp_path, pre, post, name="good")
    write_tif(tmp_path / "pre" / "lonely.tif", pre)
    write_tif(tmp_path / "pre" / "grey.tif", pre[:1])
    write_tif(tmp_path / "post" / "grey.tif", post[:1])
    with pytest.raises(ImageryErrors) as info:
        predict_region(PixelModel(), str(tmp_path), str(tmp_path / "out"), progress=False)
    text = str(info.value)
    assert "lonely.tif: has no partner in post/" in text and "grey.tif" in text
    assert not (tmp_path / "out").exists()
    summaries = predict_region(PixelModel(), str(tmp_path), str(tmp_path / "out"), skip_bad=True,
                               tile=64, overlap=16, progress=False)
    assert [s["name"] for s in summaries] == ["good"]


def test_region_from_and_to_s3(s3_bucket):
    from damnet.models import ChangeNet, preset
    from damnet.synthetic import write_region

    write_region(f"s3://{s3_bucket}/raw", "source", n_scenes=1, size=128, seed=0)
    torch.manual_seed(0)
    out = f"s3://{s3_bucket}/pred"
    [summary] = predict_region(ChangeNet(preset("tiny")), f"s3://{s3_bucket}/raw", out, tile=64,
                               overlap=16, progress=False, min_area_px=1)
    names = ["scene_000_buildings.geojson", "scene_000_change.tif", "scene_000_change_prob.tif"]
    store = storage.storage_for(out)
    assert store.list(out) == [f"{out}/{n}" for n in names]
    assert summary["buildings_uri"] == f"{out}/scene_000_buildings.geojson"
    with storage.local_copy(summary["prob_uri"]) as path, rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (src.width, src.height) == (128, 128) and src.crs is not None
    doc = json.loads(store.get_text(summary["buildings_uri"]))
    assert len(doc["features"]) == summary["polygons"]


# --- bounded memory ------------------------------------------------------------------------


def _peak_numpy_memory(root, height: int, width: int, prefetch: int = 1) -> tuple[int, dict]:
    pre = np.zeros((3, height, width), np.uint8)
    post = pre.copy()
    post[:, 300:340, 500:600] = 255
    files = _geotiff_pair(root / "in", pre, post)
    del pre, post
    pair = open_pair(files)
    try:
        tracemalloc.start()
        summary = predict_scene(PixelModel(), pair, str(root / "out"), "big", tile=256,
                                overlap=64, batch_size=4, progress=False, prefetch=prefetch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pair.close()
    return peak, summary


@pytest.mark.parametrize("prefetch, slack_mib", [(0, 2), (1, 4)])
def test_a_large_scene_is_predicted_with_bounded_memory(tmp_path, prefetch, slack_mib):
    """A 3 x 8192 x 1024 scene needs no more numpy memory than a 3 x 512 x 1024 one.

    The model is torch only (not traced), so the peak counts the window reads, the strip
    accumulators and the strips written out: all bounded by tile x scene width. A single
    full-scene float32 array of the tall scene would be 32 MiB. With the reader and writer
    threads (prefetch 1) each may hold a batch (windows and their probabilities) more at the
    peak, depending on timing.
    """
    short, _ = _peak_numpy_memory(tmp_path / "short", 512, 1024, prefetch)
    tall, summary = _peak_numpy_memory(tmp_path / "tall", 8192, 1024, prefetch)
    assert summary["changed_pixels"] == 4000 and summary["polygons"] == 1
    assert summary["windows"] == 43 * 5
    full_scene_float = 8192 * 1024 * 4
    mib = f"peak traced numpy memory: {short / 2**20:.1f} MiB (512 rows), {tall / 2**20:.1f} MiB (8192 rows)"
    assert tall < short + slack_mib * 2**20, mib  # does not grow with the height (16x the rows)
    assert tall < full_scene_float / (3 if prefetch == 0 else 2), mib
