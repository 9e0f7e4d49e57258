"""What the runner-pool tests share: the objects a pool needs (an access Secret, a credentials
Secret, the pool itself) and how to see what is left of a pool in shoal."""

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shoal.client import Client

FAKES = Path(__file__).resolve().parent.parent / "fakes"
POOL_LABEL = "runners.shoal.dev/pool"


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def create_access_secret(client: Client, namespace: str = "default", *, key: bytes | None = None,
                         user: str = "root", name: str = "guest-key") -> None:  # fmt: skip
    """An ssh-auth Secret; a fresh key when none is given (a sim guest takes any login)."""
    if key is None:
        key = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
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
