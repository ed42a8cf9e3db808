// The console: lines appended in batches (one DOM update per animation frame, however fast events come),
// at most `maxLines` kept in the DOM, following the bottom unless the reader scrolled up.

import { h } from "./dom.js";

export const MAX_LINES = 5000;

export class ConsoleView {
  constructor({ maxLines = MAX_LINES, onDropped = () => {} } = {}) {
    this.maxLines = maxLines;
    this.onDropped = onDropped;
    this.pending = [];
    this.shown = 0;
    this.dropped = 0;
    this.scheduled = false;
    this.element = h("div", {
      id: "console",
      class: "console",
      role: "log",
      "aria-label": "console output",
      tabindex: "0",
    });
    this.empty = h("div", { class: "console-empty" }, "No output yet.");
    this.element.append(this.empty);
  }

  /** kind: "stdout" | "stderr" | "system"; text: the line; step: the step it came from, if any. */
  add(kind, text, { step = null, sequence = null, time = null, truncated = false } = {}) {
    this.pending.push({ kind, text, step, sequence, time, truncated });
    // A hidden tab gets no animation frames: never hold more than one screenful of history per frame.
    if (this.pending.length > 2 * this.maxLines) {
      const excess = this.pending.length - this.maxLines;
      this.pending.splice(0, excess);
      this.dropped += excess;
    }
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    let items = this.pending;
    this.pending = [];
    if (!items.length) return;
    if (items.length > this.maxLines) {
      this.dropped += items.length - this.maxLines;
      items = items.slice(-this.maxLines);
    }
    const box = this.element;
    const following = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    this.empty?.remove();
    this.empty = null;
    const fragment = document.createDocumentFragment();
    for (const item of items) fragment.append(this.render(item));
    box.append(fragment);
    this.shown += items.length;
    let excess = this.shown - this.maxLines;
    if (excess > 0) {
      this.dropped += excess;
      this.shown -= excess;
      while (excess-- > 0) box.firstElementChild.remove();
    }
    if (this.dropped) this.onDropped(this.dropped);
    if (following) box.scrollTop = box.scrollHeight;
  }

  render({ kind, text, step, sequence, time, truncated }) {
    const title = [sequence !== null ? `#${sequence}` : null, time, step ? `step ${step}` : null, kind]
      .filter(Boolean)
      .join(" · ");
    return h(
      "div",
      { class: `line ${kind}`, title, dataset: sequence !== null ? { sequence } : {} },
      h("span", { class: "gutter" }, step ?? ""),
      h("span", { class: "text" }, text, truncated ? h("span", { class: "cut" }, " [truncated]") : null),
    );
  }
}
