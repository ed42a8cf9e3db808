// ANSI escape sequences in console lines: SGR (colours and attributes) becomes styled spans; every other
// escape or control sequence is dropped. Text only ever reaches the page as text nodes.
//
// parseAnsi(text) -> [{text, classes: string[], fg: css|null, bg: css|null}]; plainText(text) -> string.

// CSI (ESC [ … final), OSC (ESC ] … BEL or ST), other escapes (ESC, intermediates, final), 8-bit CSI.
const ESCAPE = /\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]|\x9b[0-?]*[ -/]*[@-~]/g;
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;
const NEEDS_WORK = /[\x00-\x08\x0b-\x1f\x7f\x9b]/;

/** A terminal line's last state after carriage returns (a progress bar shows its final frame). */
function lastFrame(text) {
  const trimmed = text.endsWith("\r") ? text.replace(/\r+$/, "") : text;
  const at = trimmed.lastIndexOf("\r");
  return at < 0 ? trimmed : trimmed.slice(at + 1);
}

/** The xterm 256-colour palette's entries 16..255 as CSS (0..15 are themed classes). */
function color256(n) {
  if (n >= 232) {
    const level = 8 + 10 * (n - 232);
    return `rgb(${level}, ${level}, ${level})`;
  }
  const cube = n - 16;
  const steps = [0, 95, 135, 175, 215, 255];
  return `rgb(${steps[Math.floor(cube / 36)]}, ${steps[Math.floor(cube / 6) % 6]}, ${steps[cube % 6]})`;
}

const clampByte = (value) => Math.max(0, Math.min(255, Number(value) || 0));

/** An extended colour (38/48): [consumed params, {index} | {css}] from params after the 38/48. */
function extended(params, at) {
  const mode = params[at];
  if (mode === 5 && at + 1 < params.length) {
    const n = params[at + 1];
    if (!(n >= 0 && n <= 255)) return [2, null];
    return [2, n < 16 ? { index: n } : { css: color256(n) }];
  }
  if (mode === 2 && at + 3 < params.length) {
    const [r, g, b] = params.slice(at + 1, at + 4).map(clampByte);
    return [4, { css: `rgb(${r}, ${g}, ${b})` }];
  }
  return [params.length - at, null];
}

function freshState() {
  return { bold: false, dim: false, italic: false, underline: false, strike: false, inverse: false, fg: null, bg: null };
}

function applySgr(state, raw) {
  // `38:2::r:g:b` (colon sub-parameters, with an optional colour-space id) is read like `38;2;r;g;b`.
  const params = raw === "" ? [0] : raw.split(";").flatMap((part) => expandColon(part));
  for (let i = 0; i < params.length; i++) {
    const p = params[i];
    if (p === 0) Object.assign(state, freshState());
    else if (p === 1) state.bold = true;
    else if (p === 2) state.dim = true;
    else if (p === 3) state.italic = true;
    else if (p === 4) state.underline = true;
    else if (p === 7) state.inverse = true;
    else if (p === 9) state.strike = true;
    else if (p === 21 || p === 22) state.bold = state.dim = false;
    else if (p === 23) state.italic = false;
    else if (p === 24) state.underline = false;
    else if (p === 27) state.inverse = false;
    else if (p === 29) state.strike = false;
    else if (p >= 30 && p <= 37) state.fg = { index: p - 30 };
    else if (p >= 90 && p <= 97) state.fg = { index: p - 90 + 8 };
    else if (p === 39) state.fg = null;
    else if (p >= 40 && p <= 47) state.bg = { index: p - 40 };
    else if (p >= 100 && p <= 107) state.bg = { index: p - 100 + 8 };
    else if (p === 49) state.bg = null;
    else if (p === 38 || p === 48) {
      const [used, colour] = extended(params, i + 1);
      if (colour) state[p === 38 ? "fg" : "bg"] = colour;
      i += used;
    }
  }
}

function expandColon(part) {
  if (!part.includes(":")) return [part === "" ? 0 : Number(part)];
  const sub = part.split(":").map((x) => (x === "" ? NaN : Number(x)));
  if (sub[1] === 2 && sub.length >= 6) return [sub[0], 2, ...sub.slice(-3)]; // drop the colour space
  return sub.map((x) => (Number.isNaN(x) ? 0 : x));
}

function segmentOf(text, state) {
  const classes = [];
  let fg = state.fg;
  let bg = state.bg;
  if (state.inverse) {
    [fg, bg] = [bg ?? { index: -1 }, fg ?? { index: -2 }]; // -1/-2: the console's own colours
  }
  if (state.bold) classes.push("ansi-bold");
  if (state.dim) classes.push("ansi-dim");
  if (state.italic) classes.push("ansi-italic");
  if (state.underline) classes.push("ansi-underline");
  if (state.strike) classes.push("ansi-strike");
  let fgCss = null;
  let bgCss = null;
  if (fg) {
    if (fg.css) fgCss = fg.css;
    else classes.push(fg.index === -1 ? "ansi-fg-bg" : `ansi-fg-${fg.index}`);
  }
  if (bg) {
    if (bg.css) bgCss = bg.css;
    else classes.push(bg.index === -2 ? "ansi-bg-fg" : `ansi-bg-${bg.index}`);
  }
  return { text, classes, fg: fgCss, bg: bgCss };
}

/** The line as styled segments (no escape or control character left in any segment's text). */
export function parseAnsi(input) {
  const text = lastFrame(input);
  if (!NEEDS_WORK.test(text)) return text ? [{ text, classes: [], fg: null, bg: null }] : [];
  const segments = [];
  const state = freshState();
  let at = 0;
  const push = (piece) => {
    const clean = piece.replace(CONTROL, (c) => (c === "\t" ? c : ""));
    if (clean) segments.push(segmentOf(clean, state));
  };
  for (const match of text.matchAll(ESCAPE)) {
    push(text.slice(at, match.index));
    if (match[2] === "m") applySgr(state, match[1]);
    at = match.index + match[0].length;
  }
  push(text.slice(at));
  return segments;
}

/** The text a reader sees (what search matches and what is copied). */
export function plainText(input) {
  const text = lastFrame(input);
  if (!NEEDS_WORK.test(text)) return text;
  return text.replace(ESCAPE, "").replace(CONTROL, (c) => (c === "\t" ? c : ""));
}
