// A VM's consoles in the browser, through the controller's tunnels: the serial console in
// xterm.js and the screen in noVNC's RFB client. Both open a WebSocket authenticated by the
// token subprotocol; the tunnel's first frame (READY) says the far end is connected.

import { path, socket } from "./api.js";
import { h } from "./dom.js";

const READY = '{"ready": true}';
const loaded = new Map();

function loadScript(src) {
  if (!loaded.has(src)) {
    loaded.set(src, new Promise((resolve, reject) => {
      const script = h("script", { src });
      script.onload = resolve;
      script.onerror = () => { loaded.delete(src); reject(new Error(`cannot load ${src}`)); };
      document.head.append(script);
    }));
  }
  return loaded.get(src);
}

function loadStyle(href) {
  if (!document.querySelector(`link[href="${href}"]`)) {
    document.head.append(h("link", { rel: "stylesheet", href }));
  }
}

function closedText(event, what) {
  if (event.code === 1000 || event.code === 1005) return `${what} closed.`;
  return `${what} closed: ${event.reason || `code ${event.code}`}`;
}

/** Open a tunnel WebSocket; onReady(ws) runs once the far end is connected. */
function tunnel(namespace, name, stream, status, onReady) {
  const ws = socket(path("virtualmachines", namespace, name, stream));
  status.textContent = "connecting…";
  let ready = false;
  ws.onmessage = (message) => {
    if (!ready && message.data === READY) {
      ready = true;
      status.textContent = "connected";
      onReady(ws);
    }
  };
  ws.addEventListener("close", (event) => {
    status.textContent = ready ? closedText(event, "The connection")
      : `Could not connect: ${event.reason || "the controller refused the tunnel"}`;
  });
  return ws;
}

/** The serial console in a terminal; returns {close()}. */
export async function serialConsole(target, status, namespace, name) {
  loadStyle("/ui/vendor/xterm/xterm.css");
  await loadScript("/ui/vendor/xterm/xterm.js");
  await loadScript("/ui/vendor/xterm-addon-fit/addon-fit.js");
  const term = new window.Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000 });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(target);
  fit.fit();
  const encoder = new TextEncoder();
  const ws = tunnel(namespace, name, "console", status, (open) => {
    open.onmessage = (message) => {
      if (typeof message.data !== "string") term.write(new Uint8Array(message.data));
    };
    term.onData((data) => { if (open.readyState === WebSocket.OPEN) open.send(encoder.encode(data)); });
    term.focus();
  });
  const resize = () => fit.fit();
  window.addEventListener("resize", resize);
  return {
    terminal: term,
    close() { window.removeEventListener("resize", resize); ws.close(); term.dispose(); },
  };
}

/** The VM's screen over VNC; returns {close()}. */
export async function screenConsole(target, status, namespace, name) {
  const { default: RFB } = await import("/ui/vendor/novnc/core/rfb.js");
  let rfb = null;
  const ws = tunnel(namespace, name, "vnc", status, (open) => {
    rfb = new RFB(target, open, { shared: true });
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => { status.textContent = "connected"; });
    rfb.addEventListener("disconnect", (event) => {
      status.textContent = event.detail.clean ? "The screen closed." : "The screen connection broke.";
    });
  });
  return { close() { if (rfb) rfb.disconnect(); else ws.close(); } };
}
