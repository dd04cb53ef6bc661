"""Draw the ablation table as a grouped bar chart (SVG, no plotting library needed).

    .venv/bin/python bench/ablation.py --styles ... --json runs/ablation.json
    .venv/bin/python bench/plot_ablation.py runs/ablation.json docs/img/ablation.svg
    .venv/bin/python bench/plot_ablation.py runs/real.json docs/img/real.svg   # bench/real.py --json

One group of bars per target style, one bar per row (target test F1, %), whiskers for the
spread over seeds (mean +- standard deviation), and a dashed line at 90 % of the oracle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from html import escape
from pathlib import Path

#: Bar colours per row (rows not listed are grey).
COLOURS = {
    "source only": "#9e9e9e",
    "adversarial adaptation": "#64b5f6",
    "adapt + MLFT random 0.3 %": "#ffcc80",
    "adapt + MLFT ours 0.3 %": "#ef6c00",
    "adapt + MLFT random 1 %": "#a5d6a7",
    "adapt + MLFT ours 1 %": "#2e7d32",
    "supervised fine-tune 10 %": "#ba68c8",
    "oracle (all target labels)": "#424242",
    # bench/real.py's rows
    "adaptation": "#64b5f6",
    "MLFT random 1": "#fff3e0", "MLFT random 2": "#ffcc80", "MLFT random 4": "#ffa726",
    "MLFT ours 1": "#c8e6c9", "MLFT ours 2": "#66bb6a", "MLFT ours 4": "#2e7d32",
    "MLFT 1 tile without change": "#e57373",
    "oracle (all pool labels)": "#424242",
}
ORACLES = ("oracle (all target labels)", "oracle (all pool labels)")


def f1_stats(row: dict) -> tuple[float, float]:
    """(mean, standard deviation) of a row's F1 in %, over its seeds."""
    vals = [100 * m["f1"] for m in row["metrics"]]
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def svg(results: dict[str, list[dict]], title: str = "") -> str:
    """The chart of ``{style: [row, ...]}`` (rows as ``bench/ablation.py --json`` writes them)."""
    if not results:
        raise ValueError("no results to plot")
    names = list(dict.fromkeys(r["name"] for rows in results.values() for r in rows))
    bar, gap, left, top, height = 14, 26, 48, 40, 260
    group = bar * len(names)
    title = title or "Target test F1 (%) per row and style"
    width = max(left + len(results) * (group + gap) + 20, 60 + 7 * len(title), 560)  # room for title, legend
    legend_h = 18 * ((len(names) + 1) // 2)
    total_h = top + height + 40 + legend_h
    y = lambda v: top + height * (1 - v / 100)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{total_h}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="13">{escape(title)}</text>']
    for tick in range(0, 101, 20):
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for g, (style, rows) in enumerate(results.items()):
        x0 = left + gap / 2 + g * (group + gap)
        by = {r["name"]: r for r in rows}
        for i, name in enumerate(names):
            if name not in by:
                continue
            mean, sd = f1_stats(by[name])
            x = x0 + i * bar
            out.append(f'<rect x="{x:.1f}" y="{y(mean):.1f}" width="{bar - 2}" height="{y(0) - y(mean):.1f}" '
                       f'fill="{COLOURS.get(name, "#bdbdbd")}"><title>{escape(style)}: {escape(name)} '
                       f'{mean:.1f} ± {sd:.1f}</title></rect>')
            if sd > 0:
                cx = x + (bar - 2) / 2
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(min(100, mean + sd)):.1f}" '
                           f'y2="{y(max(0, mean - sd)):.1f}" stroke="black"/>')
        oracle = next((by[o] for o in ORACLES if o in by), None)
        if oracle is not None:
            target = 0.9 * f1_stats(oracle)[0]
            out.append(f'<line x1="{x0 - 3:.1f}" x2="{x0 + group + 1:.1f}" y1="{y(target):.1f}" '
                       f'y2="{y(target):.1f}" stroke="#c62828" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x0 + group / 2:.1f}" y="{top + height + 16}" text-anchor="middle">'
                   f'{escape(style)}</text>')
    ly = top + height + 34
    for i, name in enumerate([*names, "90 % of oracle"]):
        lx, row_y = left + (i % 2) * 260, ly + 18 * (i // 2)
        if name == "90 % of oracle":
            out.append(f'<line x1="{lx}" x2="{lx + 12}" y1="{row_y - 4}" y2="{row_y - 4}" stroke="#c62828" '
                       'stroke-dasharray="4 3"/>')
        else:
            out.append(f'<rect x="{lx}" y="{row_y - 10}" width="12" height="12" '
                       f'fill="{COLOURS.get(name, "#bdbdbd")}"/>')
        out.append(f'<text x="{lx + 18}" y="{row_y}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="file written by bench/ablation.py --json or bench/real.py --json")
    ap.add_argument("out", help="SVG file to write")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    try:
        data = json.loads(Path(args.json).read_text())
        results = data["results"]
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"error: {args.json}: not an ablation result file ({exc})")
    Path(args.out).write_text(svg(results, args.title))
    print(f"wrote {args.out} ({len(results)} style(s))")


if __name__ == "__main__":
    main()
