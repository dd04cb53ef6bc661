"""One self-contained HTML page per region run: what ran, the metrics, the decision, the maps.

Inputs: whatever step records the region has (validate, select, export-labels, evaluate,
promote, predict). Output: index.html (images embedded, so the one file can be mailed or
opened from object storage) - and it is also logged to the region's MLflow run.

This module gathers plain data (:func:`page_data`); the layout is the Jinja2 template
``templates/report.html.j2`` (:func:`render`).
"""

from __future__ import annotations

import argparse
import calendar
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from components.records import Layout, StepError, StepInput, read_json, read_record
from components.report_maps import scene_figure, tile_figure
from components.step import RunOptions, run_step
from damnet import storage

STEP_ORDER = ("ingest", "validate", "pretrain", "adapt", "select", "export-labels", "import-labels",
              "finetune", "evaluate", "promote", "predict")
TEMPLATE = "report.html.j2"
SIMULATED_ANNOTATOR = "simulated-labeler@"  # damnet.labels.simulate's annotator e-mail
Data = dict[str, Any]


def _exists(uri: str | None) -> bool:
    return bool(uri) and storage.storage_for(str(uri)).exists(str(uri))


def _image(uri: str | None) -> str | None:
    """A PNG in the store as a data URI (None where it is missing)."""
    import base64

    if not uri or not _exists(uri):
        return None
    return "data:image/png;base64," + base64.b64encode(storage.storage_for(uri).get_bytes(uri)).decode()


def short(uri: str, store: str) -> str:
    """``uri`` relative to the store where it lies in it (tables stay narrow)."""
    return uri[len(store):].lstrip("/") if uri.startswith(store.rstrip("/") + "/") else uri


def model_name(ref: str, store: str) -> str:
    """``models:/damnet-x/3`` -> ``damnet-x v3``; a file -> its path under the store."""
    if ref.startswith("models:/"):
        name, _, version = ref[len("models:/"):].partition("/")
        return f"{name} v{version}" if version.isdigit() else ref[len("models:/"):]
    return short(ref, store)


def _timestamp(text: str) -> float | None:
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None


