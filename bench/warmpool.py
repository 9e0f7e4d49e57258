"""Warm pools through the API, on real QEMU under `shoal dev` (tcg): a deploy from a VMConfig
with no pool, from one with a suspended pool, and from one with a clone pool, each timed from
the POST to

- SSH: its agent saw the guest's SSH banner (the VM is Running, or for a pooled VM its
  FreshIdentity condition appeared: the identity step starts once SSH answers), and
- Ready: it is Running and its Ready condition is True (for a pooled VM, after its fresh
  identity: hostname, clock, entropy, MAC, the image's hook, which in the test guest makes new
  host keys and restarts its sshd).

Each deploy of a pooled config waits for a ready entry first, so every pooled run is served from
the pool; each VM is deleted after it is timed. Targets (issue 16): a VM from a suspended pool
answers SSH in under 1 s (p50) and is at least 5x faster to SSH than a cold boot. Not in the
default `make bench` set: it boots about 40 guests and takes ~8 minutes (`python -m bench
warmpool`). Every QEMU started under the temp dir is killed in `finally`.
"""

import base64
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.qemu import Dev, ready_node
from bench.stats import median, percentile
from bench.waiting import wait
from shoal.client import Client
from shoal.errors import NotFound
from shoal.model.meta import get_condition
from shoal.testguest import build_test_guest

RUNS = 8
POLL = 0.02
SSH_TARGET_MS = 1000.0
SPEEDUP_TARGET = 5.0
BOOT_TIMEOUT = 300.0
SECRET = "guest-key"
Row = dict[str, Any]


def _say(text: str) -> None:
    print(f"[warmpool {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _config(client: Client, name: str, image: str) -> None:
    spec = {
        "image": image,
        "cpu": 1,
        "memory": "256Mi",
        "disk": "1Gi",
        "access": {"secretRef": {"name": SECRET}},
    }
    client.create("vmconfigs", {"metadata": {"name": name}, "spec": spec}, "default")


def _pool_ready(client: Client, name: str) -> bool:
    return int((client.get("warmpools", name, "default").get("status") or {}).get("ready", 0)) >= 1


def _deploy(client: Client, name: str, config: str) -> tuple[float, float]:
    """Seconds from the create to SSH answering, and to Ready."""
    began = time.perf_counter()
    body = {"metadata": {"name": name}, "spec": {"config": config}}
    client.create("virtualmachines", body, "default")
    ssh = None
    deadline = began + BOOT_TIMEOUT
    while time.perf_counter() < deadline:
        vm = client.get("virtualmachines", name, "default")
        status = vm.get("status") or {}
        if status.get("phase") == "Failed":
            raise RuntimeError(f"VM {name} failed: {status.get('message')}")
        # A pooled VM stays Starting while its identity is given: that begins once SSH answers.
        answered = status.get("phase") == "Running" or get_condition(vm, "FreshIdentity")
        if ssh is None and answered:
            ssh = time.perf_counter() - began
        ready = get_condition(vm, "Ready")
        if ready is not None and ready.get("status") == "True":
            return ssh if ssh is not None else time.perf_counter() - began, (
                time.perf_counter() - began
            )
        time.sleep(POLL)
    raise TimeoutError(f"VM {name} was not Ready within {BOOT_TIMEOUT:.0f}s")


def _gone(client: Client, name: str) -> None:
    client.delete("virtualmachines", name, "default")

    def deleted() -> bool:
        try:
            client.get("virtualmachines", name, "default")
        except NotFound:
            return True
        return False

    wait(deleted, 120, f"VM {name} deleted")


def _series(client: Client, config: str, pool: str | None) -> tuple[list[float], list[float]]:
    ssh, ready = [], []
    for i in range(RUNS):
        if pool is not None:
            wait(lambda: _pool_ready(client, pool), BOOT_TIMEOUT, f"a ready entry of {pool}")
        name = f"{config}-{i}"
        to_ssh, to_ready = _deploy(client, name, config)
        vm = client.get("virtualmachines", name, "default")
        if pool is not None and "warmpools.shoal.dev/entry" not in vm["metadata"]["annotations"]:
            raise RuntimeError(f"VM {name} was not served from pool {pool}")
        events = [
            e
            for e in client.list("events", "default")["items"]
            if e["involvedObject"]["name"] == name and e["reason"] == "WarmStartFailed"
        ]
        if events:
            raise RuntimeError(f"VM {name} booted cold: {events[0]['message']}")
        ssh.append(to_ssh * 1000)
        ready.append(to_ready * 1000)
        _say(f"{config} {i + 1}/{RUNS}: SSH in {to_ssh:.2f}s, Ready in {to_ready:.2f}s")
        _gone(client, name)
    return ssh, ready


def run() -> list[Row]:
    guest = build_test_guest(progress=_say)
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-warmpool-")).resolve()
    dev = Dev(base, accel="tcg")
    dev.args += ["--node-cpu", "8", "--max-vms", "12"]
    try:
        client = dev.start()
        dev.import_image(guest)
        ready_node(client)
        client.create(
            "secrets",
            {
                "metadata": {"name": SECRET},
                "type": "ssh-auth",
                "data": {
                    "ssh-privatekey": base64.b64encode(guest.private_key.read_bytes()).decode(),
                    "username": base64.b64encode(guest.ssh_user.encode()).decode(),
                },
            },
            "default",
        )
        image = "test-guest"
        for name in ("cold", "warm", "gold"):
            _config(client, name, image)
        client.create(
            "warmpools",
            {"metadata": {"name": "warm"}, "spec": {"config": "warm", "size": 2}},
            "default",
        )
        client.create(
            "warmpools",
            {"metadata": {"name": "gold"}, "spec": {"config": "gold", "mode": "clone", "size": 1}},
            "default",
        )
        cold_ssh, cold_ready = _series(client, "cold", None)
        warm_ssh, warm_ready = _series(client, "warm", "warm")
        gold_ssh, gold_ready = _series(client, "gold", "gold")
    finally:
        dev.kill()
        for proc in Path("/proc").iterdir():  # every QEMU the bench started, whatever happened
            with contextlib.suppress(OSError, ValueError):
                if proc.name.isdigit() and str(base).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)

    speedup = median(cold_ssh) / median(warm_ssh)
    rows: list[Row] = []
    for label, ssh, ready in (
        ("cold", cold_ssh, cold_ready),
        ("suspended pool", warm_ssh, warm_ready),
        ("clone pool", gold_ssh, gold_ready),
    ):
        row: Row = {"name": f"warmpool {label} deploy to SSH p50", "value": median(ssh)}
        row["unit"] = "ms"
        if label != "cold":
            row["ok"] = median(ssh) <= SSH_TARGET_MS
        rows += [
            row,
            {
                "name": f"warmpool {label} deploy to SSH p99",
                "value": percentile(ssh, 99),
                "unit": "ms",
            },
            {"name": f"warmpool {label} deploy to Ready p50", "value": median(ready), "unit": "ms"},
        ]
    rows.append(
        {
            "name": "warmpool suspended vs cold to SSH (p50)",
            "value": speedup,
            "unit": "x faster",
            "ok": speedup >= SPEEDUP_TARGET,
        }
    )
    return rows
