// What several pages share: collections that re-render a page when they change, the reason a
// VM waits, node capacity, and the table that keeps rows (and the focus in them) across updates.

import { Collection } from "../live.js";
import { coalesced, h, fill, quantity } from "../dom.js";

/** Start collections for a page; render (coalesced to one per frame) whenever any changes.
 * Returns {collections, stop()}. */
export function livePage(specs, render) {
  const draw = coalesced(render);
  const collections = {};
  for (const [key, [resource, namespace, options]] of Object.entries(specs)) {
    collections[key] = new Collection(resource, namespace || null, options).onChange(draw);
    collections[key].start();
  }
  return {
    collections,
    draw,
    stop() { Object.values(collections).forEach((c) => c.stop()); },
  };
}

export function phaseOf(vm) {
  if (vm.metadata.deletionTimestamp) return "Terminating";
  return (vm.status && vm.status.phase) || "Pending";
}

/** Why a VM waits: the scheduler's message while it is unschedulable. */
export function waitReason(vm) {
  const status = vm.status || {};
  const scheduled = (status.conditions || []).find((c) => c.type === "Scheduled");
  if (scheduled && scheduled.status === "False") return scheduled.message || scheduled.reason;
  return status.message || "";
}

export function nodeReady(node) {
  const ready = ((node.status || {}).conditions || []).find((c) => c.type === "Ready");
  return ready && ready.status === "True";
}

export function nodeState(node) {
  if (!nodeReady(node)) return "NotReady";
  return node.spec && node.spec.unschedulable ? "Cordoned" : "Ready";
}

/** What a node has and what the VMs bound to it take. */
export function nodeUse(node, vms) {
  const status = node.status || {};
  const allocatable = status.allocatable || status.capacity || {};
  const mine = vms.filter((vm) => vm.spec.nodeName === node.metadata.name
    && !["Stopped", "Failed"].includes(phaseOf(vm)));
  const memory = quantity;
  return {
    cpu: [mine.reduce((n, vm) => n + (vm.spec.cpu || 0), 0), allocatable.cpu || 0],
    memory: [mine.reduce((n, vm) => n + memory(vm.spec.memory), 0), memory(allocatable.memory)],
    vms: [mine.length, (node.spec && node.spec.maxVMs) ?? allocatable.vms ?? 0],
    macos: [mine.filter((vm) => vm.spec.os === "darwin").length,
      (status.guestOS || []).includes("darwin") ? (node.spec.maxMacOSVMs ?? 2) : 0],
  };
}

/** An error line for a collection that could not be read (the API's words). */
export function collectionError(collection) {
  return collection.error && collection.error.code !== 0
    ? h("p", { class: "notice error", role: "alert" }, collection.error.message) : null;
}

const PAGE_SIZES = [50, 100, 250, 500, 1000];

/**
 * A table whose rows are kept by key: a row is rebuilt only when its object changed, and rows
 * move only when the order changed, so a focused button stays focused while the list updates.
 * It shows one page of rows (100 by default) with a pager under it when there are more: a
 * thousand live rows would cost the browser a layout of the whole table on every change.
 * columns: [{title, cell(obj) -> node|string, sort?(obj) -> value, width?}]
 */
export class KeyedTable {
  constructor(columns, { key = (o) => o.metadata.uid, version = (o) => o.metadata.resourceVersion,
    label = "", sortBy = 0, empty = "Nothing here yet.", fixed = false } = {}) {
    this.columns = columns;
    this.key = key;
    this.version = version;
    this.sortBy = sortBy;
    this.descending = false;
    this.rows = new Map(); // key -> {version, tr}
    this.body = h("tbody");
    this.emptyText = empty;
    this.placeholder = null;
    this.onSort = () => {};
    this.head = h("tr", {}, columns.map((column, index) => h("th", { scope: "col",
      "aria-sort": index === sortBy ? "ascending" : undefined,
      style: column.width ? `width:${column.width}` : undefined },
    column.sort ? h("button", { class: "sort", type: "button", onclick: () => this.sort(index) },
      column.title) : column.title)));
    this.page = 0;
    this.pageSize = 100;
    this.range = h("span", { "aria-live": "polite" });
    this.previous = h("button", { type: "button", onclick: () => this.turn(-1) }, "Previous");
    this.next = h("button", { type: "button", onclick: () => this.turn(1) }, "Next");
    const sizes = h("select", { "aria-label": "Rows per page", onchange: () => {
      this.pageSize = Number(sizes.value);
      this.page = 0;
      this.onSort();
    } }, PAGE_SIZES.map((n) => h("option", { value: String(n), selected: n === this.pageSize }, `${n} rows`)));
    this.pager = h("nav", { class: "pager", "aria-label": `Pages of ${label || "rows"}`, hidden: true },
      this.previous, this.range, this.next, sizes);
    // fixed: the columns' widths are set, not measured from every cell on each change.
    this.element = h("div", {},
      h("div", { class: "table-wrap" },
        h("table", { "aria-label": label, class: fixed ? "fixed" : "" }, h("thead", {}, this.head), this.body)),
      this.pager);
  }

  turn(step) {
    this.page += step;
    this.onSort();
  }

  sort(index) {
    this.descending = this.sortBy === index ? !this.descending : false;
    this.sortBy = index;
    [...this.head.children].forEach((th, i) => {
      if (i === index) th.setAttribute("aria-sort", this.descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    });
    this.onSort();
  }

  update(objects) {
    const column = this.columns[this.sortBy];
    const value = column && column.sort ? column.sort : null;
    const all = value ? [...objects].sort((a, b) => {
      const x = value(a); const y = value(b);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return this.descending ? -order : order;
    }) : objects;
    const pages = Math.max(1, Math.ceil(all.length / this.pageSize));
    this.page = Math.min(Math.max(0, this.page), pages - 1);
    const first = this.page * this.pageSize;
    const sorted = all.slice(first, first + this.pageSize);
    this.pager.hidden = pages === 1;
    this.range.textContent = `${first + 1}–${first + sorted.length} of ${all.length}`;
    this.previous.disabled = this.page === 0;
    this.next.disabled = this.page === pages - 1;
    const seen = new Set();
    let previous = null;
    for (const obj of sorted) {
      const key = this.key(obj);
      seen.add(key);
      let row = this.rows.get(key);
      const version = this.version(obj);
      if (!row || row.version !== version) {
        const tr = h("tr", { dataset: { key } }, this.columns.map((c) => h("td", {}, c.cell(obj))));
        if (row) row.tr.replaceWith(tr);
        row = { version, tr };
        this.rows.set(key, row);
      }
      const expected = previous ? previous.nextSibling : this.body.firstChild;
      if (expected !== row.tr) this.body.insertBefore(row.tr, expected);
      previous = row.tr;
    }
    for (const [key, row] of this.rows) {
      if (!seen.has(key)) { row.tr.remove(); this.rows.delete(key); }
    }
    if (!sorted.length && !this.placeholder) {
      this.placeholder = h("tr", {}, h("td", { colspan: String(this.columns.length), class: "muted" },
        this.emptyText));
      this.body.append(this.placeholder);
    } else if (sorted.length && this.placeholder) {
      this.placeholder.remove();
      this.placeholder = null;
    }
  }
}

/** Run an API call from a button: disable it meanwhile, and show a failure next to it. */
export async function act(button, call, where) {
  button.disabled = true;
  if (where) where.textContent = "";
  try {
    return await call();
  } catch (error) {
    where.textContent = error.message;
    return null;
  } finally {
    button.disabled = false;
  }
}
