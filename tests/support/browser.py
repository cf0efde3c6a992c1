"""Headless Chromium for the browser tests (the console, /docs): Debian's chromium driven through
Debian's chromedriver by Selenium, with nothing reachable but 127.0.0.1.

Every external fetch fails (a proxy that does not exist for everything but loopback, and a host
resolver that knows no other name), so a page that would need a CDN shows it in the test, as it
would on an offline machine. The browser's console log is kept (``goog:loggingPrefs``) so that a
test can assert that a page raised no JavaScript error: :func:`js_errors`.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Fixed, so that layouts (and screenshots) are the same on every machine.
WINDOW_SIZE = (1280, 900)
# Port 9 (discard) on loopback: nothing listens there, so any proxied request fails at once.
DEAD_PROXY = "127.0.0.1:9"
LOOPBACK = ("127.0.0.1", "localhost")
SCRIPT_TIMEOUT_SECONDS = 30
PAGE_LOAD_TIMEOUT_SECONDS = 30


def missing_browser() -> str | None:
    """Why the browser tests are skipped here (no Chromium), or None when they run. A Chromium
    without its driver fails instead: the two come together (make system-deps)."""
    if not CHROMIUM.exists():
        return (
            f"{CHROMIUM} is absent: install Debian's chromium and chromium-driver "
            "(make system-deps)"
        )
    return None


def chromium_options(profile_dir: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
        f"--user-data-dir={profile_dir}",
        "--no-sandbox",  # CI runs the tests as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers have a small /dev/shm
        "--disable-gpu",
        # No network beyond loopback: everything else goes to a proxy that is not there...
        f"--proxy-server={DEAD_PROXY}",
        f"--proxy-bypass-list={';'.join(LOOPBACK)}",
        # ...and no other name resolves, should anything go around the proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        # Chromium's own background traffic (updates, sync, safe browsing) stays off.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--metrics-recording-only",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def start_browser(profile_dir: Path) -> WebDriver:
    """Headless Chromium with its profile in ``profile_dir`` (the caller removes it)."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            raise RuntimeError(
                f"{program} is absent: install Debian's chromium-driver (make system-deps)"
            )
    # The driver's path is given, so Selenium Manager never looks for (or downloads) one.
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=chromium_options(profile_dir))
    driver.set_window_size(*WINDOW_SIZE)
    driver.set_script_timeout(SCRIPT_TIMEOUT_SECONDS)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_SECONDS)
    return driver


@contextmanager
def running_browser() -> Iterator[WebDriver]:
    """A browser for the duration of the block, its profile removed after it."""
    profile_dir = Path(tempfile.mkdtemp(prefix="render-chromium-"))
    try:
        driver = start_browser(profile_dir)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile_dir, ignore_errors=True)


def console_entries(driver: WebDriver) -> list[dict[str, Any]]:
    """The browser console's entries since the last read (reading empties the log)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return entries


def js_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The SEVERE console entries since the last read: uncaught exceptions, console.error, and
    failed loads (a blocked external fetch shows here as net::ERR_...)."""
    return [entry for entry in console_entries(driver) if entry.get("level") == "SEVERE"]


def open_page(driver: WebDriver, url: str) -> None:
    """Load ``url`` with a clean console log, so :func:`js_errors` afterwards is this page's."""
    console_entries(driver)
    driver.delete_all_cookies()
    driver.get(url)


def save_screenshot(driver: WebDriver, path: Path) -> Path:
    """Write the viewport as a PNG to ``path`` (parents created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"the browser could not write a screenshot to {path}")
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the test output stays readable
        pass


@contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """``directory``'s files over HTTP on 127.0.0.1 (a free port), for pages and modules the
    browser loads; yields the base URL (``http://127.0.0.1:<port>``). Loopback http is a secure
    context, so WebCrypto works there."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="static-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
