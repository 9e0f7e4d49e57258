"""Secrets at rest: what a Secret holds is sealed (AES-256-GCM) before it reaches the database.

The Store seals every Secret it writes, so the objects row and the change-log entry (and with it
the watch hub's rings, which hold what was written) carry only the sealed form; it opens Secrets
wherever it parses objects (get, list_objects, a transaction's reads). The text fast paths
(get_body, list_bodies, the change log) stay sealed, and the API opens what it serves
(`Store.open_text`).

Sealed: `data` and `metadata.annotations` (kubectl keeps a copy of what it applied, values
included, in an annotation). In clear: the rest of the metadata (name, labels, ...) and `type`.
The authenticated data binds each ciphertext to its object (kind, namespace, name, uid), so a
sealed blob copied onto another row does not open. The key is 32 random bytes, base64, in a file
(`<data-dir>/encryption.key` by default, made with mode 0600 at first start); every controller
on one database needs the same file. The key id (a hash of the key) is stored with each blob, so a
controller given another key says so at start, instead of failing on every read.
"""

import base64
import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal import jsoncodec
from shoal.errors import ApiError

Obj = dict[str, Any]
log = logging.getLogger(__name__)

KEY_FILE = "encryption.key"
SEALED_KINDS = frozenset({"Secret"})
SEALED_FIELD = "sealed"  # the stored field that holds the sealed blob: "v1:<key id>:<base64>"
VERSION = "v1"
KEY_BYTES = 32
MAKE_A_KEY = "head -c 32 /dev/urandom | base64"


class SealingError(ApiError):
    """A stored Secret that cannot be opened (or sealed): a 500, with a message that says why and
    never repeats a value."""


class KeyFileError(ValueError):
    """The encryption key file is missing, unreadable, malformed, or not the key the stored
    Secrets were sealed with: the controller does not start."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"shoal encryption key\0" + key).hexdigest()[:12]


def _what(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', 'Secret')} {meta.get('namespace', '')}/{meta.get('name', '')}"


def _associated(obj: Obj) -> bytes:
    meta = obj["metadata"]
    return "\0".join(
        (str(obj["kind"]), meta.get("namespace") or "", meta["name"], meta.get("uid") or "")
    ).encode()


class Sealer:
    """Seals and opens Secrets with one key; `source` (the key file) is named in messages."""

    def __init__(self, key: bytes, source: str = "") -> None:
        if len(key) != KEY_BYTES:
            raise KeyFileError(f"an encryption key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id(key)
        self.source = source or "the configured key"

    def seal(self, obj: Obj) -> Obj:
        """The stored form of a Secret: a new object, obj is left as it is."""
        meta = obj["metadata"]
        clear = {"data": obj.get("data") or {}, "annotations": meta.get("annotations") or {}}
        nonce = os.urandom(12)
        blob = self._aead.encrypt(nonce, jsoncodec.dumps_bytes(clear), _associated(obj))
        sealed = {key: value for key, value in obj.items() if key != "data"}
        sealed["metadata"] = {key: value for key, value in meta.items() if key != "annotations"}
        sealed[SEALED_FIELD] = (
            f"{VERSION}:{self.key_id}:{base64.b64encode(nonce + blob).decode('ascii')}"
        )
        return sealed

    def open(self, stored: Obj) -> Obj:
        """The Secret a stored (sealed) form holds: a new object."""
        text = stored.get(SEALED_FIELD)
        parts = text.split(":", 2) if isinstance(text, str) else []
        if len(parts) != 3 or parts[0] != VERSION:
            raise SealingError(f"{_what(stored)} is stored without sealed data shoal can read")
        _, kid, payload = parts
        if kid != self.key_id:
            raise SealingError(self.mismatch(stored))
        try:
            raw = base64.b64decode(payload, validate=True)
            clear = jsoncodec.loads(self._aead.decrypt(raw[:12], raw[12:], _associated(stored)))
        except (InvalidTag, binascii.Error, ValueError):
            raise SealingError(
                f"{_what(stored)}: its sealed data does not open with key {kid} "
                "(it was changed in the database, or copied from another object)"
            ) from None
        obj = {key: value for key, value in stored.items() if key != SEALED_FIELD}
        obj["metadata"] = meta = {}
        for key, value in stored["metadata"].items():
            meta[key] = value
            if key == "labels":  # where the model puts them
                meta["annotations"] = clear.get("annotations") or {}
        meta.setdefault("annotations", clear.get("annotations") or {})
        obj["data"] = clear.get("data") or {}
        return obj

    def mismatch(self, stored: Obj) -> str:
        text = str(stored.get(SEALED_FIELD) or "")
        kid = text.split(":")[1] if text.count(":") >= 2 else "unknown"
        return (
            f"{_what(stored)} was sealed with encryption key {kid}, but this controller has key "
            f"{self.key_id} ({self.source}): every controller on one database needs the same "
            "key file (--encryption-key-file)"
        )

    def marker(self) -> str:
        """Text every Secret this key sealed has in its stored JSON (for a LIKE in SQL)."""
        return f'"{VERSION}:{self.key_id}:'


def generate_key() -> str:
    """A new key, as a key file holds it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def load_key_file(path: Path, *, create: bool) -> Sealer:
    """The key in path; with create, a missing file is made first (mode 0600), once: of two
    processes starting at once, the second reads what the first wrote."""
    if create and not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_key() + "\n")
    try:
        text = path.read_text().strip()
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning(
                "encryption key file %s can be read by others than its owner: chmod 600", path
            )
    except FileNotFoundError:
        raise KeyFileError(
            f"encryption key file {path} does not exist; make one with `{MAKE_A_KEY} > {path}` "
            "(mode 0600), or copy the one the other controllers on this database use"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"encryption key file {path}: cannot read it: {error}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"encryption key file {path}: not the base64 of {KEY_BYTES} bytes "
            f"(make one with `{MAKE_A_KEY}`)"
        )
    return Sealer(key, source=str(path))
