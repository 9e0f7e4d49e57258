// What the signed-in token may do, as the API says (SelfSubjectRulesReview): the UI offers an
// action only when its rules allow it, and the API still decides every request.

import { PREFIX, api } from "./api.js";

const reviews = new Map(); // namespace ("" for cluster scope) -> Promise of the review

export function review(namespace = "") {
  if (!reviews.has(namespace)) {
    const body = { spec: namespace ? { namespace } : {} };
    const pending = api.post(`${PREFIX}/selfsubjectrulesreviews`, body);
    pending.catch(() => reviews.delete(namespace));
    reviews.set(namespace, pending);
  }
  return reviews.get(namespace);
}

export function forget() { reviews.clear(); }

/** Whether verb on resource is allowed in namespace ("" or null: cluster scope). */
export async function can(verb, resource, namespace = "") {
  let rules;
  try {
    rules = (await review(namespace || "")).status.resourceRules;
  } catch {
    return false;
  }
  return rules.some((rule) =>
    (rule.resources.includes("*") || rule.resources.includes(resource))
    && (rule.verbs.includes("*") || rule.verbs.includes(verb)));
}
