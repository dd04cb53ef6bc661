"""The streamed large-scene path: prefetching reads and writing behind the model change no
output, memory stays bounded, and the probability COG stays a valid Cloud-Optimized GeoTIFF."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from damnet.background import Behind, prefetched
from damnet.imagery import discover_pairs, open_pair, opened
from damnet.predict import predict_scene, probability_strips


class PixelModel(torch.nn.Module):
    """Change where the post image is over 20 levels brighter than the pre image (pixel by pixel)."""

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        d = ((post.float() - pre.float()).mean(1, keepdim=True) - 20) / 10
        return torch.cat([-d, d], 1)


class ConvModel(torch.nn.Module):
    """A small model with a receptive field (a 5 x 5 convolution), so blending matters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(6, 2, 5, padding=2)

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([pre, post], 1).float() / 255)


def _scene(root: Path, height: int, width: int, nodata_corner: bool = True, noise: int = 200) -> Path:
    """A georeferenced pre/post pair, tiled, with a nodata corner in the post scene; pixels
    are noise in ``[1, noise]`` plus a brighter block in the post scene."""
    rng = np.random.default_rng(3)
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)
    for name, shift in (("pre", 0), ("post", 40)):
        data = rng.integers(1, noise + 1, (3, height, width), dtype=np.uint8)
        data[:, 300:420, 500:700] += np.uint8(shift)
        path = root / name / "city.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8",
                           crs="EPSG:32631", transform=transform, tiled=True, blockxsize=256,
                           blockysize=256, nodata=0 if name == "post" else None) as dst:
            if name == "post" and nodata_corner:
                data[:, :400, :500] = 0  # the top-left window has no valid pixel
            dst.write(data)
    return root


def _predict(root: Path, out: Path, prefetch: int) -> dict:
    [files], _ = discover_pairs(root)
    pair = open_pair(files)
    try:
        return predict_scene(ConvModel(), pair, str(out), "city", tile=256, overlap=64, batch_size=3,
                             progress=False, prefetch=prefetch)
    finally:
        pair.close()


