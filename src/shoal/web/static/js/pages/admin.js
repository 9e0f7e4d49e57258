// Admin: namespaces, service accounts and their tokens (a new token is shown once), and role
// bindings, each offered as far as the token's rules allow.

import { api, path, request } from "../api.js";
import { can } from "../access.js";
import { age, field, fill, h, showErrors, since } from "../dom.js";
import { KeyedTable, act, collectionError, livePage } from "./common.js";

const ROLES = ["view", "connect", "edit", "admin"];

export function adminPage(view, { namespace }) {
  const ns = namespace || "default";
  const errors = h("div");
  const problem = h("p", { class: "error", role: "alert", id: "admin-error" });
  const shown = h("div", { id: "new-token", "aria-live": "polite" });
  const rights = {};

  const namespaces = new KeyedTable([
    { title: "Name", cell: (n) => n.metadata.name, sort: (n) => n.metadata.name },
    { title: "Phase", cell: (n) => n.status?.phase || "Active" },
    { title: "Age", cell: (n) => since(n.metadata.creationTimestamp) },
    { title: "Actions", cell: (n) => rights.deleteNamespace ? removeButton("namespaces", null, n.metadata.name) : "—" },
  ], { label: "Namespaces", version: (n) => `${n.metadata.resourceVersion}:${rights.deleteNamespace}` });
  const accounts = new KeyedTable([
    { title: "Name", cell: (a) => a.metadata.name, sort: (a) => a.metadata.name },
    { title: "Description", cell: (a) => a.spec?.description || "" },
    { title: "Tokens", cell: (a) => tokensCell(a) },
    { title: "Actions", cell: (a) => h("div", { class: "actions" },
      rights.token ? tokenButton(a.metadata.name) : null,
      rights.deleteAccount ? removeButton("serviceaccounts", ns, a.metadata.name) : null) },
  ], { label: "Service accounts", empty: "No service accounts.", version: (a) => `${a.metadata.resourceVersion}:${rights.token}` });
  const bindings = new KeyedTable([
    { title: "Name", cell: (b) => b.metadata.name, sort: (b) => b.metadata.name },
    { title: "Role", cell: (b) => b.roleRef.name, sort: (b) => b.roleRef.name },
    { title: "Subjects", cell: (b) => b.subjects.map((s) => `${s.kind} ${s.namespace ? `${s.namespace}/` : ""}${s.name}`).join(", ") },
    { title: "Actions", cell: (b) => rights.deleteBinding ? removeButton("rolebindings", ns, b.metadata.name) : "—" },
  ], { label: "Role bindings", empty: "No role bindings.", version: (b) => `${b.metadata.resourceVersion}:${rights.deleteBinding}` });
  const nsForm = h("div");
  const saForm = h("div");
  const rbForm = h("div");
  fill(view, h("h1", {}, "Admin"), errors, problem, shown,
    h("h2", {}, "Namespaces"), nsForm, namespaces.element,
    h("h2", {}, `Service accounts in ${ns}`), saForm, accounts.element,
    h("h2", {}, `Role bindings in ${ns}`), rbForm, bindings.element);

  const page = livePage({
    namespaces: ["namespaces"],
    accounts: ["serviceaccounts", ns],
    bindings: ["rolebindings", ns],
  }, render);
  for (const table of [namespaces, accounts, bindings]) table.onSort = render;

  Promise.all([
    can("create", "namespaces"), can("delete", "namespaces"),
    can("create", "serviceaccounts", ns), can("delete", "serviceaccounts", ns), can("token", "serviceaccounts", ns),
    can("create", "rolebindings", ns), can("delete", "rolebindings", ns),
  ]).then(([createNs, deleteNs, createSa, deleteSa, token, createRb, deleteRb]) => {
    Object.assign(rights, { deleteNamespace: deleteNs, deleteAccount: deleteSa, token, deleteBinding: deleteRb });
    if (createNs) fill(nsForm, nameForm("New namespace", "new-namespace", (name) =>
      api.create("namespaces", null, { apiVersion: "shoal.dev/v1", kind: "Namespace", metadata: { name } })));
    if (createSa) fill(saForm, nameForm("New service account", "new-serviceaccount", (name) =>
      api.create("serviceaccounts", ns, { apiVersion: "shoal.dev/v1", kind: "ServiceAccount", metadata: { name } })));
    if (createRb) fill(rbForm, bindingForm(ns));
    render();
  });

  function tokensCell(account) {
    const tokens = account.status?.tokens || [];
    if (!tokens.length) return "none";
    return h("ul", {}, tokens.map((t) => h("li", {}, `${t.id} (made ${age(t.createdAt)} ago${t.expiresAt ? `, expires ${t.expiresAt}` : ""}) `,
      rights.token ? revokeButton(account.metadata.name, t.id) : null)));
  }

  function tokenButton(account) {
    const button = h("button", { type: "button", dataset: { action: "token" }, onclick: async () => {
      const issued = await act(button, () => api.post(`${path("serviceaccounts", ns, account)}/token`, {}), problem);
      if (!issued) return;
      fill(shown, h("div", { class: "notice" },
        h("p", {}, h("strong", {}, `New token for ${ns}/${account}. `), "Copy it now: it is shown once and stored only as a hash."),
        h("p", { class: "secret", id: "new-token-value" }, issued.status.token),
        h("button", { type: "button", onclick: () => fill(shown) }, "Done")));
    } }, "New token");
    return button;
  }

  function revokeButton(account, id) {
    const button = h("button", { type: "button", class: "danger", onclick: () => act(button,
      () => request("DELETE", `${path("serviceaccounts", ns, account)}/tokens/${id}`), problem) }, "Revoke");
    return button;
  }

  function removeButton(resource, namespaceOf, name) {
    const button = h("button", { type: "button", class: "danger", dataset: { action: "delete" },
      "aria-label": `Delete ${name}`, onclick: () => {
        // eslint-disable-next-line no-alert
        if (!confirm(`Delete ${resource.replace(/s$/, "")} ${name}?`)) return;
        act(button, () => api.remove(resource, namespaceOf, name), problem);
      } }, "Delete");
    return button;
  }

  function render() {
    const c = page.collections;
    fill(errors, collectionError(c.namespaces), collectionError(c.accounts), collectionError(c.bindings));
    namespaces.update(c.namespaces.list());
    accounts.update(c.accounts.list());
    bindings.update(c.bindings.list());
  }
  render();
  return page;
}

