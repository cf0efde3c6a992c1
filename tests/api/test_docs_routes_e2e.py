"""GET /docs works offline: Swagger UI comes from the package (api/static/swagger-ui), the page
names no external URL, and real Chromium with every non-loopback fetch blocked renders the
operations from /openapi.json without a JavaScript error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from render_gateway.api.docs_routes import STATIC_PATH, SWAGGER_UI_DIR

from support.browser import js_errors, open_page, save_screenshot
from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import WorkerProcess

ASSETS = {
    "swagger-ui-bundle.js": ("text/javascript", "application/javascript"),
    "swagger-ui.css": ("text/css",),
    "favicon-32x32.png": ("image/png",),
}


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path_factory.mktemp("docs"), ONE_WORKER_CONFIG.format(worker=worker.url)
    )
    yield process
    stop_gateway(process)


def test_docs_names_no_external_url_and_serves_its_assets(gateway: GatewayProcess) -> None:
    page = httpx.get(f"{gateway.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert re.findall(r"https?://", page.text) == [], page.text
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    assert referenced == {f"{STATIC_PATH}/{name}" for name in ASSETS}
    assert "url: '/openapi.json'" in page.text
    for name, content_types in ASSETS.items():
        asset = httpx.get(f"{gateway.url}{STATIC_PATH}/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].split(";")[0] in content_types, asset.headers
        assert asset.content == (SWAGGER_UI_DIR / name).read_bytes()
    missing = httpx.get(f"{gateway.url}{STATIC_PATH}/nothing-here.js")
    assert missing.status_code == 404
    # FastAPI's CDN viewers are off; the document itself is still served.
    assert httpx.get(f"{gateway.url}/redoc").status_code == 404
    assert httpx.get(f"{gateway.url}/openapi.json").json()["paths"]["/queue"]


def test_the_vendored_files_are_in_the_package_with_their_licence() -> None:
    for name in (*ASSETS, "LICENSE", "NOTICE", "README.md"):
        assert (SWAGGER_UI_DIR / name).is_file(), name
    assert "Apache License" in (SWAGGER_UI_DIR / "LICENSE").read_text()
    assert "5.33.1" in (SWAGGER_UI_DIR / "swagger-ui-bundle.js").read_text()[:2_000_000]


def test_docs_render_in_chromium_with_the_network_blocked(
    browser: WebDriver, gateway: GatewayProcess, tmp_path: Path
) -> None:
    open_page(browser, f"{gateway.url}/docs")
    queue = '.opblock .opblock-summary-path[data-path="/queue"]'
    try:
        WebDriverWait(browser, 30).until(
            lambda driver: driver.find_elements(By.CSS_SELECTOR, queue)
        )
    except Exception:
        save_screenshot(browser, tmp_path / "docs.png")
        raise
    operations = browser.find_elements(By.CSS_SELECTOR, ".opblock")
    assert len(operations) > 10  # the whole API, not one stray block
    assert browser.title == "Render API"
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper")
    assert js_errors(browser) == []