def _pixels(path: str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_prefetching_and_writing_behind_change_no_output(tmp_path):
    """1500 x 1203 px (odd sizes, not multiples of the tile or the block): the threaded path
    writes the same probabilities, change map and polygons as the one-thread path."""
    root = _scene(tmp_path / "in", 1203, 1500)
    plain = _predict(root, tmp_path / "plain", prefetch=0)
    threaded = _predict(root, tmp_path / "threaded", prefetch=2)
    for key in ("valid_pixels", "changed_pixels", "polygons", "windows", "windows_run"):
        assert threaded[key] == plain[key], key
    assert plain["windows_run"] < plain["windows"]  # the all-nodata corner window is skipped
    for key in ("prob_uri", "change_uri"):
        a, b = _pixels(plain[key]), _pixels(threaded[key])
        assert a.shape == (1203, 1500)
        np.testing.assert_array_equal(a, b)
    assert 0 < plain["changed_pixels"] < plain["valid_pixels"]
    assert Path(plain["buildings_uri"]).read_text() == Path(threaded["buildings_uri"]).read_text()


def test_streamed_strips_equal_a_whole_scene_blend(tmp_path):
    """The rolling accumulator with prefetching gives the same blend as adding every window
    into whole-scene arrays (the expectation computed here, on a small scene)."""
    from damnet.evaluate import change_probability
    from damnet.predict import blend_weights, plan_windows

    root = _scene(tmp_path / "in", 333, 517, nodata_corner=False)
    [files], _ = discover_pairs(root)
    model = ConvModel().eval()
    with opened(files) as pair:
        strips = list(probability_strips(model, pair, tile=128, overlap=32, batch_size=2, device="cpu",
                                         progress=False, prefetch=2))
        tile_h, tile_w, offsets = plan_windows(333, 517, 128, 32)
        weights = blend_weights(tile_h, tile_w, 32)
        total, weight = np.zeros((333, 517), np.float64), np.zeros((333, 517), np.float64)
        for r, c in offsets:
            pre, post, valid, _ = pair.read(Window(c, r, tile_w, tile_h))
            with torch.no_grad():
                p = change_probability(model, torch.from_numpy(pre[None]), torch.from_numpy(post[None]))[0]
            h, w = min(tile_h, 333 - r), min(tile_w, 517 - c)
            total[r:r + h, c:c + w] += (p.numpy() * weights * valid)[:h, :w]
            weight[r:r + h, c:c + w] += (weights * valid)[:h, :w]
    got = np.concatenate([s for _, s in strips])
    assert [r for r, _ in strips] == sorted(r for r, _ in strips) and got.shape == (333, 517)
    np.testing.assert_allclose(got, total / weight, atol=1e-5)


def _peak_memory(root: Path, height: int, width: int, prefetch: int) -> tuple[int, dict]:
    [files], _ = discover_pairs(_scene(root, height, width, noise=3))
    pair = open_pair(files)
    tracemalloc.start()
    try:
        summary = predict_scene(PixelModel(), pair, str(root / "out"), "city", tile=256,
                                overlap=64, batch_size=4, progress=False, prefetch=prefetch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pair.close()
    return peak, summary


@pytest.mark.parametrize("prefetch, slack_mib", [(0, 3), (2, 6)])
def test_memory_stays_bounded_on_a_few_megapixel_scene(tmp_path, prefetch, slack_mib):
    """3 x 4000 x 1000 px (4 MPx) needs no more traced memory than 3 x 1000 x 1000 (the window
    reads, the queues of both threads, the rolling accumulators and the strips written are
    bounded by tile x width), and less than one full-scene float32 array (16 MB). With the reader
    and writer threads, how many batches are in flight at the peak depends on timing (one batch:
    4 windows and their probabilities), hence the slack per run."""
    short, _ = _peak_memory(tmp_path / "short", 1000, 1000, prefetch)
    tall, summary = _peak_memory(tmp_path / "tall", 4000, 1000, prefetch)
    assert summary["height"] == 4000 and summary["windows"] == 21 * 5 and summary["polygons"] == 1
    mib = f"peak traced memory {short / 2**20:.1f} MiB (1000 rows), {tall / 2**20:.1f} MiB (4000 rows)"
    assert tall < short + slack_mib * 2**20, mib
    assert tall < 4000 * 1000 * 4, mib


def _tiff_layout(raw: bytes) -> tuple[list[int], int]:
    """Offsets of every IFD of a classic little-endian TIFF and the smallest tile offset."""
    import struct

    assert raw[:4] == b"II*\x00", "a classic little-endian TIFF"
    ifds, first_data = [], len(raw)
    offset = struct.unpack_from("<I", raw, 4)[0]
    while offset:
        ifds.append(offset)
        (count,) = struct.unpack_from("<H", raw, offset)
        for i in range(count):
            tag, kind, n, value = struct.unpack_from("<HHII", raw, offset + 2 + 12 * i)
            if tag == 324:  # TileOffsets, LONG
                tiles = [value] if n == 1 else struct.unpack_from(f"<{n}I", raw, value)
                first_data = min(first_data, *(t for t in tiles if t))
        offset = struct.unpack_from("<I", raw, offset + 2 + 12 * count)[0]
    return ifds, first_data


def test_the_probability_cog_is_valid(tmp_path):
    """Tiled 256 x 256, overviews down to one block, and GDAL's COG layout marker: the IFDs
    (image and overview directories) come before the pixel data, in the header."""
    root = _scene(tmp_path / "in", 1203, 1500)
    summary = _predict(root, tmp_path / "out", prefetch=1)
    with rasterio.open(summary["prob_uri"]) as src:
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
        assert src.overviews(1) == [2, 4, 8]  # 1500 px wide: down to one 256 px block
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.compression.name.lower() == "deflate"
        assert src.nodata == 255 and src.scales == (1 / 254,)
    raw = Path(summary["prob_uri"]).read_bytes()
    assert b"LAYOUT=IFDS_BEFORE_DATA" in raw[:2000]  # GDAL's COG ghost header
    ifds, first_data = _tiff_layout(raw)
    assert len(ifds) == 4  # the image and its 3 overviews
    assert max(ifds) < first_data  # every IFD precedes the pixel data
    with rasterio.open(summary["prob_uri"], OVERVIEW_LEVEL=2) as ov:  # the smallest overview
        assert ov.width <= 256 and ov.height <= 256


def test_a_reader_error_is_raised_in_the_caller_and_the_thread_ends():
    def items():
        yield 1
        raise ValueError("damaged window")

    got = []
    with pytest.raises(ValueError, match="damaged window"):
        for x in prefetched(items(), 2):
            got.append(x)
    assert got == [1]
    assert not [t for t in threading.enumerate() if t.name == "damnet-prefetch"]


def test_a_writer_error_reaches_the_caller():
    seen = []

    def write(x: int) -> None:
        if x == 2:
            raise OSError("disk full")
        seen.append(x)

    behind: Behind[int] = Behind(write, 1)
    with pytest.raises(OSError, match="disk full"):
        for x in range(1, 50):
            behind.put(x)
        behind.close()
    behind.close(wait=False)
    assert seen == [1]  # nothing after the failure is written


_READ_STRIPS = """
import sys
import rasterio
from rasterio.windows import Window
from damnet.imagery.raster import bound_gdal_cache
if sys.argv[2] == "bound":
    bound_gdal_cache()
with rasterio.open(sys.argv[1]) as src:  # the strips a step reads, top to bottom
    for row in range(0, src.height, 256):
        src.read(window=Window(0, row, src.width, min(256, src.height - row)))
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)
"""


def test_a_step_bounds_gdals_block_cache_on_a_scene_larger_than_it(tmp_path):
    """GDAL keeps up to 5 % of the machine's RAM of decoded blocks by default (gigabytes on a
    large node); a step keeps GDAL_CACHE_MB, so reading a 648 MB scene strip by strip stays near
    that bound, and GDAL_CACHEMAX set by the user wins."""
    import os
    import subprocess
    import sys

    from damnet.imagery.raster import GDAL_CACHE_MB

    path = tmp_path / "scene.tif"
    size = 9000  # 9000 x 9000 x 4 x uint16 = 648 MB decoded, well above the bound
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=4, dtype="uint16",
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                       crs="EPSG:32631", transform=Affine(1, 0, 0, 0, -1, 0)) as dst:
        strip = np.zeros((4, 512, size), np.uint16)
        for row in range(0, size, 512):
            h = min(512, size - row)
            dst.write(strip[:, :h], window=Window(0, row, size, h))

    def peak_mib(mode: str, **env: str) -> int:
        clean = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"} | env
        out = subprocess.run([sys.executable, "-c", _READ_STRIPS, str(path), mode], env=clean,
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    floor = peak_mib("bound", GDAL_CACHEMAX="1")  # the interpreter, rasterio and one strip
    bound = peak_mib("bound")
    assert bound < floor + GDAL_CACHE_MB + 40, (floor, bound)
    assert peak_mib("bound", GDAL_CACHEMAX="2000") > bound + 200  # the user's setting is kept


def test_the_cli_sets_the_cache_bound_unless_the_user_did(monkeypatch):
    import os

    from components import cli
    from damnet.imagery.raster import GDAL_CACHE_MB

    monkeypatch.setenv("GDAL_CACHEMAX", "x")
    monkeypatch.delenv("GDAL_CACHEMAX")
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert os.environ["GDAL_CACHEMAX"] == str(GDAL_CACHE_MB)
    monkeypatch.setenv("GDAL_CACHEMAX", "64")
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert os.environ["GDAL_CACHEMAX"] == "64"
