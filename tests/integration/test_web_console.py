"""The web console (`/`), end to end: Debian's Chromium (installed by scripts/setup), headless, driven by
Playwright against the live system. No browser is downloaded; a missing one fails the test."""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, Request, Route, expect, sync_playwright

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


# Step `paint`: colours (16, 256, truecolor, bold, underline), a would-be tag and other escapes, then
# thirty plain lines to search in.
PAINT = r"""
printf '\e[32mok\e[0m\n'
printf '\e[1;4;38;5;208mbold orange\e[0m \e[38;2;10;200;30mtruecolor\e[0m\n'
printf '<b>not bold</b> \e]0;title\a\e[2Kplain\n'
for i in $(seq 1 30); do echo "line $i"; done
"""
# A workflow whose graph has two branches, a failing step and a cleanup that runs anyway.
GRAPH_STEPS: list[dict[str, Any]] = [
    {"name": "checkout", "script": "echo checked out"},
    {"name": "build", "script": r"printf '\e[1mcompiling\e[0m\n'; sleep 0.2", "depends_on": ["checkout"]},
    {"name": "lint", "script": "echo lint ok", "depends_on": ["checkout"]},
    {
        "name": "test",
        "script": r"printf '\e[31mFAIL\e[0m test_upload\n' >&2; exit 3",
        "depends_on": ["build", "lint"],
    },
    {"name": "report", "script": "echo report", "depends_on": ["test"], "when": "always"},
]
FLOOD_LINES = 20_000
SCREENSHOTS = (
    Path(os.environ.get("ADE_SCREENSHOTS_DIR", "")) if os.environ.get("ADE_SCREENSHOTS_DIR") else None
)
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass(frozen=True)
class Tenant:
    workspace_id: str
    key: str
    configuration_id: str  # prepare + count (above)
    paint_configuration_id: str
    graph_configuration_id: str
    flood_configuration_id: str  # FLOOD_LINES lines


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
            paint_configuration_id=configuration("paint", [{"name": "paint", "script": PAINT}]),
            graph_configuration_id=configuration("graph", GRAPH_STEPS),
            flood_configuration_id=configuration(
                "flood", [{"name": "flood", "script": f"seq 1 {FLOOD_LINES}"}]
            ),
        )


def api_client(system: AdeSystem, tenant: Tenant) -> httpx.Client:
    headers = {"Authorization": f"Bearer {tenant.key}"}
    return httpx.Client(base_url=f"{system.base_url}/api/v1", headers=headers, timeout=30)


def create_run(
    system: AdeSystem, tenant: Tenant, configuration_id: str, commit: dict[str, str] | None = None
) -> str:
    with api_client(system, tenant) as client:
        created = client.post(f"/configurations/{configuration_id}/runs", json={"commit": commit})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


