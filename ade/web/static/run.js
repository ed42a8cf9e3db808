// One run: its head (status, commit, failure, progress, actions), the workflow's graph, its steps and
// outputs, and the log — the page's main part — streaming live.

import { api, ApiError, download } from "./api.js";
import { DagView } from "./dag.js";
import { elapsed, errorText, fill, formatDuration, h, statusBadge, TERMINAL } from "./dom.js";
import { LogView } from "./logview.js";
import { OutputsView } from "./outputs.js";
import { renderFacts, renderFailure } from "./runfacts.js";
import { RunStream } from "./stream.js";

const CANCELLABLE = new Set(["queued", "waiting_for_build", "running"]);
const STREAM_STATES = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  ended: "complete",
  failed: "stream unavailable",
};
const TIMES_ITEM = "ade.showTimes";

export function runView(root, runRef, { line = null } = {}) {
  let run = null; // the run resource, kept current from events
  let runId = runRef;
  const steps = new Map(); // name -> {name, status, startedAt, completedAt, durationMs, exitCode, needs, when}
  let cancelRequested = false;
  let stream = null;
  let ticker = null;
  let disposed = false;
  document.title = `${runRef} · ADE`;

  // Elements --------------------------------------------------------------------------------------

  const title = h("h2", {}, "Run");
  const status = h("span", { id: "run-status", class: "badge" });
  const facts = h("dl", { class: "facts" });
  const failure = h("p", { id: "run-failure", class: "failure", hidden: true });
  const actionError = h("span", { class: "error", role: "alert" });
  const cancelButton = h("button", { id: "cancel-run", type: "button", class: "danger" }, "Cancel");
  const rerunButton = h("button", { id: "rerun-run", type: "button" }, "Re-run");
  const bar = h("div", { class: "bar" });
  const progress = h(
    "div",
    { id: "progress", class: "progress idle", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": "progress" },
    bar,
  );
  const progressLabel = h("div", { id: "progress-label", class: "progress-label muted" }, "No progress reported.");
  const stepList = h("ul", { id: "steps", class: "step-list" });
  const dag = new DagView((name) => log.scrollToSection(name));
  const dagPanel = h("details", { class: "panel dag-panel", id: "dag-panel", open: true }, h("summary", {}, "Graph"), dag.element);
  const outputs = new OutputsView(runRef, (message) => (actionError.textContent = message));

  const streamState = h("span", { id: "stream-state", class: "stream-state" }, "connecting…");
  const consoleNotice = h("div", { id: "console-notice", class: "console-notice", hidden: true });
  const log = new LogView({
    lineHref: (n) => `#/runs/${encodeURIComponent(runId)}#L${n}`,
    sectionHead: (section) => {
      const step = section.step !== null ? steps.get(section.step) : null;
      if (!step) return null;
      return [statusBadge(step.status, { class: "section-status" }), h("span", { class: "section-timer" }, timerOf(step))];
    },
    onDropped(count) {
      consoleNotice.hidden = false;
      fill(
        consoleNotice,
        `The first ${count.toLocaleString()} lines are not kept in the page. `,
        h("button", { type: "button", class: "link", onclick: downloadRaw }, "Download the full log"),
      );
    },
  });
  const searchBox = h("input", { id: "log-search", type: "search", placeholder: "Search the log", autocomplete: "off", spellcheck: false, "aria-label": "search the log" });
  const searchCount = h("span", { id: "search-count", class: "search-count muted", "aria-live": "polite" });
  const timesToggle = h("input", { id: "toggle-timestamps", type: "checkbox", checked: localStorage.getItem(TIMES_ITEM) === "1" });
  log.setShowTimes(timesToggle.checked);
  log.search.onChange = () => {
    const { matches } = log.search;
    searchCount.textContent = log.search.query ? `${log.search.position} / ${matches.length}` : "";
    searchCount.classList.toggle("none", Boolean(log.search.query) && !matches.length);
  };
  const tool = (id, label, onclick, text) => h("button", { id, type: "button", class: "ghost small", title: label, "aria-label": label, onclick }, text);

  fill(
    root,
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "Runs"), " / ", h("span", { class: "mono" }, runRef)),
    h(
      "section",
      { class: "panel run-head" },
      h("div", { class: "panel-head" }, title, status, h("span", { class: "spacer" }), h("div", { class: "actions" }, cancelButton, rerunButton)),
      facts,
      failure,
      h("div", { class: "progress-row" }, progress, progressLabel),
      actionError,
    ),
    dagPanel,
    h(
      "div",
      { class: "run-body" },
      h("aside", { class: "run-side" }, h("section", { class: "panel" }, h("h3", {}, "Steps"), stepList), outputs.element),
      h(
        "section",
        { class: "panel console-panel" },
        h(
          "div",
          { class: "log-toolbar" },
          h("h3", {}, "Log"),
          searchBox,
          searchCount,
          tool("search-prev", "Previous match", () => log.search.move(-1), "↑"),
          tool("search-next", "Next match", () => log.search.move(1), "↓"),
          h("label", { class: "toggle-label" }, timesToggle, " Timestamps"),
          tool("expand-all", "Expand every step", () => log.setAllCollapsed(false), "Expand all"),
          tool("collapse-all", "Collapse every step", () => log.setAllCollapsed(true), "Collapse all"),
          tool("download-raw", "Download the console as plain text", downloadRaw, "Raw log"),
          tool("download-log", "Download the event log (NDJSON)", downloadEvents, "Events"),
          streamState,
        ),
        consoleNotice,
        log.element,
      ),
    ),
  );

  // Rendering -------------------------------------------------------------------------------------

  function timerOf(step) {
    if (step.status === "running") return formatDuration(elapsed(step.startedAt, null));
    if (step.durationMs !== null) return formatDuration(step.durationMs);
    if (step.startedAt && step.completedAt) return formatDuration(elapsed(step.startedAt, step.completedAt));
    return "";
  }

  function renderStatus() {
    const cancelling = cancelRequested && !TERMINAL.has(run.status);
    status.className = `badge status-${run.status}`;
    status.textContent = run.status.replaceAll("_", " ");
    status.title = cancelling ? "cancelling" : run.status;
    status.dataset.status = run.status;
    cancelButton.disabled = !CANCELLABLE.has(run.status) || cancelRequested;
    cancelButton.textContent = cancelling ? "Cancelling…" : "Cancel";
    document.title = `${run.status} · ${run.id} · ADE`;
  }

  function renderHead() {
    renderFacts(facts, run);
    renderFailure(failure, run);
  }

  function renderSteps() {
    fill(
      stepList,
      [...steps.values()].map((step) =>
        h(
          "li",
          { dataset: { step: step.name, status: step.status }, onclick: () => log.scrollToSection(step.name), title: "Show in the log" },
          statusBadge(step.status, { class: "step-status" }),
          h("span", { class: "mono step-name" }, step.name),
          h("span", { class: "step-duration muted" }, timerOf(step)),
          h(
            "span",
            { class: "step-needs mono muted" },
            (step.needs.join(", ") || "—") + (step.when === "on_success" ? "" : ` · ${step.when}`),
          ),
        ),
      ),
    );
    for (const step of steps.values()) dag.update(step, timerOf(step));
    log.refresh();
  }

  function tick() {
    if (!run) return;
    const duration = document.getElementById("run-duration");
    if (duration) duration.textContent = formatDuration(elapsed(run.started_at, run.completed_at));
    if ([...steps.values()].some((step) => step.status === "running")) renderSteps();
  }

  function setProgress({ current, total, message, step }) {
    const done = Number(current);
    const all = Number(total);
    const parts = [];
    progress.classList.remove("idle");
    if (Number.isFinite(done) && Number.isFinite(all) && all > 0) {
      const percent = Math.max(0, Math.min(100, Math.round((100 * done) / all)));
      bar.style.width = `${percent}%`;
      progress.setAttribute("aria-valuenow", String(percent));
      progress.classList.remove("indeterminate");
      parts.push(`${done} / ${all} · ${percent}%`);
    } else {
      progress.removeAttribute("aria-valuenow");
      progress.classList.add("indeterminate");
    }
    if (message) parts.push(String(message));
    if (step) parts.push(`step ${step}`);
    progressLabel.textContent = parts.join(" — ");
    progressLabel.classList.remove("muted");
  }

  async function refreshRun() {
    try {
      run = await api(`/runs/${encodeURIComponent(runId)}`);
      if (disposed) return;
      renderStatus();
      renderHead();
    } catch {
      // the stream still tells the status
    }
  }

  function downloadRaw() {
    download(`/runs/${encodeURIComponent(runId)}/logs?format=text`, `${runId}.log`).catch(
      (error) => (actionError.textContent = `Download failed: ${errorText(error)}`),
    );
  }

  function downloadEvents() {
    download(`/runs/${encodeURIComponent(runId)}/logfile`, `${runId}.ndjson`).catch(
      (error) => (actionError.textContent = `Download failed: ${errorText(error)}`),
    );
  }

  // Events ----------------------------------------------------------------------------------------

  function step(name) {
    if (!steps.has(name)) {
      steps.set(name, { name, status: "pending", startedAt: null, completedAt: null, durationMs: null, exitCode: null, needs: [], when: "on_success" });
    }
    return steps.get(name);
  }

  function onEvent(event) {
    const payload = event.payload ?? {};
    const meta = { sequence: event.sequence, time: event.created_at };
    const system = (text, stepName = null) => log.add("system", text, { ...meta, step: stepName });
    switch (event.type) {
      case "console.line":
        log.add(payload.stream === "stderr" ? "stderr" : "stdout", payload.message ?? "", {
          ...meta,
          step: payload.step ?? null,
          truncated: Boolean(payload.truncated),
        });
        return;
      case "engine.progress":
        setProgress(payload);
        return;
      case "run.queued":
        run.status = "queued";
        break;
      case "run.waiting_for_build":
        run.status = "waiting_for_build";
        system(`waiting for the environment build ${payload.build_id ?? ""}`.trim());
        break;
      case "run.started":
        run.status = "running";
        run.started_at ??= event.created_at;
        system(`run started (attempt ${payload.attempt ?? run.attempt})`);
        renderHead();
        break;
      case "run.step.started":
        Object.assign(step(payload.step), { status: "running", startedAt: event.created_at, completedAt: null, durationMs: null, exitCode: null });
        system(`▶ step ${payload.step}`, payload.step);
        renderSteps();
        break;
      case "run.step.completed": {
        const s = step(payload.step);
        Object.assign(s, {
          status: payload.status ?? "succeeded",
          completedAt: event.created_at,
          durationMs: payload.duration_ms ?? null,
          exitCode: payload.exit_code ?? null,
        });
        const exit = payload.exit_code === null || payload.exit_code === undefined ? "" : `, exit ${payload.exit_code}`;
        system(`■ step ${payload.step} ${s.status} in ${formatDuration(s.durationMs)}${exit}`, payload.step);
        renderSteps();
        outputs.refreshSoon();
        break;
      }
      case "run.step.skipped":
        Object.assign(step(payload.step), { status: "skipped", durationMs: null, exitCode: null });
        system(`○ step ${payload.step} skipped: ${payload.reason ?? ""}`, payload.step);
        renderSteps();
        break;
      case "run.cancel_requested":
        cancelRequested = true;
        system(`cancel requested${payload.requested_by ? ` by ${payload.requested_by}` : ""}`);
        break;
      case "run.completed":
        run.status = payload.status ?? run.status;
        run.exit_code = payload.exit_code ?? null;
        run.failure = payload.failure ?? null;
        run.completed_at ??= event.created_at;
        for (const s of steps.values()) if (s.status === "pending") s.status = "skipped";
        system(`run ${run.status} in ${formatDuration(payload.duration_ms)}${payload.failure ? ` — ${payload.failure.message}` : ""}`);
        renderSteps();
        renderHead();
        refreshRun();
        outputs.refreshSoon();
        break;
      default:
        system(`${event.type} ${JSON.stringify(payload)}`);
        return;
    }
    renderStatus();
  }

  // Actions ---------------------------------------------------------------------------------------

  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    actionError.textContent = "";
    try {
      const answer = await api(`/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" });
      if (disposed) return;
      cancelRequested = true;
      if (TERMINAL.has(answer.status)) run.status = answer.status;
      renderStatus();
    } catch (error) {
      actionError.textContent = `Cancel failed: ${errorText(error)}`;
      renderStatus();
    }
  });

  rerunButton.addEventListener("click", async () => {
    rerunButton.disabled = true;
    actionError.textContent = "";
    try {
      const created = await api(`/runs/${encodeURIComponent(runId)}/rerun`, { method: "POST" });
      window.location.hash = `#/runs/${encodeURIComponent(created.id)}`;
    } catch (error) {
      actionError.textContent = `Re-run failed: ${errorText(error)}`;
      rerunButton.disabled = false;
    }
  });

  searchBox.addEventListener("input", () => log.search.setQuery(searchBox.value));
  searchBox.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      log.search.move(event.shiftKey ? -1 : 1);
    } else if (event.key === "Escape") {
      searchBox.value = "";
      log.search.setQuery("");
    }
  });
  timesToggle.addEventListener("change", () => {
    localStorage.setItem(TIMES_ITEM, timesToggle.checked ? "1" : "0");
    log.setShowTimes(timesToggle.checked);
  });
  // The log is virtualised, so the browser's own find sees only the visible rows: offer ours instead.
  const onKey = (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "f") {
      event.preventDefault();
      searchBox.focus();
      searchBox.select();
    }
  };
  window.addEventListener("keydown", onKey);

  // Start -----------------------------------------------------------------------------------------

  async function start() {
    try {
      run = await api(`/runs/${encodeURIComponent(runRef)}`);
    } catch (error) {
      if (disposed) return;
      const message = error instanceof ApiError && error.status === 404 ? `No run ${runRef} here.` : errorText(error);
      fill(root, h("section", { class: "panel" }, h("p", { class: "error", role: "alert" }, message), h("a", { href: "#/" }, "Back to runs")));
      return;
    }
    if (disposed) return;
    runId = run.id;
    outputs.runId = runId;
    renderStatus();
    renderHead();
    for (const state of run.steps ?? []) {
      Object.assign(step(state.name), {
        status: state.status,
        startedAt: state.started_at,
        completedAt: state.completed_at,
        exitCode: state.exit_code,
      });
    }
    try {
      const plan = await api(`/runs/${encodeURIComponent(runId)}/plan`);
      title.textContent = plan.name;
      for (const s of plan.steps) Object.assign(step(s.name), { needs: s.depends_on ?? [], when: s.when });
      dag.setSteps(plan.steps.map((s) => ({ name: s.name, needs: s.depends_on ?? [] })));
      dagPanel.hidden = plan.steps.length < 2;
    } catch {
      title.textContent = run.configuration_id;
      dagPanel.hidden = true;
    }
    if (disposed) return;
    renderSteps();
    if (line) log.goToLine(line);
    outputs.load();
    stream = new RunStream(runId, {
      onEvent,
      onState(state, detail) {
        streamState.textContent = STREAM_STATES[state] ?? state;
        streamState.dataset.state = state;
        streamState.title = detail ?? "";
      },
    }).start();
    ticker = setInterval(tick, 1000);
  }

  start();

  return {
    runRef,
    /** The same run's page with another line targeted (`#/runs/<id>#L<n>`). */
    showLine(n) {
      log.goToLine(n);
    },
    dispose() {
      disposed = true;
      stream?.close();
      clearInterval(ticker);
      outputs.dispose();
      log.dispose();
      dag.dispose();
      window.removeEventListener("keydown", onKey);
    },
  };
}
