"""Self-contained HTML pages: a sweep's ``report.html`` and ``attn translate --attention-html``.

One file that opens from disk: inline CSS, inline SVG and a few lines of inline JavaScript;
no network, no server, no library. Pure text building, so it is tested without a browser (the
browser test renders it too: tests/test_html_pages.py).

    table       the leaderboard; a click on a column header sorts by it (again: reversed)
    curves      the training NLL of every point against the step, one chart
    heatmap     attention [target, source] as a grid of cells, darker = stronger; hovering a
                target piece colours the source pieces by the weight it gives them
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; } h3 { font-size: 15px; }
table.sortable { border-collapse: collapse; font-size: 13px; }
table.sortable th, table.sortable td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
table.sortable th { background: #f0f0f0; cursor: pointer; user-select: none; }
table.sortable th[data-order=asc]::after { content: " \\25B2"; }
table.sortable th[data-order=desc]::after { content: " \\25BC"; }
table.sortable td:first-child, table.sortable th:first-child { text-align: left; }
.cards { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px; max-width: 100%; overflow-x: auto; }
.card p { margin: 4px 0; font-size: 13px; }
svg text { font-size: 11px; }
svg.attention text.tgt { cursor: default; }
.muted { color: #777; font-size: 13px; }
"""

# Sorting: numbers as numbers, the rest as text; empty cells last. Hover: a target piece's
# weights (the row of data-weights) colour the source pieces.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const order = th.dataset.order === "desc" ? "asc" : "desc";
  th.closest("tr").querySelectorAll("th").forEach(other => delete other.dataset.order);
  th.dataset.order = order;
  const key = row => { const t = row.cells[column].textContent.trim(); const n = parseFloat(t);
                       return t === "" ? null : (isNaN(n) ? t : n); };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return order === "asc" ? c : -c;
  });
  rows.forEach(row => body.appendChild(row));
}));
document.querySelectorAll("svg.attention").forEach(svg => {
  const weights = JSON.parse(svg.dataset.weights);
  const sources = svg.querySelectorAll("text.src");
  svg.querySelectorAll("text.tgt").forEach(label => {
    label.addEventListener("mouseenter", () => {
      const row = weights[+label.dataset.i], top = Math.max(...row, 1e-9);
      sources.forEach((s, j) => { s.style.fill = `rgba(200, 30, 30, ${0.25 + 0.75 * row[j] / top})`;
                                  s.style.fontWeight = row[j] >= 0.5 * top ? "bold" : ""; });
    });
    label.addEventListener("mouseleave", () => sources.forEach(s => { s.style.fill = ""; s.style.fontWeight = ""; }));
  });
});
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body`` (already HTML)."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")


def table(columns: Sequence[str], rows: Sequence[dict]) -> str:
    """A sortable table: one row per mapping, its values under ``columns`` (missing: empty)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>\n"
                   for row in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def heatmap(src: Sequence[str], tgt: Sequence[str], weights: Sequence[Sequence[float]], cell: int = 16) -> str:
    """Attention [len(tgt), len(src)] as an SVG grid (source pieces above, target pieces left)."""
    if len(weights) != len(tgt) or any(len(row) != len(src) for row in weights):
        raise ValueError(f"weights must be [{len(tgt)} target pieces, {len(src)} source pieces]")
    left = 8 + 7 * max((len(t) for t in tgt), default=1)
    top = 8 + 6 * max((len(s) for s in src), default=1)
    width, height = left + cell * len(src) + 4, top + cell * len(tgt) + 4
    parts = [f'<svg class="attention" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f"data-weights='{json.dumps([[round(float(w), 3) for w in row] for row in weights])}'>"]
    for j, piece in enumerate(src):
        x, y = left + cell * j + cell // 2 + 4, top - 4
        parts.append(f'<text class="src" x="{x}" y="{y}" transform="rotate(-60 {x} {y})">{html.escape(piece)}</text>')
    for i, piece in enumerate(tgt):
        parts.append(f'<text class="tgt" data-i="{i}" x="{left - 4}" y="{top + cell * i + cell * 0.75}" '
                     f'text-anchor="end">{html.escape(piece)}</text>')
        for j, weight in enumerate(weights[i]):
            shade = min(1.0, max(0.0, float(weight)))
            parts.append(f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" height="{cell}" '
                         f'fill="#000" fill-opacity="{shade:.3f}" stroke="#eee"/>')
    parts.append("</svg>")
    return "".join(parts)


def curves(series: dict[str, Sequence[tuple[float, float]]], ylabel: str, width: int = 720, height: int = 320) -> str:
    """Line chart: one line per name, ``series`` of (x, y) points, with axes and a legend."""
    points = [p for line in series.values() for p in line if math.isfinite(p[1])]
    if not points:
        return '<p class="muted">no curves recorded</p>'
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 56, 200, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(x: float, y: float) -> str:
        return f"{left + plot_w * (x - x0) / (x1 - x0):.1f},{top + plot_h * (1 - (y - y0) / (y1 - y0)):.1f}"

    parts = [f'<svg class="curves" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{left - 6}" y="{top + plot_h * (1 - k / 4) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
        x = x0 + (x1 - x0) * k / 4
        parts.append(f'<text x="{left + plot_w * k / 4:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">step</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
                 f'text-anchor="middle">{html.escape(ylabel)}</text>')
    for n, (name, line) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        kept = [p for p in line if math.isfinite(p[1])]
        if kept:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                         f'points="{" ".join(xy(x, y) for x, y in kept)}"/>')
        parts.append(f'<line x1="{width - right + 12}" x2="{width - right + 32}" y1="{top + 10 + 16 * n}" '
                     f'y2="{top + 10 + 16 * n}" stroke="{colour}" stroke-width="3"/>'
                     f'<text x="{width - right + 38}" y="{top + 14 + 16 * n}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def example_card(name: str, translation: str, src: Sequence[str], tgt: Sequence[str],
                 weights: Sequence[Sequence[float]] | None) -> str:
    """One model's translation of one sentence, with its attention map where it has one."""
    drawn = heatmap(src, tgt, weights) if weights is not None and tgt else '<p class="muted">no attention</p>'
    return (f'<div class="card"><h3>{html.escape(name)}</h3><p>{html.escape(translation)}</p>{drawn}</div>')