def steps_data(records: dict, store: str) -> Data:
    rows = []
    for name in STEP_ORDER:
        r = records.get(name)
        if r is not None:
            outputs = [{"name": k, "path": short(str(v), store)} for k, v in r.get("outputs", {}).items()]
            rows.append({"step": name, "started": r["started"], "seconds": r["seconds"], "key": r["key"],
                         "outputs": outputs})
    starts = [(_timestamp(r["started"]), r["seconds"]) for r in rows]
    spans = [(s, s + d) for s, d in starts if s is not None]
    return {"rows": rows, "compute_seconds": sum(r["seconds"] for r in rows),
            "wall_seconds": (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else None}


def _validation_report_uri(layout: Layout, records: dict) -> str | None:
    """The newest validation report: a failed run has no step record, only validate/latest.json."""
    r = records.get("validate")
    uri = layout.latest_validation
    latest = read_json(uri) if _exists(uri) else None
    if latest is not None and (r is None or latest.get("created", "") >= r.get("started", "")):
        return latest["report"]
    return r["outputs"]["report"] if r is not None else None


def validation_data(layout: Layout, records: dict) -> Data | None:
    uri = _validation_report_uri(layout, records)
    if uri is None:
        return None
    report = read_json(uri)
    stats = report.get("statistics") or {}
    pairs = stats.get("pair_misregistration_px") or {}
    dist = report.get("domain_distance") or {}
    return {
        "success": bool(report.get("success")), "suite": str(report.get("suite_name", "")),
        "failures": [str(x) for x in report.get("failures") or []],
        "warnings": [str(x) for x in report.get("warnings") or []],
        "tiles": stats.get("tiles", "?"), "pairs": stats.get("pairs", "?"),
        "met": stats.get("successful_expectations", "?"), "evaluated": stats.get("evaluated_expectations", "?"),
        "misregistration": [{"pair": p, "px": v} for p, v in pairs.items()],
        "data_docs": (report.get("paths") or {}).get("data_docs"),
        "distance": [{"name": str(k), "value": f"{v:.3f}" if isinstance(v, float) else str(v)}
                     for k, v in dist.items() if not isinstance(v, dict | list)],
    }


def _interval(m: dict) -> Data | None:
    """The F1 interval over audit tiles of one model, with how many tiles it rests on."""
    if "per_tile" not in m:
        return None
    ci = m.get("f1_interval")
    return {"low": ci["low"] if ci else None, "high": ci["high"] if ci else None,
            "tiles": m["tiles"], "change_tiles": m.get("change_tiles", 0)}


def _who(key: str, ref: str) -> str:
    """The row's name: the "champion" of a region without one is the source model: say so."""
    name = model_name(ref, "")
    if key == "champion" and ref.startswith("models:/damnet-source"):
        return f"source model {name} (this region has no champion yet)"
    return {"candidate": "candidate" if not ref.startswith("models:/") else f"candidate {name}",
            "champion": f"champion {name}",
            "source": f"source model {name}"}.get(key, f"{key} {name}")


def metrics_data(records: dict, store: str) -> Data | None:
    r = records.get("evaluate")
    if r is None:
        return None
    metrics = read_json(r["outputs"]["metrics"])
    sets = [s for s in ("audit", "source_holdout") if any(s in m for m in metrics.values())]
    rows = []
    for key, m in metrics.items():
        rows.append({"name": _who(key, m["model"]), "model": m["model"],
                     "sets": {s: {k: m.get(s, {}).get(k) for k in ("f1", "iou", "precision", "recall",
                                                                    "average_precision")} for s in sets},
                     "interval": _interval(m.get("audit", {}))})
    return {"sets": sets, "rows": rows, "confusion": _image(r["outputs"].get("confusion")),
            "pr_curves": _image(r["outputs"].get("pr_curves"))}


def decision_data(records: dict) -> Data | None:
    r = records.get("promote")
    if r is None:
        return None
    d = read_json(r["outputs"]["decision"])
    audit = d.get("checks", {}).get("audit", {})
    evidence = None
    if "tiles" in audit:
        rows = [{"name": who, "gain": key == "difference", **audit[key]}
                for who, key in (("candidate audit F1", "candidate"), ("champion audit F1", "champion"),
                                 ("gain (candidate - champion, paired)", "difference")) if key in audit]
        evidence = {"tiles": audit["tiles"], "change_tiles": audit["change_tiles"],
                    "enough": audit.get("evidence") == "enough", "rows": rows,
                    "level": f"{rows[0]['confidence'] * 100:g}%" if rows else None,
                    "margin": audit.get("margin", 0)}
    no_champion = any("no champion yet" in x for x in d["reasons"])
    return {"model": d["registered_model"], "version": str(d["version"]), "promoted": bool(d["promoted"]),
            "reasons": d["reasons"], "evidence": evidence, "first": no_champion}


def _manifest(records: dict) -> tuple[dict, dict]:
    ingest = records.get("ingest")
    uri = ingest["outputs"].get("manifest") if ingest else None
    if uri is None or not _exists(uri):
        return {}, {}
    m = read_json(uri)
    return {t["tile_id"]: t for t in m.get("tiles", [])}, {p["name"]: p for p in m.get("pairs", [])}


def selection_data(records: dict, max_tiles: int) -> Data | None:
    r = records.get("select")
    if r is None:
        return None
    sel = read_json(r["outputs"]["selection"])
    n = max(len(sel["scores"]), 1)
    export = records.get("export-labels")
    images = export["outputs"].get("images") if export else None
    tiles, pairs = _manifest(records)
    predict = records.get("predict")
    scenes = {s["name"]: s for s in read_json(predict["outputs"]["summary"])} if predict else {}
    imported = records.get("import-labels")
    labels = read_json(imported["outputs"]["labels"]) if imported and _exists(imported["outputs"].get("labels")) else {}
    chosen = [(tile_id, "train") for tile_id in sel["train"]] + [(tile_id, "audit") for tile_id in sel["audit"]]
    cards = []
    for tile_id, set_name in chosen[:max_tiles]:
        s, tile = sel["scores"][tile_id], tiles.get(tile_id)
        pair = pairs.get(tile["pair"]) if tile else None
        label = (labels.get(tile_id) or {}).get("uri") if set_name == "audit" else None
        cards.append({"id": tile_id, "set": set_name, "entropy": s["entropy"], "change": s["change_fraction"],
                      "disagreement": s.get("disagreement"),
                      **tile_figure(images, tile_id, tile, pair, scenes.get(tile["pair"]) if tile else None,
                                    label)})
    return {"train": len(sel["train"]), "audit": len(sel["audit"]), "tiles": len(sel["scores"]),
            "micro_share": len(sel["train"]) / n, "with_audit_share": (len(sel["train"]) + len(sel["audit"])) / n,
            "method": sel["method"], "plot": _image(r["outputs"].get("plot")), "cards": cards,
            "shown": len(cards), "chosen": len(chosen), "max_tiles": max_tiles,
            "predicted_by": model_name(str(predict["inputs"]["model"]["uri"]), "") if predict else None}


def maps_data(records: dict, store: str) -> Data | None:
    r = records.get("predict")
    if r is None:
        return None
    imagery = str(r["inputs"].get("imagery", {}).get("uri", ""))
    threshold = r.get("params", {}).get("threshold", 0.5)
    scenes = []
    for s in read_json(r["outputs"]["summary"]):
        figure = scene_figure(imagery, s) if imagery else None
        scenes.append({"name": s["name"], "changed": s["changed_fraction"], "polygons": s["polygons"],
                       "crs": s.get("crs"), "figure": figure,
                       "files": [short(s[k], store) for k in ("probability", "change", "polygons_uri")]})
    return {"model": model_name(str(r["inputs"]["model"]["uri"]), store),
            "requested": r["inputs"]["model"].get("requested"), "threshold": threshold, "scenes": scenes}


def provenance(records: dict) -> Data:
    """Where the imagery and the labels came from, when it was not the real world."""
    out: Data = {"synthetic": None, "simulated": None}
    ingest = records.get("ingest")
    imagery = str(ingest["inputs"]["imagery"]["uri"]) if ingest else None
    region_json = storage.join(imagery, "region.json") if imagery else None
    if region_json and _exists(region_json):
        desc = read_json(region_json)
        if "style" in desc:  # written by `damnet synth` (damnet.synthetic.write_region)
            out["synthetic"] = {"style": desc["style"], "description": desc.get("description", "")}
    imported = records.get("import-labels")
    uri = str(imported["inputs"]["labels"]["uri"]) if imported else ""
    if uri.endswith(".json") and _exists(uri):
        tasks = read_json(uri)
        emails = [str((a.get("completed_by") or {}).get("email", "")) for t in tasks if isinstance(t, dict)
                  for a in t.get("annotations") or []]
        simulated = sum(e.startswith(SIMULATED_ANNOTATOR) for e in emails)
        if simulated:
            out["simulated"] = {"annotations": simulated, "of": len(emails)}
    return out


def page_data(layout: Layout, records: dict, max_tiles: int = 24) -> Data:
    store = layout.store
    return {
        "title": f"DAM-Net region report: {layout.region}", "region": layout.region, "store": store,
        "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "provenance": provenance(records), "decision": decision_data(records),
        "metrics": metrics_data(records, store), "maps": maps_data(records, store),
        "selection": selection_data(records, max_tiles), "validation": validation_data(layout, records),
        "steps": steps_data(records, store),
    }


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, fmt="{:.3f}": fmt.format(v) if isinstance(v, int | float) else "-"
    env.filters["duration"] = lambda s: (f"{int(s // 60)} min {s % 60:.0f} s" if s >= 60 else f"{s:.1f} s")
    return env


def render(layout: Layout, records: dict, max_tiles: int = 24) -> str:
    return _environment().get_template(TEMPLATE).render(**page_data(layout, records, max_tiles))


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    records = {name: r for name in STEP_ORDER if (r := read_record(layout, name)) is not None}
    if not records:
        raise StepError(f"region {layout.region!r} has no finished steps in {layout.store}")
    inputs: dict[str, StepInput] = {name: {"uri": layout.record_uri(name), "digest": r["key"]}
                                    for name, r in records.items()}

    def body(run):
        page = render(layout, records, args.max_tiles)
        storage.storage_for(run.out).put_text(run.path("index.html"), page)
        run.outputs.update(report=run.path("index.html"))
        run.artifact(run.path("index.html"), "report")

    record = run_step("report", inputs, {"max_tiles": args.max_tiles}, body, layout, RunOptions.from_args(args))
    print(f"  report: {record['outputs']['report']}")
