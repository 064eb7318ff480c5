"""A self-contained ``dashboard.html`` for ``stats.json``: the page, its CSS and its JavaScript are package files
(``pipeline/stats/dashboard_assets/``; ``charts.js`` is shared with the run dashboard), inlined at render time
together with the statistics as JSON.

Nothing is fetched over the network, so the file can be opened from disk, an object store or ``blt dashboard
--serve``. The script marks ``<body>`` with ``data-rendered`` (charts and example documents drawn),
``data-errors`` (script errors) and ``data-overflow`` (elements sticking out of their card), which the browser
test reads.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from importlib import resources


@cache
def asset(name: str) -> str:
    """One file of ``pipeline/stats/dashboard_assets`` as text."""
    text = resources.files("pipeline.stats").joinpath("dashboard_assets", name).read_text(encoding="utf-8")
    if not name.endswith(".html") and "</script" in text.lower():
        raise ValueError(f"dashboard asset {name} must not contain '</script' (it is inlined into a <script>)")
    return text


def render_dashboard(stats: dict) -> str:
    # "<" never appears in JSON outside strings, and "\u003c" inside one keeps the payload from closing its <script>.
    payload = json.dumps(stats, separators=(",", ":")).replace("<", "\\u003c")
    values = {
        "title": html.escape(f"BLT dataset — {stats['dataset']}"),
        "generated": html.escape(str(stats.get("generated"))),
        "entropy_model": html.escape(str((stats.get("entropy_model") or {}).get("id"))),
        "default_patch_set": html.escape(str(stats.get("default_patch_set"))),
        "css": asset("dashboard.css"),
        "js": asset("charts.js") + "\n" + asset("dashboard.js"),
        "payload": payload,
    }
    # One pass over the template only: the inlined CSS, JS and JSON are never scanned for placeholders.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], asset("template.html"))
