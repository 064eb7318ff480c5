"""The study's human-readable outputs: a markdown table and a self-contained HTML page with an inline SVG plot of
held-out bits/byte against training FLOPs (one curve per arm; no scripts, no network)."""

from __future__ import annotations

import html

from pipeline.io.storage import join, write_bytes_atomic

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22")


def _sources(study: dict) -> list[str]:
    names = set()
    for arm in study["arms"]:
        names.update(k.split("/", 1)[1] for k in arm["final"] if k.startswith("val_bits_per_byte/"))
    return sorted(names)


def markdown_table(study: dict) -> str:
    sources = _sources(study)
    head = ["arm", "bytes/patch", "steps", "training FLOPs", "held-out bits/byte", *sources]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in sorted(study["arms"], key=lambda a: a["final"].get("val_bits_per_byte", float("inf"))):
        final = arm["final"]
        cells = [arm["name"], f"{arm['bytes_per_patch']:.2f}", str(arm["steps"]), f"{arm['flops_total']:.3e}",
                 f"{final.get('val_bits_per_byte', float('nan')):.4f}",
                 *(f"{final.get('val_bits_per_byte/' + s, float('nan')):.4f}" for s in sources)]
        lines.append("| " + " | ".join(cells) + " |")
    entropy = study.get("entropy_model") or {}
    notes = [f"Budget {study['flops_budget']:.3e} training FLOPs per arm (size `{study['size']}`); held-out "
             f"bits/byte on the same documents for every arm; columns after it are per source."]
    if entropy.get("flops_per_byte"):
        notes.append(f"Entropy model: {entropy['flops_per_byte'] / 1e6:.2f} MFLOP per byte of preprocessing, "
                     f"{entropy['preprocessing_flops']:.3e} FLOPs for the dataset.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def svg_plot(study: dict, width: int = 720, height: int = 420) -> str:
    """Held-out bits/byte (y) against training FLOPs (x), one polyline with markers per arm, and a legend."""
    left, right, top, bottom = 70, 170, 20, 50
    points = [(p["flops_total"], p["val_bits_per_byte"]) for a in study["arms"] for p in a["curve"]]
    if not points:
        return "<p>no validation points</p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 * 1.01 + 1), (y1 if y1 > y0 else y0 + 0.01)
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * plot_w

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>']
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{xv:.2e}</text>')
        parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3f}</text>')
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#ddd"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">training FLOPs</text>')
    parts.append(f'<text x="16" y="{top + plot_h / 2}" transform="rotate(-90 16 {top + plot_h / 2})" '
                 f'text-anchor="middle">held-out bits/byte</text>')
    for i, arm in enumerate(study["arms"]):
        color = COLORS[i % len(COLORS)]
        xy = [(sx(p["flops_total"]), sy(p["val_bits_per_byte"])) for p in arm["curve"]]
        if xy:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in xy]
        ly = top + 14 + 18 * i
        parts.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 32}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{left + plot_w + 38}" y="{ly}">{html.escape(arm["name"])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def html_page(study: dict) -> str:
    table = markdown_table(study).split("\n\n")[0].splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if not line.startswith("|---")]
    cells = "".join("<tr>" + "".join(f"<{'th' if r == 0 else 'td'}>{html.escape(c)}</{'th' if r == 0 else 'td'}>"
                                     for c in row) + "</tr>" for r, row in enumerate(rows))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>blt study ({html.escape(study['size'])})"
            f"</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
            f"td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>"
            f"<h1>Held-out bits/byte vs training FLOPs</h1>{svg_plot(study)}<table>{cells}</table>"
            f"<p>Budget {study['flops_budget']:.3e} training FLOPs per arm.</p></body></html>\n")


def write_reports(study: dict, output: str) -> None:
    write_bytes_atomic(join(output, "study.md"), markdown_table(study).encode())
    write_bytes_atomic(join(output, "study.html"), html_page(study).encode())
