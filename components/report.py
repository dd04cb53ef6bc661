"""One self-contained HTML page per region run: what ran, the metrics, the decision, the maps.

Inputs: whatever step records the region has (validate, select, export-labels, evaluate,
promote, predict). Output: index.html (images embedded, so the one file can be mailed or
opened from object storage) - and it is also logged to the region's MLflow run.
"""

from __future__ import annotations

import argparse
import base64
import html
import time

from components.records import Layout, StepError, StepInput, read_json, read_record
from components.step import RunOptions, run_step
from damnet import storage

STEP_ORDER = ("ingest", "validate", "pretrain", "adapt", "select", "export-labels", "import-labels",
              "finetune", "evaluate", "promote", "predict")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f4f4f4} .num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#137333;font-weight:600} .bad{color:#b3261e;font-weight:600} .muted{color:#777}
.tiles{display:flex;flex-wrap:wrap;gap:12px} .tile{border:1px solid #ddd;padding:6px;font-size:12px}
.tile img{width:128px;height:128px;image-rendering:pixelated} img.plot{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}
"""


def _img(uri: str, cls: str = "plot", alt: str = "") -> str:
    store = storage.storage_for(uri)
    if not store.exists(uri):
        return f'<p class="muted">(missing: {html.escape(uri)})</p>'
    data = base64.b64encode(store.get_bytes(uri)).decode()
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _num(v, fmt="{:.3f}") -> str:
    return '<td class="num">' + (html.escape(fmt.format(v)) if isinstance(v, int | float) else "-") + "</td>"


def _steps_table(records: dict) -> str:
    rows = ["<tr><th>step</th><th>when (UTC)</th><th>seconds</th><th>key</th><th>outputs</th></tr>"]
    for name in STEP_ORDER:
        r = records.get(name)
        if r is None:
            continue
        outs = ", ".join(html.escape(k) for k in r.get("outputs", {}))
        rows.append(f"<tr><td>{name}</td><td>{html.escape(r['started'])}</td>{_num(r['seconds'], '{:.1f}')}"
                    f"<td><code>{r['key']}</code></td><td>{outs}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _validation_report_uri(layout: Layout, records: dict) -> str | None:
    """The newest validation report: a failed run has no step record, only validate/latest.json."""
    r = records.get("validate")
    uri = layout.latest_validation
    latest = read_json(uri) if storage.storage_for(uri).exists(uri) else None
    if latest is not None and (r is None or latest.get("created", "") >= r.get("started", "")):
        return latest["report"]
    return r["outputs"]["report"] if r is not None else None


def _validation(layout: Layout, records: dict) -> str:
    uri = _validation_report_uri(layout, records)
    if uri is None:
        return '<p class="muted">Validation has not run.</p>'
    report = read_json(uri)
    ok, warned = report.get("success"), report.get("warnings") or []
    verdict = ('<span class="bad">failed</span>' if not ok else
               f'<span class="bad">passed with {len(warned)} warning(s)</span>' if warned else
               '<span class="ok">passed</span>')
    stats = report.get("statistics") or {}
    parts = [f"<p>Great Expectations suite <code>{html.escape(str(report.get('suite_name', '')))}</code>: "
             f"{verdict} ({stats.get('tiles', '?')} tiles in {stats.get('pairs', '?')} pair(s), "
             f"{stats.get('successful_expectations', '?')} of {stats.get('evaluated_expectations', '?')} "
             "expectations met).</p>"]
    for title, lines in (("Failed (stop the region)", report.get("failures") or []), ("Warnings", warned)):
        if lines:
            parts.append(f"<p>{title}:</p><ul>" + "".join(f"<li>{html.escape(str(x))}</li>" for x in lines)
                         + "</ul>")
    pairs = stats.get("pair_misregistration_px") or {}
    unknown = sorted(p for p, v in pairs.items() if v is None)
    if pairs:
        known = ", ".join(f"{html.escape(p)} {v:.1f} px" for p, v in pairs.items() if v is not None)
        parts.append(f"<p>Misregistration per pair: {known or 'none measured'}"
                     + (f"; not enough evidence to estimate (textured, agreeing patches) for {len(unknown)}: "
                        f"{html.escape(', '.join(unknown))}" if unknown else "") + ".</p>")
    docs = (report.get("paths") or {}).get("data_docs")
    if docs:
        parts.append(f'<p>Every check, tile by tile: <a href="{html.escape(docs)}">Great Expectations Data Docs'
                     f"</a> (<code>{html.escape(docs)}</code>).</p>")
    dist = report.get("domain_distance")
    if dist:
        items = "".join(f"<li>{html.escape(str(k))}: {html.escape(_fmt(v))}</li>" for k, v in dist.items()
                        if not isinstance(v, dict | list))
        parts.append(f"<p>Distance of this region's pixel statistics from the source domain "
                     f"(information, not a failure):</p><ul>{items}</ul>")
    return "".join(parts)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _metrics(records: dict) -> str:
    r = records.get("evaluate")
    if r is None:
        return '<p class="muted">No evaluation yet (labels pending?).</p>'
    metrics = read_json(r["outputs"]["metrics"])
    sets = [s for s in ("audit", "source_holdout") if any(s in m for m in metrics.values())]
    head = "<tr><th>model</th>" + "".join(
        f"<th>{s} F1</th>" + ("<th>audit F1 90% interval</th>" if s == "audit" else "")
        + f"<th>{s} IoU</th><th>{s} precision</th><th>{s} recall</th><th>{s} AP</th>"
        for s in sets) + "<th>reference</th></tr>"
    rows = [head]
    rest = ("iou", "precision", "recall", "average_precision")
    for who, m in metrics.items():
        cells = "".join(_num(m.get(s, {}).get("f1")) + (_interval_cell(m.get(s, {})) if s == "audit" else "")
                        + "".join(_num(m.get(s, {}).get(k)) for k in rest) for s in sets)
        rows.append(f"<tr><td><b>{html.escape(who)}</b></td>{cells}<td><code>{html.escape(m['model'])}"
                    "</code></td></tr>")
    out = "<table>" + "".join(rows) + "</table>"
    out += _img(r["outputs"]["confusion"], alt="confusion matrices")
    out += _img(r["outputs"]["pr_curves"], alt="precision-recall curves")
    return out


def _interval_cell(r: dict) -> str:
    """The F1 interval over audit tiles of one model, with how many tiles it rests on."""
    ci = r.get("f1_interval")
    if "per_tile" not in r:
        return '<td class="muted">-</td>'
    tiles = f"{r['tiles']} tiles, {r.get('change_tiles', 0)} with change"
    if not ci:
        return f'<td class="muted">undefined ({html.escape(tiles)})</td>'
    return f'<td class="num">{ci["low"]:.2f}-{ci["high"]:.2f} ({html.escape(tiles)})</td>'


def _evidence(d: dict) -> str:
    """The gate's audit evidence: each F1 with its interval, the gain's interval, and the rule."""
    audit = d.get("checks", {}).get("audit", {})
    if "tiles" not in audit:
        return ""
    out = [f"<p>Audit evidence: {audit['tiles']} tile(s), {audit['change_tiles']} with true change: "
           + ('<span class="ok">enough to decide</span>' if audit.get("evidence") == "enough"
              else '<span class="bad">not enough audit evidence</span>') + ".</p>"]
    rows = [(who, audit[key]) for who, key in (("candidate audit F1", "candidate"), ("champion audit F1", "champion"),
                                              ("gain (candidate - champion, paired)", "difference")) if key in audit]
    if rows:
        level = f"{rows[0][1]['confidence'] * 100:g}%"
        body = "".join(f"<tr><td>{html.escape(who)}</td>"
                       + "".join(_num(ci[k], "{:+.3f}" if "gain" in who else "{:.3f}")
                                 for k in ("estimate", "low", "high"))
                       + "</tr>" for who, ci in rows)
        out.append(f"<table><tr><th></th><th>estimate</th><th>{level} interval: low</th><th>high</th></tr>"
                   f"{body}</table>")
        margin = audit.get("margin", 0)
        out.append(f'<p class="muted">Rule: promoted only if the lower bound of the gain\'s {level} interval '
                   f"(bootstrap over audit tiles, both models on the same resamples) is above the margin "
                   f"{margin:g}" + ("; a tie never promotes.</p>" if margin >= 0 else
                                   " (a negative margin accepts a candidate up to that much worse).</p>"))
    return "".join(out)


def _decision(records: dict) -> str:
    r = records.get("promote")
    if r is None:
        return '<p class="muted">No promotion decision yet.</p>'
    d = read_json(r["outputs"]["decision"])
    verdict = ('<span class="ok">promoted to champion</span>' if d["promoted"]
               else '<span class="bad">not promoted</span> (challenger only; the champion is unchanged)')
    reasons = "".join(f"<li>{html.escape(x)}</li>" for x in d["reasons"])
    return (f"<p><code>{html.escape(d['registered_model'])}</code> version {html.escape(str(d['version']))}: "
            f"{verdict}</p><ul>{reasons}</ul>{_evidence(d)}")


def _selection(records: dict, max_tiles: int) -> str:
    r = records.get("select")
    if r is None:
        return '<p class="muted">No selection yet.</p>'
    sel = read_json(r["outputs"]["selection"])
    n = len(sel["scores"])
    out = [f"<p>{len(sel['train'])} tile(s) for fine-tuning and {len(sel['audit'])} for the audit, of {n} "
           f"({(len(sel['train']) + len(sel['audit'])) / max(n, 1):.2%} of the region), selector "
           f"<code>{html.escape(sel['method'])}</code>.</p>", _img(r["outputs"]["plot"], alt="selection")]
    export = records.get("export-labels")
    images = export["outputs"].get("images") if export else None
    cards = []
    for set_name in ("train", "audit"):
        for tile_id in sel[set_name][:max_tiles]:
            s = sel["scores"][tile_id]
            pics = ""
            if images:
                pics = (_img(storage.join(images, f"{tile_id}_pre.png"), "", "pre")
                        + _img(storage.join(images, f"{tile_id}_post.png"), "", "post"))
            cards.append(f'<div class="tile">{pics}<br><b>{html.escape(tile_id)}</b> ({set_name})<br>'
                         f'uncertainty {s["entropy"]:.3f}, predicted change {s["change_fraction"]:.1%}'
                         + (f', disagreement {s["disagreement"]:.3f}' if s.get("disagreement") is not None else "")
                         + "</div>")
    out.append('<div class="tiles">' + "".join(cards) + "</div>")
    return "".join(out)


def _maps(records: dict) -> str:
    r = records.get("predict")
    if r is None:
        return '<p class="muted">No prediction yet.</p>'
    scenes = read_json(r["outputs"]["summary"])
    out = [f"<p>Model <code>{html.escape(str(r['inputs']['model']['uri']))}</code>.</p>"]
    for s in scenes:
        out.append(f"<h3>{html.escape(s['name'])}</h3><p>changed pixels {s['changed_fraction']:.2%}, "
                   f"{s['polygons']} changed-building polygon(s). Files: <code>{html.escape(s['probability'])}"
                   f"</code>, <code>{html.escape(s['change'])}</code>, <code>{html.escape(s['polygons_uri'])}"
                   "</code></p>")
        if s.get("quicklook"):
            out.append(_img(s["quicklook"], alt=f"change map {s['name']}"))
    return "".join(out)


def render(layout: Layout, records: dict, max_tiles: int = 24) -> str:
    title = f"DAM-Net region report: {layout.region}"
    sections = [
        ("Promotion decision", _decision(records)),
        ("Metrics: candidate vs champion", _metrics(records)),
        ("Change maps", _maps(records)),
        ("Micro-label selection", _selection(records, max_tiles)),
        ("Imagery validation", _validation(layout, records)),
        ("Steps", _steps_table(records)),
    ]
    body = "".join(f"<h2>{h}</h2>{s}" for h, s in sections)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='muted'>store <code>{html.escape(layout.store)}</code>, written {when}</p>"
            f"{body}</body></html>")


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
