"""Jobs on real guests: `shoal run -- true` end to end, and exec next to `shoal ssh` (latency of
`-- true`, and stdout throughput), on the test guest under `shoal dev --backend qemu --accel tcg`
(TCG forced, so the figures compare from run to run and machine to machine).

`shoal run`: RUNS runs of the CLI itself (`shoal run --image test-guest --cpu 1 --memory 256Mi
--access-secret guest-key -- true`), timed from process start to exit. Its steps cannot be seen
from outside, so RUNS more runs, alternating with those, take the same steps in this process with
the very functions `shoal run` calls (src/shoal/cli/run.py `_deploy`, `LeaseKeeper`,
`wait_phase`, `_run_command` -> tunnel/execclient.py `execute`, the DELETE request), each step
timed: deploy+boot (create -> phase Running), the exec of `true`, the delete request. The CLI
total less the in-process total is the CLI's own cost (starting Python and importing shoal, the
context lookup), next to a `shoal --version` for reference. After each run, not counted, the
bench waits until the VM and its QEMU are gone (`bench.qemu._delete`, which also nudges a delete
the agent lost), so no teardown overlaps the next boot.

Exec and ssh: one VM, Running; EXEC_RUNS rounds of `shoal exec VM -- true`, `shoal ssh VM -i KEY
-- true` (OpenSSH through `shoal port-forward --stdio` as ProxyCommand) and the same exec through
`execute` in this process (no CLI start), interleaved so load falls on all three. Throughput:
100 MB of `head -c 100000000 /dev/zero` on the command's stdout (`sh -c '...'` for exec; for ssh
the one string, as ssh joins its arguments), THROUGHPUT_RUNS times each way, interleaved; the
bench reads each CLI's stdout, checks it got every byte and drops them (`execute` counts them in
this process). MB = 10^6 bytes. Also the CPU shoal dev and the guest's QEMU use meanwhile.

p99 of 10 or 20 samples is in effect the largest (statistics.quantiles, inclusive). Every VM,
QEMU and `shoal dev` the bench starts is removed in `finally` (`bench.qemu._cleanup`), also on
SIGTERM/SIGHUP.
"""

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.devserver import SHOAL
from bench.qemu import (
    BOOT_TIMEOUT,
    IMAGE,
    NAMESPACE,
    PLURAL,
    QEMU,
    Dev,
    _cleanup,
    _delete,
    _foreign_qemus,
    _interrupt,
    _qemus,
    _wait,
    ready_node,
)
from bench.stats import percentile
from shoal.cli import vmspec
from shoal.cli.common import Target
from shoal.cli.run import LeaseKeeper, _deploy, _run_command
from shoal.cli.vm import wait_phase
from shoal.client import Client, resource_path
from shoal.testguest import TestGuest, build_test_guest
from shoal.tunnel.client import Endpoint
from shoal.tunnel.execclient import execute

ACCEL = "tcg"
RUNS = 10
EXEC_RUNS = 20
THROUGHPUT_BYTES = 100_000_000
THROUGHPUT_RUNS = 3
SECRET = "guest-key"
LEASE = 60  # shoal run's default --lease
VM_FLAGS = ["--image", IMAGE, "--cpu", "1", "--memory", "256Mi", "--access-secret", SECRET]
SPEC = vmspec.build_spec(
    vmspec.SpecFlags(image=IMAGE, cpu=1, memory="256Mi", access_secret=SECRET)
)  # what VM_FLAGS make of it in `shoal run`
TRUE = ["true"]
ZEROS = ["sh", "-c", f"head -c {THROUGHPUT_BYTES} /dev/zero"]
# ssh joins its arguments with spaces into one string for the remote shell, so `-- sh -c 'head
# ...'` would run `sh -c head`: the command goes as that one string.
SSH_ZEROS = [f"head -c {THROUGHPUT_BYTES} /dev/zero"]
READ = 2**20

Row = dict[str, Any]


def _say(text: str) -> None:
    print(f"[jobs] {text}", file=sys.stderr, flush=True)


def _pcts(name: str, values: list[float], unit: str = "ms", scale: float = 1000.0) -> list[Row]:
    scaled = [v * scale for v in values]
    return [
        {
            "name": f"{name} p50",
            "value": statistics.median(scaled),
            "unit": unit,
            "samples": [round(v, 4) for v in scaled],
        },
        {"name": f"{name} p99", "value": percentile(scaled, 99), "unit": unit},
    ]


