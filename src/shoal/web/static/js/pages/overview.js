// Overview: capacity and use per node, VMs by phase, pending VMs with the scheduler's reason,
// and recent events; live through the tab's one watch socket.

import { bytes, fill, h, meter, phaseBadge, since } from "../dom.js";
import { collectionError, livePage, nodeState, nodeUse, phaseOf, waitReason } from "./common.js";

const PHASES = ["Pending", "Scheduled", "Starting", "Running", "Suspended", "Stopping", "Stopped",
  "Failed", "Terminating"];
const RECENT_EVENTS = 15;

export function overviewPage(view, { namespace }) {
  const capacity = h("div", { class: "grid", id: "capacity" });
  const phases = h("div", { class: "grid", id: "phases" });
  const pending = h("div", { id: "pending" });
  const events = h("div", { id: "events" });
  const errors = h("div");
  fill(view,
    h("h1", {}, "Overview"), errors,
    h("h2", {}, "VMs by phase"), phases,
    h("h2", {}, "Nodes: capacity and use"), capacity,
    h("h2", {}, "Pending VMs"), pending,
    h("h2", {}, "Recent events"), events);

  const page = livePage({
    nodes: ["nodes"],
    vms: ["virtualmachines", namespace],
    events: ["events", namespace],
  }, render);

  function render() {
    const { nodes, vms, events: eventList } = page.collections;
    fill(errors, collectionError(nodes), collectionError(vms), collectionError(eventList));
    const allVMs = vms.list();
    const counts = Object.fromEntries(PHASES.map((p) => [p, 0]));
    for (const vm of allVMs) counts[phaseOf(vm)] = (counts[phaseOf(vm)] || 0) + 1;
    fill(phases,
      h("div", { class: "card" }, h("h3", {}, "All VMs"), h("div", { class: "stat", dataset: { phase: "All" } }, allVMs.length)),
      PHASES.filter((p) => counts[p] || ["Pending", "Running"].includes(p)).map((p) =>
        h("div", { class: "card" }, h("h3", {}, phaseBadge(p)),
          h("div", { class: "stat", dataset: { phase: p } }, counts[p]))));

    const nodeCards = nodes.list().sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))
      .map((node) => {
        const use = nodeUse(node, allVMs);
        const status = node.status || {};
        return h("div", { class: "card", dataset: { node: node.metadata.name } },
          h("h3", {}, h("a", { href: "#/nodes" }, node.metadata.name), " ", phaseBadge(nodeState(node))),
          h("div", { class: "muted" }, [status.backend, status.accelerator].filter(Boolean).join(" · ")),
          meter("CPU", use.cpu[0], use.cpu[1]),
          meter("Memory", use.memory[0], use.memory[1], bytes),
          meter("VM slots", use.vms[0], use.vms[1]),
          use.macos[1] ? meter("macOS slots", use.macos[0], use.macos[1]) : null);
      });
    fill(capacity, nodeCards.length ? nodeCards : h("p", { class: "muted" }, "No nodes have joined."));

    const waiting = allVMs.filter((vm) => phaseOf(vm) === "Pending");
    fill(pending, waiting.length ? h("div", { class: "table-wrap" }, h("table", { "aria-label": "Pending VMs" },
      h("thead", {}, h("tr", {}, h("th", {}, "VM"), h("th", {}, "Waiting for"), h("th", {}, "Age"))),
      h("tbody", {}, waiting.map((vm) => h("tr", {},
        h("td", {}, h("a", { href: `#/vms/${vm.metadata.namespace}/${vm.metadata.name}` },
          `${vm.metadata.namespace}/${vm.metadata.name}`)),
        h("td", {}, waitReason(vm) || "the scheduler"),
        h("td", {}, since(vm.metadata.creationTimestamp)))))))
      : h("p", { class: "muted" }, "No VM is waiting."));

    const recent = eventList.list()
      .sort((a, b) => String(b.lastTimestamp || b.metadata.creationTimestamp)
        .localeCompare(String(a.lastTimestamp || a.metadata.creationTimestamp)))
      .slice(0, RECENT_EVENTS);
    fill(events, recent.length ? h("div", { class: "table-wrap" }, h("table", { "aria-label": "Recent events" },
      h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Object"), h("th", {}, "Reason"),
        h("th", {}, "Message"))),
      h("tbody", {}, recent.map((event) => h("tr", {},
        h("td", {}, since(event.lastTimestamp || event.metadata.creationTimestamp)),
        h("td", {}, `${event.involvedObject.kind} ${event.involvedObject.name}`),
        h("td", { class: event.type === "Warning" ? "error" : "" }, event.reason),
        h("td", {}, event.message))))))
      : h("p", { class: "muted" }, "No events."));
  }
  render();
  return page;
}
