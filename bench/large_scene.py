"""City-size scenes: ingest and predict on generated SIZE x SIZE pairs, with peak RSS and MPx/s.

    OMP_NUM_THREADS=1 .venv/bin/python bench/large_scene.py --size 20000   # the goal (quiet machine)
    OMP_NUM_THREADS=1 .venv/bin/python bench/large_scene.py --size 6000    # a quick check

Two pairs are generated block by block with rasterio windows (never whole in memory): a
3-band uint8 pair with a label (``u8``) and a 4-band uint16 pair (``u16``, bands 3,2,1),
tiled 512 px GeoTIFFs (deflate) in EPSG:32631. For each, ``damnet.tiling.ingest`` and
``damnet.predict.predict_scene`` (the functions the steps call) run, and the bench reports
wall time, scene MPx/s, peak RSS of the process (a sampler thread reading /proc plus
``getrusage``), and predict's model throughput against the bare model's (bench/speed.py's
measure: batch 4 of 256 px tiles, no I/O) in the same process: ``windows x tile^2 / s``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

# what a damnet step does before torch loads (components/cli.py): idle OpenMP threads sleep, so
# the reader and writer threads of predict get the CPU while the model waits
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from affine import Affine  # noqa: E402
from rasterio.windows import Window  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from damnet.imagery import discover_pairs, opened  # noqa: E402
from damnet.imagery.raster import bound_gdal_cache  # noqa: E402
from damnet.models import PRESETS, ChangeNet  # noqa: E402
from damnet.predict import predict_scene  # noqa: E402
from damnet.tiling import TilingConfig, ingest  # noqa: E402


class PeakRSS:
    """Samples the process's resident memory every ``interval`` s (VmRSS) in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def write_scene(path: Path, size: int, bands: int, dtype: str, seed: int, shift: int,
                block: int = 512) -> None:
    """A ``size`` x ``size`` scene written one ``block``-row strip at a time: smooth texture,
    plus a grid of bright "buildings" where ``shift`` > 0 (the post scene)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 255 if dtype == "uint8" else 4000
    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": dtype,
               "crs": "EPSG:32631", "transform": Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000),
               "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate",
               "bigtiff": "IF_SAFER"}
    rng = np.random.default_rng(seed)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            h = min(block, size - row)
            y = np.arange(row, row + h)[:, None]
            x = np.arange(size)[None, :]
            base = (np.sin(x / 97.0) + np.cos(y / 61.0) + 2) / 4 * 0.6 * top
            strip = np.repeat(base[None], bands, 0) + rng.normal(0, 0.02 * top, (bands, h, size))
            if shift:
                strip[:, ((y % 400) < 40) & ((x % 500) < 60)] += shift * top / 255
            dst.write(np.clip(strip, 0, top).astype(dtype), window=Window(0, row, size, h))


def write_label(path: Path, size: int, block: int = 512) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32631", "transform": Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000),
               "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            h = min(block, size - row)
            y, x = np.arange(row, row + h)[:, None], np.arange(size)[None, :]
            dst.write((((y % 400) < 40) & ((x % 500) < 60)).astype(np.uint8)[None],
                      window=Window(0, row, size, h))


def bare_model_mpx_s(model: torch.nn.Module, batch: int = 4, tile: int = 256, repeats: int = 5) -> float:
    """bench/speed.py's inference figure: model(x, x) on a (batch, 3, tile, tile) uint8 batch."""
    x = torch.randint(0, 256, (batch, 3, tile, tile), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        model(x, x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x, x)
            times.append(time.perf_counter() - t)
    return batch * tile * tile / sorted(times)[len(times) // 2] / 1e6


def run(name: str, region: Path, work: Path, size: int, bands, model, args) -> dict:
    mpx = size * size / 1e6
    out: dict = {"pair": name}
    with PeakRSS() as rss:
        t = time.perf_counter()
        manifest = ingest(str(region), str(work / f"tiles-{name}"), TilingConfig(size=256, bands=bands),
                          progress=False)
        out["ingest_s"] = time.perf_counter() - t
    out.update(ingest_mpx_s=mpx / out["ingest_s"], ingest_rss_gib=rss.peak / 2**30, tiles=len(manifest["tiles"]))
    [files], _ = discover_pairs(region)
    with PeakRSS() as rss, opened(files, bands=bands) as pair:
        t = time.perf_counter()
        summary = predict_scene(model, pair, str(work / f"pred-{name}"), name, tile=args.tile,
                                overlap=args.overlap, batch_size=args.batch, device="cpu",
                                progress=False, prefetch=args.prefetch)
        out["predict_s"] = time.perf_counter() - t
    window_mpx = summary["windows_run"] * args.tile ** 2 / 1e6
    out.update(predict_mpx_s=mpx / out["predict_s"], predict_window_mpx_s=window_mpx / out["predict_s"],
               predict_rss_gib=rss.peak / 2**30, polygons=summary["polygons"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prefetch", type=int, default=1, help="batches read ahead (0: no threads)")
    ap.add_argument("--pairs", default="u8,u16")
    ap.add_argument("--work", default=None, help="folder for the scenes and outputs (default: a temp folder)")
    args = ap.parse_args()
    bound_gdal_cache()  # what a damnet step does (GDAL_CACHEMAX, unless set)
    torch.manual_seed(0)
    model = ChangeNet(PRESETS[args.preset]).eval()
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); {args.size} x {args.size} px, preset {args.preset}, "
          f"tile {args.tile}, overlap {args.overlap}, batch {args.batch}, prefetch {args.prefetch}, "
          f"GDAL_CACHEMAX {os.environ['GDAL_CACHEMAX']}", flush=True)
    bare = bare_model_mpx_s(model, args.batch, args.tile)
    print(f"bare model: {bare:.2f} MPx/s (batch {args.batch} x {args.tile} px, no I/O)", flush=True)
    with tempfile.TemporaryDirectory(prefix="damnet-large-", dir=args.work) as d:
        work = Path(d)
        rows = []
        for name in args.pairs.split(","):
            region = work / f"region-{name}"
            t = time.perf_counter()
            if name == "u8":
                for date, shift in (("pre", 0), ("post", 90)):
                    write_scene(region / date / "city.tif", args.size, 3, "uint8", 1, shift)
                write_label(region / "label" / "city.tif", args.size)
                bands = None
            else:
                for date, shift in (("pre", 0), ("post", 90)):
                    write_scene(region / date / "city.tif", args.size, 4, "uint16", 2, shift)
                bands = (3, 2, 1)
            print(f"{name}: generated in {time.perf_counter() - t:.1f} s", flush=True)
            r = run(name, region, work, args.size, bands, model, args)
            rows.append(r)
            print(r, flush=True)
    print("| pair | ingest s | ingest MPx/s | ingest peak RSS GiB | predict s | predict MPx/s (scene) | "
          "predict MPx/s (windows) | vs bare model | predict peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['ingest_s']:.1f} | {r['ingest_mpx_s']:.2f} | {r['ingest_rss_gib']:.2f} | "
              f"{r['predict_s']:.1f} | {r['predict_mpx_s']:.2f} | {r['predict_window_mpx_s']:.2f} | "
              f"{r['predict_window_mpx_s'] / bare:.0%} | {r['predict_rss_gib']:.2f} |")
    print(f"process peak RSS (getrusage): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
