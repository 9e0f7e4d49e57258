"""kubeconfig files: a shoal context written into one (so stock kubectl talks to shoal), and the
current kubectl context read back as a shoal context (for the `kubectl shoal` plugin).

The format is kubectl's (`apiVersion: v1`, `kind: Config`, named clusters, users and contexts).
Merging replaces only the three entries of the shoal context's name and keeps everything else;
the file is written 0600 since it holds a token, and replaced atomically.
"""

import base64
import os
from pathlib import Path
from typing import Any

import yaml

from shoal.client import Context
from shoal.files import write_private


class KubeconfigError(Exception):
    pass


def default_path() -> Path:
    """Where kubectl reads first: the first file of $KUBECONFIG, else ~/.kube/config."""
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return Path(listed[0]) if listed else Path.home() / ".kube" / "config"


def search_paths() -> list[Path]:
    listed = [Path(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return listed or [Path.home() / ".kube" / "config"]


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise KubeconfigError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise KubeconfigError(f"{path} is not a kubeconfig (not a mapping)")
    return data


def _put(entries: list[Any], name: str, key: str, value: dict[str, Any]) -> list[Any]:
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("name") == name)]
    return [*kept, {"name": name, key: value}]


def merge_context(
    path: Path, name: str, context: Context, *, make_current: bool = True
) -> dict[str, Any]:
    """Write `name` (cluster, user and context) for a shoal context into the kubeconfig at path,
    keeping its other entries. Returns the new document."""
    if not context.server.startswith("https://"):
        raise KubeconfigError(
            f"the context's server is {context.server}: kubectl sends tokens only over HTTPS "
            "(serve with TLS: `shoal dev --tls`, or `shoal controller`)"
        )
    data = _load(path)
    cluster: dict[str, Any] = {"server": context.server}
    if context.caCert:
        cluster["certificate-authority-data"] = base64.b64encode(context.caCert.encode()).decode()
    data["apiVersion"], data["kind"] = "v1", "Config"
    data["clusters"] = _put(list(data.get("clusters") or []), name, "cluster", cluster)
    data["users"] = _put(list(data.get("users") or []), name, "user", {"token": context.token})
    data["contexts"] = _put(
        list(data.get("contexts") or []),
        name,
        "context",
        {"cluster": name, "user": name, "namespace": context.namespace or "default"},
    )
    if make_current or not data.get("current-context"):
        data["current-context"] = name
    data.setdefault("preferences", {})
    write_private(path, yaml.safe_dump(data, sort_keys=False))
    return data


def _named(entries: Any, name: str, key: str) -> dict[str, Any] | None:
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key)
            return value if isinstance(value, dict) else None
    return None


def current_context() -> tuple[str, Context]:
    """kubectl's current context as a shoal context: its server, token, CA and namespace (the
    files of $KUBECONFIG merged as kubectl merges them: the first to set a value wins)."""
    documents = [(path, _load(path)) for path in search_paths()]
    name = next((d["current-context"] for _, d in documents if d.get("current-context")), None)
    if not name:
        raise KubeconfigError("kubectl has no current context (kubectl config use-context NAME)")

    def find(section: str, entry: str, key: str) -> dict[str, Any] | None:
        for _, document in documents:
            found = _named(document.get(section), entry, key)
            if found is not None:
                return found
        return None

    context = find("contexts", name, "context")
    if context is None:
        raise KubeconfigError(f"kubectl's current context {name!r} is not in its kubeconfig")
    cluster = find("clusters", str(context.get("cluster", "")), "cluster") or {}
    user = find("users", str(context.get("user", "")), "user") or {}
    server = str(cluster.get("server") or "")
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(str(user["tokenFile"])).read_text().strip()
    if not server or not token:
        raise KubeconfigError(
            f"kubectl's context {name!r} has no server or no token: `kubectl shoal` needs a "
            "context written by `shoal context kubeconfig`"
        )
    ca_pem: str | None = None
    if cluster.get("certificate-authority-data"):
        ca_pem = base64.b64decode(str(cluster["certificate-authority-data"])).decode()
    elif cluster.get("certificate-authority"):
        ca_pem = Path(str(cluster["certificate-authority"])).read_text()
    namespace = str(context.get("namespace") or "default")
    return name, Context(server=server, token=str(token), namespace=namespace, caCert=ca_pem)
