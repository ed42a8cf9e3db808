// A workspace's runs, newest first: filters (status, configuration, branch — the API's own query
// parameters, kept in the URL), commit, branch, author and failure columns, "load more" past a page, and
// the loaded rows refreshed every few seconds while the tab is visible. Plus a form to start a run.

import { api, session } from "./api.js";
import { elapsed, errorText, fill, formatAgo, formatDuration, h, statusBadge } from "./dom.js";
import { commitLink, failureText } from "./runfacts.js";

const POLL_MS = 3000;
const PAGE = 50;
const STATUSES = ["queued", "waiting_for_build", "running", "succeeded", "failed", "cancelled"];
const FILTERS = ["status", "configuration_id", "branch"];

export function runsView(root, query = new URLSearchParams()) {
  const ws = encodeURIComponent(session.workspaceId);
  let names = new Map(); // configuration id -> name
  let runs = []; // the rows shown, newest first
  let nextCursor = null;
  let timer = null;
  let disposed = false;
  let generation = 0; // bumps when the filters change: answers to older queries are ignored
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

  const statusFilter = h(
    "select",
    { id: "filter-status", "aria-label": "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((status) => h("option", { value: status }, status.replaceAll("_", " "))),
  );
  const configurationFilter = h(
    "select",
    { id: "filter-configuration", "aria-label": "configuration" },
    h("option", { value: "" }, "Any configuration"),
  );
  const branchFilter = h("input", {
    id: "filter-branch",
    type: "search",
    placeholder: "Branch",
    autocomplete: "off",
    spellcheck: false,
    "aria-label": "branch",
  });
  statusFilter.value = query.get("status") ?? "";
  branchFilter.value = query.get("branch") ?? "";

  const rows = h("tbody", { id: "runs-body" });
  const listState = h("p", { class: "muted", id: "runs-state" }, "Loading runs…");
  const moreButton = h("button", { id: "load-more", type: "button", hidden: true }, "Load more");
  const columns = ["Status", "Run", "Commit", "Branch", "Author", "Failure", "Created", "Duration"];
  const table = h(
    "table",
    { class: "runs", id: "runs" },
    h("thead", {}, h("tr", {}, columns.map((name) => h("th", {}, name)))),
    rows,
  );

  fill(
    root,
    h("section", { class: "panel" }, h("h2", {}, "Start a run"), startForm),
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-head" },
        h("h2", {}, "Runs"),
        h("span", { class: "muted" }, "live"),
        h("span", { class: "spacer" }),
        h("div", { class: "filters" }, statusFilter, configurationFilter, branchFilter),
      ),
      table,
      listState,
      h("div", { class: "actions" }, moreButton),
    ),
  );

  function filters() {
    const params = new URLSearchParams();
    if (statusFilter.value) params.set("status", statusFilter.value);
    if (configurationFilter.value) params.set("configuration_id", configurationFilter.value);
    if (branchFilter.value.trim()) params.set("branch", branchFilter.value.trim());
    return params;
  }

  function onFilter() {
    const params = filters();
    const text = params.toString();
    history.replaceState(null, "", `#/${text ? `?${text}` : ""}`); // shareable, without a hashchange
    generation += 1;
    runs = [];
    nextCursor = null;
    clearTimeout(timer);
    listState.textContent = "Loading runs…";
    refresh();
  }

  statusFilter.addEventListener("change", onFilter);
  configurationFilter.addEventListener("change", onFilter);
  let typing = null;
  branchFilter.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(onFilter, 300);
  });

  startForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    startError.textContent = "";
    startButton.disabled = true;
    try {
      const run = await api(`/configurations/${encodeURIComponent(select.value)}/runs`, { method: "POST", body: {} });
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
      const options = () => configurations.map((cfg) => h("option", { value: cfg.id }, `${cfg.name} (${cfg.id})`));
      fill(select, options());
      configurationFilter.append(...options());
      configurationFilter.value = query.get("configuration_id") ?? "";
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
    const commit = run.commit ?? {};
    return h(
      "tr",
      { dataset: { runId: run.id, status: run.status } },
      h("td", {}, statusBadge(run.status)),
      h(
        "td",
        {},
        h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, class: "mono run-link" }, run.id),
        h("div", { class: "muted small" }, names.get(run.configuration_id) ?? run.configuration_id),
      ),
      h("td", { class: "commit" }, commitLink(commit), commit.message ? h("div", { class: "muted small ellipsis", title: commit.message }, commit.message.split("\n")[0]) : null),
      h("td", { class: "branch mono" }, commit.branch ?? ""),
      h("td", { class: "author" }, commit.author ?? ""),
      h("td", { class: "failure-reason", title: run.failure?.code ?? "" }, failureText(run.failure)),
      h("td", { title: new Date(run.created_at).toLocaleString() }, formatAgo(run.created_at)),
      h("td", {}, formatDuration(elapsed(run.started_at, run.completed_at))),
    );
  }

  function render() {
    fill(rows, runs.map(row));
    table.hidden = !runs.length;
    moreButton.hidden = !nextCursor;
    listState.textContent = runs.length ? "" : filters().toString() ? "No runs match these filters." : "No runs yet.";
  }

  async function fetchPage(before) {
    const params = filters();
    params.set("limit", String(PAGE));
    if (before) params.set("before", before);
    return api(`/workspaces/${ws}/runs?${params}`);
  }

  /** The newest page again; rows loaded past it (older) are kept behind it. */
  async function refresh() {
    clearTimeout(timer);
    if (disposed) return;
    if (!document.hidden) {
      const asked = generation;
      try {
        const page = await fetchPage(null);
        if (disposed || asked !== generation) return;
        const oldest = page.items.at(-1)?.id;
        const fresh = new Set(page.items.map((run) => run.id));
        const older = page.next_cursor ? runs.filter((run) => !fresh.has(run.id) && run.id < oldest) : [];
        if (!older.length) nextCursor = page.next_cursor;
        runs = [...page.items, ...older];
        render();
      } catch (error) {
        listState.textContent = `Could not load runs: ${errorText(error)}`;
      }
    }
    if (!disposed) timer = setTimeout(refresh, POLL_MS);
  }

  moreButton.addEventListener("click", async () => {
    moreButton.disabled = true;
    const asked = generation;
    try {
      const page = await fetchPage(nextCursor);
      if (disposed || asked !== generation) return;
      const known = new Set(runs.map((run) => run.id));
      runs.push(...page.items.filter((run) => !known.has(run.id)));
      nextCursor = page.next_cursor;
      render();
    } catch (error) {
      listState.textContent = `Could not load more runs: ${errorText(error)}`;
    } finally {
      moreButton.disabled = false;
    }
  });

  const onVisible = () => document.hidden || refresh();
  document.addEventListener("visibilitychange", onVisible);
  loadConfigurations().then(refresh);

  return {
    dispose() {
      disposed = true;
      clearTimeout(timer);
      clearTimeout(typing);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}
