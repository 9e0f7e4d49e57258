"""The web UI in a real browser: how fast it paints and signs in, how it copes with 1,000 VMs and
live updates, and how much memory the browser holds after a long churn of VMs.

Against a real `shoal dev --backend sim` (plain HTTP on loopback, NODES simulated nodes of
SIM_VMS VMs each, room for the VMS VMs plus the live-update and churn VMs) in a temp dir, signed
in with its admin token (DATA_DIR/admin.token). The browser is Debian's Chromium
(/usr/bin/chromium, headless) driven by Playwright; a browser is never downloaded. VMs are made
and deleted through the HTTP API (httpx, CREATORS requests at once): image x:1, 1 vCPU, 64Mi,
1Gi, in namespace default. Times are taken on the page's own clock (performance.now()) where
start and end are both in the page; where one end is an API request (the live updates), on the
wall clock both this process (time.time()) and the page (Date.now()) read.

Rows:

- `ui first paint`: navigation start -> first-contentful-paint of `/` (the paint timing entry),
  median of LOADS cold loads, each in a fresh browser context (its own empty cache and storage).
  Target: under FIRST_PAINT_TARGET_MS ("ok": false over it). Next to it, `ui sign-in form
  shown`: navigation start -> the token input in the DOM (the first paint is the static
  "Loading…" line; the form needs the app's modules).
- `ui signed in overview`: the token submitted -> the overview's NODES node cards in the DOM,
  median of LOADS, fresh contexts, before any VM exists; `ui signed in overview, 1000 VMs` the
  same with the VMs Running (and the overview's "All VMs" figure saying so).
- `ui 1000-VM list`: signed in, `#/vms` (all namespaces) asked for -> `#vm-count` says "1000 of
  1000 VMs" and the first page's PAGE_ROWS rows are in the table (the list is sorted and paged
  over all 1000, live); median of LOADS (between two, the page goes to the
  light `#/images`, so every one lists and draws the 1000 VMs afresh); and the page's main
  thread's time in layout meanwhile (CDP Performance.getMetrics, class MainThread).
- `ui live update latency`: with that list open, one more VM created through the API -> its row
  in the DOM, median of UPDATES (method at _live_updates); the create request's own round trip,
  which the latency includes, and when the VM's watch event reached the page's WebSocket (the
  rest is the page's own work). `ui main thread per live-update VM`: the main thread's busy time
  over the live updates (each VM's create and the status changes that follow it), per VM, and
  its layout share. The progress lines give the main thread's split (script, layout, style) and
  its longest task (Long Tasks API) for the loads, the updates and the churn.
- `ui VMs listed after churn`, `ui memory after churn, JS heap`, `..., the tab`: the same page stays
  open while CHURN_TOTAL VMs come and go, CHURN_BATCH at a time (made, Running, deleted, gone),
  paced over SHOAL_BENCH_UI_CHURN_SECONDS (default 600). Then the page's rows must equal the API's
  VM count, with a full first page ("ok": false otherwise); the JS heap in use after a forced GC
  (CDP HeapProfiler.collectGarbage, then Performance.getMetrics JSHeapUsedSize); and the tab's
  memory: the private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) of the
  browser's renderer processes, what Chromium's task manager calls a tab's memory footprint, with
  every other context closed so the page's renderer is the only one (a spare one, if Chromium keeps
  it, is counted too). Target: under TAB_TARGET_MB ("ok": false over it).
  The whole browser is reported beside it, without a target: the sum of VmRSS over the browser
  process and every process below it (zygotes, GPU, network and storage services, renderers),
  found by walking /proc (psutil is not a dependency): the browser is the chromium process among
  this process's descendants whose parent is not chromium (it is Playwright's driver, node).
  Chromium's two crashpad handlers are not counted: they detach (their parent is init), so
  nothing ties them to this browser rather than another (~4 MB each). The sum of RSS counts
  shared pages (the chromium binary, libraries, shared memory) once per process, so it
  overstates; PSS (shared pages split between their users) is fairer. With one blank page the
  browser already sums to about 1 GB of RSS here: that is Chromium, not the UI, so the target is
  on the tab. The browser's RSS and PSS with one blank page (measured first) are rows too, and
  the RSS after the churn less that.

MB = 10^6 bytes. Progress goes to stderr. shoal dev (its own process group, and killed should
this process die), the browser and the temp dir are removed in `finally`, also on
SIGTERM/SIGHUP.
"""

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from bench.devserver import Dev
from bench.qemu import _interrupt
from bench.stats import median
from bench.waiting import wait

