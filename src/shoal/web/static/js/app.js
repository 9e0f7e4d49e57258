// The shell: sign-in, the header (navigation, namespace, who is signed in), the connection
// banner, and the router that shows one page at a time (#/path).

import { api, onUnauthorized, session } from "./api.js";
import { forget, review } from "./access.js";
import { ages, h, fill } from "./dom.js";
import { mux, Collection } from "./live.js";
import { overviewPage } from "./pages/overview.js";
import { nodesPage } from "./pages/nodes.js";
import { vmsPage } from "./pages/vms.js";
import { deployPage } from "./pages/deploy.js";
import { vmPage } from "./pages/vm.js";
import { imagesPage } from "./pages/images.js";
import { adminPage } from "./pages/admin.js";

const NS_KEY = "shoal.namespace";
const view = document.getElementById("view");
const header = document.querySelector("header.top");
const banner = document.getElementById("banner");
const namespaceSelect = document.getElementById("namespace");

export const state = {
  get namespace() { return sessionStorage.getItem(NS_KEY) || ""; },
  set namespace(value) { sessionStorage.setItem(NS_KEY, value); },
};

const routes = [
  [/^\/$/, "overview", overviewPage],
  [/^\/nodes$/, "nodes", nodesPage],
  [/^\/vms$/, "vms", vmsPage],
  [/^\/deploy$/, "vms", deployPage],
  [/^\/vms\/([a-z0-9-]+)\/([a-z0-9-]+)$/, "vms", vmPage],
  [/^\/images$/, "images", imagesPage],
  [/^\/admin$/, "admin", adminPage],
];

let current = null; // the page shown: {stop()}
let namespaces = null;
let signedIn = false; // past the sign-in form: a 401 now means the token stopped working

function showBanner(text) {
  if (text) { banner.textContent = text; banner.hidden = false; } else { banner.hidden = true; }
}

mux.onStatus((up) => showBanner(up ? "" : "Connection to the controller lost: reconnecting…"));
onUnauthorized((error) => { if (signedIn) signOut(`Signed out: ${error.message}`); });

function stopPage() {
  if (current && current.stop) current.stop();
  current = null;
}

function signOut(message = "") {
  signedIn = false;
  session.token = null;
  sessionStorage.clear(); // the namespace chosen goes too: the next person starts afresh
  forget();
  stopPage();
  if (namespaces) { namespaces.stop(); namespaces = null; }
  mux.close();
  location.hash = "#/signin";
  showSignIn(message);
}

function showSignIn(message = "") {
  header.hidden = true;
  showBanner("");
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off",
    required: true, "aria-describedby": "signin-error", spellcheck: "false" });
  const error = h("p", { class: "error", id: "signin-error", role: "alert" }, message);
  const form = h("form", { class: "stack card signin", onsubmit: async (event) => {
    event.preventDefault();
    session.token = input.value.trim();
    forget();
    try {
      await review("");
    } catch (failure) {
      session.token = null;
      error.textContent = failure.message;
      input.focus();
      return;
    }
    input.value = "";
    if (location.hash === "#/signin" || !location.hash) location.hash = "#/";
    start();
  } },
  h("h1", {}, "Sign in to shoal"),
  h("label", { for: "token" }, "Token",
    h("span", { class: "hint" }, "A service-account token, or the admin token from the controller's data directory.")),
  input, error,
  h("div", {}, h("button", { class: "primary", type: "submit" }, "Sign in")));
  fill(view, form);
  input.focus();
}

async function start() {
  signedIn = true;
  header.hidden = false;
  try {
    const who = await review("");
    if (!signedIn || !session.token) return; // the token was refused: signed out already
    document.getElementById("who").textContent = who.status.display;
    // A namespaced token cannot see all namespaces at once: start in its own.
    if (!who.status.clusterAdmin && !state.namespace && who.status.user.kind === "ServiceAccount") {
      state.namespace = who.status.user.namespace;
    }
  } catch {
    if (!signedIn || !session.token) return; // a 401 signed out, with its reason
  }
  if (!namespaces) {
    namespaces = new Collection("namespaces").onChange(renderNamespaces);
    namespaces.start();
  }
  route();
}

function renderNamespaces() {
  const chosen = state.namespace;
  const names = namespaces.list().map((ns) => ns.metadata.name).sort();
  fill(namespaceSelect,
    h("option", { value: "" }, "All namespaces"),
    names.map((name) => h("option", { value: name, selected: name === chosen }, name)));
  if (chosen && !names.includes(chosen) && namespaces.loaded) namespaceSelect.value = "";
}

namespaceSelect.addEventListener("change", () => {
  state.namespace = namespaceSelect.value;
  route();
});
document.getElementById("signout").addEventListener("click", () => signOut());

function route() {
  if (!session.token) { showSignIn(); return; }
  const path = (location.hash || "#/").slice(1) || "/";
  if (path === "/signin") { location.hash = "#/"; return; }
  stopPage();
  const match = routes.map(([pattern, nav, page]) => [pattern.exec(path), nav, page])
    .find(([found]) => found);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (match && link.dataset.nav === match[1]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  fill(view);
  if (!match) {
    fill(view, h("h1", {}, "Not found"), h("p", {}, `No page at ${path}.`));
    return;
  }
  const [found, , page] = match;
  current = page(view, { namespace: state.namespace, params: found.slice(1) });
}

window.addEventListener("hashchange", () => { if (session.token) route(); });
setInterval(ages, 5000);
if (session.token) start(); else showSignIn();
// For tests and tools: the app's API client, e.g. to check the UI uses the same routes.
export { api };
