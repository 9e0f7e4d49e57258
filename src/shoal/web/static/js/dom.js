// Small DOM helpers: building elements, formatting figures, and coalescing renders.

/** h("button", {class: "primary", onclick: fn}, "Text", child) builds an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "style") {
      el.style.cssText = value;
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const UNITS = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };

/** Bytes in a quantity such as "2Gi" (0 when it cannot be read). */
export function quantity(text) {
  if (text === undefined || text === null) return 0;
  const match = /^(\d+(?:\.\d+)?)([KMGT]i?)?$/.exec(String(text));
  if (!match) return 0;
  return Number(match[1]) * (match[2] ? UNITS[match[2]] : 1);
}

export function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export function age(timestamp) {
  if (!timestamp) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(timestamp)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

export function phaseBadge(phase) {
  return h("span", { class: `phase phase-${phase}` }, phase);
}

export function meter(label, used, total, format = String) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  return h("div", { class: "meter" },
    h("div", {}, `${label}: ${format(used)} / ${format(total)}`),
    h("div", { class: "track", role: "meter", "aria-label": label, "aria-valuemin": "0",
      "aria-valuemax": String(total), "aria-valuenow": String(used) },
      h("div", { class: share >= 1 ? "fill full" : "fill", style: `width:${(share * 100).toFixed(1)}%` })));
}

/** A function that runs fn at most once per animation frame and once per `gap` ms, however
 * often it is called: a burst of watch events (a fleet changing at once) costs one render, and
 * a long list is not laid out again sixty times a second. */
export function coalesced(fn, gap = 150) {
  let queued = false;
  let last = 0;
  return () => {
    if (queued) return;
    queued = true;
    const wait = Math.max(0, last + gap - performance.now());
    setTimeout(() => requestAnimationFrame(() => {
      queued = false;
      last = performance.now();
      fn();
    }), wait);
  };
}

/** How long ago, kept current: the shell refreshes every element made here (ages()). */
export function since(timestamp) {
  return h("time", { datetime: timestamp || "", dataset: { since: timestamp || "" } }, age(timestamp));
}

/** Refresh every since() element on the page. */
export function ages() {
  for (const el of document.querySelectorAll("time[data-since]")) {
    const text = age(el.dataset.since);
    if (el.textContent !== text) el.textContent = text;
  }
}

export function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => (v ? `${k}=${v}` : k)).join(", ");
}

/** "a=b, c" into {a: "b", c: ""}; null when a part is not key[=value]. */
export function parseLabels(text) {
  const labels = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const [key, ...rest] = part.split("=");
    if (!key.trim()) return null;
    labels[key.trim()] = rest.join("=").trim();
  }
  return labels;
}

/** A labelled form field whose error slot shows the API's message for `name` (showErrors):
 * the input is marked data-field=name and described by the slot. The input must have an id. */
export function field(label, input, name, { hint, className } = {}) {
  input.dataset.field = name;
  const error = h("span", { class: "field-error", dataset: { errorFor: name }, id: `${input.id}-error`, "aria-live": "polite" });
  input.setAttribute("aria-describedby", `${input.id}-error`);
  return h("label", { for: input.id, class: className }, label,
    hint ? h("span", { class: "hint" }, hint) : null, input, error);
}

/** Show an API error where the user acted: at the fields its causes name (inputs carry
 * data-field="spec.cpu"), the rest in the form's error line. */
export function showErrors(form, error) {
  for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const general = form.querySelector(".form-error");
  if (!error) { if (general) general.textContent = ""; return; }
  const left = [];
  const causes = error.causes && error.causes.length ? error.causes
    : error.field ? [{ field: error.field, message: error.message }] : [];
  for (const cause of causes) {
    // "spec.ports.0.guest" shows at spec.ports when no input is that precise.
    let field = cause.field || "";
    while (field.includes(".") && !form.querySelector(`[data-error-for="${CSS.escape(field)}"]`)) {
      field = field.slice(0, field.lastIndexOf("."));
    }
    const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
    const input = form.querySelector(`[data-field="${CSS.escape(field)}"]`);
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent}; ${cause.message}` : cause.message;
      if (input) input.setAttribute("aria-invalid", "true");
    } else {
      left.push(`${cause.field}: ${cause.message}`);
    }
  }
  if (general) {
    general.textContent = causes.length ? left.join("; ") : error.message;
    if (!causes.length || left.length) general.focus?.();
  }
}
