"""The real-imagery benchmark: LEVIR-CD as the labelled source, real targets from ../shared/data.

    .venv/bin/python bench/real.py                      # every target, 3 seeds (the table)
    .venv/bin/python bench/real.py --targets sztaki --seeds 1
    .venv/bin/python bench/real.py --quick              # a smoke run in a few minutes

Targets (each split by scene into a selection pool and a held-out test set, so an overlapping
crop is never on both sides): DSIFN-CD (Google Earth, Chinese cities), SZTAKI AirChange (aerial,
1.5 m, Hungary), OSCD Sentinel-2 (the 4-band uint16 GeoTIFFs, ingested with ``bands=(3, 2, 1)``).

Rows, every one with the pipeline's defaults (the ``adapt`` and ``finetune`` modes of
damnet.train and the steps' default step counts) and the same settings on every target:
source-only; adaptation; adaptation + MLFT with 1, 2 and 4 micro tiles picked by our selector
and at random; MLFT on one tile without change (the collapse case: the pool tile without true
change that the adapted model predicts most change on); supervised fine-tuning on 10 % of the
pool; oracle (all pool labels). Seed s runs the whole chain (adaptation, picks of the random
rows, MLFT) with seed s, so the spread includes the adaptation's. The rows call the library
code the pipeline steps call (damnet.train.fit, damnet.select, damnet.evaluate).

Metrics are of the change class on the test scenes (one confusion matrix over all of them).
Shared stages are cached in --work (regions by the tiler's code; the source model by the
engine's and network's code; rows by all of damnet/ and the settings).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ablation import Row, _overrides, _row_cache, code_key  # noqa: E402

from components.spec import option  # noqa: E402
from damnet.data import Stream, TileSet  # noqa: E402
from damnet.evaluate import evaluate  # noqa: E402
from damnet.models import ChangeNet, SegDiscriminator, preset  # noqa: E402
from damnet.radiometry import Matched, band_histograms, matching_lut  # noqa: E402
from damnet.select import score_region, select  # noqa: E402
from damnet.tiling import TilingConfig, ingest, load_manifest  # noqa: E402
from damnet.train import fit, mode_config  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DATA_CODE = ("tiling.py", "imagery")
#: the source model depends on the engine and the network, and on its tiles (by their manifest's
#: version, a hash of the inputs and tiling settings), not on the tiler's code
MODEL_CODE = ("train.py", "losses.py", "device.py", "data.py", "models")


@dataclass(frozen=True)
class Target:
    folder: str
    test: tuple[str, ...]  #: scene names of the held-out test set; the rest is the pool
    bands: tuple[int, ...] | None = None
    note: str = ""


TARGETS = {
    "dsifn": Target("dsifn-cd", ("6_3", "7_4", "8_3", "9_3"), note="Google Earth, China"),
    "sztaki": Target("sztaki-airchange", ("Szada_5", "Szada_6", "Szada_7"),
                     note="aerial, 1.5 m, Hungary"),
    # every third city (sorted) is a test city
    "oscd": Target("oscd-s2", ("aguasclaras", "bercy", "hongkong", "paris", "saclay_e"),
                   bands=(3, 2, 1), note="Sentinel-2 L1C, 10 m, B04/B03/B02"),
}


@dataclass
class Plan:
    tile: int = 256
    source_steps: int = 1500
    adapt_steps: int = field(default_factory=lambda: option("adapt", "--steps").default)
    finetune_steps: int = field(default_factory=lambda: option("finetune", "--steps").default)
    oracle_steps: int = 300
    batch: int = 8
    crop: int = 128
    seeds: int = 3
    first_seed: int = 0  #: seeds first_seed .. first_seed + seeds - 1
    budgets: tuple[int, ...] = (1, 2, 4)
    preset: str = "tiny"
    adapt: dict = field(default_factory=dict)  #: TrainConfig overrides of the adaptation
    finetune: dict = field(default_factory=dict)  #: ... of the MLFT rows
    select: dict = field(default_factory=dict)  #: keyword overrides of damnet.select.select
    #: the adapt step's --match-histograms (damnet.radiometry)
    match_histograms: float = field(default_factory=lambda: option("adapt", "--match-histograms").default)

    @property
    def seed_range(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)

    @classmethod
    def quick(cls) -> Plan:
        return cls(source_steps=40, adapt_steps=10, finetune_steps=10, oracle_steps=10, batch=4,
                   crop=64, seeds=2, budgets=(1, 2))


def _scene_names(folder: Path) -> list[str]:
    sub = "A" if (folder / "A").is_dir() else "pre"
    return sorted(p.stem for p in (folder / sub).iterdir() if not p.name.startswith("."))


def _linked(folder: Path, names: list[str], into: Path) -> Path:
    """A region folder of symlinks to the named scenes of ``folder`` (same layout)."""
    for sub in ("A", "B", "pre", "post", "label"):
        if not (folder / sub).is_dir():
            continue
        (into / sub).mkdir(parents=True, exist_ok=True)
        for p in (folder / sub).iterdir():
            if p.stem in names:
                (into / sub / p.name).symlink_to(p)
    return into


def region(work: Path, name: str, folder: Path, names: list[str], plan: Plan,
           bands: tuple[int, ...] | None = None, skip_bad: bool = False) -> TileSet:
    """The named scenes of ``folder`` ingested at the plan's tile size (cached)."""
    key = hashlib.sha256(json.dumps([names, plan.tile, bands]).encode()).hexdigest()[:8]
    out = work / "regions" / f"{name}-{key}-{code_key(*DATA_CODE)}"
    if not (out / "manifest.json").exists():
        with tempfile.TemporaryDirectory() as tmp:
            ingest(str(_linked(folder, names, Path(tmp))), str(out),
                   TilingConfig(size=plan.tile, bands=bands, require_labels=True, skip_bad=skip_bad),
                   progress=False)
    return TileSet(str(out))


