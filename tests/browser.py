"""Headless Chromium for the browser tests (tests/test_study.py, tests/test_jupyterlab_browser.py).

Debian's ``chromium`` + ``chromium-driver`` (``apt-get install chromium chromium-driver``) driven by selenium
(the ``dev`` extra). Without them the tests skip with the reason; with ``CORUN_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs them) they fail instead, so CI cannot pass by skipping.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")


def missing(reason: str):
    """Skip the test for ``reason``; fail instead under CORUN_REQUIRE_BROWSER=1 (CI installs everything)."""
    if os.environ.get("CORUN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (CORUN_REQUIRE_BROWSER=1: .ci/run should have installed it)")
    pytest.skip(reason)


def chromium_paths() -> tuple[str, str]:
    """(browser binary, chromedriver), or skip naming what is missing and how to install it."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium not installed (pip install -e '.[dev]')")
    browser = next((p for p in (shutil.which(b) for b in CHROMIUM_BINARIES) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing("headless Chromium not found (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@contextlib.contextmanager
def chromium(download_dir: Path | None = None, width: int = 1400, height: int = 1000):
    """A headless Chromium session (selenium WebDriver); downloads go to ``download_dir``. Always quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--disable-background-networking",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    if download_dir is not None:
        opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                               "download.prompt_for_download": False,
                                               "download.directory_upgrade": True})
    # an explicit driver path: selenium's own driver manager would otherwise try to download one
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    try:
        if download_dir is not None:  # headless Chromium also needs to be told over CDP
            driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                   {"behavior": "allow", "downloadPath": str(download_dir)})
        yield driver
    finally:
        driver.quit()
