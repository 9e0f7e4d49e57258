"""Helpers of the image tests: the real docker-registry as a process, a token service, a
connection-cutting proxy, and disk files. Imported as `image_helpers` (a unique name: every
directory's conftest is a module named `conftest`)."""

import base64
import contextlib
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import bcrypt
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from shoal.images.layout import Metadata
from shoal.images.push import push_image
from shoal.images.reference import parse
from shoal.images.registry import RegistryClient

REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")
QEMU_IMG = shutil.which("qemu-img")
USER, PASSWORD = "builder", "s3cret-pass"
SERVICE, ISSUER = "shoal-test-registry", "shoal-test-issuer"
_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d+) (?P<size>\d+|-)'
)


# Own small process helpers: tests/helpers.py imports the whole controller, which image tests
# do not need (and should not break with).
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except AssertionError:
            raise
        except Exception as caught:  # not listening yet
            error = caught
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {error}")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int
    size: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Issues registry bearer tokens: any repository, pull and push, to USER/PASSWORD (and an
    empty grant to anonymous callers, which is all `GET /v2/` needs)."""

    def __init__(self, base: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = base / "token.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict[str, Any]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                header = self.headers.get("Authorization", "")
                user = None
                if header.startswith("Basic "):
                    name, _, secret = base64.b64decode(header[6:]).decode().partition(":")
                    if (name, secret) != (USER, PASSWORD):
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                service.requests.append({"user": user, **query})
                access = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    repo, _, _ = rest.rpartition(":")
                    if kind == "repository" and user:
                        access.append({"type": kind, "name": repo, "actions": ["pull", "push"]})
                body = json.dumps({"token": service.token(user or "", access)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def token(self, subject: str, access: list[dict[str, Any]]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Registry:
    """One docker-registry process; restartable on the same port and storage."""

    base: Path
    auth: str = "none"  # none | htpasswd | token
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    token_service: TokenService | None = None
    starts: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (USER, PASSWORD) if self.auth != "none" else None

    def _config(self) -> Path:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  formatter: text",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if self.auth == "htpasswd":
            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.base / "htpasswd").write_text(f"{USER}:{hashed}\n")
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: shoal-test",
                f"    path: {self.base / 'htpasswd'}",
            ]
        elif self.auth == "token":
            if self.token_service is None:
                self.token_service = TokenService(self.base)
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token_service.realm}",
                f"    service: {SERVICE}",
                f"    issuer: {ISSUER}",
                f"    rootcertbundle: {self.token_service.cert_path}",
            ]
        path = self.base / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        assert REGISTRY is not None
        self.starts += 1
        config = self._config()
        out = (self.base / f"access-{self.starts}.log").open("ab")
        err = (self.base / f"registry-{self.starts}.log").open("ab")
        self.process = subprocess.Popen(
            [REGISTRY, "serve", str(config)],
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        out.close()
        err.close()
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"docker-registry exited: {(self.base / f'registry-{self.starts}.log').read_text()}"
                )
            return httpx.get(f"http://{self.host}/v2/", timeout=2).status_code in (200, 401)

        wait_until(up, timeout=30, what="docker-registry to listen")

    def kill(self) -> None:
        if self.process is not None:
            kill_group(self.process)
            self.process = None

    def accesses(self, start: int | None = None) -> list[Access]:
        """Requests served, from the access log of one start (default: the latest)."""
        text = (self.base / f"access-{start or self.starts}.log").read_text()
        return [
            Access(
                m["method"], m["path"], int(m["status"]), int(m["size"]) if m["size"] != "-" else 0
            )
            for m in _ACCESS.finditer(text)
        ]

    def blob_file(self, digest: str) -> Path:
        hexa = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"

    def client(self, **options: Any) -> RegistryClient:
        options.setdefault("credentials", self.credentials)
        return RegistryClient(self.host, **options)


class CutProxy:
    """A TCP proxy in front of a registry that can break one connection after `cut_after`
    response bytes, and refuse service (close at once) while `down` is set (from the cut on,
    with `down_after_cut`). With `rate`, each connection's responses trickle at that many bytes
    per second (a slow registry, to watch a pull in progress)."""

    def __init__(self, upstream_port: int, rate: float | None = None) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.cut_after: int | None = None
        self.down = False
        self.down_after_cut = False
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            cut, self.cut_after = self.cut_after, None
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, cut, self.rate), daemon=True
            ).start()

    def _pump(
        self,
        source: socket.socket,
        target: socket.socket,
        cut: int | None,
        rate: float | None = None,
    ) -> None:
        sent = 0
        try:
            while data := source.recv(16384 if rate else 65536):
                if rate:
                    time.sleep(len(data) / rate)
                if cut is not None and sent + len(data) >= cut:
                    target.sendall(data[: cut - sent])
                    self.cuts += 1
                    self.down = self.down or self.down_after_cut
                    break
                target.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def write_disk(path: Path, size: int, regions: list[tuple[int, int]], seed: int = 1) -> None:
    """A sparse raw disk of size bytes with random bytes in each (offset, length) region."""
    rng = random.Random(seed)
    with path.open("wb") as file:
        file.truncate(size)
        for offset, length in regions:
            file.seek(offset)
            file.write(rng.randbytes(length))


def disk_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(4 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def push_small_image(registry: Registry, tmp_path: Path, tag: str = "1") -> tuple[str, str]:
    """A 4 MiB raw disk-boot image with two stored chunks; returns (reference, digest)."""
    disk = tmp_path / f"small-{tag}.raw"
    write_disk(disk, 4 * 2**20, [(0, 100_000), (3 * 2**20, 50_000)])
    reference = f"{registry.host}/small:{tag}"
    with registry.client() as client:
        result = push_image(
            client, parse(reference), disk, Metadata(sshUser="builder"), chunk_size=2**20
        )
    return reference, result.digest