function nameForm(label, id, create) {
  const input = h("input", { id, spellcheck: "false", autocomplete: "off" });
  const error = h("p", { class: "error form-error", role: "alert", tabindex: "-1" });
  const form = h("form", { class: "toolbar", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    showErrors(form, null);
    try { await create(input.value.trim()); input.value = ""; } catch (failure) { showErrors(form, failure); }
  } },
  field(label, input, "metadata.name", { className: "field" }),
  h("button", { type: "submit" }, "Create"), error);
  return form;
}

function bindingForm(ns) {
  const name = h("input", { id: "binding-name", spellcheck: "false" });
  const role = h("select", { id: "binding-role" }, ROLES.map((r) => h("option", { value: r }, r)));
  const subject = h("input", { id: "binding-subject", placeholder: "service account name", spellcheck: "false" });
  const error = h("p", { class: "error form-error", role: "alert", tabindex: "-1" });
  const form = h("form", { class: "toolbar", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    showErrors(form, null);
    try {
      await api.create("rolebindings", ns, { apiVersion: "shoal.dev/v1", kind: "RoleBinding",
        metadata: { name: name.value.trim() }, roleRef: { name: role.value },
        subjects: [{ kind: "ServiceAccount", name: subject.value.trim(), namespace: ns }] });
      name.value = ""; subject.value = "";
    } catch (failure) { showErrors(form, failure); }
  } },
  field("Binding name", name, "metadata.name", { className: "field" }),
  field("Role", role, "roleRef.name", { className: "field" }),
  field("Service account", subject, "subjects", { className: "field" }),
  h("button", { type: "submit" }, "Grant"), error);
  return form;
}
