"""Runner pools end to end: JOBS GitHub Actions jobs through a github RunnerPool of at most
RUNNERS runners, with only GitHub fake.

A real `shoal controller` (plain HTTP, so the fake GitHub can deliver webhooks to it) and a real
`shoal agent` simulating ceil(RUNNERS / VMS_PER_NODE) + 1 sim nodes (a node to spare) of
VMS_PER_NODE VMs each, booting in BOOT_DELAY s, with `--sim-guest-shell`: a runner VM's startup
script runs as a local `sh -c` process. The pool's runnerCommand is tests/fakes/github_runner.sh,
a stand-in for the Actions runner (sh + wget): it connects to the fake with the JIT config the
pool registered, takes one job, "runs" it for JOB_SECONDS, reports it done and exits, and the VM
deletes itself. The fake GitHub is
tests/fakes/github.py served on loopback, which also delivers signed `workflow_job` webhooks to
the pool (its sync still runs every SYNC_SECONDS).

The jobs are queued at once, RUN_SIZE per workflow run, once the pool has synced for the first
time. Measured from the fake's records (FakeJob.created; for the runner that took a job, when it
was registered and when it connected; when the job was taken and completed) and from a watch on
the pool's VMs (when each was made, bound to a node, Running, its script ended, deleted, gone):

- jobs/s: JOBS / (first job queued -> last job completed);
- queued -> runner online (the runner that ran the job connected) and queued -> job started,
  p50/p99: with JOBS >> RUNNERS these are mostly time in the queue, waiting for a free slot;
- runner registered -> online: what shoal adds to starting one runner (Secret, VM, scheduling,
  the sim boot, the startup script starting, the runner's first request);
- one runner VM's life, step by step (means), and how full the pool was (time-weighted mean of
  its VMs next to RUNNERS): where a slot's time goes;
- peak concurrent runner VMs (at most RUNNERS; with JOBS >> RUNNERS it should reach it);
- the pool's syncs as the fake GitHub sees them: how often, how long listing the queue takes,
  how many runners each starts and how long one start takes (they start one after another);
- CPU of each process over the run (controller, agent, the runners' sh/wget processes, this
  process: the fake GitHub and the watch), as a share of one core;
- leftovers once every job is done and the pool settled (at most SETTLE_TIMEOUT s): VMs of
  the pool, runner Secrets, runners still registered at the fake, runner processes, jobs not
  completed and jobs run twice. Each must be 0: a row marked "ok": false makes `python -m
  bench` exit 1.

`python -m bench runnerpools --jobs 100 --runners 20` is a quick run. Every process the bench
starts (controller, agent, the runners' processes, found by their working directory in the
bench's temp dir) is killed in `finally`, also on SIGTERM/SIGHUP.
"""

import contextlib
import hashlib
import hmac
import itertools
import json
import math
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request

from bench.qemu import _interrupt
from bench.stats import percentile
from bench.waiting import wait
from shoal.client import Client, resource_path
from shoal.errors import ApiError

# The fake GitHub, its runner script and the runner-pool test helpers live with the tests: put
# tests/ on sys.path, as pytest does.
TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fakes.github import RUNNER_SCRIPT, FakeGitHub, FakeJob, FakeRunner  # noqa: E402
from fakes.serving import serve  # noqa: E402
from helpers import free_port  # noqa: E402
from runnerpool_helpers import (  # noqa: E402
    create_access_secret,
    create_credentials,
    github_pool,
    pool_secrets,
    pool_vms,
    processes_working_under,
)

SHOAL = str(Path(sys.executable).parent / "shoal")
JOBS = 1_000
RUNNERS = 100
RUN_SIZE = 20  # jobs per workflow run: the pool lists each run's jobs in one request
JOB_SECONDS = 0.5  # FAKE_JOB_SECONDS: how long the stand-in runner "runs" a job
SYNC_SECONDS = 5
BOOT_DELAY = 0.2
VMS_PER_NODE = 10
POOL = "bench"
NAMESPACE = "default"
LABELS = ["self-hosted", "shoal"]
SETTLE_TIMEOUT = 180.0
PROGRESS_EVERY = 15.0

Row = dict[str, Any]


