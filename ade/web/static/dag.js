// The workflow's steps as a layered graph: a column per depth (a step sits one column right of its
// deepest dependency), nodes coloured by status, edges drawn in SVG once the nodes are laid out.

import { h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

/** steps: [{name, needs: string[]}] in plan order. Without any `depends_on`, steps run in order. */
export function layers(steps) {
  const sequential = steps.every((step) => !step.needs.length);
  const needs = new Map(
    steps.map((step, index) => [step.name, sequential ? (index ? [steps[index - 1].name] : []) : step.needs]),
  );
  const depth = new Map();
  const depthOf = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name)) return 0; // a cycle cannot be created; be safe anyway
    seen.add(name);
    const parents = (needs.get(name) ?? []).filter((parent) => needs.has(parent));
    const value = parents.length ? 1 + Math.max(...parents.map((parent) => depthOf(parent, seen))) : 0;
    depth.set(name, value);
    return value;
  };
  const columns = [];
  for (const step of steps) (columns[depthOf(step.name)] ??= []).push(step.name);
  return { columns: columns.filter(Boolean), needs };
}

export class DagView {
  /** onSelect(name): a node was clicked. */
  constructor(onSelect) {
    this.onSelect = onSelect;
    this.nodes = new Map();
    this.edges = h("div", { class: "dag-edges", "aria-hidden": "true" });
    this.grid = h("div", { class: "dag-grid" });
    this.element = h("div", { id: "dag", class: "dag" }, this.edges, this.grid);
    this.needs = new Map();
    this.resizeObserver = new ResizeObserver(() => this.drawEdges());
    this.resizeObserver.observe(this.element);
  }

  dispose() {
    this.resizeObserver.disconnect();
  }

  setSteps(steps) {
    const { columns, needs } = layers(steps);
    this.needs = needs;
    this.nodes.clear();
    this.grid.replaceChildren(
      ...columns.map((names) =>
        h(
          "div",
          { class: "dag-column" },
          names.map((name) => {
            const status = h("span", { class: "dag-status" });
            const timer = h("span", { class: "dag-timer muted" });
            const node = h(
              "button",
              { type: "button", class: "dag-node status-pending", dataset: { step: name }, title: name, onclick: () => this.onSelect(name) },
              status,
              h("span", { class: "dag-name" }, name),
              timer,
            );
            this.nodes.set(name, { node, status, timer });
            return node;
          }),
        ),
      ),
    );
    requestAnimationFrame(() => this.drawEdges());
  }

  /** step: {name, status}, timerText: what its timer shows. */
  update(step, timerText) {
    const entry = this.nodes.get(step.name);
    if (!entry) return;
    entry.node.className = `dag-node status-${step.status}`;
    entry.node.dataset.status = step.status;
    entry.status.textContent = step.status.replaceAll("_", " ");
    entry.timer.textContent = timerText;
  }

  drawEdges() {
    const box = this.element.getBoundingClientRect();
    if (!box.width) return;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", String(box.width));
    svg.setAttribute("height", String(box.height));
    for (const [name, parents] of this.needs) {
      const to = this.nodes.get(name)?.node.getBoundingClientRect();
      for (const parent of parents) {
        const from = this.nodes.get(parent)?.node.getBoundingClientRect();
        if (!from || !to) continue;
        const x1 = from.right - box.left;
        const y1 = from.top + from.height / 2 - box.top;
        const x2 = to.left - box.left;
        const y2 = to.top + to.height / 2 - box.top;
        const bend = Math.max(12, (x2 - x1) / 2);
        const path = document.createElementNS(SVG, "path");
        path.setAttribute("d", `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`);
        path.setAttribute("class", "dag-edge");
        path.dataset.from = parent;
        path.dataset.to = name;
        svg.append(path);
      }
    }
    this.edges.replaceChildren(svg);
  }
}
