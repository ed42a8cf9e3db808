// A run's facts (id, commit, branch, author, attempt, times) and its failure, for the run page's head.

import { elapsed, fill, formatDuration, formatTime, h } from "./dom.js";

/** A commit's page when the repository URL is a web one (never a `javascript:` or other scheme). */
export function commitHref(commit) {
  if (!commit?.repo_url || !commit.hash) return null;
  try {
    const url = new URL(commit.repo_url.replace(/\.git$/, ""));
    if (url.protocol !== "https:" && url.protocol !== "http:") return null;
    return `${url.href.replace(/\/$/, "")}/commit/${encodeURIComponent(commit.hash)}`;
  } catch {
    return null;
  }
}

export function shortHash(hash) {
  return hash ? hash.slice(0, 7) : "";
}

/** The short hash, linked to the commit's page when there is one. */
export function commitLink(commit, props = {}) {
  if (!commit?.hash) return null;
  const href = commitHref(commit);
  const text = shortHash(commit.hash);
  const attributes = { class: "mono commit-hash", title: commit.message ?? commit.hash, ...props };
  return href ? h("a", { ...attributes, href, target: "_blank", rel: "noopener noreferrer" }, text) : h("span", attributes, text);
}

export function renderFacts(facts, run) {
  const fact = (name, ...value) => h("div", { class: "fact" }, h("dt", {}, name), h("dd", {}, ...value));
  const commit = run.commit;
  fill(
    facts,
    h("div", { class: "fact wide" }, h("dt", {}, "Run"), h("dd", {}, h("span", { class: "mono", id: "run-id" }, run.id))),
    commit?.hash || commit?.branch
      ? h(
          "div",
          { class: "fact wide", id: "run-commit" },
          h("dt", {}, "Commit"),
          h(
            "dd",
            {},
            commitLink(commit),
            commit.branch ? [" on ", h("span", { class: "mono branch" }, commit.branch)] : null,
            commit.author ? [" by ", h("span", { class: "author" }, commit.author)] : null,
            commit.message ? h("div", { class: "commit-message muted" }, commit.message.split("\n")[0]) : null,
          ),
        )
      : null,
    fact(
      "Attempt",
      String(run.attempt),
      run.rerun_of ? [" · re-run of ", h("a", { href: `#/runs/${encodeURIComponent(run.rerun_of)}`, class: "mono" }, run.rerun_of)] : null,
    ),
    fact("Created", formatTime(run.created_at)),
    fact("Started", formatTime(run.started_at)),
    fact("Duration", h("span", { id: "run-duration" }, formatDuration(elapsed(run.started_at, run.completed_at)))),
    fact("Exit code", run.exit_code ?? "—"),
  );
}

/** "Step build failed (exit_nonzero): …" — where and why the run failed. */
export function failureText(failure) {
  if (!failure) return "";
  const where = failure.step ? `step ${failure.step}` : failure.stage;
  return `${where}: ${failure.message} (${failure.code})`;
}

export function renderFailure(element, run) {
  element.hidden = !run.failure;
  element.textContent = run.failure ? `Failed at ${failureText(run.failure)}` : "";
}
