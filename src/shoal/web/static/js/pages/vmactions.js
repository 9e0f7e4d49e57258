// A VM's power actions and delete, offered when the token may use them; the list and the
// detail page share them.

import { api } from "../api.js";
import { h } from "../dom.js";
import { act, phaseOf } from "./common.js";

const POWER = [
  ["start", "Start", (state, phase) => state !== "Running" || phase === "Stopped"],
  ["stop", "Stop", (state) => state !== "Stopped"],
  ["suspend", "Suspend", (state, phase) => state === "Running" && phase === "Running"],
  ["resume", "Resume", (state, phase) => phase === "Suspended"],
];

/** Buttons for vm; rights: {action: bool, delete: bool}; problem: where failures show. */
export function vmActions(vm, rights, problem, { onDeleted } = {}) {
  const { namespace, name } = vm.metadata;
  const state = vm.spec.powerState || "Running";
  const phase = phaseOf(vm);
  const buttons = [];
  if (vm.metadata.deletionTimestamp) return h("span", { class: "muted" }, "being deleted");
  if (rights.action) {
    for (const [action, title, offered] of POWER) {
      if (!offered(state, phase)) continue;
      const button = h("button", { type: "button", dataset: { action },
        "aria-label": `${title} ${name}`,
        onclick: () => act(button, () => api.action(namespace, name, action), problem) }, title);
      buttons.push(button);
    }
  }
  if (rights.delete) {
    const button = h("button", { type: "button", class: "danger", dataset: { action: "delete" },
      "aria-label": `Delete ${name}`,
      onclick: async () => {
        // eslint-disable-next-line no-alert
        if (!confirm(`Delete VM ${namespace}/${name}? Its disk goes with it.`)) return;
        const done = await act(button, () => api.remove("virtualmachines", namespace, name), problem);
        if (done && onDeleted) onDeleted();
      } }, "Delete");
    buttons.push(button);
  }
  return buttons.length ? h("div", { class: "actions" }, buttons) : "—";
}
