// Nodes: status, tags, backend and accelerator, agent version, cached images, allocated vs
// capacity; cordon, uncordon, drain and label for those the API lets do it.

import { api } from "../api.js";
import { can } from "../access.js";
import { bytes, fill, h, labelsText, parseLabels, phaseBadge } from "../dom.js";
import { KeyedTable, act, collectionError, livePage, nodeState, nodeUse } from "./common.js";

export function nodesPage(view) {
  const errors = h("div");
  const problem = h("p", { class: "error", role: "alert", id: "node-action-error" });
  let mayManage = false;
  const table = new KeyedTable([
    { title: "Name", cell: (n) => n.metadata.name, sort: (n) => n.metadata.name },
    { title: "State", cell: (n) => phaseBadge(nodeState(n)), sort: nodeState },
    { title: "Tags", cell: (n) => labelsText(n.metadata.labels) || "—" },
    { title: "Backend", cell: (n) => [n.status?.backend, n.status?.accelerator].filter(Boolean).join(" / ") || "—",
      sort: (n) => n.status?.backend || "" },
    { title: "Agent", cell: (n) => n.status?.agentVersion || "—" },
    { title: "Cached images", cell: (n) => {
      const images = n.status?.cachedImages || [];
      return images.length ? h("span", { title: images.join("\n") }, `${images.length}: ${images.slice(0, 3).join(", ")}${images.length > 3 ? "…" : ""}`) : "—";
    } },
    { title: "Allocated / capacity", cell: (n) => allocation(n) },
    { title: "Actions", cell: (n) => mayManage ? actions(n) : "—" },
  ], { label: "Nodes", key: (n) => n.metadata.name,
    // A row is redrawn when its node, the rights or what its VMs take changed, not on every VM
    // event (a focused button would lose focus).
    version: (n) => `${n.metadata.resourceVersion}:${mayManage}:${usage(n)}` });
  const dialog = labelDialog(problem);
  fill(view, h("h1", {}, "Nodes"), errors, problem, table.element, dialog.element);

  const page = livePage({ nodes: ["nodes"], vms: ["virtualmachines", null] }, render);
  table.onSort = render;
  can("patch", "nodes").then((allowed) => { mayManage = allowed; render(); });

  function usage(node) {
    const vms = page.collections.vms;
    return vms.loaded ? JSON.stringify(nodeUse(node, vms.list())) : "";
  }

  function allocation(node) {
    const vms = page.collections.vms;
    if (!vms.loaded) {
      const capacity = node.status?.allocatable || {};
      return `${capacity.cpu ?? 0} cpu, ${capacity.memory ?? 0}, ${capacity.vms ?? 0} VMs`;
    }
    const use = nodeUse(node, vms.list());
    return h("span", {}, `cpu ${use.cpu[0]}/${use.cpu[1]} · memory ${bytes(use.memory[0])}/${bytes(use.memory[1])} · VMs ${use.vms[0]}/${use.vms[1]}`,
      use.macos[1] ? ` · macOS ${use.macos[0]}/${use.macos[1]}` : "");
  }

  function actions(node) {
    const name = node.metadata.name;
    const cordoned = Boolean(node.spec?.unschedulable);
    const toggle = h("button", { type: "button", dataset: { action: cordoned ? "uncordon" : "cordon" },
      onclick: () => act(toggle, () => api.patch("nodes", null, name, { spec: { unschedulable: !cordoned } }), problem) },
    cordoned ? "Uncordon" : "Cordon");
    const drain = h("button", { type: "button", class: "danger", dataset: { action: "drain" }, onclick: () => {
      const bound = page.collections.vms.list().filter((vm) => vm.spec.nodeName === name
        && !vm.metadata.deletionTimestamp);
      // eslint-disable-next-line no-alert
      if (!confirm(`Drain ${name}: cordon it and delete its ${bound.length} VM(s)?`)) return;
      act(drain, async () => {
        await api.patch("nodes", null, name, { spec: { unschedulable: true } });
        for (const vm of bound) await api.remove("virtualmachines", vm.metadata.namespace, vm.metadata.name);
      }, problem);
    } }, "Drain");
    const label = h("button", { type: "button", dataset: { action: "label" },
      onclick: () => dialog.open(node) }, "Labels");
    return h("div", { class: "actions" }, toggle, drain, label);
  }

  function render() {
    const { nodes } = page.collections;
    fill(errors, collectionError(nodes));
    table.update(nodes.list());
  }
  render();
  return page;
}

function labelDialog(problem) {
  const input = h("input", { id: "node-labels", "aria-describedby": "node-labels-hint" });
  const error = h("p", { class: "error", role: "alert" });
  let node = null;
  const element = h("dialog", { "aria-labelledby": "label-title" },
    h("form", { method: "dialog", class: "stack", onsubmit: async (event) => {
      event.preventDefault();
      const labels = parseLabels(input.value);
      if (!labels) { error.textContent = "labels: write key=value pairs separated by commas"; return; }
      const removed = Object.keys(node.metadata.labels || {}).filter((k) => !(k in labels));
      const patch = { metadata: { labels: { ...labels, ...Object.fromEntries(removed.map((k) => [k, null])) } } };
      try {
        await api.patch("nodes", null, node.metadata.name, patch);
        element.close();
      } catch (failure) {
        error.textContent = failure.message;
      }
    } },
    h("h2", { id: "label-title" }, "Node labels"),
    h("label", { for: "node-labels" }, "Labels",
      h("span", { class: "hint", id: "node-labels-hint" }, "key=value pairs separated by commas; VMs select nodes by them (nodeSelector).")),
    input, error,
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Save"),
      h("button", { type: "button", onclick: () => element.close() }, "Cancel"))));
  return {
    element,
    open(target) {
      node = target;
      problem.textContent = "";
      error.textContent = "";
      input.value = labelsText(target.metadata.labels);
      element.showModal();
      input.focus();
    },
  };
}
