// The run's log: every console line kept in memory, only the visible rows in the DOM (fixed row height),
// grouped into collapsible sections (one per step), with line numbers, search marks, timestamps, and a
// target line (`#L123`) scrolled to and highlighted once it has arrived.

import { parseAnsi, plainText } from "./ansi.js";
import { h } from "./dom.js";
import { LogSearch } from "./logsearch.js";

export const ROW_PX = 20; // keep in step with `.console .row` in console.css
const OVERSCAN_ROWS = 20;
export const MAX_LINES = 1_000_000; // beyond this the oldest lines are dropped (the raw log has them all)

const SETUP = "\u0000setup";
const FINISH = "\u0000finish";

function clock(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

export class LogView {
  /**
   * @param {{lineHref: (n: number) => string, sectionHead: (section) => Node[], onToggle?: () => void}} options
   *   sectionHead renders a section's header contents (its step's status and timer);
   */
  constructor({ lineHref, sectionHead, onDropped = () => {} }) {
    this.lineHref = lineHref;
    this.sectionHead = sectionHead;
    this.onDropped = onDropped;
    this.lines = []; // every line, in arrival order: {n, kind, text, step, time, section, plain?}
    this.firstNumber = 1; // the number of lines[0] (after drops)
    this.sections = []; // {key, title, step, lines: [], collapsed}
    this.byKey = new Map();
    this.rows = []; // what is laid out: a section ({head: section}) or a line
    this.rowsStale = false;
    this.pending = [];
    this.scheduled = false;
    this.showTimes = false;
    this.target = null; // {n, reached}
    this.following = true;
    this.search = new LogSearch(this);

    this.sizer = h("div", { class: "console-sizer" });
    this.window = h("div", { class: "console-rows" });
    this.sizer.append(this.window);
    this.empty = h("div", { class: "console-empty" }, "No output yet.");
    this.element = h(
      "div",
      { id: "console", class: "console", role: "log", "aria-label": "console output", tabindex: "0" },
      this.empty,
      this.sizer,
    );
    this.element.addEventListener("scroll", () => {
      const box = this.element;
      this.following = box.scrollTop + box.clientHeight >= box.scrollHeight - ROW_PX;
      this.schedule();
    });
    this.element.addEventListener("click", (event) => this.onClick(event));
    this.resizeObserver = new ResizeObserver(() => this.schedule());
    this.resizeObserver.observe(this.element);
  }

  dispose() {
    this.resizeObserver.disconnect();
  }

  // Input -----------------------------------------------------------------------------------------

  /** kind: "stdout" | "stderr" | "system"; step: the step it belongs to (null: the run). */
  add(kind, text, { step = null, time = null, sequence = null, truncated = false } = {}) {
    this.pending.push({ kind, text: truncated ? `${text} [truncated]` : text, step, time, sequence });
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.flush());
  }

  sectionFor(step) {
    const key = step ?? (this.sections.some((s) => s.step !== null) ? FINISH : SETUP);
    let section = this.byKey.get(key);
    if (!section) {
      const title = step ?? (key === SETUP ? "Set up run" : "Complete run");
      section = { key, title, step, lines: [], collapsed: false };
      section.headRow = { head: section };
      this.byKey.set(key, section);
      this.sections.push(section);
      this.rowsStale = true;
    }
    return section;
  }

  flush() {
    this.scheduled = false;
    const items = this.pending;
    this.pending = [];
    const last = this.sections.at(-1);
    for (const item of items) {
      const section = this.sectionFor(item.step);
      item.section = section;
      item.n = this.firstNumber + this.lines.length;
      this.lines.push(item);
      section.lines.push(item);
      if (!this.rowsStale && !section.collapsed) {
        if (section === last) this.rows.push(item);
        else this.rowsStale = true;
      }
    }
    if (this.lines.length > MAX_LINES) this.drop(this.lines.length - MAX_LINES);
    if (items.length) {
      this.empty?.remove();
      this.empty = null;
      this.search.added(items);
    }
    this.layout();
    if (this.target && !this.target.reached && this.line(this.target.n)) this.reveal(this.target.n);
    else if (items.length && this.following && !this.target) this.element.scrollTop = this.element.scrollHeight;
    this.paint();
  }

  drop(count) {
    const gone = new Set(this.lines.splice(0, count));
    this.firstNumber += count;
    for (const section of this.sections) section.lines = section.lines.filter((line) => !gone.has(line));
    this.rowsStale = true;
    this.onDropped(this.firstNumber - 1);
  }

  // Layout ----------------------------------------------------------------------------------------

  layout() {
    if (this.rowsStale) {
      const rows = [];
      for (const section of this.sections) {
        rows.push(section.headRow);
        if (!section.collapsed) for (const line of section.lines) rows.push(line);
      }
      this.rows = rows;
      this.rowsStale = false;
      this.rowIndex = null;
    }
    this.sizer.style.height = `${this.rows.length * ROW_PX}px`;
  }

  /** The row index of a line or section head (built on demand, dropped when the rows change). */
  indexOf(item) {
    if (!this.rowIndex || this.rowIndex.size !== this.rows.length) {
      this.rowIndex = new Map(this.rows.map((row, index) => [row, index]));
    }
    return this.rowIndex.get(item) ?? -1;
  }

  line(n) {
    return this.lines[n - this.firstNumber] ?? null;
  }

  paint() {
    const box = this.element;
    const first = Math.max(0, Math.floor(box.scrollTop / ROW_PX) - OVERSCAN_ROWS);
    const last = Math.min(this.rows.length, Math.ceil((box.scrollTop + box.clientHeight) / ROW_PX) + OVERSCAN_ROWS);
    this.window.style.transform = `translateY(${first * ROW_PX}px)`;
    const fragment = document.createDocumentFragment();
    for (let index = first; index < last; index++) fragment.append(this.renderRow(this.rows[index]));
    this.window.replaceChildren(fragment);
  }

  /** Repaint the visible rows (timers, marks) without a new layout. */
  refresh() {
    this.schedule();
  }

  renderRow(row) {
    if (row.head) {
      const section = row.head;
      return h(
        "div",
        {
          class: `row section-head${section.collapsed ? " collapsed" : ""}`,
          dataset: { section: section.step ?? section.key.slice(1) },
        },
        h(
          "button",
          {
            type: "button",
            class: "toggle",
            "aria-expanded": String(!section.collapsed),
            title: section.collapsed ? "Expand" : "Collapse",
          },
          section.collapsed ? "▸" : "▾",
        ),
        h("span", { class: "section-title" }, section.title),
        h("span", { class: "muted section-count" }, `${section.lines.length.toLocaleString()} line${section.lines.length === 1 ? "" : "s"}`),
        this.sectionHead(section),
      );
    }
    const classes = ["row", "line", row.kind];
    if (this.target?.n === row.n) classes.push("target");
    const current = this.search.current === row;
    if (current) classes.push("current-match");
    const text = h("span", { class: "text" });
    const segments = row.kind === "system" ? [{ text: row.text, classes: [], fg: null, bg: null }] : parseAnsi(row.text);
    this.search.mark(row, segments, text, current);
    return h(
      "div",
      { class: classes.join(" "), id: `L${row.n}`, dataset: { line: row.n } },
      h("a", { class: "ln", href: this.lineHref(row.n), tabindex: "-1" }, String(row.n)),
      this.showTimes ? h("span", { class: "ts", title: row.time ?? "" }, clock(row.time)) : null,
      text,
    );
  }

  // Navigation ------------------------------------------------------------------------------------

  onClick(event) {
    const head = event.target.closest(".section-head");
    if (head && !event.target.closest("a")) {
      const key = head.dataset.section;
      const section = this.sections.find((s) => (s.step ?? s.key.slice(1)) === key);
      if (section) this.toggle(section);
    }
  }

  toggle(section, collapsed = !section.collapsed) {
    if (section.collapsed === collapsed) return;
    section.collapsed = collapsed;
    this.rowsStale = true;
    this.layout();
    this.paint();
  }

  setAllCollapsed(collapsed) {
    for (const section of this.sections) section.collapsed = collapsed;
    this.rowsStale = true;
    this.layout();
    this.paint();
  }

  section(step) {
    return this.byKey.get(step) ?? null;
  }

  /** Scroll a row into the middle of the view (expanding its section). */
  scrollToItem(item, { center = true } = {}) {
    if (item.section?.collapsed) this.toggle(item.section, false);
    this.layout();
    const index = this.indexOf(item);
    if (index < 0) return;
    const box = this.element;
    const top = index * ROW_PX;
    if (center) box.scrollTop = Math.max(0, top - box.clientHeight / 2 + ROW_PX / 2);
    else if (top < box.scrollTop || top + ROW_PX > box.scrollTop + box.clientHeight) box.scrollTop = top;
    this.following = false;
    this.paint();
  }

  scrollToSection(step) {
    const section = this.section(step);
    if (!section) return;
    this.toggle(section, false);
    this.layout();
    this.element.scrollTop = this.indexOf(section.headRow) * ROW_PX;
    this.following = false;
    this.paint();
  }

  /** Highlight line n and bring it into view, now or as soon as it arrives. */
  goToLine(n) {
    this.target = { n, reached: false };
    if (this.line(n)) this.reveal(n);
    else this.paint();
  }

  reveal(n) {
    this.target.reached = true;
    this.element.scrollIntoView({ block: "nearest" }); // the whole log on screen, then the line in it
    this.scrollToItem(this.line(n));
    this.element.dataset.target = String(n);
  }

  setShowTimes(show) {
    this.showTimes = show;
    this.element.classList.toggle("with-times", show);
    this.paint();
  }

  /** The console as plain text, one line per line (what the page shows, escapes removed). */
  plainLines() {
    return this.lines.map((line) => plainText(line.text));
  }
}
