"""Registry credentials: shoal's own file, then the docker config file.

shoal's file is `registries.json` next to the CLI's contexts file (`$SHOAL_CONFIG_DIR` when set,
else the directory of `$SHOAL_CONFIG`, else `$XDG_CONFIG_HOME/shoal` or `~/.config/shoal`),
mode 0600. It has the docker config's shape, `{"auths": {"HOST": {"auth": base64("user:pass")}}}`,
so one reader serves both. The docker file is `$DOCKER_CONFIG/config.json`, else
`~/.docker/config.json`; it is only read, never written. Credential helpers are not run.
"""

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from shoal.client import Contexts
from shoal.files import write_private

FILENAME = "registries.json"


def shoal_path() -> Path:
    if os.environ.get("SHOAL_CONFIG_DIR"):
        return Path(os.environ["SHOAL_CONFIG_DIR"]) / FILENAME
    return Contexts.path().parent / FILENAME


def docker_path() -> Path:
    if os.environ.get("DOCKER_CONFIG"):
        return Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    return Path.home() / ".docker" / "config.json"


def normalize_host(host: str) -> str:
    """host[:port] of a registry key, which docker may write as a URL (https://host/v1/)."""
    text = host.strip()
    for prefix in ("https://", "http://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    return text.split("/", 1)[0].lower()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read registry credentials: {error}") from None
    return data if isinstance(data, dict) else {}


def _entry(entry: Any) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep and user else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return name, secret
    return None


def _find(data: dict[str, Any], host: str) -> tuple[str, str] | None:
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return None
    wanted = normalize_host(host)
    for key, entry in auths.items():
        if isinstance(key, str) and normalize_host(key) == wanted:
            found = _entry(entry)
            if found:
                return found
    return None


def lookup(host: str) -> tuple[str, str] | None:
    """(user, password) for a registry host[:port]: shoal's file first, then docker's."""
    return _find(_read(shoal_path()), host) or _find(_read(docker_path()), host)


def _write(path: Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_login(host: str, user: str, password: str) -> Path:
    """Store (replace) the login for host in shoal's file; returns the file's path."""
    if not user or ":" in user:
        raise ValueError("the user name must be non-empty and may not contain ':'")
    path = shoal_path()
    data = _read(path)
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        auths = data["auths"] = {}
    wanted = normalize_host(host)
    for key in [k for k in auths if normalize_host(k) == wanted]:
        del auths[key]
    auths[wanted] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write(path, data)
    return path


def remove_login(host: str) -> bool:
    """Forget host's login in shoal's file (the docker file is left alone); False if none."""
    path = shoal_path()
    data = _read(path)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return False
    wanted = normalize_host(host)
    keys = [k for k in auths if normalize_host(k) == wanted]
    for key in keys:
        del auths[key]
    if keys:
        _write(path, data)
    return bool(keys)
