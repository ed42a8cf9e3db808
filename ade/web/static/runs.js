// A workspace's runs, newest first, refreshed every two seconds, and a form to start a run.

import { api, session } from "./api.js";
import { elapsed, errorText, fill, formatAgo, formatDuration, h, statusBadge } from "./dom.js";

const POLL_MS = 2000;
const PAGE = 50;

export function runsView(root) {
  const workspaceId = session.workspaceId;
  const ws = encodeURIComponent(workspaceId);
  let names = new Map(); // configuration id -> name
  let timer = null;
  let disposed = false;
  document.title = "Runs · ADE";

  const select = h("select", { id: "configuration", name: "configuration", required: true });
  const startButton = h("button", { id: "start-run", type: "submit", class: "primary" }, "Start run");
  const startError = h("span", { class: "error", role: "alert" });
  const startForm = h(
    "form",
    { id: "start-run-form", class: "start-run" },
    h("label", { for: "configuration" }, "Configuration"),
    select,
    startButton,
    startError,
  );
  const rows = h("tbody", { id: "runs-body" });
  const listState = h("p", { class: "muted", id: "runs-state" }, "Loading runs…");
  const table = h(
    "table",
    { class: "runs", id: "runs" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Run", "Configuration", "Status", "Created", "Duration"].map((name) => h("th", {}, name)),
      ),
    ),
    rows,
  );

  fill(
    root,
    h("section", { class: "panel" }, h("h2", {}, "Start a run"), startForm),
    h(
      "section",
      { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", {}, "Runs"), h("span", { class: "muted" }, "live")),
      table,
      listState,
    ),
  );

  startForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    startError.textContent = "";
    startButton.disabled = true;
    try {
      const run = await api(`/configurations/${encodeURIComponent(select.value)}/runs`, {
        method: "POST",
        body: {},
      });
      window.location.hash = `#/runs/${encodeURIComponent(run.id)}`;
    } catch (error) {
      startError.textContent = errorText(error);
      startButton.disabled = false;
    }
  });

  async function loadConfigurations() {
    try {
      const configurations = await api(`/workspaces/${ws}/configurations`);
      if (disposed) return;
      configurations.sort((a, b) => a.name.localeCompare(b.name));
      names = new Map(configurations.map((cfg) => [cfg.id, cfg.name]));
      fill(
        select,
        configurations.map((cfg) => h("option", { value: cfg.id }, `${cfg.name} (${cfg.id})`)),
      );
      if (!configurations.length) {
        select.disabled = startButton.disabled = true;
        startError.textContent = "This workspace has no configurations yet (create one through the API).";
      }
    } catch (error) {
      select.disabled = startButton.disabled = true;
      startError.textContent = errorText(error);
    }
  }

  function row(run) {
    return h(
      "tr",
      { dataset: { runId: run.id } },
      h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, class: "mono" }, run.id)),
      h("td", {}, names.get(run.configuration_id) ?? h("span", { class: "mono" }, run.configuration_id)),
      h("td", {}, statusBadge(run.status)),
      h("td", { title: new Date(run.created_at).toLocaleString() }, formatAgo(run.created_at)),
      h("td", {}, formatDuration(elapsed(run.started_at, run.completed_at))),
    );
  }

  async function refresh() {
    if (disposed) return;
    if (!document.hidden) {
      try {
        const page = await api(`/workspaces/${ws}/runs?limit=${PAGE}`);
        if (disposed) return;
        fill(rows, page.items.map(row));
        table.hidden = !page.items.length;
        listState.textContent = page.items.length
          ? page.next_cursor
            ? `The newest ${PAGE} runs.`
            : ""
          : "No runs yet.";
      } catch (error) {
        listState.textContent = `Could not load runs: ${errorText(error)}`;
      }
    }
    if (!disposed) timer = setTimeout(refresh, POLL_MS);
  }

  loadConfigurations().then(refresh);

  return {
    dispose() {
      disposed = true;
      clearTimeout(timer);
    },
  };
}