def target_regions(work: Path, plan: Plan, key: str) -> tuple[TileSet, TileSet]:
    t = TARGETS[key]
    folder = SHARED / t.folder
    names = _scene_names(folder)
    missing = sorted(set(t.test) - set(names))
    if missing:
        raise SystemExit(f"{folder}: test scene(s) {', '.join(missing)} not found")
    pool = [n for n in names if n not in t.test]
    return (region(work, f"{key}-pool", folder, pool, plan, t.bands),
            region(work, f"{key}-test", folder, list(t.test), plan, t.bands))


def _train(model: ChangeNet, mode: str, plan: Plan, steps: int, seed: int = 0, source=None,
           target=None, micro=None, discriminator=None, **overrides):
    """:func:`damnet.train.fit` in ``mode`` with the plan's batch and crop; ``overrides`` (TrainConfig
    fields, e.g. --finetune-set batch_size=4) win over them."""
    cfg = mode_config(mode, **{"steps": steps, "batch_size": plan.batch, "crop": plan.crop, "seed": seed,
                               **overrides})
    streams = {name: None if s is None else Stream(s, cfg.batch_size, cfg.crop, seed=seed, name=name)
               for name, s in (("source", source), ("target", target), ("micro", micro))}
    return fit(model, cfg, discriminator=discriminator, progress=False, **streams)


