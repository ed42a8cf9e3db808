// The console's shell: sign-in (a key; its workspace from /whoami), the workspace label, and hash routing
// (#/?filters, #/runs/<id>, #/runs/<id>#L<n>).

import { api, ApiError, session, UNAUTHORIZED } from "./api.js";
import { errorText, fill, h } from "./dom.js";
import { runView } from "./run.js";
import { runsView } from "./runs.js";

const view = document.getElementById("view");
const workspaceLabel = document.getElementById("workspace-label");
const signOutButton = document.getElementById("sign-out");

let current = null; // the mounted view: {dispose()}
let signInMessage = "";

/** `#/runs/<id>#L<n>` → {runRef, line}; `#/?status=…` → {query}. */
function parseHash() {
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const run = hash.match(/^\/runs\/([^/?#]+)(?:#L(\d+))?$/);
  if (run) return { runRef: decodeURIComponent(run[1]), line: run[2] ? Number(run[2]) : null };
  return { query: new URLSearchParams(hash.split("?")[1] ?? "") };
}

function route() {
  if (!session.signedIn) {
    current?.dispose?.();
    current = null;
    showSignIn();
    return;
  }
  signOutButton.hidden = false;
  const where = parseHash();
  if (where.runRef && current?.runRef === where.runRef) {
    if (where.line) current.showLine(where.line); // only the line changed: keep the page and its stream
    return;
  }
  current?.dispose?.();
  current = null;
  if (where.runRef) current = runView(view, where.runRef, { line: where.line });
  else current = runsView(view, where.query);
}

function showSignIn() {
  signOutButton.hidden = true;
  workspaceLabel.textContent = "";
  document.title = "Sign in · ADE";
  const error = h("p", { id: "sign-in-error", class: "error", role: "alert" }, signInMessage);
  const key = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    required: true,
    autocomplete: "off",
    spellcheck: false,
    placeholder: "ade.…",
  });
  const workspace = h("input", {
    id: "workspace-id",
    name: "workspace-id",
    autocomplete: "off",
    spellcheck: false,
    placeholder: "ws_…",
    value: session.workspaceId || "",
  });
  const workspaceField = h(
    "div",
    { id: "workspace-field", class: "field", hidden: true },
    h("label", { for: "workspace-id" }, "Workspace id"),
    h("p", { class: "muted" }, "This key is not bound to one workspace (the bootstrap token): which one?"),
    workspace,
  );
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { id: "sign-in", class: "panel sign-in" },
    h("h1", {}, "Sign in to ADE"),
    h(
      "p",
      { class: "muted" },
      "Paste an API key. It is kept in this browser's local storage and sent only to this server, as " +
        "Authorization: Bearer; its workspace comes with it.",
    ),
    h("label", { for: "api-key" }, "API key"),
    key,
    workspaceField,
    h("div", { class: "actions" }, submit),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    const secret = key.value.trim();
    let workspaceId = workspace.value.trim();
    try {
      const me = await api("/whoami", { key: secret });
      if (me.workspace_id) workspaceId = me.workspace_id;
      else if (!workspaceId) {
        workspaceField.hidden = false;
        workspace.required = true;
        workspace.focus();
        submit.disabled = false;
        return;
      }
      await api(`/workspaces/${encodeURIComponent(workspaceId)}`, { key: secret });
      session.save(secret, workspaceId);
      signInMessage = "";
      route();
      showWorkspace();
    } catch (failure) {
      error.textContent =
        failure instanceof ApiError && failure.status === 404
          ? `No workspace ${workspaceId} for this key.`
          : `Sign-in failed: ${errorText(failure)}`;
      submit.disabled = false;
    }
  });
  fill(view, form);
  key.focus();
}

async function showWorkspace() {
  if (!session.signedIn) return;
  const workspaceId = session.workspaceId;
  workspaceLabel.replaceChildren(h("span", { class: "mono" }, workspaceId));
  try {
    const workspace = await api(`/workspaces/${encodeURIComponent(workspaceId)}`);
    workspaceLabel.replaceChildren(
      h("span", { class: "workspace-name" }, workspace.name),
      " ",
      h("span", { class: "mono muted" }, workspace.id),
    );
  } catch {
    // the views show errors; the label keeps the id
  }
}

signOutButton.addEventListener("click", () => {
  session.clear();
  signInMessage = "";
  window.location.hash = "#/";
  route();
});

window.addEventListener(UNAUTHORIZED, (event) => {
  if (!session.signedIn) return;
  session.clear();
  signInMessage = `The API refused the key: ${event.detail.message}`;
  route();
});

window.addEventListener("hashchange", route);
route();
showWorkspace();
