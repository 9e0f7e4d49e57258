// The deploy form: a VM from an image or a VMConfig. The browser checks nothing itself: the
// API's validation messages show at the fields they name.

import { api } from "../api.js";
import { field as labelled, fill, h, parseLabels, showErrors } from "../dom.js";

function field(label, input, name, hint) {
  input.id = input.id || `deploy-${name.replace(/\./g, "-")}`;
  return labelled(label, input, name, { hint });
}

export function deployPage(view, { namespace }) {
  const ns = h("select", { name: "namespace" });
  const name = h("input", { name: "name", autocomplete: "off", spellcheck: "false" });
  const image = h("input", { name: "image", list: "deploy-images", autocomplete: "off", spellcheck: "false" });
  const images = h("datalist", { id: "deploy-images" });
  const config = h("select", { name: "config" }, h("option", { value: "" }, "— none: use an image —"));
  const cpu = h("input", { name: "cpu", inputmode: "numeric" });
  const memory = h("input", { name: "memory", placeholder: "2Gi" });
  const disk = h("input", { name: "disk", placeholder: "10Gi" });
  const tags = h("input", { name: "tags", placeholder: "pool=ci, arch=amd64" });
  const ports = h("input", { name: "ports", placeholder: "22, 8080" });
  const script = h("textarea", { name: "startupScript", rows: 5, spellcheck: "false" });
  const error = h("p", { class: "error form-error", role: "alert", tabindex: "-1" });
  const submit = h("button", { class: "primary", type: "submit", disabled: true }, "Deploy");

  const form = h("form", { class: "stack", novalidate: true, onsubmit: deploy, "aria-label": "Deploy a VM" },
    field("Namespace", ns, "metadata.namespace"),
    field("Name", name, "metadata.name", "Lowercase letters, digits and dashes; empty for a generated name."),
    h("div", { class: "row" },
      field("Image", image, "spec.image", "An Image's name."),
      field("or VMConfig", config, "spec.config", "A named template; fields below override it.")),
    h("div", { class: "row" },
      field("CPUs", cpu, "spec.cpu"), field("Memory", memory, "spec.memory"), field("Disk", disk, "spec.disk")),
    field("Node tags", tags, "spec.nodeSelector", "Only nodes with these labels (key=value, comma separated)."),
    field("Ports", ports, "spec.ports", "Guest TCP ports to map to the node, comma separated."),
    field("Startup script", script, "spec.startupScript", "Run in the guest once it is up."),
    error, h("div", {}, submit), images);
  fill(view, h("h1", {}, "Deploy a VM"), form);

  api.list("namespaces").then((list) => {
    const names = list.items.map((n) => n.metadata.name).sort();
    const chosen = namespace || (names.includes("default") ? "default" : names[0]);
    fill(ns, names.map((n) => h("option", { value: n, selected: n === chosen }, n)));
    submit.disabled = !names.length;
    loadConfigs();
  }).catch((failure) => showErrors(form, failure));
  api.list("images").then((list) => fill(images, list.items.map((i) => h("option", { value: i.metadata.name }))))
    .catch(() => {});
  ns.addEventListener("change", loadConfigs);

  function loadConfigs() {
    api.list("vmconfigs", ns.value).then((list) => fill(config,
      h("option", { value: "" }, "— none: use an image —"),
      list.items.map((c) => h("option", { value: c.metadata.name }, c.metadata.name)))).catch(() => {});
  }

  function body() {
    const spec = {};
    if (image.value.trim()) spec.image = image.value.trim();
    if (config.value) spec.config = config.value;
    if (cpu.value.trim()) spec.cpu = /^\d+$/.test(cpu.value.trim()) ? Number(cpu.value.trim()) : cpu.value.trim();
    if (memory.value.trim()) spec.memory = memory.value.trim();
    if (disk.value.trim()) spec.disk = disk.value.trim();
    if (tags.value.trim()) spec.nodeSelector = parseLabels(tags.value) ?? tags.value;
    if (ports.value.trim()) {
      spec.ports = ports.value.split(",").map((p) => p.trim()).filter(Boolean)
        .map((p) => ({ guest: /^\d+$/.test(p) ? Number(p) : p }));
    }
    if (script.value.trim()) spec.startupScript = script.value;
    const metadata = name.value.trim() ? { name: name.value.trim() } : { generateName: "vm-" };
    return { apiVersion: "shoal.dev/v1", kind: "VirtualMachine", metadata, spec };
  }

  async function deploy(event) {
    event.preventDefault();
    showErrors(form, null);
    submit.disabled = true;
    try {
      const created = await api.create("virtualmachines", ns.value, body());
      location.hash = `#/vms/${created.metadata.namespace}/${created.metadata.name}`;
    } catch (failure) {
      showErrors(form, failure);
    } finally {
      submit.disabled = false;
    }
  }
  name.focus();
  return { stop() {} };
}