def _save(state: dict, path: Path) -> None:
    """``torch.save`` through a temporary name, so a stopped run leaves no half-written cache."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def source_model(work: Path, plan: Plan, source: TileSet) -> tuple[ChangeNet, float]:
    version = load_manifest(source.region_uri)["version"]
    path = (work / f"source-{plan.preset}-{plan.source_steps}-{plan.batch}-{plan.crop}-{version[:8]}-"
            f"{code_key(*MODEL_CODE)}.pt")
    torch.manual_seed(0)
    model = ChangeNet(preset(plan.preset))
    if path.exists():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        return model, float(state["seconds"])
    t = time.time()
    _train(model, "supervised", plan, plan.source_steps, source=source)
    seconds = time.time() - t
    _save({"model": model.state_dict(), "seconds": seconds}, path)
    return model, seconds


def zero_change_tile(scores, pool: TileSet) -> str:
    """The pool tile without true change (least change if none is empty) that the model
    predicts most change on: the false-positive micro tile of the collapse case."""
    truth = np.array([t.get("change_fraction") or 0.0 for t in pool.tiles])
    least = truth.min()
    candidates = np.flatnonzero(truth <= least + 1e-9)
    best = candidates[np.argmax(scores.change_fraction[candidates])]
    return pool.ids[int(best)]


def _one_thread() -> None:
    torch.set_num_threads(1)


class Jobs:
    """Runs the bench's tasks here, in order (``jobs`` 1), or in ``jobs`` worker processes of one
    torch thread each (on the 2-core VM two one-thread workers did the real table in 41 min
    against 51 min in one two-thread process: 1.25x). A task is ``(function, args)``; results
    come back in the order given."""

    def __init__(self, jobs: int, log) -> None:
        self.log = log
        self.pool = None if jobs <= 1 else ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)

    def run(self, tasks: list[tuple], label) -> list:
        if self.pool is None:
            return [fn(*args) for fn, args in tasks]
        futures = {self.pool.submit(fn, *args): i for i, (fn, args) in enumerate(tasks)}
        out: list = [None] * len(tasks)
        for n, f in enumerate(as_completed(futures), 1):
            i = futures[f]
            out[i] = f.result()
            self.log(f"  {label(i)}: F1 {100 * out[i][0]['f1']:.1f} ({n}/{len(tasks)}, {out[i][1]:.0f} s)")
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


_CONTEXT: dict = {}


def context(work: Path, plan: Plan, key: str) -> tuple[TileSet, ChangeNet, TileSet, TileSet, TileSet]:
    """(source, source model, pool, test, unlabelled pool) of target ``key``, from the caches that
    main() filled (loaded once per process: the worker processes of :class:`Jobs` call it too)."""
    if key not in _CONTEXT:
        source = region(work, "levir", SHARED / "levir-cd", _scene_names(SHARED / "levir-cd"), plan,
                        skip_bad=True)
        src_model, _ = source_model(work, plan, source)
        pool, test = target_regions(work, plan, key)
        _CONTEXT[key] = (source, src_model, pool, test, pool.subset(range(len(pool)), labels=None))
    return _CONTEXT[key]


def measure(model: ChangeNet, test: TileSet) -> dict:
    return evaluate(model, test, batch_size=8, progress=False).as_dict()


def adapt_task(work: Path, plan: Plan, key: str, seed: int) -> tuple[dict, float]:
    source, src_model, _, test, unlabelled = context(work, plan, key)
    adapted, _, seconds = adapted_model(work, plan, key, src_model, source, unlabelled, seed)
    return measure(adapted, test), seconds


def mlft_task(work: Path, plan: Plan, key: str, seed: int, ids: list[str]) -> tuple[dict, float]:
    source, src_model, pool, test, unlabelled = context(work, plan, key)
    adapted, disc_state, _ = adapted_model(work, plan, key, src_model, source, unlabelled, seed)
    t = time.time()
    model = mlft(plan, adapted, disc_state, source, pool, unlabelled, ids, seed)
    return measure(model, test), time.time() - t


def supervised_task(work: Path, plan: Plan, key: str, seed: int, n: int) -> tuple[dict, float]:
    """Plain fine-tuning of the source model on ``n`` random pool tiles (no adversary, no anchor)."""
    source, src_model, pool, test, _ = context(work, plan, key)
    t = time.time()
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    model = copy.deepcopy(src_model)
    _train(model, "finetune", plan, plan.finetune_steps, seed=seed, lambda_adv=0.0, anchor_weight=0.0,
           source=source, micro=pool.subset(idx))
    return measure(model, test), time.time() - t


def oracle_task(work: Path, plan: Plan, key: str) -> tuple[dict, float]:
    _, src_model, pool, test, _ = context(work, plan, key)
    t = time.time()
    oracle = copy.deepcopy(src_model)
    _train(oracle, "supervised", plan, plan.oracle_steps, source=pool)
    return measure(oracle, test), time.time() - t


def run_target(work: Path, plan: Plan, src_s: float, key: str, log, jobs: Jobs,
               upto: str = "oracle") -> list[Row]:
    source, src_model, pool, test, unlabelled = context(work, plan, key)
    log(f"[{key}] pool {len(pool)} tiles, test {len(test)} tiles")
    done = _row_cache(work, key, plan, extra=json.dumps(TARGETS[key].__dict__, default=str), stem="real-rows")
    seeds = plan.seed_range

    rows: dict[str, Row] = {}

    def add(row: Row) -> None:
        rows[row.name] = done.save(row)
        log(f"[{key}] {row.name}: F1 {row.cell('f1')}  R {row.cell('recall')}")

    if "source only" in done:
        rows["source only"] = done["source only"]
    else:
        add(Row("source only", "0", [measure(src_model, test)], [src_s]))

    names = ([f"MLFT ours {k}" for k in plan.budgets] + [f"MLFT random {k}" for k in plan.budgets]
             + ["MLFT 1 tile without change"])
    n10 = max(1, round(0.1 * len(pool)))
    ten, oracle = "supervised fine-tune 10 %", "oracle (all pool labels)"
    chain_done = all(n in done for n in ["adaptation", *names])
    adaptation = Row("adaptation", "0")
    if upto != "baselines" and not (upto == "oracle" and chain_done):
        # the adaptations first, side by side (the baselines and the MLFT rows start from them)
        res = jobs.run([(adapt_task, (work, plan, key, s)) for s in seeds],
                       lambda i: f"[{key}] seed {seeds[i]} adaptation")
        adaptation.metrics, adaptation.seconds = [m for m, _ in res], [t for _, t in res]

    base = baseline_rows(work, plan, source, src_model, key, pool, test, unlabelled, log)
    if upto == "baselines":
        return [rows["source only"], *base]
    if upto == "adapt":
        log(f"[{key}] adaptation: F1 {adaptation.cell('f1')}  R {adaptation.cell('recall')}")
        return [rows["source only"], adaptation, *base]

    tasks: list[tuple] = []  # (row name, seed, function, args)
    chain: dict[str, Row] = {n: Row(n, "0") for n in names}
    score_s: dict[int, float] = {}
    if chain_done:
        rows.update({n: done[n] for n in ["adaptation", *names]})
    else:
        for seed in seeds:
            adapted = adapted_model(work, plan, key, src_model, source, unlabelled, seed)[0]
            t = time.time()
            scores = score_region(adapted, pool, batch_size=8, progress=False)
            score_s[seed] = time.time() - t
            picks = {}
            for k in plan.budgets:
                picks[f"MLFT ours {k}"] = select(scores, k, "combined", audit=1, seed=seed, **plan.select).train
                picks[f"MLFT random {k}"] = select(scores, k, "random", audit=1, seed=seed).train
            picks["MLFT 1 tile without change"] = [zero_change_tile(scores, pool)]
            for name, ids in picks.items():
                chain[name].labels = f"{len(ids)} ({100 * len(ids) / len(pool):.1f} %)"
                tasks.append((name, seed, mlft_task, (work, plan, key, seed, ids)))
    if ten not in done:
        tasks += [(ten, seed, supervised_task, (work, plan, key, seed, n10)) for seed in seeds]
    if oracle not in done:
        tasks.append((oracle, 0, oracle_task, (work, plan, key)))
    results = jobs.run([(fn, args) for _, _, fn, args in tasks],
                       lambda i: f"[{key}] seed {tasks[i][1]} {tasks[i][0]}")
    extra = {ten: Row(ten, f"{n10} ({100 * n10 / len(pool):.1f} %)"),
             oracle: Row(oracle, f"{len(pool)} (100 %)")}
    for (name, seed, _, _), (metrics, seconds) in zip(tasks, results, strict=True):
        row = chain.get(name) or extra[name]
        row.metrics.append(metrics)
        # the rows whose tiles come from the adapted model's scores pay for scoring the pool
        row.seconds.append(seconds + (score_s[seed] if name in chain and "random" not in name else 0.0))
    if not chain_done:
        for i, seed in enumerate(seeds):
            log(f"[{key}] seed {seed}: adaptation F1 {100 * adaptation.metrics[i]['f1']:.1f}, "
                + ", ".join(f"{n.removeprefix('MLFT ')} {100 * chain[n].metrics[i]['f1']:.1f}" for n in names))
        for row in [adaptation, *chain.values()]:
            add(row)
    for name in (ten, oracle):
        if name in done:
            rows[name] = done[name]
        else:
            add(extra[name])
    order = ["source only", "adaptation", *names, ten, oracle]
    return [rows[n] for n in order] + base


#: strengths of the radiometric matching rows (damnet.radiometry; 0 would be the plain model)
MATCHING = (1.0, 0.5)


def baseline_rows(work: Path, plan: Plan, source: TileSet, src_model: ChangeNet, key: str, pool: TileSet,
                  test: TileSet, unlabelled: TileSet, log) -> list[Row]:
    """The cheap baselines: the source model and the adapted models reading the region through
    per-date, per-band histogram matching to the source (tables from the pool's tiles; no
    training). Cached apart from the other rows (inference only: minutes)."""
    done = _row_cache(work, key, plan, extra=json.dumps(TARGETS[key].__dict__, default=str), stem="real-baselines")
    src_h = band_histograms(source)
    lut = {a: matching_lut(src_h, band_histograms(pool), a) for a in MATCHING}
    out = []
    # (an adaptation trained with matching already reads the region through its own tables)
    bases = ("source",) if plan.match_histograms else ("source", "adaptation")
    for a in MATCHING:
        for base in bases:
            name = f"{base} + histogram matching {100 * a:.0f} %"
            if name not in done:
                row = Row(name, "0")
                seeds = range(1) if base == "source" else plan.seed_range
                for seed in seeds:
                    t = time.time()
                    model = src_model if base == "source" else adapted_model(
                        work, plan, key, src_model, source, unlabelled, seed)[0]
                    row.metrics.append(evaluate(Matched(model, lut[a]), test, batch_size=8, progress=False).as_dict())
                    row.seconds.append(time.time() - t)
                done.save(row)
                log(f"[{key}] {name}: F1 {row.cell('f1')}  R {row.cell('recall')}")
            out.append(done[name])
    return out


def adapted_model(work: Path, plan: Plan, key: str, src_model: ChangeNet, source: TileSet,
                  unlabelled: TileSet, seed: int) -> tuple[ChangeNet, dict, float]:
    """``src_model`` adapted to ``key``'s pool with seed ``seed`` (the adapt step's training), its
    discriminator's state and the seconds it took; cached by settings, tiles and code."""
    overrides = {"adv_ramp": max(1, plan.adapt_steps // 3), **plan.adapt}
    matching = [plan.match_histograms] if plan.match_histograms else []  # (old caches keep their names)
    settings = json.dumps([plan.adapt_steps, plan.batch, plan.crop, plan.source_steps, seed, overrides,
                           load_manifest(unlabelled.region_uri)["version"],
                           load_manifest(source.region_uri)["version"], code_key(*MODEL_CODE), *matching],
                          sort_keys=True)
    path = work / f"adapted-{key}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.pt"
    adapted = copy.deepcopy(src_model)
    if path.exists():
        state = torch.load(path, weights_only=True)
        adapted.load_state_dict(state["model"])
        return adapted, state["disc"], float(state["seconds"])
    t = time.time()
    if plan.match_histograms:  # what the adapt step does with --match-histograms
        adapted.set_input_lut(matching_lut(band_histograms(source), band_histograms(unlabelled),
                                           plan.match_histograms))
    res = _train(adapted, "adapt", plan, plan.adapt_steps, seed=seed, source=source, target=unlabelled,
                 **overrides)
    seconds = time.time() - t
    disc_state = (res.discriminator or SegDiscriminator(2, adapted.config.disc_channels)).state_dict()
    _save({"model": adapted.state_dict(), "disc": disc_state, "seconds": seconds}, path)
    return adapted, disc_state, seconds


def mlft(plan: Plan, adapted: ChangeNet, disc_state: dict, source: TileSet, pool: TileSet,
         unlabelled: TileSet, micro_ids: list[str], seed: int) -> ChangeNet:
    """A copy of ``adapted`` fine-tuned on the ``micro_ids`` tiles of ``pool`` (the finetune step's
    training: source batches, the micro tiles, the unlabelled pool, the adaptation's D)."""
    model = copy.deepcopy(adapted)
    disc = SegDiscriminator(2, model.config.disc_channels)
    disc.load_state_dict(disc_state)
    _train(model, "finetune", plan, plan.finetune_steps, seed=seed, source=source,
           micro=pool.subset([pool.ids.index(i) for i in micro_ids]),
           target=unlabelled, discriminator=disc, **plan.finetune)
    return model


def table(title: str, rows: list[Row]) -> str:
    out = [f"#### {title}", "", "| row | labels | P | R | F1 | IoU | wall s (mean) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.name} | {r.labels} | {r.cell('precision')} | {r.cell('recall')} | "
                   f"{r.cell('f1')} | {r.cell('iou')} | {statistics.mean(r.seconds):.0f} |")
    return "\n".join(out) + "\n"


def _mean(row: Row, key: str = "f1") -> float:
    return 100 * row.mean(key)


def _sd(row: Row, key: str = "f1") -> float:
    vals = [100 * m[key] for m in row.metrics]
    return statistics.stdev(vals) if len(vals) > 1 else 0.0


def goals(results: dict[str, list[Row]], budgets: tuple[int, ...]) -> str:
    """The issue's four goals, checked on the rows (means over seeds; spreads as stdev)."""
    by = {k: {r.name: r for r in rows} for k, rows in results.items()}
    lines = ["| goal | " + " | ".join(by) + " | mean | met |", "|---|" + "---|" * (len(by) + 2)]

    def line(goal: str, cells: list[str], mean: float, met: bool) -> None:
        lines.append(f"| {goal} | " + " | ".join(cells) + f" | {mean:+.1f} | {'yes' if met else 'NO'} |")

    d = [_mean(b["adaptation"]) - _mean(b["source only"]) for b in by.values()]
    spread = [_sd(b["adaptation"]) for b in by.values()]
    line("adaptation - source-only (never below -spread, mean > 0)",
         [f"{x:+.1f} (spread {s:.1f})" for x, s in zip(d, spread, strict=True)], statistics.mean(d),
         all(x >= -s for x, s in zip(d, spread, strict=True)) and statistics.mean(d) > 0)
    best = [max(_mean(b[f"MLFT ours {k}"]) for k in budgets) - _mean(b["source only"]) for b in by.values()]
    k4 = [_mean(b[f"MLFT ours {max(budgets)}"]) - _mean(b["source only"]) for b in by.values()]
    line(f"MLFT ours {max(budgets)} tiles - source-only (mean >= +5, none < 0)",
         [f"{x:+.1f}" for x in k4], statistics.mean(k4), statistics.mean(k4) >= 5 and min(k4) >= 0)
    line("best MLFT ours (<= 4 tiles) - source-only", [f"{x:+.1f}" for x in best], statistics.mean(best),
         statistics.mean(best) >= 5 and min(best) >= 0)
    drop = [_mean(b["MLFT 1 tile without change"], "recall") - _mean(b["adaptation"], "recall")
            for b in by.values()]
    line("recall after MLFT on a tile without change - adaptation's (>= -5)",
         [f"{x:+.1f}" for x in drop], statistics.mean(drop), min(drop) >= -5)
    ours = [statistics.mean(_mean(b[f"MLFT ours {k}"]) - _mean(b[f"MLFT random {k}"]) for k in budgets)
            for b in by.values()]
    line(f"ours - random, mean over budgets {', '.join(map(str, budgets))} (mean >= 0)",
         [f"{x:+.1f}" for x in ours], statistics.mean(ours), statistics.mean(ours) >= 0)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"of {', '.join(TARGETS)}")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST .. FIRST + SEEDS - 1")
    ap.add_argument("--work", default="runs/bench-real", help="cache of regions, models and rows")
    ap.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--upto", choices=("baselines", "adapt", "oracle"), default="oracle",
                    help="baselines: source-only and the radiometric matching rows (inference only, minutes); "
                    "adapt: also the adaptation rows (a quick look at adaptation settings)")
    ap.add_argument("--adapt-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field of the adaptation (repeatable)")
    ap.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field of the MLFT rows (repeatable)")
    ap.add_argument("--match-histograms", type=float, default=None,
                    help="the adapt step's radiometric alignment strength (0: off; default: the step's, "
                    f"{option('adapt', '--match-histograms').default})")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes of one torch thread each for the training rows (2 on 2 cores: "
                    "1.25x sooner than 1 on the real table; figures can differ in the last digits, float sums change)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: the real-imagery benchmark needs ../shared/data beside the project")
        return
    plan = Plan.quick() if args.quick else Plan()
    if args.seeds:
        plan.seeds = args.seeds
    plan.first_seed = args.first_seed
    plan.adapt, plan.finetune = _overrides(args.adapt_set), _overrides(args.finetune_set)
    if args.match_histograms is not None:
        plan.match_histograms = args.match_histograms
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    source = region(work, "levir", SHARED / "levir-cd", _scene_names(SHARED / "levir-cd"), plan,
                    skip_bad=True)
    src_model, src_s = source_model(work, plan, source)
    log(f"source: LEVIR-CD, {len(source)} tiles, model {src_s:.0f} s")
    table_started = time.time()
    results, texts = {}, []
    jobs = Jobs(args.jobs, log)
    for key in (k for k in args.targets.split(",") if k):
        if key not in TARGETS:
            raise SystemExit(f"unknown target {key!r}; known: {', '.join(TARGETS)}")
        t = time.time()
        rows = run_target(work, plan, src_s, key, log, jobs, args.upto)
        results[key] = rows
        pool, test = target_regions(work, plan, key)
        texts.append(table(f"LEVIR-CD -> {key} ({TARGETS[key].note}; pool {len(pool)} tiles, test "
                           f"{len(test)} tiles of {len(TARGETS[key].test)} scenes; {time.time() - t:.0f} s)",
                           rows))
    jobs.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker
    threads = (f"{torch.get_num_threads()} torch threads" if args.jobs <= 1
               else f"{args.jobs} worker processes of 1 torch thread")
    print(f"Machine: {platform.node() or 'unknown'} ({platform.processor() or platform.machine()}), "
          f"{threads}, torch {torch.__version__}, preset {plan.preset}; "
          f"source model {src_s:.0f} s (cached or not), table {time.time() - table_started:.0f} s, "
          f"total {time.time() - started:.0f} s, peak RSS {peak:.0f} MiB"
          + (f" (largest worker {worker_peak:.0f} MiB)" if args.jobs > 1 else "") + ".\n")
    print("\n".join(texts))
    if args.upto == "oracle":
        print(goals(results, plan.budgets))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"plan": plan.__dict__, "results": {k: [r.__dict__ for r in v] for k, v in results.items()}},
            indent=1, default=str))


if __name__ == "__main__":
    main()