CHROMIUM = "/usr/bin/chromium"
API = "/apis/shoal.dev/v1"
NAMESPACE = "default"
VMS = 1_000
NODES = 20
SIM_VMS = 64  # per node: 1,280 slots for VMS + UPDATES + CHURN_BATCH at once
SIM_CPU = 64
SIM_MEMORY = "8Gi"
SPEC = {"image": "x:1", "cpu": 1, "memory": "64Mi", "disk": "1Gi"}
CREATORS = 16  # API requests in flight at once
LOADS = 5
UPDATES = 10
CHURN_TOTAL = 500
CHURN_BATCH = 50
CHURN_SECONDS = 600.0  # default of SHOAL_BENCH_UI_CHURN_SECONDS
FIRST_PAINT_TARGET_MS = 1_000.0
TAB_TARGET_MB = 150.0
MB = 1e6
SETTLE_TIMEOUT = 300.0  # for VMs to be Running, or gone
PAGE_TIMEOUT_MS = 120_000.0

Row = dict[str, Any]

# Run in every page before the app: long tasks (the main thread busy >= 50 ms), kept for the
# progress lines; and when a watch event naming a live-update VM first reaches the page's socket
# (a listener added as the socket is made runs before the app's onmessage).
INIT_SCRIPT = """
window.__longTasks = [];
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longTasks.push([e.startTime, e.duration]);
  }).observe({ type: "longtask", buffered: true });
} catch (error) { /* no long task timing */ }
window.__socketSeen = {};
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      const found = typeof event.data === "string" && /"name":"(ui-live-\\d+)"/.exec(event.data);
      if (found && !(found[1] in window.__socketSeen)) window.__socketSeen[found[1]] = Date.now();
    });
  }
};
"""
FIRST_PAINT = """() => {
  const e = performance.getEntriesByType("paint").find((p) => p.name === "first-contentful-paint");
  return e ? e.startTime : false;
}"""
FORM_SHOWN = "() => document.getElementById('token') ? performance.now() : false"
SUBMIT = """() => {
  const t = performance.now();
  document.querySelector("form.signin button[type=submit]").click();
  return t;
}"""
OVERVIEW_DRAWN = """([nodes, vms]) => {
  const cards = document.querySelectorAll("#capacity [data-node]").length;
  const all = document.querySelector("#phases [data-phase=All]");
  return cards === nodes && (vms === null || (all && all.textContent === String(vms)))
    && performance.now();
}"""
GO_TO_LIST = "() => { const t = performance.now(); location.hash = '#/vms'; return t; }"
LIST_DRAWN = """([n, page]) => {
  const count = document.getElementById("vm-count");
  return count && count.textContent.startsWith(`${n} of ${n} `)
    && document.querySelectorAll("#view tbody tr[data-key]").length === Math.min(n, page)
    && performance.now();
}"""
# The list shows PAGE_ROWS rows at a time (the UI's default page), with a pager under them.
PAGE_ROWS = 100
LISTED = (
    "() => Number(((document.getElementById('vm-count') || {}).textContent || '').split(' ')[0])"
)
ROW_SHOWN = """(name) => document.querySelector(`#view tbody a[href="#/vms/default/${name}"]`)
  && Date.now()"""
ROWS = "() => document.querySelectorAll('#view tbody tr[data-key]').length"
COUNT_TEXT = "() => (document.getElementById('vm-count') || {}).textContent || ''"
LONGEST_TASK = "() => Math.max(0, ...(window.__longTasks || []).map(([, d]) => d))"