def _say(text: str) -> None:
    print(f"[runnerpools] {text}", file=sys.stderr, flush=True)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# An API or HTTP error: the controller is not answering yet.
_wait = partial(wait, every=0.2, errors=(ApiError, httpx.HTTPError))


# -- the fake GitHub, recording ----------------------------------------------------------------


@dataclass
class Taken:
    """A job as a runner ran it, on time.time()'s clock as the fake's own records."""

    runner: str
    registered: float  # the runner's JIT config was made (the pool started it)
    online: float  # the runner connected
    started: float  # it took the job
    completed: float | None = None


class RecordingGitHub(FakeGitHub):
    """The fake GitHub, noting which runner took each job and when, the pool's syncs (each
    starts by listing the organization's repositories) and the API requests it answers.

    Webhooks go out as FakeGitHub._deliver sends them, but from 4 threads sharing one HTTP
    client instead of a new thread and client per delivery: 3 deliveries per job would
    otherwise cost this process more CPU than the fake's API, on the CPU the pool needs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.taken: dict[int, Taken] = {}
        self.syncs: list[float] = []
        self.api_requests: Counter[str] = Counter()
        self.timeline: list[tuple[float, str]] = []  # (when, kind) of each API request
        self.acquires: Counter[str] = Counter()
        self.delivered: Counter[int] = Counter()
        self._posts = ThreadPoolExecutor(4, thread_name_prefix="webhooks")
        self._http = httpx.Client(timeout=10)

    def close(self) -> None:
        self._posts.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def _check(self, request: Request) -> Any:
        path = request.url.path
        if path == f"/orgs/{self.org}/repos":
            self.syncs.append(time.time())
        kind = (
            "list workflow runs"
            if path.endswith("/actions/runs")
            else "list a run's jobs"
            if path.endswith("/jobs")
            else REGISTER
            if path.endswith("/generate-jitconfig")
            else LIST_RUNNERS
            if path.endswith("/actions/runners")
            else f"{request.method} a runner"
            if "/actions/runners/" in path
            else "list repositories"
            if path.endswith("/repos")
            else "other"
        )
        self.api_requests[kind] += 1
        self.timeline.append((time.time(), kind))
        return super()._check(request)

    def _assign(self, runner: FakeRunner) -> FakeJob | None:
        job = super()._assign(runner)
        now = time.time()
        self.acquires["given a job" if job else "no job"] += 1
        if job is not None:
            online = runner.online_since if runner.online_since is not None else now
            self.taken[job.id] = Taken(runner.name, runner.registered, online, now)
        return job

    def _deliver(self, action: str, job: FakeJob) -> None:
        if action == "completed" and job.conclusion == "success":
            taken = self.taken.get(job.id)
            if taken is not None and taken.completed is None:
                taken.completed = time.time()
        if not self.webhook_url:
            return
        owner, name = job.repository.split("/")
        payload = {
            "action": action,
            "workflow_job": self._job_json(job),
            "repository": {"full_name": job.repository, "name": name, "owner": {"login": owner}},
            "organization": {"login": self.org},
        }
        self._posts.submit(self._post, json.dumps(payload).encode())

    def _post(self, body: bytes) -> None:
        signature = hmac.new(self.webhook_secret, body, hashlib.sha256).hexdigest()
        headers = {
            "X-GitHub-Event": "workflow_job",
            "X-GitHub-Delivery": secrets.token_hex(16),
            "X-Hub-Signature-256": f"sha256={signature}",
            "Content-Type": "application/json",
        }
        try:  # GitHub gives up on a failed delivery too; the pool's sync makes up for it
            answer = self._http.post(self.webhook_url, content=body, headers=headers)
            self.delivered[answer.status_code] += 1
        except httpx.HTTPError:
            self.delivered[0] += 1


LIST_RUNNERS = "list runners"
REGISTER = "register a runner (JIT config)"


@dataclass
class Sync:
    """One sync of the pool as the fake GitHub saw its requests."""

    start: float  # it listed the organization's repositories: the queue listing began
    listed: float | None = None  # it listed the runners: the queue listing was done
    registered: list[float] = field(default_factory=list)  # each runner it started

    @property
    def per_runner(self) -> float | None:
        """Seconds between two runners started (register, Secret, VM, event), on average."""
        if len(self.registered) < 2:
            return None
        return (self.registered[-1] - self.registered[0]) / (len(self.registered) - 1)


def _syncs(timeline: list[tuple[float, str]], start: float, end: float) -> list[Sync]:
    syncs: list[Sync] = []
    for when, kind in timeline:
        if kind == "list repositories":
            syncs.append(Sync(when))
        elif syncs and kind == LIST_RUNNERS and syncs[-1].listed is None:
            syncs[-1].listed = when
        elif syncs and kind == REGISTER:
            syncs[-1].registered.append(when)
    return [sync for sync in syncs if start <= sync.start <= end]


# -- the pool's VMs, watched -------------------------------------------------------------------


@dataclass
class VMTimes:
    """When the watch first saw each step of one runner VM (time.time())."""

    made: float
    bound: float | None = None
    running: float | None = None
    script_ended: float | None = None
    deleting: float | None = None
    gone: float | None = None


@dataclass
class VMWatch:
    """Watches the pool's VMs: each one's steps, how many exist (made, not yet gone) over time."""

    client: Client
    vms: dict[str, VMTimes] = field(default_factory=dict)
    counts: list[tuple[float, int]] = field(default_factory=list)
    peak: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    broken: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vm-watch", daemon=True)
        self._live: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    @property
    def live(self) -> int:
        return len(self._live)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(15)
        self.client.close()

    def _run(self) -> None:
        version: str | None = None
        while not self.stop.is_set():
            try:
                for event in self.client.watch(
                    "virtualmachines", NAMESPACE, resource_version=version, timeout=5
                ):
                    version = event["object"]["metadata"].get("resourceVersion") or version
                    if event["type"] != "BOOKMARK":
                        self._seen(event["type"], event["object"])
                    if self.stop.is_set():
                        return
            except (ApiError, httpx.HTTPError) as error:
                self.broken.append(str(error))
                time.sleep(0.2)

    def _seen(self, kind: str, vm: dict[str, Any]) -> None:
        meta = vm["metadata"]
        if (meta.get("labels") or {}).get("runners.shoal.dev/pool") != POOL:
            return
        now, name = time.time(), meta["name"]
        times = self.vms.setdefault(name, VMTimes(now))
        if kind == "DELETED":
            times.gone = times.gone or now
            self._live.discard(name)
        else:
            if name not in self._live and times.gone is None:
                self._live.add(name)
            status = vm.get("status") or {}
            if (vm.get("spec") or {}).get("nodeName") and times.bound is None:
                times.bound = now
            if status.get("phase") == "Running" and times.running is None:
                times.running = now
            script: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c["type"] == "StartupScript"), {}
            )
            if script.get("reason") in ("Succeeded", "Failed") and times.script_ended is None:
                times.script_ended = now
            if meta.get("deletionTimestamp") and times.deleting is None:
                times.deleting = now
        self.peak = max(self.peak, len(self._live))
        if not self.counts or self.counts[-1][1] != len(self._live):
            self.counts.append((now, len(self._live)))

    def mean_count(self, start: float, end: float) -> float:
        """The time-weighted mean of how many VMs the pool had between start and end."""
        total, previous_t, previous_n = 0.0, start, 0
        for t, n in self.counts:
            if t > start:
                total += previous_n * (min(t, end) - previous_t)
                previous_t = min(t, end)
            previous_n = n
            if t >= end:
                break
        total += previous_n * max(0.0, end - previous_t)
        return total / (end - start) if end > start else float("nan")


# -- processes ---------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a process, and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    children = (int(fields[13]) + int(fields[14])) / tick  # cutime, cstime
    return own, children


class Cluster:
    """`shoal controller --no-tls` and one `shoal agent` running `nodes` sim nodes."""

    def __init__(self, base: Path, nodes: int) -> None:
        self.base = base
        self.nodes = nodes
        self.url = f"http://127.0.0.1:{free_port()}"
        self.controller: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.base / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start(self) -> Client:
        data = self.base / "controller"
        listen = self.url.removeprefix("http://")
        self.controller = self._spawn(
            "controller",
            [SHOAL, "controller", "--data-dir", str(data), "--listen", listen, "--no-tls"],
        )
        _wait(lambda: httpx.get(self.url + "/readyz").status_code == 200, 60, "the controller")
        client = Client(self.url, (data / "admin.token").read_text().strip())
        join = client.request(
            "POST", resource_path("jointokens"), body={"spec": {"ttlSeconds": 3600}}
        )
        self.agent = self._spawn(
            "agent",
            [SHOAL, "agent", "--server", self.url, "--join-token", join["status"]["token"],
             "--name", "sim", "--backend", "sim", "--replicas", str(self.nodes),
             "--state-dir", str(self.base / "agent"), "--sim-vms", str(VMS_PER_NODE),
             "--sim-cpu", str(2 * VMS_PER_NODE), "--sim-memory", "64Gi",
             "--sim-boot-delay", str(BOOT_DELAY), "--sim-guest-shell"],
        )  # fmt: skip
        _wait(lambda: len(client.list("nodes")["items"]) == self.nodes, 120, "the sim nodes")
        return client

    def client(self) -> Client:
        token = (self.base / "controller" / "admin.token").read_text().strip()
        return Client(self.url, token)

    def stop(self) -> None:
        for process in (self.agent, self.controller):
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for pid in processes_working_under(self.base):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Cpu:
    """CPU seconds used so far by each part of the setup."""

    controller: float
    agent: float
    runners: float  # the agent's children: the sims' guest shells, sh and wget
    bench: float  # this process: the fake GitHub (uvicorn), webhook deliveries, the watch

    @classmethod
    def now(cls, cluster: Cluster) -> "Cpu":
        assert cluster.controller is not None and cluster.agent is not None
        controller, _ = _cpu_seconds(cluster.controller.pid)
        agent, children = _cpu_seconds(cluster.agent.pid)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(controller, agent, children, usage.ru_utime + usage.ru_stime)


def _queue(github: FakeGitHub, jobs: int) -> list[int]:
    queued: list[int] = []
    while len(queued) < jobs:
        queued += github.queue(LABELS, count=min(RUN_SIZE, jobs - len(queued)))
    return queued


def _leftovers(client: Client, github: FakeGitHub, base: Path) -> dict[str, int]:
    return {
        "VMs of the pool": len(pool_vms(client, POOL)),
        "runner Secrets": len(pool_secrets(client, POOL)),
        "runners registered at the fake GitHub": len(github.runner_names()),
        "runner processes": len(processes_working_under(base)),
    }


def _progress(github: RecordingGitHub, watch: VMWatch, jobs: int) -> Iterator[None]:
    """Yields while jobs are not all done, saying how far it got every PROGRESS_EVERY s."""
    said = time.monotonic()
    while len(github.completed()) < jobs:
        if time.monotonic() - said > PROGRESS_EVERY:
            said = time.monotonic()
            _say(
                f"{len(github.completed())}/{jobs} jobs done, {watch.live} VMs, "
                f"{len(github.syncs)} syncs, load {os.getloadavg()[0]:.1f}"
            )
        yield


def _settle(client: Client, github: FakeGitHub, base: Path, since: float) -> dict[str, float]:
    """Waits (at most SETTLE_TIMEOUT s) until nothing is left; for each kind of leftover, the
    seconds from since until there was none (NaN if there still is)."""
    cleared: dict[str, float] = {}
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiError, httpx.HTTPError):
            left = _leftovers(client, github, base)
            for what, count in left.items():
                if count:
                    cleared.pop(what, None)
                else:
                    cleared.setdefault(what, time.time() - since)
            if len(cleared) == len(left):
                return cleared
        time.sleep(0.5)
    return cleared


def run(jobs: int = JOBS, runners: int = RUNNERS) -> list[Row]:
    if not shutil.which("wget"):
        raise RuntimeError("the runnerpools bench's stand-in runner needs wget (make system-deps)")
    nodes = math.ceil(runners / VMS_PER_NODE) + 1  # a node to spare for VMs being torn down
    size = f"{jobs} jobs, {runners} runners"
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-runnerpools-")).resolve()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    github = RecordingGitHub()
    cluster = Cluster(base, nodes)
    watch: VMWatch | None = None
    try:
        with serve(github.app) as served:
            github.runner_url = served.url
            started = time.monotonic()
            client = cluster.start()
            create_access_secret(client, NAMESPACE)
            create_credentials(
                client, {"token": github.token, "webhookSecret": github.webhook_secret}, NAMESPACE
            )
            watch = VMWatch(cluster.client())
            watch.start()
            pool = github_pool(
                POOL, served.url, image="example.com/runner:1", max_runners=runners,
                command=RUNNER_SCRIPT.read_text(), env={"FAKE_JOB_SECONDS": str(JOB_SECONDS)},
                labels=("shoal",), sync=SYNC_SECONDS,
            )  # fmt: skip
            client.create("runnerpools", pool, NAMESPACE)
            _wait(
                lambda: (client.get("runnerpools", POOL, NAMESPACE).get("status") or {}).get(
                    "lastSyncTime"
                ),
                60,
                "the pool's first sync",
            )
            github.webhook_url = (
                f"{cluster.url}/apis/shoal.dev/v1/namespaces/{NAMESPACE}/runnerpools/{POOL}/webhook"
            )
            _say(f"controller, {nodes} sim nodes and the pool up in "
                 f"{time.monotonic() - started:.1f}s; queueing {jobs} jobs")  # fmt: skip

            cpu_before = Cpu.now(cluster)
            t_queued = time.time()
            queued = _queue(github, jobs)
            deadline = time.monotonic() + max(600.0, 2.0 * jobs)
            for _ in _progress(github, watch, jobs):
                if time.monotonic() > deadline:
                    _say(f"gave up waiting: {len(github.completed())}/{jobs} jobs done")
                    break
                time.sleep(0.2)
            t_done = time.time()
            cpu_after = Cpu.now(cluster)
            requests = sum(github.api_requests.values())
            syncs = _syncs(github.timeline, t_queued, t_done)
            _say(f"{len(github.completed())} jobs done in {t_done - t_queued:.1f}s; settling")

            settle_started = time.time()
            cleared = _settle(client, github, base, settle_started)
            settled = time.time() - settle_started
            left = _leftovers(client, github, base)
    finally:
        try:
            if watch is not None:
                watch.close()
            github.close()
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    done = {i: t for i in queued if (t := github.taken.get(i)) and t.completed is not None}
    last = max((t.completed for t in done.values() if t.completed), default=t_done)
    wall = last - t_queued
    created = {i: github.jobs[i].created for i in queued}
    to_online = [t.online - created[i] for i, t in done.items()]
    to_start = [t.started - created[i] for i, t in done.items()]
    register_online = [t.online - t.registered for t in done.values()]
    ran = Counter(i for ids in github.history.values() for i in ids)

    # One runner VM's life, step by step, for the VMs whose runner ran a job.
    by_vm = {t.runner.split(".", 1)[1]: t for t in done.values()}
    steps: dict[str, list[float]] = {}

    def step(name: str, a: float | None, b: float | None) -> None:
        if a is not None and b is not None:
            steps.setdefault(name, []).append(b - a)

    for vm_name, taken in by_vm.items():
        vm = watch.vms.get(vm_name) if watch else None
        if vm is None:
            continue
        step("runner registered -> VM made", taken.registered, vm.made)
        step("VM made -> bound to a node", vm.made, vm.bound)
        step("bound -> Running (sim boot 0.2 s)", vm.bound, vm.running)
        step("Running -> runner online (startup script)", vm.running, taken.online)
        step("runner online -> job taken", taken.online, taken.started)
        step(f"job taken -> completed ({JOB_SECONDS} s job)", taken.started, taken.completed)
        step("job completed -> script ended (reported)", taken.completed, vm.script_ended)
        step("script ended -> VM deleting", vm.script_ended, vm.deleting)
        step("VM deleting -> VM gone", vm.deleting, vm.gone)
        step("one runner VM, made -> gone (total)", vm.made, vm.gone)
    assert watch is not None
    fill = watch.mean_count(t_queued, last)
    vms_made = len(watch.vms)

    def cpu(part: str) -> Row:
        used = getattr(cpu_after, part) - getattr(cpu_before, part)
        return {
            "name": f"runnerpools: CPU of {CPU_PARTS[part]}",
            "value": 100 * used / (t_done - t_queued),
            "unit": "% of a core",
        }

    def ok(name: str, value: float, good: bool, unit: str = "") -> Row:
        return {"name": f"runnerpools: {name}", "value": value, "unit": unit, "ok": good}

    rows: list[Row] = [
        {"name": f"runnerpools: jobs/s ({size})", "value": len(done) / wall, "unit": "jobs/s"},
        {"name": "runnerpools: first job queued -> last job completed", "value": wall,
         "unit": "s"},
        {"name": "runnerpools: queued -> runner online p50", "value": percentile(to_online, 50),
         "unit": "s"},
        {"name": "runnerpools: queued -> runner online p99", "value": percentile(to_online, 99),
         "unit": "s"},
        {"name": "runnerpools: queued -> job started p50", "value": percentile(to_start, 50),
         "unit": "s"},
        {"name": "runnerpools: queued -> job started p99", "value": percentile(to_start, 99),
         "unit": "s"},
        {"name": "runnerpools: runner registered -> online p50",
         "value": percentile(register_online, 50), "unit": "s"},
        {"name": "runnerpools: runner registered -> online p99",
         "value": percentile(register_online, 99), "unit": "s"},
        ok("peak concurrent runner VMs", watch.peak, watch.peak <= runners, f"of {runners}"),
        {"name": "runnerpools: runner VMs, time-weighted mean while jobs ran", "value": fill,
         "unit": f"of {runners}"},
        {"name": "runnerpools: runner VMs made", "value": vms_made, "unit": f"for {jobs} jobs"},
    ]  # fmt: skip
    rows += [
        {"name": f"runnerpools: step mean: {name}", "value": _mean(values), "unit": "s"}
        for name, values in steps.items()
    ]
    rows += [
        {"name": "runnerpools: pool syncs while jobs ran", "value": len(syncs), "unit": "syncs"},
        {"name": "runnerpools: sync start -> next sync start, mean",
         "value": _mean([b.start - a.start for a, b in itertools.pairwise(syncs)]), "unit": "s"},
        {"name": "runnerpools: sync: listing the queued jobs (GitHub API), mean",
         "value": _mean([x.listed - x.start for x in syncs if x.listed]), "unit": "s"},
        {"name": "runnerpools: sync: queue listed -> first runner started, mean",
         "value": _mean([x.registered[0] - x.listed for x in syncs if x.listed and x.registered]),
         "unit": "s"},
        {"name": "runnerpools: sync: runners started per sync, mean",
         "value": _mean([len(x.registered) for x in syncs]), "unit": "runners"},
        {"name": "runnerpools: sync: one runner started (register, Secret, VM), mean",
         "value": _mean([x.per_runner for x in syncs if x.per_runner is not None]), "unit": "s"},
        {"name": "runnerpools: fake GitHub API requests (pool) per second",
         "value": requests / (t_done - t_queued), "unit": "req/s",
         "by_kind": dict(github.api_requests)},
        {"name": "runnerpools: runner acquire polls that found no job",
         "value": github.acquires["no job"], "unit": f"of {sum(github.acquires.values())}"},
        {"name": "runnerpools: webhook deliveries refused or lost",
         "value": sum(n for code, n in github.delivered.items() if code not in (200, 202)),
         "unit": f"of {sum(github.delivered.values())}"},
    ]  # fmt: skip
    rows += [cpu(part) for part in CPU_PARTS]
    rows.append(
        {"name": "runnerpools: 1-min load average at the end", "value": os.getloadavg()[0],
         "unit": ""}
    )  # fmt: skip
    rows.append(
        {"name": "runnerpools: last job completed -> nothing left", "value": settled, "unit": "s"}
    )
    rows += [
        {"name": f"runnerpools: last job completed -> no {what} left",
         "value": cleared.get(what, float("nan")), "unit": "s"}
        for what in left
    ]  # fmt: skip
    rows += [ok(f"left after settling: {what}", n, n == 0) for what, n in left.items()]
    rows.append(ok("jobs not completed", jobs - len(done), len(done) == jobs))
    twice = sum(1 for n in ran.values() if n > 1)
    rows.append(ok("jobs run more than once", twice, twice == 0))
    return rows


CPU_PARTS = {
    "controller": "shoal controller",
    "agent": f"shoal agent ({VMS_PER_NODE} VMs per sim node)",
    "runners": "the runners (sh, wget, sleep in the sim guests)",
    "bench": "the bench: fake GitHub, webhook deliveries, VM watch",
}
