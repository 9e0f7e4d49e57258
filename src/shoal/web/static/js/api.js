// The API client: the same routes the CLI uses, with the token the user signed in with.

export const PREFIX = "/apis/shoal.dev/v1";
const TOKEN_KEY = "shoal.token";

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An error the API answered (its Status), or a failure to reach it (code 0). */
export class ApiError extends Error {
  constructor(code, status) {
    super((status && status.message) || `HTTP ${code}`);
    this.code = code;
    this.reason = (status && status.reason) || "";
    this.causes = (status && status.details && status.details.causes) || [];
    this.field = status && status.details && status.details.field;
  }
}

const unauthorizedListeners = new Set();
export function onUnauthorized(fn) { unauthorizedListeners.add(fn); }

/** The path of a resource: path("virtualmachines", "team-a", "vm1", "start"). */
export function path(plural, namespace, name, sub) {
  let p = namespace ? `${PREFIX}/namespaces/${encodeURIComponent(namespace)}/${plural}` : `${PREFIX}/${plural}`;
  if (name) p += `/${encodeURIComponent(name)}`;
  if (sub) p += `/${sub}`;
  return p;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

async function send(method, url, body, contentType = "application/json", signal = undefined) {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = contentType;
  let response;
  try {
    response = await fetch(url, {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { message: "cannot reach the controller" });
  }
  if (!response.ok) {
    let status = null;
    try { status = await response.json(); } catch { /* not a Status */ }
    const error = new ApiError(response.status, status);
    if (response.status === 401) unauthorizedListeners.forEach((fn) => fn(error));
    throw error;
  }
  return response;
}

export async function request(method, url, body, contentType) {
  const response = await send(method, url, body, contentType);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const api = {
  list: (plural, namespace, params) => request("GET", path(plural, namespace) + query(params)),
  get: (plural, namespace, name) => request("GET", path(plural, namespace, name)),
  create: (plural, namespace, body) => request("POST", path(plural, namespace), body),
  patch: (plural, namespace, name, body) =>
    request("PATCH", path(plural, namespace, name), body, "application/merge-patch+json"),
  remove: (plural, namespace, name) => request("DELETE", path(plural, namespace, name)),
  action: (namespace, name, action) =>
    request("POST", path("virtualmachines", namespace, name, action)),
  post: (url, body) => request("POST", url, body),
};

/** Read a streamed response (a followed log, push progress) chunk by chunk until it ends or
 * signal aborts; onText gets each decoded chunk. */
export async function stream(method, url, body, onText, signal) {
  const response = await send(method, url, body, "application/json", signal);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
}

/** A WebSocket to an API route, authenticated by the token offered as a subprotocol (a browser
 * cannot set headers on a WebSocket, and a token must not sit in a URL). */
export function socket(url) {
  const encoded = btoa(unescape(encodeURIComponent(session.token || "")))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}${url}`, ["shoal.dev", `bearer.shoal.dev.${encoded}`]);
  ws.binaryType = "arraybuffer";
  return ws;
}
