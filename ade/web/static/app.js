// The console's shell: sign-in, the workspace label, and hash routing (#/ and #/runs/<id>).

import { api, ApiError, session, UNAUTHORIZED } from "./api.js";
import { errorText, fill, h } from "./dom.js";
import { runView } from "./run.js";
import { runsView } from "./runs.js";

const view = document.getElementById("view");
const workspaceLabel = document.getElementById("workspace-label");
const signOutButton = document.getElementById("sign-out");

let current = null; // the mounted view: {dispose()}
let signInMessage = "";

function route() {
  current?.dispose?.();
  current = null;
  if (!session.signedIn) {
    showSignIn();
    return;
  }
  signOutButton.hidden = false;
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const run = hash.match(/^\/runs\/([^/?]+)$/);
  if (run) current = runView(view, decodeURIComponent(run[1]));
  else current = runsView(view);
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
    required: true,
    autocomplete: "off",
    spellcheck: false,
    placeholder: "ws_…",
    value: session.workspaceId || "",
  });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { id: "sign-in", class: "panel sign-in" },
    h("h1", {}, "Sign in to ADE"),
    h(
      "p",
      { class: "muted" },
      "Paste an API key and its workspace id. They are kept in this browser's local storage and sent " +
        "only to this server, as Authorization: Bearer.",
    ),
    h("label", { for: "api-key" }, "API key"),
    key,
    h("label", { for: "workspace-id" }, "Workspace id"),
    workspace,
    h("div", { class: "actions" }, submit),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    const workspaceId = workspace.value.trim();
    const secret = key.value.trim();
    try {
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
