"""Rendering the HTML report in a real browser (headless Chromium) to a PNG.

The report is a page people look at; this checks that a browser draws it as intended
and gives the picture the README shows. It needs Debian's ``chromium`` (or
``chromium-browser`` / ``google-chrome``) on the PATH; :func:`find_chromium` says
whether one is there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on the PATH, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


_MEASURE = (
    "<script>addEventListener('load',function(){document.body.setAttribute("
    "'data-page-height',String(Math.ceil(document.documentElement.scrollHeight)))})</script>"
)


def _chromium(
    browser: str, profile: str, *args: str, timeout_s: float
) -> subprocess.CompletedProcess:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def page_height(
    html_path: Path, width: int, browser: str, profile: str, timeout_s: float
) -> int | None:
    """The rendered height of the page at ``width`` px (a copy of it measures itself on
    load; Chromium prints the DOM), or ``None`` if it could not be read."""
    text = html_path.read_text(encoding="utf-8")
    probe = html_path.with_name(f".{html_path.stem}.measure.html")
    probe.write_text(text.replace("</body>", _MEASURE + "</body>", 1), encoding="utf-8")
    try:
        done = _chromium(
            browser,
            profile,
            f"--window-size={width},800",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
            timeout_s=timeout_s,
        )
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r'data-page-height="(\d+)"', done.stdout or "")
    return int(match.group(1)) if match else None


def screenshot(
    html_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    *,
    width: int = 1280,
    height: int | None = None,
    timeout_s: float = 120.0,
    browser: str | None = None,
) -> Path:
    """Renders ``html_path`` with headless Chromium and writes a PNG of the whole page
    (``height=None``: the page's own height, measured first; capped at 16,000 px), or of
    the first ``height`` px.

    Raises:
        FileNotFoundError: no browser, or no such HTML file.
        RuntimeError: the browser failed or wrote no picture (its output is in the message).
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"no HTML file at {html_path}")
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError(
            "no Chromium found to render the report; install it (Debian: apt-get install chromium)"
        )
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.touch()  # OSError here (not a silent browser failure) for a place that is not writable
    png_path.unlink()
    with tempfile.TemporaryDirectory(prefix="vitres-chromium-") as profile:
        if height is None:
            measured = page_height(html_path, width, browser, profile, timeout_s)
            height = min(16000, measured) if measured else 2200
        done = _chromium(
            browser,
            profile,
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            html_path.as_uri(),
            timeout_s=timeout_s,
        )
    if not png_path.is_file() or png_path.stat().st_size == 0:
        output = (done.stderr or done.stdout or "").strip()[-2000:]
        raise RuntimeError(f"{browser} wrote no screenshot (exit {done.returncode}): {output}")
    return png_path
