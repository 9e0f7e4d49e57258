"""What the runner-pool tests share: the objects a pool needs (an access Secret, a credentials
Secret, the pool itself) and how to see what is left of a pool in shoal."""

import base64
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shoal.client import Client

FAKES = Path(__file__).resolve().parent / "fakes"
POOL_LABEL = "runners.shoal.dev/pool"


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def private_key_pem() -> bytes:
    """A fresh ed25519 key in OpenSSH format (a sim guest takes any login)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def create_access_secret(client: Client, namespace: str = "default", *, key: bytes | None = None,
                         user: str = "root", name: str = "guest-key") -> None:  # fmt: skip
    """An ssh-auth Secret; a fresh key when none is given."""
    if key is None:
        key = private_key_pem()
    client.create(
        "secrets",
        {
            "metadata": {"name": name},
            "type": "ssh-auth",
            "data": {"ssh-privatekey": b64(key), "username": b64(user)},
        },
        namespace,
    )


def create_credentials(client: Client, data: dict[str, str | bytes], namespace: str = "default",
                       name: str = "ci-credentials") -> None:  # fmt: skip
    client.create(
        "secrets",
        {"metadata": {"name": name}, "data": {k: b64(v) for k, v in data.items()}},
        namespace,
    )


def github_pool(
    name: str,
    api_url: str,
    *,
    image: str,
    max_runners: int,
    command: str,
    env: dict[str, str] | None = None,
    labels: tuple[str, ...] = ("shoal",),
    cpu: int = 1,
    memory: str = "256Mi",
    sync: int = 5,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "provider": "github",
            "github": {"apiURL": api_url, "organization": "acme", "labels": list(labels)},
            "credentialsRef": {"name": "ci-credentials"},
            "template": {
                "image": image,
                "cpu": cpu,
                "memory": memory,
                "disk": "1Gi",
                "access": {"secretRef": {"name": "guest-key"}},
                "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
            },
            "maxRunners": max_runners,
            "runnerCommand": command,
            "syncIntervalSeconds": sync,
        },
    }


def pool_vms(client: Client, pool: str, namespace: str = "default") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.list("virtualmachines", namespace)["items"]
    return [vm for vm in items if (vm["metadata"].get("labels") or {}).get(POOL_LABEL) == pool]


def pool_secrets(client: Client, pool: str, namespace: str = "default") -> list[str]:
    items = client.list("secrets", namespace)["items"]
    return [
        s["metadata"]["name"]
        for s in items
        if (s["metadata"].get("labels") or {}).get(POOL_LABEL) == pool
    ]


def peak_vms(client: Client, pool: str) -> tuple[threading.Event, list[int]]:
    """Counts the pool's VMs every 0.2 s, in a thread, until the event is set (a failed count,
    while the controller restarts, is skipped)."""
    stop, seen = threading.Event(), [0]

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                seen.append(len(pool_vms(client, pool)))
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return stop, seen


def diagnose(client: Client, pool: str, *extra: str) -> str:
    """What a failure message needs: the pool's status, its VMs' phases and conditions, the
    namespace's events, and whatever the caller adds (the fake's state, a log's end)."""
    lines = [f"pool: {client.get('runnerpools', pool, 'default').get('status')}"]
    for vm in pool_vms(client, pool):
        status = vm.get("status") or {}
        lines.append(
            f"vm {vm['metadata']['name']}: {status.get('phase')} {status.get('conditions')}"
        )
    for event in client.list("events", "default")["items"]:
        lines.append(
            f"event {event['involvedObject']['name']}: {event['reason']} {event['message']}"
        )
    lines.append(f"secrets: {pool_secrets(client, pool)}")
    return "\n".join([*lines, *extra])


def processes_working_under(base: Path) -> list[int]:
    """Pids of processes working in a directory under base: the runners in sim guests (each
    guest command runs in a session of its own, so not in the agent's process group)."""
    found = []
    prefix = str(base) + "/"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(proc / "cwd").startswith(prefix):
                    found.append(int(proc.name))
    return found


def kill_processes_working_under(base: Path) -> None:
    for pid in processes_working_under(base):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
