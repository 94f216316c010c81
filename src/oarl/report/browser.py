"""The heat map in a real browser: headless Chromium driven through ChromeDriver by Selenium.

    find_browser()                   (chromium, chromedriver) paths, or BrowserUnavailable saying what to install
    open_page(html_path)             a context manager yielding a Selenium WebDriver showing the page
    screenshot(html_path, png_path)  the whole page (not only the window) as a PNG, through the DevTools protocol

Nothing is downloaded: Chromium and ChromeDriver must be installed (Debian/Ubuntu: ``apt install chromium
chromium-driver``; elsewhere set OARL_CHROMIUM and OARL_CHROMEDRIVER to the two executables), and Selenium too
(``pip install 'oarl[browser]'``). Without them only the PNG is unavailable: the HTML page needs no browser tooling.
Each page gets a fresh, temporary Chromium profile.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

# Headless, no sandbox (containers, root), no GPU, and no network traffic of Chromium's own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
INSTALL_HINT = (
    "install Chromium and ChromeDriver (Debian/Ubuntu: `apt install chromium chromium-driver`; elsewhere "
    "set OARL_CHROMIUM and OARL_CHROMEDRIVER to the two executables) and Selenium "
    "(`pip install 'oarl[browser]'`); the HTML heat map needs none of them"
)


class BrowserUnavailable(RuntimeError):
    """Chromium, ChromeDriver or Selenium is missing; the message says which and how to install it."""


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) executables: $OARL_CHROMIUM / $OARL_CHROMEDRIVER, else the first of chromium,
    chromium-browser, google-chrome and chromedriver on PATH. Raises BrowserUnavailable naming what is missing."""
    missing = []
    try:
        import selenium  # noqa: F401  (lazy: selenium is an optional dependency)
    except ImportError:
        missing.append("selenium")
    chromium = os.environ.get("OARL_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("OARL_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not Path(chromium).exists():
        missing.append("chromium")
    if not driver or not Path(driver).exists():
        missing.append("chromedriver")
    if missing:
        raise BrowserUnavailable(f"{', '.join(missing)} not found: {INSTALL_HINT}")
    return chromium, driver


@contextlib.contextmanager
def open_page(html_path: str | Path, width: int = 1100, height: int = 900):
    """A Selenium WebDriver (headless Chromium, window width x height CSS pixels) showing the file html_path."""
    # lazy: selenium is an optional dependency (`pip install 'oarl[browser]'`)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = find_browser()
    with tempfile.TemporaryDirectory(prefix="oarl-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            driver.get(Path(html_path).resolve().as_uri())
            yield driver
        finally:
            driver.quit()


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1100) -> Path:
    """Render html_path in headless Chromium and write the whole page as a PNG (width CSS pixels wide)."""
    with open_page(html_path, width=width) as driver:
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
    Path(png_path).write_bytes(base64.b64decode(shot["data"]))
    return Path(png_path)
