"""The web console in a real browser (Debian's headless Chromium) against a live gateway and
worker: sign in, every page renders real data with no JavaScript error, a chart's numbers are
the API's, a customer sees only their own data, and the job page's in-browser proof check
passes on the real proof and fails on an altered one.

With ``RENDER_CONSOLE_SCREENSHOTS=DIR`` each page is also saved as DIR/<page>.png (make
screenshots writes docs/console/)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from support.browser import js_errors
from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, bearer, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

CONFIG = (
    ONE_WORKER_CONFIG
    + """
[gateway.audit]
batch_records = 2
batch_seconds = 0.3

[gateway.jwt]
algorithms = ["HS256"]
hs256_secret_file = "{secret_file}"
"""
)
JWT_SECRET = "console-test-secret-of-at-least-32-bytes"
SMALL = {"width": 64, "height": 64, "steps": 2}
QUEUED = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i", **SMALL}
SCREENSHOTS = os.environ.get("RENDER_CONSOLE_SCREENSHOTS")


class Traffic:
    """What the module's gateway served: two customers' sync requests and queued jobs."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.keys = {name: gateway.new_key(name) for name in ("ada", "bob")}
        self.jobs: dict[str, list[str]] = {"ada": [], "bob": []}
        for name, key in self.keys.items():
            for seed in range(2):
                response = httpx.post(
                    f"{gateway.url}/image/sd/tiny/t2i", headers=bearer(key), timeout=60,
                    json={"prompt": f"a fox for {name}", "seed": seed, **SMALL},
                )  # fmt: skip
                assert response.status_code == 200, response.text
            queued = httpx.post(
                f"{gateway.url}/queue", headers={**bearer(key), "Prefer": "wait=60"},
                timeout=90, json={**QUEUED, "prompt": f"a queued fox for {name}"},
            )  # fmt: skip
            assert queued.status_code == 200 and queued.json()["status"] == "complete"
            self.jobs[name].append(queued.json()["id"])
        self._wait_counted(requests=3)

    def _wait_counted(self, requests: int) -> None:
        """Until the hot path holds each customer's requests (usage is written afterwards)."""
        deadline = time.monotonic() + 60
        admin = bearer(self.gateway.admin_key)
        for name in self.keys:
            while True:
                usage = httpx.get(
                    f"{self.gateway.url}/usage", headers=admin, params={"customer_id": name}
                ).json()
                if usage["totals"]["requests"] >= requests or time.monotonic() > deadline:
                    assert usage["totals"]["requests"] >= requests, usage
                    break
                time.sleep(0.2)


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    data = tmp_path_factory.mktemp("console")
    secret_file = data / "jwt.secret"
    secret_file.write_text(JWT_SECRET)
    secret_file.chmod(0o600)
    process = start_gateway(data, CONFIG.format(worker=worker.url, secret_file=secret_file))
    yield process
    stop_gateway(process)
    wait_idle(worker)


@pytest.fixture(scope="module")
def traffic(gateway: GatewayProcess) -> Traffic:
    return Traffic(gateway)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    # A page that navigates (sign-in moves on to the first page) leaves stale elements behind.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, 0.1, ignored).until(condition)


def sign_in(driver: WebDriver, gateway: GatewayProcess, key: str) -> None:
    driver.get(f"{gateway.url}/console")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{gateway.url}/console")
    js_errors(driver)  # read (and so forget) what earlier pages logged
    driver.find_element(By.ID, "token").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    wait_for(driver, lambda d: d.current_url != f"{gateway.url}/console")
    wait_for(driver, lambda d: d.find_element(By.ID, "who").text != "")


def shown(driver: WebDriver, name: str) -> None:
    """The page is settled: no error shown and no JavaScript error logged; saved if asked."""
    problem = driver.find_element(By.ID, "problem")
    assert not problem.is_displayed(), f"{name}: {problem.text}"
    errors = js_errors(driver)
    assert errors == [], (name, errors)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        # The whole page, not just the window (Chrome's DevTools protocol captures past it).
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})  # type: ignore[attr-defined]
        size = {k: metrics["cssContentSize"][k] for k in ("width", "height")}
        shot = driver.execute_cdp_cmd(  # type: ignore[attr-defined]
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True,
             "clip": {"x": 0, "y": 0, "scale": 1, **size}},
        )  # fmt: skip
        (Path(SCREENSHOTS) / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def points(driver: WebDriver, chart: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' circle.point')]"
        ".map(c => ({series: c.dataset.series, x: c.dataset.x, y: c.dataset.y}))",
        f"#{chart}",
    )
    return found


def listed_jobs(driver: WebDriver) -> set[str]:
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-job]"))
    rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-job]")
    return {row.get_attribute("data-job") or "" for row in rows}


