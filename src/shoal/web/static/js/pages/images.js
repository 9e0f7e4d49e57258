// Images and caches: the Images nodes can run, pulling a registry image onto nodes with
// progress per node (ImageCache), and pre-caching an existing Image.

import { api } from "../api.js";
import { can } from "../access.js";
import { bytes, fill, h, showErrors } from "../dom.js";
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
  Promise.all([can("create", "images"), can("create", "imagecaches")]).then(([pull, cache]) => {
    mayCache = cache;
    if (pull && cache) fill(pullArea, pullForm());
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
  reference.dataset.field = "spec.source.oci";
  const name = h("input", { id: "pull-name", spellcheck: "false" });
  name.dataset.field = "metadata.name";
  const error = h("p", { class: "error form-error", role: "alert", tabindex: "-1" });
  const submit = h("button", { class: "primary", type: "submit" }, "Pull onto all nodes");
  const form = h("form", { class: "stack", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    showErrors(form, null);
    const ref = reference.value.trim();
    const last = ref.split("/").pop() || "";
    const imageName = name.value.trim() || last.replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63);
    submit.disabled = true;
    try {
      await api.create("images", null, { apiVersion: "shoal.dev/v1", kind: "Image",
        metadata: { name: imageName }, spec: { source: { oci: ref } } });
      await api.create("imagecaches", null, { apiVersion: "shoal.dev/v1", kind: "ImageCache",
        metadata: { name: imageName }, spec: { image: imageName, allNodes: true } });
      reference.value = "";
      name.value = "";
    } catch (failure) {
      showErrors(form, failure);
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", {}, "Pull an image"),
  h("label", { for: "pull-reference" }, "Registry reference", reference,
    h("span", { class: "field-error", dataset: { errorFor: "spec.source.oci" } })),
  h("label", { for: "pull-name" }, "Image name", h("span", { class: "hint" }, "Empty: from the reference."), name,
    h("span", { class: "field-error", dataset: { errorFor: "metadata.name" } })),
  error, h("div", {}, submit));
  return form;
}
