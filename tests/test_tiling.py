"""Tiling: exact coverage, overlap, bounded memory, idempotence, failure safety, S3."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import rng_image, write_png, write_tif
from rasterio.windows import Window

from damnet import storage
from damnet.errors import ImageryErrors
from damnet.synthetic import write_region
from damnet.tiling import TilingConfig, ingest, load_manifest, read_tile, tile_windows


def _coverage(windows, area_shape):
    h, w = area_shape
    count = np.zeros((h, w), int)
    for win in windows:
        r, c = int(win.row_off), int(win.col_off)
        count[r:r + int(win.height), c:c + int(win.width)] += 1
    return count


@pytest.mark.parametrize("shape", [(200, 300), (256, 256), (31, 500), (513, 64), (640, 952)])
def test_windows_cover_the_area_and_edge_windows_end_at_its_edge(shape):
    h, w = shape
    windows = tile_windows(Window(0, 0, w, h), 64, 0)
    count = _coverage(windows, (max(h, 64), max(w, 64)))
    assert (count[:h, :w] >= 1).all()
    # No window reaches past a side at least one tile long: the last one is moved back.
    for length, key in ((h, "row_off"), (w, "col_off")):
        ends = {int(getattr(win, key)) + 64 for win in windows}
        assert max(ends) == max(length, 64)
        starts = sorted({int(getattr(win, key)) for win in windows})
        assert set(np.diff(starts[:-1])) <= {64}  # the grid steps by the tile, but for the last one
    if h % 64 == 0 and w % 64 == 0:
        assert (count == 1).all()  # a size that fits the grid: no pixel twice
    assert len(windows) == math.ceil(h / 64) * math.ceil(w / 64)


def test_sztaki_sized_scenes_tile_without_padding():
    # 952 x 640 at 256: columns 0, 256, 512, 696 and rows 0, 256, 384, all inside the scene.
    windows = tile_windows(Window(0, 0, 952, 640), 256, 0)
    assert sorted({int(w.col_off) for w in windows}) == [0, 256, 512, 696]
    assert sorted({int(w.row_off) for w in windows}) == [0, 256, 384]


def test_windows_overlap_as_configured():
    windows = tile_windows(Window(10, 20, 300, 200), 64, 16)
    cols = sorted({int(w.col_off) for w in windows})
    rows = sorted({int(w.row_off) for w in windows})
    assert cols[0] == 10 and rows[0] == 20
    assert set(np.diff(cols[:-1])) == {48} and set(np.diff(rows[:-1])) == {48}
    assert cols[-1] + 64 == 10 + 300 and rows[-1] + 64 == 20 + 200  # the last ones end at the edge
    assert np.diff(cols)[-1] <= 48 and np.diff(rows)[-1] <= 48  # and overlap at least 16 px
    count = _coverage([Window(w.col_off - 10, w.row_off - 20, 64, 64) for w in windows], (200, 300))
    assert count.min() >= 1
    assert count[:, :48].max() == 2  # two columns share 16 px, rows too: up to 4 in corners
    assert count.max() == 4


def test_bad_tiling_settings_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        TilingConfig(size=64, overlap=64)
    with pytest.raises(ValueError, match="at least 32"):
        TilingConfig(size=16)


@pytest.mark.parametrize("overlap", [0, 24])
def test_ingest_covers_every_scene_pixel(tmp_path, overlap):
    img = rng_image(0, (3, 150, 230))
    for d in ("pre", "post"):
        write_tif(tmp_path / "in" / d / "s.tif", img)
    manifest = ingest(str(tmp_path / "in"), str(tmp_path / "out"),
                      TilingConfig(size=64, overlap=overlap))
    count = np.zeros((150, 230), int)
    for tile in manifest["tiles"]:
        pre, _, valid, _ = read_tile(str(tmp_path / "out"), tile)
        r, c = tile["window"]["row_off"], tile["window"]["col_off"]
        assert r + 64 <= 150 and c + 64 <= 230, "an edge tile reaches past the scene"
        assert valid.all() and tile["nodata_fraction"] == 0 and tile["padding_fraction"] == 0
        assert np.array_equal(pre, img[:, r:r + 64, c:c + 64])  # real pixels, where the tile says
        count[r:r + 64, c:c + 64] += 1
    assert count.min() >= 1
    assert len(manifest["tiles"]) == (3 * 4 if overlap == 0 else 4 * 6)  # rows 0 40 80 86, cols 0..160 166


def test_a_scene_smaller_than_a_tile_is_padded_and_the_padding_is_not_nodata(tmp_path):
    img = rng_image(0, (3, 40, 100))
    img[:, :10, :20] = 0  # a corner without data in both dates
    for d in ("pre", "post"):
        write_tif(tmp_path / "in" / d / "s.tif", img, nodata=0)
    manifest = ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=64))
    assert [(t["window"]["row_off"], t["window"]["col_off"]) for t in manifest["tiles"]] == [(0, 0), (0, 36)]
    for tile in manifest["tiles"]:
        _, _, valid, _ = read_tile(str(tmp_path / "out"), tile)
        assert not valid[40:].any()  # rows past the scene: padding, masked
        assert tile["padding_fraction"] == pytest.approx(24 / 64)
    first, second = manifest["tiles"]
    assert first["nodata_fraction"] == pytest.approx(10 * 20 / (40 * 64), abs=1e-6)
    assert second["nodata_fraction"] == 0


def test_large_scene_tiles_with_bounded_memory(tmp_path):
    """A 3 x 2560 x 2560 uint16 scene (37.5 MiB) is tiled without holding it in memory."""
    side, block = 2560, 512
    path_pre, path_post = tmp_path / "in" / "pre" / "big.tif", tmp_path / "in" / "post" / "big.tif"
    profile = {"driver": "GTiff", "height": side, "width": side, "count": 3, "dtype": "uint16",
               "crs": "EPSG:32631", "transform": Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000),
               "tiled": True, "blockxsize": 256, "blockysize": 256}
    rng = np.random.default_rng(0)
    for path in (path_pre, path_post):
        path.parent.mkdir(parents=True)
        with rasterio.open(path, "w", **profile) as dst:
            for r in range(0, side, block):
                for c in range(0, side, block):
                    data = rng.integers(100, 2000, (3, block, block), dtype=np.uint16)
                    dst.write(data, window=Window(c, r, block, block))
    scene_bytes = 3 * side * side * 2
    tracemalloc.start()
    try:
        manifest = ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=256))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(manifest["tiles"]) == 100
    said = f"peak {peak / 2**20:.1f} MiB for a {scene_bytes / 2**20:.1f} MiB scene"
    print(said)
    assert peak < scene_bytes / 4, said


def test_reingest_does_nothing_new(tmp_path):
    write_region(str(tmp_path / "in"), "source", n_scenes=1, size=128, seed=1)
    first = ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=64))
    files = sorted((tmp_path / "out" / "tiles").rglob("*.tif"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    manifest_stamp = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    second = ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=64))
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == manifest_stamp
    # Other settings are another version, next to the first.
    third = ingest(str(tmp_path / "in"), str(tmp_path / "out"), TilingConfig(size=128))
    assert third["version"] != first["version"] and len(third["tiles"]) == 1


def test_failed_ingest_keeps_previous_outputs(tmp_path):
    root = tmp_path / "in"
    for name in ("a", "b"):
        write_png(root / "A" / f"{name}.png", rng_image(1, (3, 128, 128)))
        write_png(root / "B" / f"{name}.png", rng_image(2, (3, 128, 128)))
        write_png(root / "label" / f"{name}.png", np.zeros((128, 128), np.uint8))
    good = ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64))
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    # A new delivery whose last image is cut short: its header reads, so this is found
    # mid-run, when the missing rows are read.
    path = write_png(root / "B" / "b.png", rng_image(3, (3, 128, 128)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageryErrors, match=r"B/b.png: cannot be read at window .*damaged or truncated"):
        ingest(str(root), str(tmp_path / "out"), TilingConfig(size=64))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == good
    for path, content in before.items():
        assert path.read_bytes() == content
    for tile in good["tiles"]:
        read_tile(str(tmp_path / "out"), tile)


def test_ingest_from_s3_to_s3(s3_bucket):
    region = f"s3://{s3_bucket}/incoming/newtown"
    write_region(region, "target_sensor", n_scenes=1, size=128, seed=2,
                 labels_uri=f"s3://{s3_bucket}/truth/newtown")
    out = f"s3://{s3_bucket}/regions/newtown"
    manifest = ingest(region, out, TilingConfig(size=64))
    assert len(manifest["tiles"]) == 4
    assert load_manifest(out) == manifest
    objects = storage.S3Storage().list(out)
    assert len(objects) == 1 + 4 * 2  # manifest + pre and post per tile, no labels
    pre, post, valid, label = read_tile(out, manifest["tiles"][0])
    assert pre.shape == (3, 64, 64) and pre.dtype == np.uint8 and label is None and valid.all()
    assert manifest["pairs"][0]["dtype"]["pre"] == "uint16"  # stretched from 11-bit data
    assert manifest["tiles"][0]["crs"] == "EPSG:32633"
