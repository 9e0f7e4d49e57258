// Live data: one WebSocket per tab (the API's multiplexed watch) carries every watch the page
// holds. A Collection lists a resource, then watches it from the list's resourceVersion; after a
// lost connection it resumes from the last version it saw, and lists again when the server
// answers 410 Gone.

import { ApiError, PREFIX, api, socket } from "./api.js";

const RETRY_MIN = 250;
const RETRY_MAX = 4000;

class Mux {
  constructor() {
    this.ws = null;
    this.open = false;
    this.watches = new Map(); // id -> {request(): object, onEvent(event)}
    this.statusListeners = new Set();
    this.retry = RETRY_MIN;
    this.timer = null;
    this.everUp = false;
  }

  onStatus(fn) { this.statusListeners.add(fn); }

  setStatus(up) {
    this.statusListeners.forEach((fn) => fn(up));
  }

  connect() {
    if (this.ws || this.timer) return;
    const ws = socket(`${PREFIX}/watch`);
    this.ws = ws;
    ws.onopen = () => {
      this.open = true;
      this.everUp = true;
      this.retry = RETRY_MIN;
      this.setStatus(true);
      for (const [id, watch] of this.watches) this.sendWatch(id, watch);
    };
    ws.onmessage = (message) => {
      const event = JSON.parse(message.data);
      const watch = this.watches.get(event.id);
      if (watch) watch.onEvent(event);
    };
    ws.onclose = () => {
      const wasOpen = this.open;
      this.ws = null;
      this.open = false;
      if (wasOpen || !this.everUp) this.setStatus(false);
      // A refused handshake does not say why; a request does (a revoked token answers 401,
      // which signs out).
      if (!wasOpen) api.list("namespaces", null, { limit: 1 }).catch(() => {});
      if (!this.watches.size) return;
      this.timer = setTimeout(() => { this.timer = null; this.connect(); }, this.retry);
      this.retry = Math.min(RETRY_MAX, this.retry * 2);
    };
  }

  sendWatch(id, watch) {
    const request = watch.request();
    if (request) this.ws.send(JSON.stringify({ op: "watch", id, ...request }));
  }

  subscribe(id, watch) {
    this.watches.set(id, watch);
    if (this.open) this.sendWatch(id, watch);
    else this.connect();
  }

  unsubscribe(id) {
    if (!this.watches.delete(id)) return;
    if (this.open) this.ws.send(JSON.stringify({ op: "cancel", id }));
  }

  close() {
    this.watches.clear();
    clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    this.everUp = false;
    this.retry = RETRY_MIN;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.close();
    }
  }
}

export const mux = new Mux();
let nextId = 0;

/** The objects of one resource (in a namespace, or all), kept current. */
export class Collection {
  constructor(resource, namespace = null, { fieldSelector, labelSelector } = {}) {
    this.resource = resource;
    this.namespace = namespace;
    this.selectors = { fieldSelector, labelSelector };
    this.items = new Map(); // "namespace/name" -> object
    this.version = null;
    this.loaded = false;
    this.error = null;
    this.listeners = new Set();
    this.id = `${resource}-${(nextId += 1)}`;
    this.stopped = false;
    this.relistTimer = null;
  }

  onChange(fn) { this.listeners.add(fn); return this; }

  changed() { this.listeners.forEach((fn) => fn(this)); }

  key(obj) { return `${obj.metadata.namespace || ""}/${obj.metadata.name}`; }

  list() { return [...this.items.values()]; }

  async start() {
    await this.relist();
    return this;
  }

  async relist() {
    if (this.stopped) return;
    mux.unsubscribe(this.id);
    // A fresh id per watch: frames of the one just ended can never be taken for the next one's.
    this.id = `${this.resource}-${(nextId += 1)}`;
    try {
      const listed = await api.list(this.resource, this.namespace, this.selectors);
      if (this.stopped) return;
      this.items = new Map(listed.items.map((obj) => [this.key(obj), obj]));
      this.version = listed.metadata.resourceVersion;
      this.loaded = true;
      this.error = null;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.error = error;
      this.changed();
      if (error.code === 0 || error.code >= 500) {
        // The controller is away: the watch socket reconnecting says so; list when it is back.
        clearTimeout(this.relistTimer);
        this.relistTimer = setTimeout(() => this.relist(), 1000);
      }
      return;
    }
    this.changed();
    mux.subscribe(this.id, {
      request: () => ({
        resource: this.resource,
        namespace: this.namespace || undefined,
        resourceVersion: this.version,
        ...Object.fromEntries(Object.entries(this.selectors).filter(([, v]) => v)),
      }),
      onEvent: (event) => this.apply(event),
    });
  }

  apply(event) {
    const obj = event.object;
    if (event.type === "ERROR") {
      mux.unsubscribe(this.id);
      if (obj && obj.code === 410) { this.relist(); return; }
      this.error = new ApiError(obj ? obj.code : 0, obj);
      this.changed();
      if (!obj || !obj.code || obj.code >= 500) { // the server's trouble: list and watch again soon
        clearTimeout(this.relistTimer);
        this.relistTimer = setTimeout(() => this.relist(), 2000);
      }
      return;
    }
    this.version = obj.metadata.resourceVersion;
    if (event.type === "BOOKMARK") return;
    if (event.type === "DELETED") this.items.delete(this.key(obj));
    else this.items.set(this.key(obj), obj);
    this.changed();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.relistTimer);
    mux.unsubscribe(this.id);
    this.listeners.clear();
  }
}
