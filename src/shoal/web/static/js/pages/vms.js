// VMs: a live list of a namespace (or all), with a filter, a phase choice and sortable columns;
// actions on each VM, and the way to the deploy form.

import { can } from "../access.js";
import { fill, h, phaseBadge, since } from "../dom.js";
import { KeyedTable, collectionError, livePage, phaseOf, waitReason } from "./common.js";
import { vmActions } from "./vmactions.js";

export function vmsPage(view, { namespace }) {
  const errors = h("div");
  const problem = h("p", { class: "error", role: "alert", id: "vm-action-error" });
  const filter = h("input", { type: "search", id: "vm-filter", placeholder: "name, image, node…",
    oninput: () => page.draw() });
  const phaseSelect = h("select", { id: "vm-phase", onchange: () => page.draw() },
    h("option", { value: "" }, "Any phase"),
    ["Pending", "Scheduled", "Starting", "Running", "Suspended", "Stopping", "Stopped", "Failed",
      "Terminating"].map((p) => h("option", { value: p }, p)));
  const count = h("span", { class: "muted", id: "vm-count", "aria-live": "polite" });
  const deploy = h("a", { class: "button primary", href: "#/deploy", id: "deploy-link", hidden: true }, "Deploy a VM");
  const rights = new Map(); // namespace -> {action, delete}

  const table = new KeyedTable([
    { title: "Name", width: "17%", cell: (vm) => h("a", { href: `#/vms/${vm.metadata.namespace}/${vm.metadata.name}` }, vm.metadata.name),
      sort: (vm) => vm.metadata.name },
    { title: "Namespace", width: "10%", cell: (vm) => vm.metadata.namespace, sort: (vm) => vm.metadata.namespace },
    { title: "Phase", width: "16%", cell: (vm) => h("span", {}, phaseBadge(phaseOf(vm)),
      phaseOf(vm) === "Pending" && waitReason(vm) ? h("div", { class: "muted" }, waitReason(vm)) : null),
    sort: phaseOf },
    { title: "Image", width: "15%", cell: (vm) => vm.spec.config ? `config ${vm.spec.config}` : vm.spec.image,
      sort: (vm) => vm.spec.image || "" },
    { title: "CPU", width: "5%", cell: (vm) => vm.spec.cpu, sort: (vm) => vm.spec.cpu },
    { title: "Memory", width: "7%", cell: (vm) => vm.spec.memory },
    { title: "Node", width: "9%", cell: (vm) => vm.spec.nodeName || "—", sort: (vm) => vm.spec.nodeName || "" },
    { title: "Age", width: "5%", cell: (vm) => since(vm.metadata.creationTimestamp),
      sort: (vm) => vm.metadata.creationTimestamp },
    { title: "Actions", width: "16%", cell: (vm) => vmActions(vm, rights.get(vm.metadata.namespace) || {}, problem) },
  ], { label: "Virtual machines", empty: "No VMs.", fixed: true,
    version: (vm) => `${vm.metadata.resourceVersion}:${JSON.stringify(rights.get(vm.metadata.namespace) || {})}` });

  fill(view, h("h1", {}, "Virtual machines"), errors,
    h("div", { class: "toolbar" },
      h("label", { class: "field", for: "vm-filter" }, "Filter", filter),
      h("label", { class: "field", for: "vm-phase" }, "Phase", phaseSelect),
      deploy, count),
    problem, table.element);

  const page = livePage({ vms: ["virtualmachines", namespace] }, render);
  table.onSort = render;
  can("create", "virtualmachines", namespace || "default").then((ok) => { deploy.hidden = !ok; });

  function learnRights(ns) {
    if (rights.has(ns)) return;
    rights.set(ns, {});
    Promise.all([can("action", "virtualmachines", ns), can("delete", "virtualmachines", ns)])
      .then(([action, del]) => { rights.set(ns, { action, delete: del }); render(); });
  }

  function render() {
    const { vms } = page.collections;
    fill(errors, collectionError(vms));
    const text = filter.value.trim().toLowerCase();
    const phase = phaseSelect.value;
    const all = vms.list();
    const shown = all.filter((vm) => (!phase || phaseOf(vm) === phase) && (!text
      || [vm.metadata.name, vm.metadata.namespace, vm.spec.image, vm.spec.config, vm.spec.nodeName]
        .some((v) => v && v.toLowerCase().includes(text))));
    for (const vm of shown) learnRights(vm.metadata.namespace);
    count.textContent = vms.loaded ? `${shown.length} of ${all.length} VMs` : "loading…";
    table.update(shown);
  }
  render();
  return page;
}