def shown_problem(driver: WebDriver) -> str:
    """The error code the page shows, once it shows one."""
    box = wait_for(driver, lambda d: (b := d.find_element(By.ID, "problem")).is_displayed() and b)
    return str(box.get_attribute("data-code"))


def attribute(driver: WebDriver, element_id: str, name: str) -> str | None:
    value: str | None = driver.find_element(By.ID, element_id).get_attribute(name)
    return value


def data_of(driver: WebDriver, selector: str, name: str) -> list[str | None]:
    return [node.get_attribute(name) for node in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_an_admin_signs_in_and_every_page_shows_real_data(
    browser: WebDriver, gateway: GatewayProcess, traffic: Traffic
) -> None:
    sign_in(browser, gateway, gateway.admin_key)
    wait_for(browser, lambda d: d.current_url.endswith("/console/overview"))
    wait_for(browser, lambda d: len(points(d, "chart-requests")) > 0)
    wait_for(browser, lambda d: "sd/tiny" in d.find_element(By.ID, "latency").text)
    lanes = browser.find_element(By.ID, "queue").text
    assert "high" in lanes and "normal" in lanes and "low" in lanes
    shown(browser, "overview")

    browser.get(f"{gateway.url}/console/backends")
    health = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-healthy]"))
    assert health[0].get_attribute("data-healthy") == "true"
    row = browser.find_element(By.CSS_SELECTOR, "#backends tbody tr").text
    assert "w1" in row and "closed" in row and "tiny" in row
    shown(browser, "backends")

    browser.get(f"{gateway.url}/console/jobs")
    assert set(traffic.jobs["ada"] + traffic.jobs["bob"]) <= listed_jobs(
        browser
    )  # an admin sees everyone's
    shown(browser, "jobs")

    browser.get(f"{gateway.url}/console/usage")
    wait_for(browser, lambda d: "admin" in d.find_element(By.ID, "totals").text)
    shown(browser, "usage")

    browser.get(f"{gateway.url}/console/integrity")
    verdict = wait_for(browser, lambda d: d.find_element(By.ID, "checkpoint-verdict"))
    assert "verified in this browser" in verdict.text
    browser.find_element(By.ID, "verify-now").click()
    result = wait_for(browser, lambda d: d.find_element(By.ID, "verification-ok"), timeout=60)
    assert result.get_attribute("data-ok") == "true"
    shown(browser, "integrity")

    browser.get(f"{gateway.url}/console/capacity")
    card = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "section.card[data-model]"))
    assert "tiny" in card.get_attribute("data-model")
    wait_for(browser, lambda d: len(points(d, "models")) > 0)
    shown(browser, "capacity")


def test_the_overview_charts_plot_the_apis_numbers(
    browser: WebDriver, gateway: GatewayProcess, traffic: Traffic
) -> None:
    sign_in(browser, gateway, gateway.admin_key)
    wait_for(browser, lambda d: len(points(d, "chart-requests")) > 0)
    chart = browser.find_element(By.ID, "chart-requests")
    window = {name: chart.get_attribute(f"data-{name}") for name in ("from", "to")}
    assert chart.get_attribute("data-group") == "customer"
    series = httpx.get(
        f"{gateway.url}/usage/series", headers=bearer(gateway.admin_key),
        params={**window, "group_by": "customer"},
    ).json()  # fmt: skip
    seconds = {"minute": 60, "hour": 3600, "day": 86400}[series["bucket"]]
    expected = {
        (s["key"], p["t"]): p["requests"] / seconds for s in series["series"] for p in s["points"]
    }
    drawn = points(browser, "chart-requests")
    assert len(drawn) == len(expected)
    for point in drawn:
        moment = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(int(point["x"]) / 1000))
        match = [
            v for (key, t), v in expected.items() if key == point["series"] and t.startswith(moment)
        ]
        assert match and float(point["y"]) == pytest.approx(match[0])
    assert {p["series"] for p in drawn} >= {"ada", "bob"}
    ada = sum(float(p["y"]) for p in drawn if p["series"] == "ada") * seconds
    assert ada == pytest.approx(3)  # two sync requests and one job: what ada sent


def test_a_customer_sees_only_their_own(
    browser: WebDriver, gateway: GatewayProcess, traffic: Traffic
) -> None:
    sign_in(browser, gateway, traffic.keys["ada"])
    wait_for(browser, lambda d: d.current_url.endswith("/console/jobs"))
    assert listed_jobs(browser) == set(traffic.jobs["ada"])
    nav = browser.find_element(By.ID, "nav").text
    assert "Overview" not in nav and "Backends" not in nav and "Jobs" in nav
    browser.get(f"{gateway.url}/console/jobs/{traffic.jobs['bob'][0]}")  # bob's job
    assert shown_problem(browser) == "job_not_found"
    assert browser.find_element(By.TAG_NAME, "h1").text == "No such job"
    browser.get(f"{gateway.url}/console/overview")  # an admin's page
    assert shown_problem(browser) == "forbidden"
    assert points(browser, "chart-requests") == []
    # The browser logs the API's refusal of bob's job, and nothing else: the admin page asked
    # no admin route (GET /me said who this is first).
    refusals = {entry["message"].split(" ")[0] for entry in js_errors(browser)}
    assert refusals == {f"{gateway.url}/jobs/{traffic.jobs['bob'][0]}"}
    browser.get(f"{gateway.url}/console/usage")
    wait_for(browser, lambda d: "ada" in d.find_element(By.ID, "totals").text)
    assert "bob" not in browser.find_element(By.ID, "totals").text
    assert js_errors(browser) == []


