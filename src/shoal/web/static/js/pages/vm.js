// A VM: facts, why it waits, conditions, ports, events, its serial log following live, its
// consoles (serial and screen), power actions, and pushing its disk as an image with progress.

import { path, stream } from "../api.js";
import { can } from "../access.js";
import { field, fill, h, phaseBadge, showErrors, since } from "../dom.js";
import { serialConsole, screenConsole } from "../consoles.js";
import { collectionError, livePage, phaseOf, waitReason } from "./common.js";
import { vmActions } from "./vmactions.js";

const LOG_TAIL = 64 * 1024;
const LOG_KEEP = 256 * 1024;

export function vmPage(view, { params: [namespace, name] }) {
  const title = h("h1", {}, name);
  const errors = h("div");
  const problem = h("p", { class: "error", role: "alert", id: "vm-action-error" });
  const actions = h("div");
  const waiting = h("div");
  const facts = h("dl", { class: "facts" });
  const conditions = h("div");
  const ports = h("div");
  const events = h("div");
  const log = h("pre", { class: "log", id: "serial-log", tabindex: "0", "aria-label": "Serial log" });
  const consoleArea = h("div");
  const consoleStatus = h("p", { class: "muted", id: "console-status", "aria-live": "polite" });
  const pushArea = h("div");
  const rights = {};
  let openConsole = null;
  let consoleGeneration = 0; // a console that opens after another was chosen is closed at once
  let logAbort = null;
  let logNode = null;
  let stopped = false;

  const tabs = h("div", { class: "tabs", role: "tablist" },
    h("button", { type: "button", role: "tab", id: "tab-serial", "aria-selected": "false", onclick: () => showConsole("serial") }, "Serial console"),
    h("button", { type: "button", role: "tab", id: "tab-screen", "aria-selected": "false", onclick: () => showConsole("screen") }, "Screen"),
    h("button", { type: "button", role: "tab", id: "tab-none", "aria-selected": "true", onclick: () => showConsole(null) }, "Closed"));

  fill(view, h("p", {}, h("a", { href: "#/vms" }, "← VMs")), title, errors, actions, problem, waiting,
    h("h2", {}, "Details"), facts,
    h("h2", {}, "Conditions"), conditions,
    h("h2", {}, "Ports"), ports,
    h("h2", {}, "Consoles"), tabs, consoleStatus, consoleArea,
    h("h2", {}, "Serial log"), log,
    h("h2", {}, "Events"), events,
    pushArea);

  const page = livePage({
    vm: ["virtualmachines", namespace, { fieldSelector: `metadata.name=${name}` }],
    events: ["events", namespace, { fieldSelector: `involvedObject.name=${name}` }],
  }, render);
  Promise.all([can("action", "virtualmachines", namespace), can("delete", "virtualmachines", namespace),
    can("connect", "virtualmachines", namespace)]).then(([action, del, connect]) => {
    Object.assign(rights, { action, delete: del, connect });
    tabs.hidden = !connect;
    if (action) fill(pushArea, pushForm(namespace, name));
    render();
  });

  function vm() { return page.collections.vm.list()[0]; }

  function render() {
    const { vm: vmList, events: eventList } = page.collections;
    fill(errors, collectionError(vmList), collectionError(eventList));
    const current = vm();
    if (!current) {
      if (vmList.loaded) fill(waiting, h("p", { class: "notice" }, `VirtualMachine ${namespace}/${name} does not exist (any more).`));
      fill(actions);
      followLog(null);
      return;
    }
    const phase = phaseOf(current);
    fill(title, `${name} `, phaseBadge(phase));
    fill(actions, vmActions(current, rights, problem, { onDeleted: () => {} }));
    const reason = waitReason(current);
    fill(waiting, phase === "Pending" && reason
      ? h("p", { class: "notice", id: "pending-reason" }, h("strong", {}, "Why it waits: "), reason)
      : phase === "Failed" && current.status?.message
        ? h("p", { class: "notice error" }, current.status.message) : null);
    const spec = current.spec;
    const status = current.status || {};
    fill(facts, [
      ["Namespace", namespace],
      ["Source", spec.config ? `VMConfig ${spec.config}` : spec.image],
      ["Node", spec.nodeName || "—"],
      ["Resources", `${spec.cpu} cpu, ${spec.memory} memory, ${spec.disk} disk`],
      ["Power state wanted", spec.powerState || "Running"],
      ["Addresses", (status.addresses || []).join(", ") || "—"],
      ["Boot time", status.bootTime || "—"],
      ["Restarts", String(status.restartCount || 0)],
      ["Age", since(current.metadata.creationTimestamp)],
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const conds = status.conditions || [];
    fill(conditions, conds.length ? table(["Type", "Status", "Reason", "Message", "Since"],
      conds.map((c) => [c.type, c.status, c.reason, c.message, since(c.lastTransitionTime)]), "Conditions")
      : h("p", { class: "muted" }, "None yet."));
    const mapped = status.ports || [];
    fill(ports, mapped.length ? table(["Guest port", "Node address"],
      mapped.map((p) => [String(p.guest), `${p.address}:${p.host}`]), "Ports")
      : h("p", { class: "muted" }, "No mapped ports."));
    const evs = eventList.list().sort((a, b) => String(b.lastTimestamp).localeCompare(String(a.lastTimestamp)));
    fill(events, evs.length ? table(["When", "Type", "Reason", "Message"],
      evs.map((e) => [since(e.lastTimestamp || e.metadata.creationTimestamp), e.type, e.reason, e.message]), "Events")
      : h("p", { class: "muted" }, "No events."));
    followLog(spec.nodeName && !["Pending", "Scheduled"].includes(phase) ? spec.nodeName : null);
  }

  function followLog(node) {
    if (node === logNode || stopped) return;
    if (logAbort) logAbort.abort();
    logAbort = null;
    logNode = node;
    if (!node) return;
    const abort = new AbortController();
    logAbort = abort;
    log.textContent = "";
    const url = `${path("virtualmachines", namespace, name, "log")}?follow=true&tailBytes=${LOG_TAIL}`;
    stream("GET", url, undefined, (text) => {
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = (log.textContent + text).slice(-LOG_KEEP);
      if (atBottom) log.scrollTop = log.scrollHeight;
    }, abort.signal).then(() => true).catch((error) => {
      if (error.name === "AbortError") return false;
      log.append(`\n[log unavailable: ${error.message}]`);
      // The API refused (this backend keeps no log): ask again only when the VM moves.
      return error.code === 0 || error.code >= 500;
    }).then((again) => {
      // The stream ended (the VM stopped, the controller went away): follow again later.
      if (again && logAbort === abort && !stopped) {
        logNode = null;
        setTimeout(() => { if (!stopped) render(); }, 2000);
      }
    });
  }

  async function showConsole(kind) {
    for (const tab of tabs.children) {
      tab.setAttribute("aria-selected", String(tab.id === `tab-${kind || "none"}`));
    }
    consoleGeneration += 1;
    const mine = consoleGeneration;
    if (openConsole) { openConsole.close(); openConsole = null; }
    fill(consoleArea);
    consoleStatus.textContent = "";
    if (!kind) return;
    const target = h("div", { class: kind === "serial" ? "terminal" : "screen", id: `console-${kind}` });
    consoleArea.append(target);
    try {
      const opened = await (kind === "serial" ? serialConsole : screenConsole)(target, consoleStatus, namespace, name);
      if (mine !== consoleGeneration) { opened.close(); return; } // another tab was chosen, or the page left
      openConsole = opened;
      window.shoalConsole = openConsole; // for tests and the curious: the terminal's buffer
    } catch (error) {
      if (mine === consoleGeneration) consoleStatus.textContent = error.message;
    }
  }

  render();
  return {
    stop() {
      stopped = true;
      consoleGeneration += 1;
      page.stop();
      if (logAbort) logAbort.abort();
      if (openConsole) openConsole.close();
      window.shoalConsole = null;
    },
  };
}

function table(headers, rows, label) {
  return h("div", { class: "table-wrap" }, h("table", { "aria-label": label },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
}

function pushForm(namespace, name) {
  const reference = h("input", { id: "push-reference", placeholder: "registry.example:5000/team/image:tag", spellcheck: "false" });
  const insecure = h("input", { type: "checkbox", id: "push-insecure" });
  const username = h("input", { id: "push-username", autocomplete: "off" });
  const password = h("input", { id: "push-password", type: "password", autocomplete: "off" });
  const progress = h("progress", { class: "progress", max: "1", value: "0", hidden: true, id: "push-progress" });
  const line = h("p", { class: "muted", id: "push-status", "aria-live": "polite" });
  const error = h("p", { class: "error form-error", role: "alert", tabindex: "-1" });
  const submit = h("button", { type: "submit" }, "Push");
  const form = h("form", { class: "stack", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    showErrors(form, null);
    submit.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    line.textContent = "starting…";
    const body = { reference: reference.value.trim(), insecure: insecure.checked };
    if (username.value) body.username = username.value;
    if (password.value) body.password = password.value;
    let buffered = "";
    try {
      await stream("POST", path("virtualmachines", namespace, name, "push"), body, (text) => {
        buffered += text;
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const raw of lines.filter(Boolean)) {
          const item = JSON.parse(raw);
          if (item.error) { error.textContent = item.error; line.textContent = "failed"; }
          else if (item.digest) { progress.value = 1; line.textContent = `pushed ${item.reference} (${item.digest})`; }
          else if (item.total) { progress.value = item.done / item.total; line.textContent = `${item.phase}: ${Math.round(100 * item.done / item.total)}%`; }
          else if (item.phase) line.textContent = item.phase;
        }
      });
    } catch (failure) {
      showErrors(form, failure);
      line.textContent = "";
    } finally {
      submit.disabled = false;
      password.value = "";
    }
  } },
  h("h2", {}, "Push the disk as an image"),
  field("Reference", reference, "reference"),
  h("div", { class: "row" },
    h("label", { for: "push-username" }, "Registry user", username),
    h("label", { for: "push-password" }, "Password", password)),
  h("label", { for: "push-insecure" }, h("span", {}, insecure, " Plain HTTP registry")),
  error, h("div", { class: "actions" }, submit, progress), line);
  return form;
}
