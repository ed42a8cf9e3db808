// One run: status, steps, progress, outputs, and its console streaming live.

import { api, ApiError, download, encodePath } from "./api.js";
import { ConsoleView, MAX_LINES } from "./console.js";
import {
  elapsed,
  errorText,
  fill,
  formatBytes,
  formatDuration,
  formatTime,
  h,
  statusBadge,
  TERMINAL,
} from "./dom.js";
import { RunStream } from "./stream.js";

const CANCELLABLE = new Set(["queued", "waiting_for_build", "running"]);
const STREAM_STATES = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  ended: "complete",
  failed: "stream unavailable",
};

export function runView(root, runRef) {
  let run = null; // the run resource, kept current from events
  let runId = runRef;
  let steps = new Map(); // name -> {name, status, startedAt, durationMs, exitCode, needs, when}
  let cancelRequested = false;
  let stream = null;
  let ticker = null;
  let outputsTimer = null;
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
  const logButton = h("button", { id: "download-log", type: "button", class: "ghost" }, "Download log");

  const bar = h("div", { class: "bar" });
  const progress = h(
    "div",
    {
      id: "progress",
      class: "progress idle",
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-label": "progress",
    },
    bar,
  );
  const progressLabel = h(
    "div",
    { id: "progress-label", class: "progress-label muted" },
    "No progress reported.",
  );

  const stepRows = h("tbody", { id: "steps-body" });
  const outputs = h("ul", { id: "outputs", class: "outputs" });
  const outputsState = h("p", { class: "muted" }, "No outputs yet.");

  const streamState = h("span", { id: "stream-state", class: "stream-state" }, "connecting…");
  const consoleNotice = h("div", { id: "console-notice", class: "console-notice", hidden: true });
  const consoleView = new ConsoleView({
    onDropped(count) {
      consoleNotice.hidden = false;
      fill(
        consoleNotice,
        `${count.toLocaleString()} older line${count === 1 ? " is" : "s are"} not shown: the console ` +
          `keeps the last ${MAX_LINES.toLocaleString()}. `,
        h("button", { type: "button", class: "link", onclick: downloadLog }, "Download the full log"),
      );
    },
  });

  fill(
    root,
    h(
      "nav",
      { class: "crumbs" },
      h("a", { href: "#/" }, "Runs"),
      " / ",
      h("span", { class: "mono" }, runRef),
    ),
    h(
      "section",
      { class: "panel run-head" },
      h("div", { class: "panel-head" }, title, status),
      facts,
      failure,
      h("div", { class: "actions" }, cancelButton, rerunButton, logButton, actionError),
    ),
    h("section", { class: "panel" }, h("h3", {}, "Progress"), progress, progressLabel),
    h(
      "div",
      { class: "columns" },
      h(
        "section",
        { class: "panel" },
        h("h3", {}, "Steps"),
        h(
          "table",
          { class: "steps", id: "steps" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Step", "Needs", "Status", "Duration", "Exit"].map((n) => h("th", {}, n)),
            ),
          ),
          stepRows,
        ),
      ),
      h("section", { class: "panel" }, h("h3", {}, "Outputs"), outputs, outputsState),
    ),
    h(
      "section",
      { class: "panel console-panel" },
      h(
        "div",
        { class: "panel-head" },
        h("h3", {}, "Console"),
        h(
          "span",
          { class: "legend" },
          h("span", { class: "key stdout" }, "stdout"),
          h("span", { class: "key stderr" }, "stderr"),
        ),
        streamState,
      ),
      consoleNotice,
      consoleView.element,
    ),
  );

  // Rendering -------------------------------------------------------------------------------------

  function renderStatus() {
    const label = cancelRequested && !TERMINAL.has(run.status) ? "cancelling" : run.status;
    status.className = `badge status-${run.status}`;
    status.textContent = run.status.replaceAll("_", " ");
    status.dataset.status = run.status;
    status.title = label;
    cancelButton.disabled = !CANCELLABLE.has(run.status) || cancelRequested;
    cancelButton.textContent = cancelRequested && !TERMINAL.has(run.status) ? "Cancelling…" : "Cancel";
    document.title = `${run.status} · ${run.id} · ADE`;
  }

  function renderFacts() {
    const fact = (name, ...value) => h("div", { class: "fact" }, h("dt", {}, name), h("dd", {}, ...value));
    fill(
      facts,
      h(
        "div",
        { class: "fact wide" },
        h("dt", {}, "Run"),
        h("dd", {}, h("span", { class: "mono", id: "run-id" }, run.id)),
      ),
      fact(
        "Attempt",
        String(run.attempt),
        run.rerun_of
          ? [
              " · re-run of ",
              h("a", { href: `#/runs/${encodeURIComponent(run.rerun_of)}`, class: "mono" }, run.rerun_of),
            ]
          : null,
      ),
      fact("Created", formatTime(run.created_at)),
      fact("Started", formatTime(run.started_at)),
      fact(
        "Duration",
        h("span", { id: "run-duration" }, formatDuration(elapsed(run.started_at, run.completed_at))),
      ),
      fact("Exit code", run.exit_code ?? "—"),
    );
    failure.hidden = !run.failure;
    failure.textContent = run.failure ? `${run.failure.code}: ${run.failure.message}` : "";
  }

  function renderSteps() {
    fill(
      stepRows,
      [...steps.values()].map((step) =>
        h(
          "tr",
          { dataset: { step: step.name } },
          h("td", { class: "mono" }, step.name),
          h(
            "td",
            { class: "step-needs mono muted" },
            (step.needs.join(", ") || "—") + (step.when === "on_success" ? "" : ` · ${step.when}`),
          ),
          h("td", {}, statusBadge(step.status, { class: "step-status" })),
          h(
            "td",
            { class: "step-duration" },
            step.durationMs !== null
              ? formatDuration(step.durationMs)
              : step.startedAt
                ? formatDuration(elapsed(step.startedAt, null))
                : "—",
          ),
          h("td", {}, step.exitCode ?? "—"),
        ),
      ),
    );
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

  async function loadOutputs() {
    try {
      const listing = await api(`/runs/${encodeURIComponent(runId)}/outputs`);
      if (disposed) return;
      fill(
        outputs,
        listing.items.map((item) => {
          const name = item.path.split("/").pop();
          return h(
            "li",
            { dataset: { path: item.path } },
            h("span", { class: "mono path", title: `sha256 ${item.sha256}` }, item.path),
            h("span", { class: "muted" }, formatBytes(item.size)),
            h(
              "button",
              {
                type: "button",
                class: "download",
                onclick: () =>
                  download(`/runs/${encodeURIComponent(runId)}/outputs/${encodePath(item.path)}`, name).catch(
                    (error) => (actionError.textContent = `Download failed: ${errorText(error)}`),
                  ),
              },
              "Download",
            ),
          );
        }),
      );
      outputsState.hidden = listing.items.length > 0;
    } catch (error) {
      outputsState.textContent = `Could not list outputs: ${errorText(error)}`;
    }
  }

  function refreshOutputsSoon() {
    clearTimeout(outputsTimer);
    outputsTimer = setTimeout(loadOutputs, 300);
  }

  async function refreshRun() {
    try {
      run = await api(`/runs/${encodeURIComponent(runId)}`);
      if (disposed) return;
      renderStatus();
      renderFacts();
    } catch {
      // the stream still tells the status
    }
  }

  function downloadLog() {
    download(`/runs/${encodeURIComponent(runId)}/logfile`, `${runId}.ndjson`).catch(
      (error) => (actionError.textContent = `Download failed: ${errorText(error)}`),
    );
  }

  // Events ----------------------------------------------------------------------------------------

  function step(name) {
    if (!steps.has(name)) {
      steps.set(name, {
        name,
        status: "pending",
        startedAt: null,
        durationMs: null,
        exitCode: null,
        needs: [],
        when: "on_success",
      });
    }
    return steps.get(name);
  }

  function onEvent(event) {
    const payload = event.payload ?? {};
    const meta = { sequence: event.sequence, time: event.created_at };
    switch (event.type) {
      case "console.line":
        consoleView.add(payload.stream === "stderr" ? "stderr" : "stdout", payload.message ?? "", {
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
        consoleView.add("system", `waiting for the environment build ${payload.build_id ?? ""}`.trim(), meta);
        break;
      case "run.started":
        run.status = "running";
        run.started_at ??= event.created_at;
        consoleView.add("system", `run started (attempt ${payload.attempt ?? run.attempt})`, meta);
        renderFacts();
        break;
      case "run.step.started": {
        const s = step(payload.step);
        Object.assign(s, {
          status: "running",
          startedAt: event.created_at,
          durationMs: null,
          exitCode: null,
        });
        consoleView.add("system", `▶ step ${payload.step}`, { ...meta, step: payload.step });
        renderSteps();
        break;
      }
      case "run.step.completed": {
        const s = step(payload.step);
        Object.assign(s, {
          status: payload.status ?? "completed",
          durationMs: payload.duration_ms ?? null,
          exitCode: payload.exit_code ?? null,
        });
        const exit =
          payload.exit_code === null || payload.exit_code === undefined ? "" : `, exit ${payload.exit_code}`;
        consoleView.add(
          "system",
          `■ step ${payload.step} ${s.status} in ${formatDuration(s.durationMs)}${exit}`,
          {
            ...meta,
            step: payload.step,
          },
        );
        renderSteps();
        refreshOutputsSoon();
        break;
      }
      case "run.step.skipped": {
        Object.assign(step(payload.step), { status: "skipped", durationMs: null, exitCode: null });
        consoleView.add("system", `○ step ${payload.step} skipped: ${payload.reason ?? ""}`, {
          ...meta,
          step: payload.step,
        });
        renderSteps();
        break;
      }
      case "run.cancel_requested":
        cancelRequested = true;
        consoleView.add(
          "system",
          `cancel requested${payload.requested_by ? ` by ${payload.requested_by}` : ""}`,
          meta,
        );
        break;
      case "run.completed":
        run.status = payload.status ?? run.status;
        run.exit_code = payload.exit_code ?? null;
        run.failure = payload.failure ?? null;
        run.completed_at ??= event.created_at;
        for (const s of steps.values()) if (s.status === "pending") s.status = "skipped";
        consoleView.add(
          "system",
          `run ${run.status} in ${formatDuration(payload.duration_ms)}` +
            (payload.failure ? ` — ${payload.failure.message}` : ""),
          meta,
        );
        renderSteps();
        renderFacts();
        refreshRun();
        refreshOutputsSoon();
        break;
      default:
        consoleView.add("system", `${event.type} ${JSON.stringify(payload)}`, meta);
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

  logButton.addEventListener("click", downloadLog);

  // Start -----------------------------------------------------------------------------------------

  async function start() {
    try {
      run = await api(`/runs/${encodeURIComponent(runRef)}`);
    } catch (error) {
      if (disposed) return;
      const message =
        error instanceof ApiError && error.status === 404 ? `No run ${runRef} here.` : errorText(error);
      fill(
        root,
        h(
          "section",
          { class: "panel" },
          h("p", { class: "error", role: "alert" }, message),
          h("a", { href: "#/" }, "Back to runs"),
        ),
      );
      return;
    }
    if (disposed) return;
    runId = run.id;
    renderStatus();
    renderFacts();
    try {
      const plan = await api(`/runs/${encodeURIComponent(runId)}/plan`);
      title.textContent = plan.name;
      for (const s of plan.steps) Object.assign(step(s.name), { needs: s.depends_on ?? [], when: s.when });
      renderSteps();
    } catch {
      title.textContent = run.configuration_id;
    }
    if (disposed) return;
    loadOutputs();
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
    dispose() {
      disposed = true;
      stream?.close();
      clearInterval(ticker);
      clearTimeout(outputsTimer);
    },
  };
}