def _cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _cli(dev: Dev, argv: list[str], expect: int = 0) -> tuple[float, str]:
    """Run a shoal CLI command, its stdout read and dropped (and checked to be `expect` bytes):
    seconds from start to exit, and its stderr."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        with subprocess.Popen(
            argv, env=dev.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
        ) as process:
            assert process.stdout is not None
            got = 0
            while chunk := os.read(process.stdout.fileno(), READ):
                got += len(chunk)
            code = process.wait(600)
        seconds = time.perf_counter() - t0
        err.seek(0)
        said = err.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[1:4])}... exited {code}: {said}")
    if expect and got != expect:
        raise RuntimeError(f"{' '.join(argv[1:4])}... wrote {got} bytes, not {expect}")
    return seconds, said


class Jobs:
    def __init__(self, base: Path, dev: Dev, client: Client, guest: TestGuest) -> None:
        self.base, self.dev, self.client, self.guest = base, dev, client, guest
        assert dev.context is not None  # set by dev.start(), which made client
        self.context = dev.context
        self.target = Target(client, NAMESPACE, "dev")
        self.stuck: list[str] = []
        self.gone: list[float] = []

    def endpoint(self, name: str) -> Endpoint:
        """What `shoal run` gets from portforward.endpoint(context, namespace, name)."""
        ctx = self.context
        return Endpoint(ctx.server, ctx.token, ctx.caCert, NAMESPACE, name)

    def settle(self) -> None:
        """Wait (not counted) until every VM and its QEMU are gone, nudging lost deletes."""
        for vm in self.client.list(PLURAL, NAMESPACE)["items"]:
            meta = vm["metadata"]
            done = _delete(self.client, meta["name"], meta["uid"])
            self.gone.append(done["seconds"])
            if done["stuck"]:
                self.stuck.append(f"{meta['name']}: {done['stuck']}")
        marker = str(self.base).encode()
        _wait(lambda: not _qemus(marker), 60, "the VMs' QEMUs to exit")

    # -- shoal run --------------------------------------------------------------------------

    def run_cli(self) -> float:
        seconds, said = _cli(self.dev, [SHOAL, "run", *VM_FLAGS, "--", "true"])
        if "shoal run: VM " not in said:
            raise RuntimeError(f"shoal run said: {said}")
        return seconds

    def run_steps(self) -> dict[str, float]:
        """run_job's steps, less copies and signal handling, each timed."""
        target = self.target
        t0 = time.perf_counter()
        vm = _deploy(target, SPEC, LEASE)
        t_created = time.perf_counter()
        name = str(vm["metadata"]["name"])
        try:
            with LeaseKeeper(target.client, target.namespace, name, LEASE):
                wait_phase(target, vm, "Running", BOOT_TIMEOUT)
                t_running = time.perf_counter()
                code = _run_command(self.endpoint(name), TRUE, None)
                t_exec = time.perf_counter()
                if code != 0:
                    raise RuntimeError(f"`true` exited {code} in {name}")
        finally:
            t_delete = time.perf_counter()
            target.client.request("DELETE", resource_path(PLURAL, target.namespace, name))
            t_end = time.perf_counter()
        return {
            "total": t_end - t0,
            "create": t_created - t0,
            "boot": t_running - t0,
            "exec": t_exec - t_running,
            "delete": t_end - t_delete,
        }

    # -- exec and ssh on one VM -------------------------------------------------------------

    def exec_cli(self, name: str, command: list[str], expect: int = 0) -> float:
        return _cli(self.dev, [SHOAL, "exec", name, "--", *command], expect)[0]

    def ssh_cli(self, name: str, command: list[str], expect: int = 0) -> float:
        key = str(self.guest.private_key)
        return _cli(self.dev, [SHOAL, "ssh", name, "-i", key, "--", *command], expect)[0]

    def exec_api(self, name: str, command: list[str]) -> tuple[float, int]:
        """execute() in this process: seconds, and bytes of stdout (counted, then dropped)."""
        got = [0]

        def count(data: bytes) -> None:
            got[0] += len(data)

        async def go() -> int | None:
            result = await execute(self.endpoint(name), command, stdout=count, stderr=count)
            code: int | None = result.exit_code
            return code

        t0 = time.perf_counter()
        code = asyncio.run(go())
        seconds = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"exec {command} in {name} exited {code}")
        return seconds, got[0]