def wait_for_end(system: AdeSystem, tenant: Tenant, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with api_client(system, tenant) as client:
        while True:
            run: dict[str, Any] = client.get(f"/runs/{run_id}").json()
            if run["status"] in TERMINAL:
                return run
            assert time.monotonic() < deadline, f"{run_id} did not end: {run['status']}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def painted(system: AdeSystem, tenant: Tenant) -> str:
    """A finished run of `paint`."""
    run_id = create_run(system, tenant, tenant.paint_configuration_id)
    assert wait_for_end(system, tenant, run_id)["status"] == "succeeded"
    return run_id


@pytest.fixture(scope="module")
def flooded(system: AdeSystem, tenant: Tenant) -> str:
    """A finished run of FLOOD_LINES lines."""
    run_id = create_run(system, tenant, tenant.flood_configuration_id)
    assert wait_for_end(system, tenant, run_id)["status"] == "succeeded"
    return run_id


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
    """Through the form, with the key alone: its workspace comes from /whoami."""
    page.fill("#api-key", tenant.key)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#runs-state")).to_be_attached()


def open_signed_in(page: Page, system: AdeSystem, tenant: Tenant, fragment: str = "#/") -> None:
    """Skip the form: the key and workspace stored as the form stores them, then the page at `fragment`."""
    page.evaluate(
        "([key, ws]) => { localStorage.setItem('ade.apiKey', key);"
        " localStorage.setItem('ade.workspaceId', ws); }",
        [tenant.key, tenant.workspace_id],
    )
    page.goto(f"{system.base_url}/{fragment}")
    page.reload()


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


def row(page: Page, n: int) -> Locator:
    """Line n of the log (only rendered while it is in or near the view)."""
    return page.locator(f"#console #L{n}")


def screenshot(page: Page, name: str, tmp_path: Path, element: Locator | None = None) -> None:
    """Into ADE_SCREENSHOTS_DIR (docs/screenshots, for the README) when set, else the test's directory."""
    target = SCREENSHOTS or tmp_path
    target.mkdir(parents=True, exist_ok=True)
    (element or page).screenshot(path=str(target / name))


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


def test_sign_in_with_a_key_alone_start_a_run_watch_it_live_and_download_its_output(
    page: Page, tenant: Tenant, system: AdeSystem, tmp_path: Path
) -> None:
    # A refused key says so and stays on the form.
    page.fill("#api-key", "ade.nokey.nosecret")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("Sign-in failed")
    expect(page.locator("#workspace-field")).to_be_hidden()  # a workspace key never asks for one
    sign_in(page, tenant)
    expect(page.locator("#workspace-label")).to_contain_text("console")
    expect(page.locator("#workspace-label")).to_contain_text(tenant.workspace_id)

    run_id = start_run(page, tenant.configuration_id)
    console = page.locator("#console")
    # Live: the first lines are on the page while the step waits, so the run is still running.
    expect(console.locator(".line.stdout", has_text="line 5")).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#progress")).to_have_attribute("aria-valuenow", "50")
    expect(page.locator("#progress-label")).to_contain_text("5 / 10 · 50%")
    steps = page.locator("#steps")
    expect(steps.locator("li[data-step=prepare] .step-status")).to_have_text("succeeded")
    expect(steps.locator("li[data-step=count] .step-status")).to_have_text("running")
    expect(steps.locator("li[data-step=count] .step-needs")).to_have_text("prepare")
    expect(steps.locator("li[data-step=prepare] .step-needs")).to_have_text("—")
    # Each step is a section of the log with its status and a timer that runs while the step does.
    count_head = console.locator(".section-head[data-section=count]")
    expect(count_head.locator(".section-status")).to_have_text("running")
    timer = count_head.locator(".section-timer")
    first = timer.text_content()
    expect(timer).not_to_have_text(first or "", timeout=3000)
    expect(page.locator("#dag .dag-node[data-step=count]")).to_have_attribute("data-status", "running")
    expect(page.locator("#stream-state")).to_have_text("live")
    assert stdout_lines(page)[-5:] == [f"line {i}" for i in range(1, 6)]
    screenshot(page, "run-running.png", tmp_path)

    release(system, run_id)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#progress-label")).to_contain_text("10 / 10 · 100%")
    expect(steps.locator("li[data-step=count] .step-status")).to_have_text("succeeded")
    expect(count_head.locator(".section-status")).to_have_text("succeeded")
    expect(page.locator("#stream-state")).to_have_text("complete")
    assert stdout_lines(page) == ["preparing"] + [f"line {i}" for i in range(1, 11)]
    expect(console.locator(".line.stderr .text")).to_have_text(["problem on stderr"])
    expect(console.locator(".line.system", has_text="run succeeded")).to_have_count(1)
    # Done: the timer shows the step's duration and stops.
    done = timer.text_content()
    page.wait_for_timeout(1100)
    assert timer.text_content() == done

    # The output listing arrives after the run ends, with sizes; a download fetches it with the key.
    report = f"report of {run_id}\n"
    item = page.locator('#outputs li[data-path="reports/summary of run.txt"]')
    expect(item.locator(".size")).to_have_text(f"{len(report)} B")
    with page.expect_download() as downloading:
        item.locator("button").click()
    download = downloading.value
    assert download.suggested_filename == "summary of run.txt"
    saved = tmp_path / "summary.txt"
    download.save_as(saved)
    assert saved.read_text() == report
    # And all of them as one zip.
    with page.expect_download() as downloading:
        page.click("#download-zip")
    archive = tmp_path / "outputs.zip"
    downloading.value.save_as(archive)
    with zipfile.ZipFile(archive) as opened:
        assert opened.read("reports/summary of run.txt").decode() == report

    # The runs page lists it with its final status.
    page.click("nav.crumbs a")
    expect(page.locator(f'#runs-body tr[data-run-id="{run_id}"] .badge')).to_have_text("succeeded")


def test_the_bootstrap_token_signs_in_to_the_workspace_it_names(page: Page, tenant: Tenant) -> None:
    page.fill("#api-key", BOOTSTRAP_TOKEN)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#workspace-field")).to_be_visible()  # /whoami has no workspace for it
    expect(page.locator("#runs-state")).not_to_be_attached()
    page.fill("#workspace-id", tenant.workspace_id)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#runs-state")).to_be_attached()
    expect(page.locator("#workspace-label")).to_contain_text(tenant.workspace_id)


def test_rerun_resumes_a_refused_stream_without_duplicates_and_cancels(
    page: Page, tenant: Tenant, system: AdeSystem
) -> None:
    """The re-run's stream is first answered with a short stream that ends (the real log's events 1..n,
    then the first ones again, which must be ignored); the browser's own reconnect is refused like an
    expired token; the page must fetch a new stream token and open a new EventSource with
    `after_sequence=n`, then show each line exactly once."""
    open_signed_in(page, system, tenant)
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
        expect(page.locator("#steps li[data-step=count] .step-status")).to_have_text("cancelled")
        expect(page.locator("#cancel-run")).to_be_disabled()
    finally:
        page.unroute_all()
        release(system, source_run)


def test_ansi_colours_are_styled_spans_and_never_markup(
    page: Page, tenant: Tenant, system: AdeSystem, painted: str
) -> None:
    open_signed_in(page, system, tenant, f"#/runs/{painted}")
    console = page.locator("#console")
    ok = console.locator(".line.stdout .text span.ansi-fg-2", has_text="ok")
    expect(ok).to_have_text("ok")
    assert ok.evaluate("e => getComputedStyle(e).color") not in ("", "rgb(215, 222, 232)")  # not the default
    orange = console.locator(".line .text span", has_text="bold orange")
    expect(orange).to_have_class(re.compile(r"\bansi-bold\b.*\bansi-underline\b"))
    assert orange.evaluate("e => e.style.color") == "rgb(255, 135, 0)"  # 256-colour 208
    truecolor = console.locator(".line .text span", has_text="truecolor")
    assert truecolor.evaluate("e => e.style.color") == "rgb(10, 200, 30)"
    # A would-be tag stays text; the title (OSC) and erase-line (CSI K) sequences are gone.
    markup = console.locator(".line.stdout", has_text="not bold")
    expect(markup.locator(".text")).to_have_text("<b>not bold</b> plain")
    expect(markup.locator("b")).to_have_count(0)
    texts = console.locator(".line .text").all_text_contents()
    assert not any("\x1b" in text or "[32m" in text for text in texts), texts


def test_search_counts_matches_and_moves_between_them(
    page: Page, tenant: Tenant, system: AdeSystem, painted: str
) -> None:
    open_signed_in(page, system, tenant, f"#/runs/{painted}")
    expect(page.locator("#stream-state")).to_have_text("complete")
    search = page.locator("#log-search")
    search.fill("line 2")  # line 2, line 20 … line 29
    count = page.locator("#search-count")
    expect(count).to_have_text("1 / 11")
    current = page.locator("#console .line.current-match")
    expect(current.locator(".text")).to_have_text("line 2")
    expect(current.locator("mark.current")).to_have_text("line 2")
    page.click("#search-next")
    expect(count).to_have_text("2 / 11")
    expect(current.locator(".text")).to_have_text("line 20")
    search.press("Enter")
    expect(current.locator(".text")).to_have_text("line 21")
    page.click("#search-prev")
    page.click("#search-prev")
    page.click("#search-prev")  # wraps around to the last match
    expect(count).to_have_text("11 / 11")
    expect(current.locator(".text")).to_have_text("line 29")
    search.fill("no such text")
    expect(count).to_have_text("0 / 0")
    expect(page.locator("#console mark")).to_have_count(0)


def test_the_timestamps_toggle_shows_each_lines_time(
    page: Page, tenant: Tenant, system: AdeSystem, painted: str
) -> None:
    open_signed_in(page, system, tenant, f"#/runs/{painted}")
    first = page.locator("#console .line.stdout").first
    expect(first).to_be_visible()
    expect(first.locator(".ts")).to_have_count(0)
    page.check("#toggle-timestamps")
    expect(first.locator(".ts")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    page.reload()  # the choice is remembered
    expect(page.locator("#console .line.stdout .ts").first).to_be_visible()
    page.uncheck("#toggle-timestamps")
    expect(page.locator("#console .ts")).to_have_count(0)


def test_collapsing_a_step_hides_its_lines(
    page: Page, tenant: Tenant, system: AdeSystem, painted: str
) -> None:
    open_signed_in(page, system, tenant, f"#/runs/{painted}")
    console = page.locator("#console")
    expect(console.locator(".line.stdout", has_text="line 30")).to_be_visible()
    head = console.locator(".section-head[data-section=paint]")
    expect(head).to_contain_text("paint")
    expect(head.locator(".section-status")).to_have_text("succeeded")
    head.click()
    expect(head.locator(".toggle")).to_have_attribute("aria-expanded", "false")
    expect(console.locator(".line.stdout")).to_have_count(0)
    expect(console.locator(".line.system", has_text="run succeeded")).to_be_visible()  # other sections stay
    head.click()
    expect(console.locator(".line.stdout", has_text="line 30")).to_be_visible()
    page.click("#collapse-all")
    expect(console.locator(".line")).to_have_count(0)
    page.click("#expand-all")
    expect(console.locator(".line.stdout", has_text="ok")).to_be_visible()


def test_a_line_link_survives_a_reload(page: Page, tenant: Tenant, system: AdeSystem, painted: str) -> None:
    open_signed_in(page, system, tenant, f"#/runs/{painted}")
    line = page.locator("#console .line.stdout", has_text="line 7")
    number = int(line.get_attribute("data-line") or 0)
    line.locator(".ln").click()
    expect(page).to_have_url(re.compile(rf"#/runs/{painted}#L{number}$"))
    expect(row(page, number)).to_have_class(re.compile(r"\btarget\b"))
    page.reload()
    expect(row(page, number)).to_have_class(re.compile(r"\btarget\b"))
    expect(row(page, number).locator(".text")).to_have_text("line 7")
    expect(page.locator("#console .line.target")).to_have_count(1)


def test_a_long_log_is_virtualised_its_lines_reachable_and_its_raw_text_downloadable(
    page: Page, tenant: Tenant, system: AdeSystem, flooded: str, tmp_path: Path
) -> None:
    # Line n is `n - 2` (line 1: "run started", line 2: "▶ step flood"). Deep-linked, after a reload.
    target = 12_345
    open_signed_in(page, system, tenant, f"#/runs/{flooded}#L{target}")
    expect(row(page, target)).to_have_class(re.compile(r"\btarget\b"), timeout=30_000)
    expect(row(page, target).locator(".text")).to_have_text(str(target - 2))
    expect(row(page, target)).to_be_in_viewport()
    rendered = page.locator("#console .row").count()
    assert 0 < rendered <= 150, rendered  # only the rows in view (and a margin), out of 20,000
    console = page.locator("#console")
    console.evaluate("e => { e.scrollIntoView(); e.scrollTop = e.scrollHeight; }")
    last = page.locator("#console .line.stdout .text", has_text=re.compile(rf"^{FLOOD_LINES}$"))
    expect(last).to_be_in_viewport()
    assert page.locator("#console .row").count() <= 150
    console.evaluate("e => { e.scrollTop = 0; }")
    expect(row(page, 3).locator(".text")).to_have_text("1")
    expect(page.locator("#console .section-head[data-section=flood]")).to_contain_text(
        f"{FLOOD_LINES + 2:,} lines"
    )

    with page.expect_download() as downloading:
        page.click("#download-raw")
    download = downloading.value
    assert download.suggested_filename == f"{flooded}.log"
    saved = tmp_path / "raw.log"
    download.save_as(saved)
    assert saved.read_text() == "".join(f"{i}\n" for i in range(1, FLOOD_LINES + 1))


def test_a_failed_workflow_shows_its_graph_failure_and_reason(
    page: Page, tenant: Tenant, system: AdeSystem, tmp_path: Path
) -> None:
    commit = {"branch": "feature/graph", "hash": "9f3c2a1b7e", "author": "Grace", "message": "Upload retries"}
    run_id = create_run(system, tenant, tenant.graph_configuration_id, commit)
    open_signed_in(page, system, tenant, f"#/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("failed")
    expect(page.locator("#run-failure")).to_contain_text("test")
    expect(page.locator("#run-commit")).to_contain_text("9f3c2a1")
    expect(page.locator("#run-commit")).to_contain_text("feature/graph")
    dag = page.locator("#dag")
    columns = dag.locator(".dag-column")
    expect(columns).to_have_count(4)  # checkout | build, lint | test | report
    expect(columns.nth(1).locator(".dag-node")).to_have_count(2)
    expect(dag.locator(".dag-edge")).to_have_count(5)
    for name, status in [
        ("checkout", "succeeded"),
        ("lint", "succeeded"),
        ("test", "failed"),
        ("report", "succeeded"),
    ]:
        expect(dag.locator(f".dag-node[data-step={name}]")).to_have_attribute("data-status", status)
    expect(page.locator("#console .line.stderr .text span.ansi-fg-1")).to_have_text("FAIL")
    screenshot(page, "run-failed.png", tmp_path)
    screenshot(page, "run-dag.png", tmp_path, page.locator("#dag-panel"))
    # Clicking a node brings its section into view.
    dag.locator(".dag-node[data-step=lint]").click()
    expect(page.locator("#console .section-head[data-section=lint]")).to_be_in_viewport()


def test_runs_list_filters_pages_and_updates_live(page: Page, tenant: Tenant, system: AdeSystem) -> None:
    commit = {
        "branch": "bulk",
        "hash": "abcdef1234567",
        "author": "Ada",
        "message": "Bulk change",
        "repo_url": "https://git.example/ade",
    }
    with api_client(system, tenant) as client:
        bulk = []
        for _ in range(52):
            created = client.post(
                f"/configurations/{tenant.paint_configuration_id}/runs", json={"commit": commit}
            )
            bulk.append(created.json()["id"])
            client.post(f"/runs/{bulk[-1]}/cancel")  # keep the worker free: listing needs no execution
    failing = create_run(
        system, tenant, tenant.graph_configuration_id, {"branch": "filters", "author": "Grace"}
    )
    wait_for_end(system, tenant, failing)

    open_signed_in(page, system, tenant)
    rows = page.locator("#runs-body tr")
    expect(rows.first).to_be_visible()
    page.fill("#filter-branch", "bulk")
    expect(rows).to_have_count(50)
    expect(page).to_have_url(re.compile(r"#/\?branch=bulk$"))
    first = page.locator(f'#runs-body tr[data-run-id="{bulk[-1]}"]')
    expect(first.locator(".commit a")).to_have_text("abcdef1")
    expect(first.locator(".commit a")).to_have_attribute(
        "href", "https://git.example/ade/commit/abcdef1234567"
    )
    expect(first.locator(".branch")).to_have_text("bulk")
    expect(first.locator(".author")).to_have_text("Ada")
    page.click("#load-more")
    expect(rows).to_have_count(52)
    expect(page.locator("#load-more")).to_be_hidden()

    page.fill("#filter-branch", "")
    page.select_option("#filter-status", "failed")
    expect(page.locator(f'#runs-body tr[data-run-id="{failing}"]')).to_be_visible()
    expect(page.locator("#runs-body tr:not([data-status=failed])")).to_have_count(0)
    expect(page.locator(f'#runs-body tr[data-run-id="{failing}"] .failure-reason')).to_contain_text(
        "step test"
    )

    page.select_option("#filter-status", "")
    page.select_option("#filter-configuration", tenant.flood_configuration_id)
    expect(page.locator(f'#runs-body tr[data-run-id="{failing}"]')).to_have_count(0)
    page.reload()  # the filters are in the URL
    expect(page.locator("#filter-configuration")).to_have_value(tenant.flood_configuration_id)

    # Live: a new run on a filtered branch shows up without a reload.
    page.select_option("#filter-configuration", "")
    page.fill("#filter-branch", "live-check")
    expect(page.locator("#runs-state")).to_have_text("No runs match these filters.")
    fresh = create_run(system, tenant, tenant.paint_configuration_id, {"branch": "live-check"})
    expect(page.locator(f'#runs-body tr[data-run-id="{fresh}"]')).to_be_visible(timeout=10_000)
