"""The validation report: failure lines a person can read, the report itself, and
:func:`validate_region`, which builds the tile table, runs the suite and writes the results."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from damnet import storage
from damnet.errors import DamnetError
from damnet.tiling import load_manifest
from damnet.validation.config import (
    BANDS,
    DATA_DOCS,
    DATES,
    EXPECTATIONS,
    REPORT,
    REPORT_FORMAT,
    TILES_CSV,
    ValidationConfig,
)
from damnet.validation.suite import Check, ge_version, run_suite
from damnet.validation.table import domain_distance, source_tile_stats, tile_table

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- failure lines


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{float(v):.3g}" if isinstance(v, float) else str(v)


def _range(lo, hi, unit: str = "") -> str:
    u = f" {unit}" if unit else ""
    if lo is None or (lo == 0 and hi is not None):
        return f"above {_num(hi)}{u}"
    if hi is None:
        return f"below {_num(lo)}{u}"
    return f"outside [{_num(lo)}, {_num(hi)}]{u}"


def _per_tile(kind: str, kwargs: dict) -> str:
    mostly = kwargs.get("mostly")
    tail = f"{kind}" + (f", at most {1 - mostly:.0%} of tiles may fail" if mostly and mostly < 1 else "")
    return f" [{tail}]"


_LABELS = {"res_ratio": "res_ratio (post / pre pixel size before ingest)"}


def _pair_shift_line(df, kwargs: dict, kind: str) -> str:
    """The failure line of the pair misregistration check, in pairs (the table repeats a
    pair's estimate on each of its tiles)."""
    hi = kwargs.get("max_value")
    per_pair = df.groupby("pair")["pair_misregistration_px"].first()
    known = per_pair.dropna()
    bad = known[known > hi] if hi is not None else known.iloc[:0]
    line = (f"pair_misregistration_px: {len(bad)} of {len(known)} pair(s) with an estimate shifted "
            f"above {_num(hi)} px: " + ", ".join(f"{p} {_num(float(v))} px" for p, v in bad.items()))
    if len(known) < len(per_pair):
        line += f"; {len(per_pair) - len(known)} pair(s) without enough evidence to estimate"
    return line + f" [{kind}]"


def _failure_line(check: Check, kind: str, kwargs: dict, result: dict, df) -> str:
    col = kwargs.get("column")
    n = len(df)
    if kind == "expect_table_row_count_to_be_between":
        return (f"tiles: {result.get('observed_value')} in the region, expected at least "
                f"{kwargs.get('min_value')}" + (f" and at most {kwargs['max_value']}"
                                                  if kwargs.get("max_value") is not None else "")
                + f" [{kind}]")
    if kind == "expect_column_values_to_be_between" and col == "pair_misregistration_px":
        return _pair_shift_line(df, kwargs, kind)
    if kind == "expect_column_values_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        values = df[col].astype(float)
        bad = df[((values < lo) if lo is not None else False) | ((values > hi) if hi is not None else False)]
        count = result.get("unexpected_count", len(bad))
        known = int(values.notna().sum())
        name = _LABELS.get(col, col) if isinstance(col, str) else col
        line = f"{name}: {count} of {known} tiles {_range(lo, hi, check.unit)}"
        if len(bad):
            excess = np.maximum((bad[col] - hi) if hi is not None else -np.inf,
                                (lo - bad[col]) if lo is not None else -np.inf)
            worst = bad.loc[excess.idxmax()]
            u = f" {check.unit}" if check.unit else ""
            line += f" (worst {_num(float(worst[col]))}{u}, tile {worst['tile_id']})"
        if known < n:
            line += f"; {n - known} tile(s) without a clear estimate"
        if col == "misregistration_px" and df["pair_misregistration_px"].notna().any():
            per_pair = df.groupby("pair")["pair_misregistration_px"].first().dropna()
            shown = ", ".join(f"{p} {_num(float(v))} px" for p, v in list(per_pair.items())[:4])
            line += f"; pair estimates: {shown}" + (", ..." if len(per_pair) > 4 else "")
        return line + _per_tile(kind, kwargs)
    if kind == "expect_column_values_to_be_in_set":
        allowed = kwargs.get("value_set") or []
        bad = df[~df[col].isin(allowed)][col]
        found = ", ".join(f"{v} x{k}" for v, k in bad.value_counts().items())
        return (f"{col}: {result.get('unexpected_count', len(bad))} of {n} tiles not in "
                f"{{{', '.join(map(str, allowed))}}} (found {found or 'n/a'})" + _per_tile(kind, kwargs))
    if kind == "expect_column_mean_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        if lo is None or (lo == 0 and hi is not None):
            want = f"at most {_num(hi)}"
        elif hi is None:
            want = f"at least {_num(lo)}"
        else:
            want = f"within [{_num(lo)}, {_num(hi)}]"
        return f"{col} mean over the region: {_num(result.get('observed_value'))}, expected {want} [{kind}]"
    if kind == "expect_column_unique_value_count_to_be_between":
        values = sorted(map(str, df[col].dropna().unique()))
        shown = ", ".join(values[:5]) + (", ..." if len(values) > 5 else "")
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        want = f"exactly {lo}" if lo == hi else f"{lo}..{hi}"
        shown = f" ({shown})" if values else ""
        return f"{col}: {len(values)} distinct values{shown}, expected {want} [{kind}]"
    if kind == "expect_column_pair_values_to_be_equal":
        a, b = kwargs.get("column_A"), kwargs.get("column_B")
        bad = df[df[a] != df[b]]
        line = f"{a} vs {b}: {len(bad)} of {n} tiles differ"
        if len(bad):
            first = bad.iloc[0]
            line += f" (e.g. {first[a]} vs {first[b]}, tile {first['tile_id']})"
        return line + _per_tile(kind, kwargs)
    if kind == "expect_column_values_to_be_unique":
        dup = df[df[col].duplicated(keep=False)][col]
        shown = ", ".join(map(str, dup.unique()[:3]))
        return f"{col}: {dup.nunique()} value(s) repeated (e.g. {shown}) [{kind}]"
    observed = result.get("observed_value", result.get("unexpected_count"))
    return f"{col or 'table'}: observed {_num(observed)} [{kind} {kwargs}]"


# ----------------------------------------------------------------------------- the report


def _clean(obj):
    """JSON-safe plain Python: numpy scalars to numbers, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class ValidationReport:
    """What :func:`validate_region` found. ``validation.json`` holds :meth:`to_dict`."""

    region_uri: str
    out_uri: str
    success: bool
    failures: list[str]
    statistics: dict
    warnings: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    domain_distance: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    suite_name: str = ValidationConfig.suite_name
    source_uri: str | None = None
    notes: list[str] = field(default_factory=list)
    created: str = ""
    format: str = REPORT_FORMAT

    def to_dict(self) -> dict:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> ValidationReport:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, uri: str) -> ValidationReport:
        """Read a report from ``uri`` (the ``validation.json`` or the folder holding it)."""
        if not uri.rstrip("/").endswith(".json"):
            uri = storage.join(uri, REPORT)
        return cls.from_dict(json.loads(storage.storage_for(uri).get_text(uri)))

    def summary(self) -> str:
        s = self.statistics
        head = (f"{'PASSED' if self.success else 'FAILED'}: region {self.region_uri} "
                f"({s.get('tiles', 0)} tiles in {s.get('pairs', 0)} pair(s)): ")
        evaluated = s.get("evaluated_expectations", 0)
        if self.success:
            head += f"{s.get('successful_expectations', evaluated)} of {evaluated} expectations met"
        else:
            head += f"{len(self.failures)} of {evaluated} expectations failed"
        if self.warnings:
            head += f", {len(self.warnings)} warning(s)"
        lines = [head + f" (suite {self.suite_name})"]
        lines += [f"  - {f}" for f in self.failures]
        lines += [f"  warning: {w}" for w in self.warnings]
        unknown = sorted(p for p, v in (s.get("pair_misregistration_px") or {}).items() if v is None)
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            lines.append(f"Misregistration unknown for {len(unknown)} of {s.get('pairs', 0)} pair(s) (too few "
                         f"textured patches agree on a shift; not a failure): {shown}")
        dd = self.domain_distance
        if dd and "frechet_dn" in dd:
            shift = " ".join(f"{b} {v:+.2f}" for b, v in dd["band_mean_shift"].items())
            lines.append(f"Domain distance to {dd['source_uri']}: Frechet {dd['frechet_dn']:.3g} DN, "
                         f"band-mean shift {shift} source std, brightness x{dd['brightness_ratio']:.3g} "
                         "(informational)")
        elif dd:
            lines.append(f"Domain distance to {dd.get('source_uri')}: {dd.get('note', 'n/a')}")
        if self.paths.get("data_docs"):
            lines.append(f"Data Docs: {self.paths['data_docs']}")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise :class:`ValidationFailed` when the region failed."""
        if not self.success:
            raise ValidationFailed(self)


class ValidationFailed(DamnetError):
    """A region failed its validation; the message is the report's summary."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.summary())


# ----------------------------------------------------------------------------- running it


def _exception_message(info) -> str | None:
    """The message of an exception GE caught, from either form its ``exception_info`` has:
    flat (``raised_exception``...) or one entry per metric."""
    if not info:
        return None
    for entry in (info, *(info.values() if isinstance(info, dict) else ())):
        get = entry.get if isinstance(entry, dict) else lambda k, e=entry: getattr(e, k, None)
        if get("raised_exception") is True:
            return (str(get("exception_message") or "error").strip().splitlines() or ["error"])[0]
    return None


def _result_record(check: Check, r, df) -> dict:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    res = dict(r.result or {})
    record = {
        "check": check.key,
        "expectation": cfg.type,
        "column": kwargs.get("column") or (
            f"{kwargs['column_A']},{kwargs['column_B']}" if "column_A" in kwargs else None),
        "success": bool(r.success),
        "severity": check.severity,
        "kwargs": kwargs,
        "observed": res.get("observed_value"),
        "unexpected_count": res.get("unexpected_count"),
        "element_count": res.get("element_count"),
        "message": "",
    }
    error = _exception_message(r.exception_info)
    if error is not None:
        record["message"] = f"{record['column'] or 'table'}: could not be evaluated ({error}) [{cfg.type}]"
    elif not r.success:
        record["message"] = _failure_line(check, cfg.type, kwargs, res, df)
    return _clean(record)


def _write_tree(local_root: Path, out_prefix: str) -> int:
    """Copy every file under ``local_root`` to ``out_prefix``; remove files a previous run
    left there that are not part of the new tree. Returns the number of files written."""
    store = storage.storage_for(out_prefix)
    written = set()
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        uri = storage.join(out_prefix, path.relative_to(local_root).as_posix())
        store.put_file(path, uri)
        written.add(uri)
    for stale in store.list(out_prefix.rstrip("/") + "/"):
        if stale not in written:
            with contextlib.suppress(Exception):
                store.delete(stale)
    return len(written)


def validate_region(region_uri: str, out_uri: str, config: ValidationConfig | None = None,
                    source_uri: str | None = None, progress: bool | None = None) -> ValidationReport:
    """Validate the tiled region at ``region_uri``; write the results under ``out_uri``.

    A region that fails its checks is not an error: the returned report says what failed
    (see :meth:`ValidationReport.summary`, :meth:`ValidationReport.raise_for_failure`).
    ``source_uri`` (a tiled source region) adds an informational domain distance.
    Errors a user can cause (no manifest, unreadable tiles, an unwritable ``out_uri``)
    are raised as :class:`~damnet.errors.DamnetError`.
    """
    started = time.perf_counter()
    config = config or ValidationConfig()
    timings: dict[str, float] = {}
    manifest = load_manifest(region_uri)
    # Read the source first: a wrong source_uri fails before the tiles are read.
    source_stats = source_tile_stats(source_uri) if source_uri else None
    t = time.perf_counter()
    df = tile_table(region_uri, manifest, progress=progress, config=config)
    timings["read_tiles"] = time.perf_counter() - t
    notes = [str(n) for p in manifest.get("pairs", []) for n in (p.get("notes") or [])]
    notes += [f"skipped at ingest: {s}" for s in manifest.get("skipped", [])]
    distance = None
    if source_uri:
        t = time.perf_counter()
        distance = domain_distance(df, source_uri, source_stats)
        timings["domain_distance"] = time.perf_counter() - t

    store = storage.storage_for(out_uri)
    paths = {
        "report": storage.join(out_uri, REPORT),
        "tiles": storage.join(out_uri, TILES_CSV),
        "expectations": storage.join(out_uri, EXPECTATIONS),
        "data_docs": storage.join(out_uri, DATA_DOCS, "index.html"),
    }
    with tempfile.TemporaryDirectory(prefix="damnet-gx-") as work:
        run_name = re.sub(r"[^A-Za-z0-9._-]+", "_", region_uri.rstrip("/").rsplit("/", 1)[-1]) or "region"
        suite_json, results, docs = run_suite(df, config, Path(work), progress, timings, run_name)
        t = time.perf_counter()
        with store.writing(paths["tiles"], suffix=".csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        store.put_text(paths["expectations"], json.dumps(_clean(suite_json), indent=1))
        n_docs = _write_tree(docs, storage.join(out_uri, DATA_DOCS))
    records = [_result_record(check, r, df) for check, r in results]
    failures = [r["message"] for r in records if not r["success"] and r["severity"] == "critical"]
    warning_lines = [r["message"] for r in records if not r["success"] and r["severity"] != "critical"]

    misreg = df["misregistration_px"].dropna()
    statistics = {
        "tiles": len(df),
        "pairs": int(df["pair"].nunique()),
        "evaluated_expectations": len(records),
        "successful_expectations": sum(r["success"] for r in records),
        "failed_expectations": len(failures),
        "warnings": len(warning_lines),
        "nodata_fraction_mean": float(df["nodata_fraction"].mean()) if len(df) else None,
        "brightness_mean": {d: float(df[[f"mean_{d}_{b}" for b in BANDS]].to_numpy().mean())
                            if len(df) else None for d in DATES},
        "misregistration_px": {"median": float(misreg.median()) if len(misreg) else None,
                               "max": float(misreg.max()) if len(misreg) else None,
                               "tiles_without_estimate": int(len(df) - len(misreg))},
        "pair_misregistration_px": {str(p): float(v) for p, v in
                                    df.groupby("pair")["pair_misregistration_px"].first().items()},
        "data_docs_files": n_docs,
        "versions": {"great_expectations": ge_version()},
    }
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    statistics["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    report = ValidationReport(
        region_uri=region_uri, out_uri=out_uri,
        success=not failures, failures=failures, warnings=warning_lines,
        statistics=statistics, results=records, domain_distance=distance, paths=paths,
        config=asdict(config), suite_name=config.suite_name, source_uri=source_uri, notes=notes,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    report = ValidationReport.from_dict(report.to_dict())  # what validation.json will hold
    store.put_text(paths["report"], json.dumps(report.to_dict(), indent=1))
    log.info("%s", report.summary())
    return report