def _say(text: str) -> None:
    print(f"[ui {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ui waits on its own HTTP requests, which fail while shoal dev is not answering yet.
_wait = partial(wait, every=0.5, errors=(httpx.HTTPError,))


# -- shoal dev and its API -------------------------------------------------------------------


def _dev(base: Path) -> Dev:
    """`shoal dev --backend sim` of NODES nodes."""
    return Dev(
        base,
        [
            "--backend", "sim",
            "--nodes", str(NODES),
            "--sim-cpu", str(SIM_CPU),
            "--sim-memory", SIM_MEMORY,
            "--sim-vms", str(SIM_VMS),
        ],
    )  # fmt: skip


def _vms_path(namespace: str | None = NAMESPACE, name: str = "") -> str:
    path = (
        f"{API}/namespaces/{namespace}/virtualmachines" if namespace else f"{API}/virtualmachines"
    )
    return f"{path}/{name}" if name else path


def _create(http: httpx.Client, name: str) -> None:
    body = {"metadata": {"name": name}, "spec": SPEC}
    http.post(_vms_path(), json=body).raise_for_status()


def _delete(http: httpx.Client, name: str) -> None:
    response = http.delete(_vms_path(name=name))
    if response.status_code != 404:
        response.raise_for_status()


def _each(
    action: Callable[[httpx.Client, str], None], http: httpx.Client, names: list[str]
) -> None:
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(lambda name: action(http, name), names))


def _all_vms(http: httpx.Client) -> list[dict[str, Any]]:
    response = http.get(_vms_path(None))
    response.raise_for_status()
    return list(response.json()["items"])


def _phases(http: httpx.Client, names: Iterable[str]) -> dict[str, str]:
    """The phase of each named VM that exists."""
    wanted = set(names)
    return {
        vm["metadata"]["name"]: (vm.get("status") or {}).get("phase") or "Pending"
        for vm in _all_vms(http)
        if vm["metadata"]["name"] in wanted
    }


def _running(http: httpx.Client, names: list[str], timeout: float = SETTLE_TIMEOUT) -> None:
    def all_running() -> bool:
        phases = _phases(http, names)
        return len(phases) == len(names) and all(p == "Running" for p in phases.values())

    _wait(all_running, timeout, f"{len(names)} VMs to be Running")


def _gone(http: httpx.Client, names: list[str], timeout: float = SETTLE_TIMEOUT) -> None:
    _wait(lambda: not _phases(http, names), timeout, f"{len(names)} VMs to be gone")


def _ready_nodes(http: httpx.Client) -> int:
    response = http.get(f"{API}/nodes")
    response.raise_for_status()
    return sum(
        1
        for node in response.json()["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (node.get("status") or {}).get("conditions", [])
        )
    )


# -- the browser's processes -----------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, executable) of every process /proc shows."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            exe = ""
            with contextlib.suppress(OSError):
                exe = os.readlink(entry / "exe")
            table[int(entry.name)] = (parent, exe)
    return table


