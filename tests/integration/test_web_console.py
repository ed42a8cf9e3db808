"""The web console (`/`), end to end: Debian's Chromium (installed by scripts/setup), headless, driven by
Playwright against the live system. No browser is downloaded; a missing one fails the test."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Request, Route, expect, sync_playwright

from tests.system import BOOTSTRAP_TOKEN, AdeSystem

CHROMIUM = Path(os.environ.get("ADE_TEST_CHROMIUM", "/usr/bin/chromium"))
# No network here: without the background-networking flags Chromium keeps trying to phone home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

# Step `count` prints five lines (progress 1..5 of 10), then waits for the test to create `go` in its
# working directory, so the test sees the run live and still running; then five more lines, one on
# stderr, and an output file.
COUNT = r"""
progress() {
  printf '{"type":"progress","current":%s,"total":10,"message":"line %s"}\n' $1 $1 >&$ADE_EVENTS_FD
}
for i in 1 2 3 4 5; do echo "line $i"; progress $i; sleep 0.02; done
for _ in $(seq 1 400); do [ -e go ] && break; sleep 0.05; done
for i in 6 7 8 9 10; do echo "line $i"; progress $i; sleep 0.02; done
echo "problem on stderr" >&2
mkdir -p "$ADE_OUTPUT_DIR/reports"
echo "report of $ADE_RUN_ID" > "$ADE_OUTPUT_DIR/reports/summary of run.txt"
"""


@dataclass(frozen=True)
class Tenant:
    workspace_id: str
    key: str
    configuration_id: str  # prepare + count (above)
    flood_configuration_id: str  # more console lines than the page keeps


@pytest.fixture(scope="module")
def tenant(system: AdeSystem) -> Tenant:
    headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    with httpx.Client(base_url=f"{system.base_url}/api/v1", headers=headers, timeout=30) as boot:
        ws = boot.post("/workspaces", json={"name": "console"}).json()["id"]
        key = boot.post(f"/workspaces/{ws}/api-keys", json={"name": "browser", "role": "operator"})
        assert key.status_code == 201, key.text

        def configuration(name: str, steps: list[dict[str, Any]]) -> str:
            created = boot.post(f"/workspaces/{ws}/configurations", json={"name": name, "steps": steps})
            assert created.status_code == 201, created.text
            return str(created.json()["id"])

        return Tenant(
            workspace_id=ws,
            key=key.json()["secret"],
            configuration_id=configuration(
                "live-demo",
                [
                    {"name": "prepare", "script": "echo preparing"},
                    {"name": "count", "script": COUNT, "depends_on": ["prepare"]},  # the graph's "needs"
                ],
            ),
            flood_configuration_id=configuration("flood", [{"name": "flood", "script": "seq 1 5200"}]),
        )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run scripts/setup (it installs Debian's `chromium` package)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1280, "height": 1000},
        )
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext, system: AdeSystem) -> Iterator[Page]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{system.base_url}/")
    page.evaluate("localStorage.clear()")
    page.reload()
    yield page
    page.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def sign_in(page: Page, tenant: Tenant) -> None:
    page.fill("#api-key", tenant.key)
    page.fill("#workspace-id", tenant.workspace_id)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#runs-state")).to_be_attached()


def start_run(page: Page, configuration_id: str) -> str:
    page.select_option("#configuration", configuration_id)
    page.click("#start-run")
    page.wait_for_url(re.compile(r"#/runs/run_"))
    return page.url.rsplit("#/runs/", 1)[1]


def release(system: AdeSystem, run_id: str) -> None:
    """Let a run of `count` go on past its wait."""
    work = system.data_dir / "runs" / run_id / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go").touch()


def stdout_lines(page: Page) -> list[str]:
    return page.locator("#console .line.stdout .text").all_text_contents()


def test_console_files_are_public_and_the_api_is_not(system: AdeSystem) -> None:
    index = httpx.get(f"{system.base_url}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in index.headers["content-security-policy"]
    assert '<script type="module" src="/static/app.js">' in index.text
    script = httpx.get(f"{system.base_url}/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{system.base_url}/static/console.css").headers["content-type"].startswith("text/css")
    assert httpx.get(f"{system.base_url}/static/nothing.js").status_code == 404
    assert httpx.get(f"{system.base_url}/static/%2e%2e/__init__.py").status_code == 404
    assert httpx.get(f"{system.base_url}/api/v1/workspaces/x/runs").status_code == 401


def test_sign_in_start_a_run_watch_it_live_and_download_its_output(
    page: Page, tenant: Tenant, system: AdeSystem, tmp_path: Path
) -> None:
    # A refused key says so and stays on the form.
    page.fill("#api-key", "ade.nokey.nosecret")
    page.fill("#workspace-id", tenant.workspace_id)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("Sign-in failed")
    sign_in(page, tenant)
    expect(page.locator("#workspace-label")).to_contain_text("console")

    run_id = start_run(page, tenant.configuration_id)
    console = page.locator("#console")
    # Live: the first lines are on the page while the step waits, so the run is still running.
    expect(console.locator(".line.stdout", has_text="line 5")).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#progress")).to_have_attribute("aria-valuenow", "50")
    expect(page.locator("#progress-label")).to_contain_text("5 / 10 · 50%")
    expect(page.locator("#steps-body tr[data-step=prepare] .step-status")).to_have_text("succeeded")
    expect(page.locator("#steps-body tr[data-step=count] .step-status")).to_have_text("running")
    expect(page.locator("#steps-body tr[data-step=count] .step-needs")).to_have_text("prepare")
    expect(page.locator("#steps-body tr[data-step=prepare] .step-needs")).to_have_text("—")
    expect(page.locator("#stream-state")).to_have_text("live")
    assert stdout_lines(page)[-5:] == [f"line {i}" for i in range(1, 6)]

    release(system, run_id)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#progress-label")).to_contain_text("10 / 10 · 100%")
    expect(page.locator("#steps-body tr[data-step=count] .step-status")).to_have_text("succeeded")
    expect(page.locator("#stream-state")).to_have_text("complete")
    assert stdout_lines(page) == ["preparing"] + [f"line {i}" for i in range(1, 11)]
    expect(console.locator(".line.stderr .text")).to_have_text(["problem on stderr"])
    expect(console.locator(".line.system", has_text="run succeeded")).to_have_count(1)

    # The output listing arrives after the run ends; a download fetches it with the key.
    button = page.locator('#outputs li[data-path="reports/summary of run.txt"] button')
    with page.expect_download() as downloading:
        button.click()
    download = downloading.value
    assert download.suggested_filename == "summary of run.txt"
    saved = tmp_path / "summary.txt"
    download.save_as(saved)
    assert saved.read_text() == f"report of {run_id}\n"
    page.screenshot(path=str(tmp_path / "run-page.png"), full_page=True)

    # The runs page lists it with its final status.
    page.click("nav.crumbs a")
    expect(page.locator(f'#runs-body tr[data-run-id="{run_id}"] .badge')).to_have_text("succeeded")


def test_rerun_resumes_a_refused_stream_without_duplicates_and_cancels(
    page: Page, tenant: Tenant, system: AdeSystem
) -> None:
    """The re-run's stream is first answered with a short stream that ends (the real log's events 1..n,
    then the first ones again, which must be ignored); the browser's own reconnect is refused like an
    expired token; the page must fetch a new stream token and open a new EventSource with
    `after_sequence=n`, then show each line exactly once."""
    sign_in(page, tenant)
    source_run = start_run(page, tenant.configuration_id)
    expect(page.locator("#console .line.stdout", has_text="line 5")).to_be_visible()

    seen: dict[str, list[str]] = {"events": [], "tokens": []}
    served_until = 0

    def ndjson_of(run_id: str) -> list[str]:
        response = httpx.get(
            f"{system.base_url}/api/v1/runs/{run_id}/events",
            params={"format": "ndjson"},
            headers={"Authorization": f"Bearer {tenant.key}"},
        )
        return response.text.splitlines()

    def intercept(route: Route, request: Request) -> None:
        nonlocal served_until
        run_id = request.url.split("/runs/", 1)[1].split("/", 1)[0]
        seen["events"].append(request.url)
        if len(seen["events"]) == 1:
            deadline = time.monotonic() + 10
            lines = ndjson_of(run_id)
            while not any('"line 5"' in line for line in lines):
                assert time.monotonic() < deadline, "the re-run printed no 5th line"
                time.sleep(0.05)
                lines = ndjson_of(run_id)
            frames = [
                f"id: {json.loads(line)['sequence']}\nevent: ade.event\ndata: {line}\n\n"
                for line in [*lines, *lines[:3]]
            ]
            served_until = json.loads(lines[-1])["sequence"]
            route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                body="retry: 100\n\n" + "".join(frames),
            )
        elif len(seen["events"]) == 2:
            body = {"error": "the stream token expired", "code": "token_expired", "details": []}
            route.fulfill(status=401, json=body)
        else:
            route.continue_()

    page.on("request", lambda r: seen["tokens"].append(r.url) if r.url.endswith("/stream-token") else None)
    page.route(re.compile(r"/api/v1/runs/[^/]+/events\?"), intercept)
    try:
        page.click("#rerun-run")
        page.wait_for_url(re.compile(r"#/runs/(?!" + source_run + r")run_"))
        rerun = page.url.rsplit("#/runs/", 1)[1]
        expect(page.locator("#run-id")).to_have_text(rerun)
        expect(page.locator("#run-status")).to_have_text("running")
        expect(page.locator("#stream-state")).to_have_text("live")
        assert len(seen["events"]) == 3, seen
        # 1: the fake stream; 2: the browser's own reconnect (same URL, plus a Last-Event-ID header that
        # interception does not show), refused; 3: a new EventSource, resuming after the last event seen.
        assert seen["events"][1] == seen["events"][0]
        assert "after_sequence=0" in seen["events"][0]
        assert f"after_sequence={served_until}" in seen["events"][2]
        assert sum(rerun in url for url in seen["tokens"]) == 2, seen["tokens"]
        assert stdout_lines(page) == ["preparing"] + [f"line {i}" for i in range(1, 6)]
        expect(page.locator("#console .line.system", has_text="▶ step count")).to_have_count(1)
        expect(page.locator(".facts")).to_contain_text(f"re-run of {source_run}")

        page.click("#cancel-run")
        expect(page.locator("#run-status")).to_have_text("cancelled")
        expect(page.locator("#steps-body tr[data-step=count] .step-status")).to_have_text("cancelled")
        expect(page.locator("#cancel-run")).to_be_disabled()
    finally:
        page.unroute_all()
        release(system, source_run)


def test_console_keeps_the_last_lines_and_says_so(page: Page, tenant: Tenant) -> None:
    sign_in(page, tenant)
    start_run(page, tenant.flood_configuration_id)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#console .line.stdout .text").last).to_have_text("5200")
    expect(page.locator("#console .line")).to_have_count(5000)
    notice = page.locator("#console-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("older lines are not shown")
    expect(notice).to_contain_text("keeps the last 5,000")
