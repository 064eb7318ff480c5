"""Headless Chromium for the dashboard tests: render a page, read the attributes its script set, screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium_binary() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (the README's test command installs Debian's chromium)")
    return browser


def render_in_chromium(html_path: str, out_dir: Path, width: int, height: int = 1600) -> tuple[dict, Path]:
    """(body data-* attributes after the page's script ran, screenshot path) at one window width."""
    browser = chromium_binary()
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--window-size={width},{height}"]
    dom = subprocess.run([browser, *flags, f"--user-data-dir={out_dir / f'profile-dom-{width}'}", "--dump-dom",
                          f"file://{html_path}"], capture_output=True, text=True, timeout=90).stdout
    body = dom.split("<body", 1)[1].split(">", 1)[0]
    attrs = {k: v.replace("&quot;", '"').replace("&amp;", "&")
             for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', body)}
    shot = out_dir / f"dashboard-{width}.png"
    subprocess.run([browser, *flags, f"--user-data-dir={out_dir / f'profile-shot-{width}'}", f"--screenshot={shot}",
                    f"file://{html_path}"], capture_output=True, timeout=90)
    return attrs | {"dom": dom}, shot


def png_has_content(path: Path) -> bool:
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    return len(set(pixels[:: max(1, len(pixels) // 5000)])) > 20