def _descendants(table: dict[int, tuple[int, str]], root: int) -> list[int]:
    """root and every process below it."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in table.items():
        children[parent].append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children[pid]
    return found


def _is_chromium(exe: str) -> bool:
    return Path(exe.removesuffix(" (deleted)")).name == "chromium"


def _browser_pid() -> int:
    """The browser Playwright launched: among this process's descendants, the chromium process
    whose parent is not chromium (it is Playwright's driver)."""
    table = _processes()
    for pid in _descendants(table, os.getpid()):
        parent, exe = table[pid]
        if _is_chromium(exe) and not _is_chromium(table.get(parent, (0, ""))[1]):
            return pid
    raise RuntimeError("no chromium process below this one")


def _status_kb(path: Path, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Memory:
    """The browser's processes' memory, bytes: summed VmRSS and Pss, RSS by process kind, and
    the renderers' private memory (what the page itself holds)."""

    processes: int
    rss: float
    pss: float
    kinds: dict[str, float]
    renderer_private: float = 0.0

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind} {rss / MB:.0f}" for kind, rss in sorted(self.kinds.items()))
        return (
            f"RSS {self.rss / MB:.1f} MB, PSS {self.pss / MB:.1f} MB over {self.processes} "
            f"processes (RSS by kind, MB: {kinds}); renderers' private memory "
            f"{self.renderer_private / MB:.1f} MB"
        )


def _kind(pid: int) -> str:
    """A chromium process's --type (a utility's sub-type), "browser" without one."""
    with contextlib.suppress(OSError):
        # A child rewrites its argv into one space-separated string.
        for arg in (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).split():
            if arg.startswith(b"--utility-sub-type="):
                return arg.split(b"=", 1)[1].decode().split(".")[0]
            if arg.startswith(b"--type=") and arg != b"--type=utility":
                return arg.split(b"=", 1)[1].decode()
    return "browser"


def _memory(browser_pid: int) -> Memory:
    """The browser process and every process below it."""
    pids = _descendants(_processes(), browser_pid)
    kinds: defaultdict[str, float] = defaultdict(float)
    rss = pss = private = 0.0
    for pid in pids:
        own = _status_kb(Path(f"/proc/{pid}/status"), "VmRSS") * 1024.0
        kind = _kind(pid)
        kinds[kind] += own
        rss += own
        rollup = Path(f"/proc/{pid}/smaps_rollup")
        pss += _status_kb(rollup, "Pss") * 1024.0
        if kind == "renderer":
            private += (
                _status_kb(rollup, "Private_Clean") + _status_kb(rollup, "Private_Dirty")
            ) * 1024.0
    return Memory(len(pids), rss, pss, dict(kinds), private)


def _heap(page: Page) -> dict[str, float]:
    """The page's CDP Performance metrics after a forced garbage collection."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("Performance.enable")
        cdp.send("HeapProfiler.collectGarbage")
        metrics = cdp.send("Performance.getMetrics")["metrics"]
        return {m["name"]: float(m["value"]) for m in metrics}
    finally:
        cdp.detach()


class MainThread:
    """The page's main thread, from CDP Performance.getMetrics: the time it spent in tasks, and
    in script, layout and style recalculation, between two readings (ms)."""

    KINDS = {
        "busy": "TaskDuration",
        "script": "ScriptDuration",
        "layout": "LayoutDuration",
        "style": "RecalcStyleDuration",
    }

    def __init__(self, page: Page) -> None:
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.send("Performance.enable")
        self.last = self._read()

    def _read(self) -> dict[str, float]:
        metrics = self.cdp.send("Performance.getMetrics")["metrics"]
        found = {m["name"]: float(m["value"]) for m in metrics}
        return {kind: found[name] * 1000 for kind, name in self.KINDS.items()}

    def spent(self) -> dict[str, float]:
        """ms spent since the last call (or since made)."""
        now = self._read()
        spent = {kind: now[kind] - self.last[kind] for kind in now}
        self.last = now
        return spent

    def close(self) -> None:
        self.cdp.detach()


def _split(spent: dict[str, float], per: int = 1) -> str:
    return ", ".join(f"{kind} {ms / per:.0f}" for kind, ms in spent.items())


# -- the page --------------------------------------------------------------------------------


def _fresh(browser: Browser) -> tuple[BrowserContext, Page]:
    context = browser.new_context()
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return context, page


def _sign_in(page: Page, url: str, token: str, vms: int | None) -> float:
    """Load `/`, sign in; ms from the submit to the overview drawn (node cards, and the VM
    count when vms is given), on the page's clock."""
    page.goto(url + "/")
    page.wait_for_selector("#token")
    page.fill("#token", token)
    submitted = float(page.evaluate(SUBMIT))
    drawn = page.wait_for_function(OVERVIEW_DRAWN, arg=[NODES, vms], polling="raf")
    return float(drawn.json_value()) - submitted


def _cold_loads(browser: Browser, url: str) -> tuple[list[float], list[float]]:
    """First contentful paint and the sign-in form shown, ms from navigation start."""
    paints, forms = [], []
    for _ in range(LOADS):
        context, page = _fresh(browser)
        try:
            page.goto(url + "/")
            forms.append(float(page.wait_for_function(FORM_SHOWN, polling="raf").json_value()))
            paints.append(float(page.wait_for_function(FIRST_PAINT).json_value()))
        finally:
            context.close()
    return paints, forms


def _sign_ins(browser: Browser, url: str, token: str, vms: int | None) -> list[float]:
    times = []
    for _ in range(LOADS):
        context, page = _fresh(browser)
        try:
            times.append(_sign_in(page, url, token, vms))
        finally:
            context.close()
    return times


def _list_loads(page: Page, n: int) -> tuple[list[float], list[float], list[dict[str, float]]]:
    """ms from asking for #/vms to n rows drawn, LOADS times; the longest main-thread task of
    each load, and where the main thread's time went in each (MainThread)."""
    times, longest, spent = [], [], []
    main = MainThread(page)
    try:
        for _ in range(LOADS):
            page.evaluate("() => { location.hash = '#/images'; }")
            page.wait_for_selector("#view h1:has-text('Images')")
            page.wait_for_timeout(500)  # the light page drawn and settled
            page.evaluate("() => { window.__longTasks = []; }")
            main.spent()
            asked = float(page.evaluate(GO_TO_LIST))
            drawn = page.wait_for_function(LIST_DRAWN, arg=[n, PAGE_ROWS], polling="raf")
            times.append(float(drawn.json_value()) - asked)
            spent.append(main.spent())
            longest.append(float(page.evaluate(LONGEST_TASK)))
    finally:
        main.close()
    return times, longest, spent


@dataclass
class Update:
    """One live update, ms after the create request was sent."""

    answered: float  # the create's answer is back here
    socket: float  # its watch event reached the page's socket
    row: float  # its row is in the DOM


def _live_updates(page: Page, http: httpx.Client) -> list[Update]:
    """UPDATES VMs made through the API while the list is open, and when each showed.

    The method: a thread makes the VM through the API (after a short pause, so the page is
    already looking), noting time.time() just before it sends the POST and when the answer
    is back. Meanwhile this thread has the page poll for the VM's row once per animation frame
    (page.wait_for_function, polling "raf"), which answers Date.now() the first frame the row
    (its link, by name, so the page can look before the VM exists) is in the DOM; the init
    script notes Date.now() when the watch event first reaches the page's socket. All are this
    machine's wall clock, in ms. The change is committed somewhere inside the request, and its
    watch event may reach the page before the answer reaches this process, so the clock starts
    just before the request is sent: the latency includes the create's round trip (given as its
    own row) and up to one frame (~17 ms) of polling."""
    updates = []
    for i in range(UPDATES):
        name = f"ui-live-{i:02d}"
        times: dict[str, float] = {}
        failed: list[BaseException] = []

        def create(
            name: str = name,
            times: dict[str, float] = times,
            failed: list[BaseException] = failed,
        ) -> None:
            time.sleep(0.2)
            try:
                times["sent"] = time.time() * 1000
                _create(http, name)
                times["answered"] = time.time() * 1000
            except BaseException as error:  # reported from the main thread
                failed.append(error)

        maker = threading.Thread(target=create, daemon=True)
        maker.start()
        try:
            seen = page.wait_for_function(ROW_SHOWN, arg=name, polling="raf", timeout=60_000)
            row = float(seen.json_value())
        finally:
            maker.join(60)
        if failed:
            raise failed[0]
        socket = float(page.evaluate("(name) => window.__socketSeen[name]", name))
        sent = times["sent"]
        update = Update(times["answered"] - sent, socket - sent, row - sent)
        updates.append(update)
        _say(
            f"  {name}: row after {update.row:.0f} ms (create answered after "
            f"{update.answered:.0f} ms, event at the page's socket after {update.socket:.0f} ms)"
        )
        time.sleep(0.5)
    return updates


def _churn(page: Page, http: httpx.Client, seconds: float) -> None:
    """CHURN_TOTAL VMs come and go, CHURN_BATCH at a time, paced over seconds."""
    rounds = CHURN_TOTAL // CHURN_BATCH
    period = seconds / rounds
    started = time.monotonic()
    for r in range(rounds):
        begun = time.monotonic()
        names = [f"ui-churn-{r:02d}-{i:02d}" for i in range(CHURN_BATCH)]
        _each(_create, http, names)
        _running(http, names)
        _each(_delete, http, names)
        _gone(http, names)
        rows = page.evaluate(ROWS)
        _say(
            f"  churn round {r + 1}/{rounds}: {CHURN_BATCH} VMs made, Running, deleted and gone "
            f"in {time.monotonic() - begun:.1f}s; the page shows {rows} rows "
            f"({time.monotonic() - started:.0f}s into the churn)"
        )
        time.sleep(max(0.0, begun + period - time.monotonic()))


# -- the run ---------------------------------------------------------------------------------


def churn_seconds() -> float:
    """SHOAL_BENCH_UI_CHURN_SECONDS, or CHURN_SECONDS."""
    return float(os.environ.get("SHOAL_BENCH_UI_CHURN_SECONDS", CHURN_SECONDS))


def run() -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-ui-"))
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    dev = _dev(base)
    http: httpx.Client | None = None
    browser_pid: int | None = None
    try:
        started = time.monotonic()
        dev.start()
        token = dev.token
        http = httpx.Client(
            base_url=dev.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=CREATORS),
        )
        assert http is not None
        client = http
        _wait(lambda: _ready_nodes(client) == NODES, 120, f"{NODES} Ready nodes")
        _say(f"shoal dev up with {NODES} Ready sim nodes in {time.monotonic() - started:.1f}s")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                browser_pid = _browser_pid()
                _say(f"chromium {browser.version} up, browser pid {browser_pid}")
                return _measure(browser, browser_pid, dev.url, token, http, churn_seconds())
            finally:
                browser.close()
    finally:
        if browser_pid is not None:  # any chromium process the browser left behind
            table = _processes()
            for pid in _descendants(table, browser_pid):
                if pid in table and _is_chromium(table[pid][1]):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if http is not None:
            http.close()
        dev.kill()
        shutil.rmtree(base, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _page_memory(page: Page, browser_pid: int, when: str) -> tuple[dict[str, float], Memory]:
    heap = _heap(page)
    memory = _memory(browser_pid)
    _say(
        f"{when}: JS heap {heap['JSHeapUsedSize'] / MB:.1f} MB, DOM nodes {heap['Nodes']:.0f}, "
        f"listeners {heap['JSEventListeners']:.0f}; browser {memory}"
    )
    return heap, memory


def _ms(values: list[float]) -> str:
    return ", ".join(f"{t:.0f}" for t in values)


def _measure(
    browser: Browser, browser_pid: int, url: str, token: str, http: httpx.Client, churn: float
) -> list[Row]:
    rows: list[Row] = []

    # 0. What the browser itself holds: one context, one blank page.
    context, page = _fresh(browser)
    page.goto("about:blank")
    time.sleep(1)
    blank = _memory(browser_pid)
    _say(f"one blank page: browser {blank}")
    context.close()

    # 1. Cold loads and sign-in, no VM yet.
    paints, forms = _cold_loads(browser, url)
    _say(f"first paint, ms: {_ms(paints)}; sign-in form shown, ms: {_ms(forms)}")
    first_paint = median(paints)
    rows.append(
        {
            "name": "ui first paint",
            "value": first_paint,
            "unit": "ms",
            "ok": first_paint < FIRST_PAINT_TARGET_MS,
        }
    )
    rows.append({"name": "ui sign-in form shown", "value": median(forms), "unit": "ms"})
    signins = _sign_ins(browser, url, token, None)
    _say(f"signed in -> overview, ms: {_ms(signins)}")
    rows.append({"name": "ui signed in overview", "value": median(signins), "unit": "ms"})

    # 2. 1,000 VMs: the list, and live updates to it.
    names = [f"ui-vm-{i:04d}" for i in range(VMS)]
    made = time.monotonic()
    _each(_create, http, names)
    _say(f"{VMS} VMs created through the API in {time.monotonic() - made:.1f}s")
    _running(http, names)
    _say(f"... and all Running {time.monotonic() - made:.1f}s after the first create")
    signins = _sign_ins(browser, url, token, VMS)
    _say(f"signed in -> overview with {VMS} VMs, ms: {_ms(signins)}")
    rows.append(
        {"name": f"ui signed in overview, {VMS} VMs", "value": median(signins), "unit": "ms"}
    )

    context, page = _fresh(browser)
    _sign_in(page, url, token, VMS)
    loads, longest, spent = _list_loads(page, VMS)
    _say(f"#/vms -> {VMS} rows, ms: {_ms(loads)}; longest main-thread task of each: {_ms(longest)}")
    for i, each in enumerate(spent):
        _say(f"  load {i + 1}, the page's main thread, ms: {_split(each)}")
    rows.append({"name": f"ui {VMS}-VM live list", "value": median(loads), "unit": "ms"})
    rows.append(
        {
            "name": "  of which layout (main thread)",
            "value": median([each["layout"] for each in spent]),
            "unit": "ms",
        }
    )
    # Newest first (the Age column, twice), so a VM made now is on the page shown.
    page.click("#view th button.sort:text-is('Age')")
    page.click("#view th button.sort:text-is('Age')")
    page.evaluate("() => { window.__longTasks = []; }")
    main = MainThread(page)
    updates = _live_updates(page, http)
    spent_updates = main.spent()
    main.close()
    _say(
        f"during the live updates: longest main-thread task {page.evaluate(LONGEST_TASK):.0f} ms; "
        f"the main thread per live-update VM (its create and status changes), ms: "
        f"{_split(spent_updates, UPDATES)}"
    )
    rows.append(
        {"name": "ui live update latency", "value": median([u.row for u in updates]), "unit": "ms"}
    )
    rows.append(
        {
            "name": "  of which the create's round trip",
            "value": median([u.answered for u in updates]),
            "unit": "ms",
        }
    )
    rows.append(
        {
            "name": "  of which to the page's socket",
            "value": median([u.socket for u in updates]),
            "unit": "ms",
        }
    )
    rows.append(
        {
            "name": "ui main thread per live-update VM",
            "value": spent_updates["busy"] / UPDATES,
            "unit": "ms",
        }
    )
    rows.append(
        {
            "name": "  of which layout",
            "value": spent_updates["layout"] / UPDATES,
            "unit": "ms",
        }
    )

    # 3. Memory before and after a churn of VMs, the list open all along.
    for other in browser.contexts:
        if other is not context:
            other.close()
    heap, memory = _page_memory(page, browser_pid, "before the churn")
    before = memory
    rows.append(
        {
            "name": "ui memory before churn, JS heap",
            "value": heap["JSHeapUsedSize"] / MB,
            "unit": "MB",
        }
    )
    rows.append(
        {"name": "ui memory before churn, browser RSS", "value": memory.rss / MB, "unit": "MB"}
    )
    _say(
        f"churn: {CHURN_TOTAL} VMs, {CHURN_BATCH} at a time, over {churn:.0f}s "
        "(SHOAL_BENCH_UI_CHURN_SECONDS)"
    )
    page.evaluate("() => { window.__longTasks = []; }")
    main = MainThread(page)
    _churn(page, http, churn)
    spent_churn = main.spent()
    main.close()
    _say(
        f"during the churn: longest main-thread task {page.evaluate(LONGEST_TASK):.0f} ms; the "
        f"page's main thread, ms: {_split(spent_churn)}"
    )
    expected = len(_all_vms(http))
    try:
        page.wait_for_function(f"() => ({LISTED})() === {expected}", polling=250, timeout=30_000)
    except Exception as error:  # the row below says it
        _say(f"the page's count did not reach the API's {expected} VMs: {error}")
    shown = int(page.evaluate(LISTED))
    page_rows = int(page.evaluate(ROWS))
    _say(
        f"after the churn: the page lists {shown} VMs ({page.evaluate(COUNT_TEXT)!r}, {page_rows} rows shown), "
        f"the API lists {expected} VMs"
    )
    rows.append(
        {
            "name": "ui VMs listed after churn",
            "value": float(shown),
            "unit": "VMs",
            "ok": shown == expected and page_rows == min(expected, PAGE_ROWS),
        }
    )
    rows.append({"name": "  VMs the API lists", "value": float(expected), "unit": "VMs"})
    heap, memory = _page_memory(page, browser_pid, "after the churn")
    rows.append(
        {
            "name": "ui memory after churn, JS heap",
            "value": heap["JSHeapUsedSize"] / MB,
            "unit": "MB",
        }
    )
    rows.append(
        {
            "name": "ui memory after churn, the tab",
            "value": memory.renderer_private / MB,
            "unit": "MB",
            "ok": memory.renderer_private / MB < TAB_TARGET_MB,
        }
    )
    rows.append(
        {
            "name": "  the tab before the churn",
            "value": before.renderer_private / MB,
            "unit": "MB",
        }
    )
    rows.append(
        {"name": "ui memory after churn, browser RSS", "value": memory.rss / MB, "unit": "MB"}
    )
    rows.append(
        {"name": "ui memory after churn, browser PSS", "value": memory.pss / MB, "unit": "MB"}
    )
    rows.append({"name": "  browser RSS, one blank page", "value": blank.rss / MB, "unit": "MB"})
    rows.append({"name": "  browser PSS, one blank page", "value": blank.pss / MB, "unit": "MB"})
    rows.append(
        {
            "name": "  browser RSS after churn less a blank page's",
            "value": (memory.rss - blank.rss) / MB,
            "unit": "MB",
        }
    )
    context.close()
    return rows
