"""Rendering the HTML report in a real browser (headless Chromium) to a PNG.

The report is a page people look at; this checks that a browser draws it as intended
and gives the picture the README shows. It needs Debian's ``chromium`` (or
``chromium-browser`` / ``google-chrome``) on the PATH; :func:`find_chromium` says
whether one is there.
"""

from __future__ import annotations

import os
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


def screenshot(
    html_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    *,
    width: int = 1280,
    height: int = 2200,
    timeout_s: float = 120.0,
    browser: str | None = None,
) -> Path:
    """Renders ``html_path`` with headless Chromium and writes a ``width``×``height`` PNG.

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
    if png_path.exists():
        png_path.unlink()
    with tempfile.TemporaryDirectory(prefix="vitres-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png_path}",
            html_path.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if not png_path.is_file() or png_path.stat().st_size == 0:
        output = (done.stderr or done.stdout or "").strip()[-2000:]
        raise RuntimeError(f"{browser} wrote no screenshot (exit {done.returncode}): {output}")
    return png_path
