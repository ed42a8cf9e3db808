// Search in the log: case-insensitive, over every line (collapsed sections included), in the order the
// log shows them; next/previous move between matching lines and bring them into view.

import { plainText } from "./ansi.js";
import { h } from "./dom.js";

const RECOUNT_MS = 300;

function plainOf(line) {
  if (line.plain === undefined) line.plain = line.kind === "system" ? line.text : plainText(line.text);
  return line.plain;
}

function span(segment, text) {
  const element = h("span", segment.classes.length ? { class: segment.classes.join(" ") } : {}, text);
  if (segment.fg) element.style.color = segment.fg; // CSSOM, which the page's CSP allows
  if (segment.bg) element.style.backgroundColor = segment.bg;
  return element;
}

export class LogSearch {
  constructor(log, onChange = () => {}) {
    this.log = log;
    this.onChange = onChange;
    this.query = "";
    this.needle = "";
    this.matches = [];
    this.matched = new Set();
    this.current = null;
    this.timer = null;
  }

  setQuery(query) {
    this.query = query;
    this.needle = query.toLowerCase();
    this.recount();
    this.current = this.matches[0] ?? null;
    if (this.current) this.log.scrollToItem(this.current);
    else this.log.refresh();
    this.onChange();
  }

  recount() {
    clearTimeout(this.timer);
    this.timer = null;
    this.matches = [];
    if (this.needle) {
      for (const section of this.log.sections) {
        for (const line of section.lines) if (plainOf(line).toLowerCase().includes(this.needle)) this.matches.push(line);
      }
    }
    this.matched = new Set(this.matches);
    if (this.current && !this.matched.has(this.current)) this.current = null;
  }

  /** New lines arrived: count them in (soon, not on every frame). */
  added() {
    if (!this.needle || this.timer) return;
    this.timer = setTimeout(() => {
      const hadCurrent = Boolean(this.current);
      this.recount();
      if (!this.current && this.matches.length) {
        this.current = this.matches[0]; // the first match arrived after the query was typed
        if (!hadCurrent) this.log.scrollToItem(this.current);
      }
      this.log.refresh();
      this.onChange();
    }, RECOUNT_MS);
  }

  /** step: +1 (next) or -1 (previous), wrapping around. */
  move(step) {
    if (this.timer) this.recount();
    if (!this.matches.length) return;
    const at = this.current ? this.matches.indexOf(this.current) : -1;
    const next = at < 0 ? (step > 0 ? 0 : this.matches.length - 1) : (at + step + this.matches.length) % this.matches.length;
    this.current = this.matches[next];
    this.log.scrollToItem(this.current);
    this.onChange();
  }

  get position() {
    return this.current ? this.matches.indexOf(this.current) + 1 : 0;
  }

  /** Fill a row's text element with its segments, wrapping the query's occurrences in <mark>. */
  mark(line, segments, into, isCurrent) {
    if (!this.needle || !this.matched.has(line)) {
      for (const segment of segments) into.append(span(segment, segment.text));
      return;
    }
    const plain = segments.map((segment) => segment.text).join("");
    const lower = plain.toLowerCase();
    const ranges = [];
    for (let at = lower.indexOf(this.needle); at >= 0; at = lower.indexOf(this.needle, at + this.needle.length)) {
      ranges.push([at, at + this.needle.length]);
    }
    let offset = 0;
    for (const segment of segments) {
      const start = offset;
      const end = offset + segment.text.length;
      offset = end;
      let cursor = start;
      const element = span(segment, "");
      for (const [from, to] of ranges) {
        if (to <= cursor || from >= end) continue;
        if (from > cursor) element.append(plain.slice(cursor, from));
        const stop = Math.min(to, end);
        element.append(h("mark", { class: isCurrent ? "current" : "" }, plain.slice(Math.max(from, cursor), stop)));
        cursor = stop;
      }
      if (cursor < end) element.append(plain.slice(cursor, end));
      into.append(element);
    }
  }
}