def run() -> list[Row]:
    if not all(shutil.which(tool) for tool in (QEMU, "qemu-img", "ssh")):
        raise RuntimeError("the jobs bench needs qemu-system-x86_64, qemu-img and ssh")
    guest = build_test_guest(progress=_say)
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-jobs-")).resolve()
    marker = str(base).encode()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    dev: Dev | None = None
    try:
        started = time.perf_counter()
        dev = Dev(base, accel=ACCEL)
        client = dev.start()
        dev.import_image(guest)
        node = ready_node(client)
        accel = str(node["status"]["accelerator"])
        if accel != ACCEL:
            raise RuntimeError(f"the node runs guests under {accel}, not {ACCEL}")
        _cli(dev, [SHOAL, "secret", "create", "ssh", SECRET, "--user", guest.ssh_user,
                   "--private-key", str(guest.private_key)])  # fmt: skip
        jobs = Jobs(base, dev, client, guest)
        _say(f"shoal dev up in {time.perf_counter() - started:.1f}s, accelerator {accel}")

        version = [_cli(dev, [SHOAL, "--version"])[0] for _ in range(5)]
        foreign = 0
        loads: list[float] = []

        # 1. shoal run -- true. One of each first, not counted (page cache, first lookups).
        warm_cli = jobs.run_cli()
        jobs.settle()
        warm_api = jobs.run_steps()["total"]
        jobs.settle()
        _say(f"warm-up: shoal run {warm_cli:.2f}s, in-process {warm_api:.2f}s")
        cli_runs: list[float] = []
        steps: list[dict[str, float]] = []
        for i in range(RUNS):
            foreign = max(foreign, _foreign_qemus(marker))
            loads.append(os.getloadavg()[0])
            order = ("cli", "api") if i % 2 == 0 else ("api", "cli")
            for side in order:
                if side == "cli":
                    cli_runs.append(jobs.run_cli())
                else:
                    steps.append(jobs.run_steps())
                jobs.settle()
            _say(
                f"run {i + 1}/{RUNS}: shoal run {cli_runs[-1]:.2f}s, in-process "
                f"{steps[-1]['total']:.2f}s (boot {steps[-1]['boot']:.2f}s, exec "
                f"{steps[-1]['exec'] * 1000:.0f}ms, delete {steps[-1]['delete'] * 1000:.0f}ms)"
            )

        # 2 and 3. One VM, exec and ssh side by side.
        name = "bench-exec"
        vm = client.create(PLURAL, {"metadata": {"name": name}, "spec": dict(SPEC)}, NAMESPACE)
        wait_phase(jobs.target, vm, "Running", BOOT_TIMEOUT)
        jobs.exec_cli(name, TRUE)  # warm-up, not counted
        jobs.ssh_cli(name, TRUE)
        jobs.exec_api(name, TRUE)
        exec_cli, ssh_cli, exec_api = [], [], []
        for _ in range(EXEC_RUNS):
            foreign = max(foreign, _foreign_qemus(marker))
            loads.append(os.getloadavg()[0])
            exec_cli.append(jobs.exec_cli(name, TRUE))
            ssh_cli.append(jobs.ssh_cli(name, TRUE))
            exec_api.append(jobs.exec_api(name, TRUE)[0])
        _say(
            f"round trip p50: exec {statistics.median(exec_cli) * 1000:.0f}ms, ssh "
            f"{statistics.median(ssh_cli) * 1000:.0f}ms, execute() "
            f"{statistics.median(exec_api) * 1000:.0f}ms"
        )
        mb = THROUGHPUT_BYTES / 1e6
        size = THROUGHPUT_BYTES
        put_cli, put_ssh, put_api = [], [], []
        # Where the CPU goes while the bytes flow: shoal dev (API, agent, relays, asyncssh) and
        # the guest's QEMU, as a share of one core over each transfer.
        assert dev.process is not None
        root = dev.vm_dir(vm["metadata"]["uid"])
        assert root is not None
        pids = {"shoal dev": dev.process.pid, "QEMU": int((root / "qemu.pid").read_text())}
        cpu: dict[tuple[str, str], list[float]] = {}

        def timed(way: str, measure: Callable[[], float]) -> float:
            before = {who: _cpu(pid) for who, pid in pids.items()}
            t0 = time.perf_counter()
            value = measure()
            wall = time.perf_counter() - t0
            for who, pid in pids.items():
                used = (_cpu(pid) - before[who]) / wall * 100
                cpu.setdefault((way, who), []).append(used)
            return value

        for i in range(THROUGHPUT_RUNS):
            foreign = max(foreign, _foreign_qemus(marker))
            loads.append(os.getloadavg()[0])
            put_cli.append(timed("shoal exec", lambda: mb / jobs.exec_cli(name, ZEROS, size)))
            put_ssh.append(timed("shoal ssh", lambda: mb / jobs.ssh_cli(name, SSH_ZEROS, size)))
            seconds, got = jobs.exec_api(name, ZEROS)
            if got != THROUGHPUT_BYTES:
                raise RuntimeError(f"execute() got {got} bytes of {THROUGHPUT_BYTES}")
            put_api.append(mb / seconds)
            _say(
                f"throughput {i + 1}/{THROUGHPUT_RUNS}: exec {put_cli[-1]:.1f}, ssh "
                f"{put_ssh[-1]:.1f}, execute() {put_api[-1]:.1f} MB/s"
            )
        jobs.settle()
        _say(f"done in {time.perf_counter() - started:.0f}s")
    finally:
        try:
            _cleanup(base, None, dev)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    api_total = [s["total"] for s in steps]

    def share(step: str) -> Row:
        """The step's share of the in-process run, from the p50s (sum of the steps' p50s)."""
        parts = {k: statistics.median(s[k] for s in steps) for k in ("boot", "exec", "delete")}
        return {
            "name": f"jobs: shoal run: share of {step} (of the steps' p50s)",
            "value": 100 * parts[step] / sum(parts.values()),
            "unit": "%",
        }

    rows: list[Row] = []
    rows += _pcts("jobs: shoal run -- true, CLI end to end", cli_runs, "s", 1.0)
    rows += _pcts("jobs: shoal run steps in-process, total", api_total, "s", 1.0)
    rows += _pcts("jobs: shoal run step: deploy+boot -> Running", [s["boot"] for s in steps])
    rows += _pcts("jobs: shoal run step: exec `true`", [s["exec"] for s in steps])
    rows += _pcts("jobs: shoal run step: delete request", [s["delete"] for s in steps])
    rows += [share("boot"), share("exec"), share("delete")]
    rows += _pcts("jobs: shoal run: of deploy+boot, the create call", [s["create"] for s in steps])
    rows.append(
        {
            "name": "jobs: shoal run: CLI p50 - in-process p50 (CLI start, context)",
            "value": (statistics.median(cli_runs) - statistics.median(api_total)) * 1000,
            "unit": "ms",
        }
    )
    rows += _pcts("jobs: shoal --version (CLI process start, reference)", version)
    rows += _pcts("jobs: after delete -> VM and QEMU gone (not in run)", jobs.gone, "s", 1.0)
    rows += _pcts("jobs: shoal exec VM -- true", exec_cli)
    rows += _pcts("jobs: shoal ssh VM -- true", ssh_cli)
    rows += _pcts("jobs: exec -- true via execute() in-process", exec_api)
    rows += [
        {"name": "jobs: shoal exec stdout throughput p50", "value": statistics.median(put_cli),
         "unit": "MB/s", "samples": [round(v, 2) for v in put_cli]},
        {"name": "jobs: shoal ssh stdout throughput p50", "value": statistics.median(put_ssh),
         "unit": "MB/s", "samples": [round(v, 2) for v in put_ssh]},
        {"name": "jobs: execute() in-process stdout throughput p50",
         "value": statistics.median(put_api), "unit": "MB/s",
         "samples": [round(v, 2) for v in put_api]},
    ]  # fmt: skip
    rows += [
        {
            "name": f"jobs: CPU of {who} during {way} throughput p50",
            "value": statistics.median(values),
            "unit": "% of a core",
        }
        for (way, who), values in cpu.items()
    ]
    rows += [
        {"name": "jobs: warm-up (not counted): shoal run", "value": warm_cli, "unit": "s"},
        {"name": "jobs: warm-up (not counted): in-process", "value": warm_api, "unit": "s"},
        {"name": "jobs: deletes the agent lost or aborted (nudged)", "value": len(jobs.stuck),
         "unit": f"of {len(jobs.gone)}"},
        {"name": "jobs: foreign QEMU processes seen (max)", "value": foreign, "unit": "procs"},
        {"name": "jobs: 1-min load average (max at run start)", "value": max(loads), "unit": ""},
    ]  # fmt: skip
    return rows
