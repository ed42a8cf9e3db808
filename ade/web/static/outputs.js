// A run's outputs: each file with its size and a download, and all of them as one zip.

import { api, download } from "./api.js";
import { errorText, fill, formatBytes, h } from "./dom.js";

export class OutputsView {
  constructor(runId, onError) {
    this.runId = runId;
    this.onError = onError;
    this.timer = null;
    this.list = h("ul", { id: "outputs", class: "outputs" });
    this.state = h("p", { id: "outputs-state", class: "muted" }, "No outputs yet.");
    this.zipButton = h(
      "button",
      { id: "download-zip", type: "button", class: "ghost small", hidden: true, onclick: () => this.downloadAll() },
      "Download all (.zip)",
    );
    this.total = h("span", { id: "outputs-total", class: "muted" });
    this.element = h(
      "section",
      { class: "panel outputs-panel" },
      h("div", { class: "panel-head" }, h("h3", {}, "Outputs"), this.total),
      this.list,
      this.state,
      this.zipButton,
    );
  }

  get base() {
    return `/runs/${encodeURIComponent(this.runId)}`;
  }

  dispose() {
    clearTimeout(this.timer);
  }

  refreshSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 300);
  }

  async load() {
    let listing;
    try {
      listing = await api(`${this.base}/outputs`);
    } catch (error) {
      this.state.hidden = false;
      this.state.textContent = `Could not list outputs: ${errorText(error)}`;
      return;
    }
    const items = listing.items;
    fill(
      this.list,
      items.map((item) => {
        const name = item.path.split("/").pop();
        const url = listing.download_urls?.[item.path] ?? `${this.base}/outputs/${item.path}`;
        return h(
          "li",
          { dataset: { path: item.path } },
          h("span", { class: "mono path", title: `sha256 ${item.sha256}${item.step ? ` · step ${item.step}` : ""}` }, item.path),
          h("span", { class: "muted size" }, formatBytes(item.size)),
          h("button", { type: "button", class: "download small", onclick: () => this.save(url, name) }, "Download"),
        );
      }),
    );
    const bytes = items.reduce((sum, item) => sum + item.size, 0);
    this.total.textContent = items.length ? `${items.length} · ${formatBytes(bytes)}` : "";
    this.state.hidden = items.length > 0;
    this.state.textContent = "No outputs yet.";
    this.zipButton.hidden = items.length === 0;
  }

  save(url, name) {
    download(url, name).catch((error) => this.onError(`Download failed: ${errorText(error)}`));
  }

  downloadAll() {
    this.save(`${this.base}/outputs.zip`, `${this.runId}-outputs.zip`);
  }
}