def test_the_job_page_checks_its_proof_in_the_browser(
    browser: WebDriver, gateway: GatewayProcess, traffic: Traffic
) -> None:
    sign_in(browser, gateway, traffic.keys["ada"])
    job_id = traffic.jobs["ada"][0]
    browser.get(f"{gateway.url}/console/jobs/{job_id}")
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
    types = data_of(browser, "#timeline li", "data-type")
    assert types[0] == "queued" and "started" in types and types[-1] == "complete"
    image = browser.find_element(By.ID, "output-media")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 64
    request_id = browser.find_element(By.ID, "request-id").text
    assert request_id.startswith("req_")
    shown(browser, "job")

    deadline = time.monotonic() + 30  # the request's batch is sealed within batch_seconds
    while True:
        browser.find_element(By.ID, "fetch-proof").click()
        verdict = wait_for(
            browser,
            lambda d: (
                attribute(d, "proof-result", "data-ok")
                or d.find_element(By.ID, "problem").is_displayed()
            ),
        )
        if verdict == "true" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    result = browser.find_element(By.ID, "proof-result")
    assert result.get_attribute("data-ok") == "true", result.text
    steps = data_of(browser, "#proof-result li[data-step]", "data-step")
    assert {"checkpoint_signature", "log_inclusion", "row_inclusion", "claim"} <= set(steps)
    assert set(data_of(browser, "#proof-result li[data-step]", "data-ok")) == {"true"}
    shown(browser, "job-proof")

    bundle = json.loads(browser.find_element(By.ID, "proof-json").get_attribute("value"))
    row = json.loads(bundle["row"])
    row["gpu_seconds"] = row["gpu_seconds"] / 2  # bill half: the proof must no longer hold
    bundle["row"] = json.dumps(row, separators=(",", ":"), sort_keys=True)
    area = browser.find_element(By.ID, "proof-json")
    browser.execute_script("arguments[0].value = arguments[1]", area, json.dumps(bundle))
    browser.find_element(By.ID, "check-proof").click()
    wait_for(browser, lambda d: attribute(d, "proof-result", "data-ok") == "false")
    assert "does NOT verify" in browser.find_element(By.ID, "proof-result").text
    assert js_errors(browser) == []


def test_a_jwt_signs_in_and_a_forged_one_is_refused(
    browser: WebDriver, gateway: GatewayProcess, traffic: Traffic
) -> None:
    token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")
    sign_in(browser, gateway, token)
    assert browser.find_element(By.ID, "who").text.startswith("carol · ")
    wait_for(browser, lambda d: "no jobs match" in d.find_element(By.ID, "jobs").text)
    assert js_errors(browser) == []

    forged = jwt.encode(
        {"sub": "ada", "exp": int(time.time()) + 600},
        "not-the-secret-but-just-as-long-as-it",
        "HS256",
    )
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{gateway.url}/console")
    browser.find_element(By.ID, "token").send_keys(forged)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    assert shown_problem(browser) in {"unauthenticated", "invalid_token"}
    assert "expired=1" in browser.current_url
    assert browser.execute_script("return sessionStorage.length") == 0  # nothing kept
    assert {e["message"].split(" ")[0] for e in js_errors(browser)} == {f"{gateway.url}/me"}


def test_console_pages_are_self_contained_and_locked_down(gateway: GatewayProcess) -> None:
    """Nothing is fetched from outside (no CDN), pages carry a strict CSP, and only the
    package's own flat static names are served."""
    pages = ["/console", "/console/overview", "/console/jobs", "/console/jobs/j_abcdefghijkl"]
    for path in pages:
        response = httpx.get(gateway.url + path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "http://" not in response.text and "https://" not in response.text
    for name in ("console.js", "chart.js", "proof.js", "console.css"):
        static = httpx.get(f"{gateway.url}/console/static/{name}")
        assert static.status_code == 200
        text = static.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "http://" not in text, name
    for bad in ("/console/static/..%2Fpages.py", "/console/static/pages.py", "/console/nope",
                "/console/jobs/j_short", "/console/static/%2e%2e"):  # fmt: skip
        refused = httpx.get(gateway.url + bad)
        assert refused.status_code == 404 and refused.json()["error"] == "not_found", bad
