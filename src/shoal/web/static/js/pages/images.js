// Images and caches: the Images nodes can run, pulling a registry image onto the nodes with
// progress per node (an ImageCache), and pre-caching an existing Image the same way.

import { api } from "../api.js";
import { can } from "../access.js";
import { bytes, field, fill, h, showErrors } from "../dom.js";
import { KeyedTable, act, collectionError, livePage } from "./common.js";

export function imagesPage(view) {
  const errors = h("div");
  const problem = h("p", { class: "error", role: "alert" });
  let mayCache = false;
  const images = new KeyedTable([
    { title: "Name", cell: (i) => i.metadata.name, sort: (i) => i.metadata.name },
    { title: "Source", cell: (i) => i.spec.source.oci || (i.spec.source.local ? "local file" : "—") },
    { title: "OS", cell: (i) => `${i.spec.os}/${i.spec.arch}` },
    { title: "Size", cell: (i) => bytes(i.status?.size || 0), sort: (i) => i.status?.size || 0 },
    { title: "Phase", cell: (i) => i.status?.phase || "Ready" },
    { title: "Actions", cell: (i) => mayCache ? cacheButton(i.metadata.name) : "—" },
  ], { label: "Images", empty: "No images.", version: (i) => `${i.metadata.resourceVersion}:${mayCache}` });
  const caches = h("div", { id: "caches" });
  const pullArea = h("div");
  fill(view, h("h1", {}, "Images"), errors, pullArea, problem, images.element,
    h("h2", {}, "Caches on nodes"), caches);

  const page = livePage({ images: ["images"], caches: ["imagecaches"] }, render);
  images.onSort = render;
  can("create", "imagecaches").then((cache) => {
    mayCache = cache;
    if (cache) fill(pullArea, pullForm());
    render();
  });

  function cacheButton(image) {
    const button = h("button", { type: "button", dataset: { action: "cache" }, onclick: () => act(button,
      () => api.create("imagecaches", null, { apiVersion: "shoal.dev/v1", kind: "ImageCache",
        metadata: { generateName: `${image.slice(0, 40)}-` }, spec: { image, allNodes: true } }), problem) },
    "Cache on all nodes");
    return button;
  }

  function render() {
    const { images: imageList, caches: cacheList } = page.collections;
    fill(errors, collectionError(imageList), collectionError(cacheList));
    images.update(imageList.list());
    const list = cacheList.list().sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    fill(caches, list.length ? list.map((cache) => h("div", { class: "card", dataset: { cache: cache.metadata.name } },
      h("h3", {}, `${cache.spec.image} `, h("span", { class: "muted" }, `(${cache.metadata.name}): ${cache.status?.ready || 0}/${cache.status?.desired || 0} nodes ready`)),
      Object.entries(cache.status?.nodes || {}).map(([node, state]) => h("div", { class: "meter" },
        h("div", {}, `${node}: ${state.state}${state.totalBytes ? ` ${bytes(state.bytes)} / ${bytes(state.totalBytes)}` : ""}${state.message ? ` — ${state.message}` : ""}`),
        h("progress", { class: "progress", max: String(state.totalBytes || 1),
          value: String(state.state === "Ready" ? (state.totalBytes || 1) : state.bytes || 0),
          "aria-label": `${cache.spec.image} on ${node}` })))))
      : h("p", { class: "muted" }, "No image caches."));
  }
  render();
  return page;
}

function pullForm() {
  const reference = h("input", { id: "pull-reference", spellcheck: "false", placeholder: "registry.example:5000/images/ubuntu:24.04" });
  const name = h("input", { id: "pull-name", spellcheck: "false" });
  const error = h("p", { class: "error form-error", role: "alert", tabindex: "-1" });
  const submit = h("button", { class: "primary", type: "submit" }, "Pull onto all nodes");
  const form = h("form", { class: "stack", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    showErrors(form, null);
    const metadata = name.value.trim() ? { name: name.value.trim() } : { generateName: "pull-" };
    submit.disabled = true;
    try {
      // The nodes pull it (an ImageCache); a VM may then name the reference as its image.
      await api.create("imagecaches", null, { apiVersion: "shoal.dev/v1", kind: "ImageCache",
        metadata, spec: { image: reference.value.trim(), allNodes: true } });
      reference.value = "";
      name.value = "";
    } catch (failure) {
      showErrors(form, failure);
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", {}, "Pull an image onto the nodes"),
  field("Image or registry reference", reference, "spec.image"),
  field("Cache name", name, "metadata.name", { hint: "Empty: generated." }),
  error, h("div", {}, submit));
  return form;
}
