"""A client of the OCI Distribution API (the `/v2/` HTTP API every registry serves).

Synchronous, on one httpx.Client whose connection pool is shared between threads: callers run
transfers in parallel from a thread pool (push.py, pull.py). Every failure becomes an ImageError
subclass whose message says what to do.
"""

import contextlib
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urljoin

import httpx

from shoal.images.auth import RegistryAuth
from shoal.images.errors import (
    AccessDenied,
    AuthError,
    DigestMismatch,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    TransferInterrupted,
)
from shoal.images.oci import (
    ACCEPT,
    ImageManifest,
    RawManifest,
    media_type_of,
    parse_image_manifest,
    parse_index,
    pick_platform,
    sha256_digest,
)
from shoal.images.reference import Reference, is_digest
from shoal.images.transport import big_read_transport

MAX_MANIFEST = 4 * 1024 * 1024
MAX_SMALL_BLOB = 16 * 1024 * 1024


def is_loopback(host: str) -> bool:
    """host[:port] names this machine: plain HTTP is the norm there (as docker assumes)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BlobStream:
    """An open blob download: bytes from `start` on (0 when the registry ignored the Range)."""

    start: int
    length: int | None
    chunks: Iterator[bytes]


class RegistryClient:
    """One registry host. `insecure` accepts any TLS certificate and falls back to plain HTTP
    when the registry does not speak TLS; loopback hosts use plain HTTP unless `plain_http` is
    False. Close it (or use it as a context manager) to release its connections."""

    def __init__(
        self,
        host: str,
        *,
        credentials: tuple[str, str] | None = None,
        insecure: bool = False,
        plain_http: bool | None = None,
        timeout: float = 60.0,
        connections: int = 16,
    ) -> None:
        self.host = host
        self.insecure = insecure
        plain = is_loopback(host) if plain_http is None else plain_http
        self.scheme = "http" if plain else "https"
        self._fallback_lock = threading.Lock()
        http_timeout = httpx.Timeout(timeout, connect=min(timeout, 15.0))
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._token_http = httpx.Client(verify=not insecure, timeout=http_timeout)
        self.auth = RegistryAuth(host, credentials, self._token_http)
        self._http = httpx.Client(
            auth=self.auth,
            verify=not insecure,
            transport=big_read_transport(not insecure, limits),
            timeout=http_timeout,
            limits=limits,
            follow_redirects=True,
            headers={"User-Agent": "shoal"},
        )

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._token_http.close()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    # -- plumbing ------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request; transport failures become RegistryUnreachable."""
        for attempt in range(2):
            request = self._http.build_request(
                method, self._url(path), headers=headers, content=content, params=params
            )
            try:
                return self._http.send(request, stream=stream)
            except httpx.ConnectError as error:
                if attempt == 0 and self._fall_back_to_http(error):
                    continue
                self._unreachable(what, error)
            except httpx.TimeoutException as error:
                raise RegistryUnreachable(
                    f"{what}: registry {self.host} did not answer in time ({type(error).__name__})"
                ) from None
            except httpx.TransportError as error:
                raise TransferInterrupted(
                    f"{what}: the connection to registry {self.host} broke ({error or type(error).__name__}); "
                    "run it again to resume"
                ) from None
        raise AssertionError("unreachable")

    def _fall_back_to_http(self, error: httpx.ConnectError) -> bool:
        """With insecure, a registry that answers TLS with plain HTTP is used over HTTP."""
        if not self.insecure or self.scheme != "https" or not _is_tls_mismatch(error):
            return False
        with self._fallback_lock:
            self.scheme = "http"
        return True

    def _unreachable(self, what: str, error: httpx.ConnectError) -> NoReturn:
        reason = str(error) or type(error).__name__
        if _is_certificate_error(error):
            hint = "its TLS certificate is not trusted (pass --insecure to skip the check)"
        elif _is_tls_mismatch(error):
            hint = "it does not speak TLS there (pass --insecure to use plain HTTP)"
        elif "refused" in reason.lower():
            hint = "connection refused: is the registry running, and is the address right?"
        else:
            hint = f"{reason}: is the registry running, and is the address right?"
        raise RegistryUnreachable(f"{what}: cannot reach registry {self.base_url}: {hint}")

    def _fail(self, response: httpx.Response, what: str, repo: str = "", ref: str = "") -> NoReturn:
        """Raise the ImageError that fits an unsuccessful response."""
        with contextlib.suppress(httpx.HTTPError):
            response.read()
        codes, detail = _error_body(response)
        status = response.status_code
        if status == 401:
            if self.auth.credentials:
                raise AuthError(
                    f"{what}: registry {self.host} refused the login of user {self.auth.user!r}: "
                    f"wrong user name or password; run `shoal registry login {self.host}` again"
                )
            raise AuthError(
                f"{what}: registry {self.host} needs a login: run `shoal registry login {self.host}`"
            )
        if status == 403:
            who = f"user {self.auth.user!r}" if self.auth.credentials else "anonymous access"
            raise AccessDenied(f"{what}: registry {self.host} does not allow this to {who}{detail}")
        if status == 404:
            if "NAME_UNKNOWN" in codes:
                raise NotFound(f"{what}: there is no repository {repo} on {self.host}")
            if "BLOB_UNKNOWN" in codes or "/blobs/" in response.request.url.path:
                raise NotFound(f"{what}: blob {ref} is missing from {self.host}/{repo}")
            if "MANIFEST_UNKNOWN" in codes or "/manifests/" in response.request.url.path:
                raise NotFound(
                    f"{what}: there is no image {repo}:{ref} on {self.host}"
                    if ref and not is_digest(ref)
                    else f"{what}: there is no image {repo}@{ref} on {self.host}"
                )
            if response.request.url.path.rstrip("/") == "/v2":
                raise RegistryError(f"{what}: {self.base_url} is not an OCI registry (no /v2/ API)")
            raise NotFound(f"{what}: not found on {self.host}{detail}")
        if status == 400 and "DIGEST_INVALID" in codes:
            raise DigestMismatch(f"{what}: registry {self.host} computed another digest{detail}")
        if status == 429:
            raise RegistryError(f"{what}: registry {self.host} is rate limiting; try again later")
        raise RegistryError(f"{what}: registry {self.host} answered HTTP {status}{detail}")

    # -- API -----------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry answers and that the credentials (if any) are accepted."""
        response = self._send("GET", "/v2/", "registry check")
        if response.status_code != 200:
            self._fail(response, "registry check")

    def blob_size(self, repo: str, digest: str) -> int | None:
        """The size of a blob the registry has, None when it has not."""
        what = f"check of blob {digest[:19]} in {self.host}/{repo}"
        response = self._send("HEAD", f"/v2/{repo}/blobs/{digest}", what)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            self._fail(response, what, repo, digest)
        length = response.headers.get("content-length")
        return int(length) if length and length.isdigit() else 0

    @contextlib.contextmanager
    def open_blob(self, repo: str, digest: str, start: int = 0) -> Iterator[BlobStream]:
        """Stream a blob from byte `start` on (HTTP Range). The caller checks the digest."""
        what = f"download of blob {digest[:19]} from {self.host}/{repo}"
        headers = {"Range": f"bytes={start}-"} if start else None
        response = self._send(
            "GET", f"/v2/{repo}/blobs/{digest}", what, headers=headers, stream=True
        )
        try:
            if response.status_code not in (200, 206):
                self._fail(response, what, repo, digest)
            begun = start if response.status_code == 206 else 0
            length = response.headers.get("content-length")
            yield BlobStream(
                begun,
                int(length) if length and length.isdigit() else None,
                self._pieces(response, what),
            )
        finally:
            response.close()

    def _pieces(self, response: httpx.Response, what: str) -> Iterator[bytes]:
        try:
            yield from response.iter_raw()
        except httpx.TimeoutException:
            raise TransferInterrupted(
                f"{what}: registry {self.host} stopped sending; run it again to resume"
            ) from None
        except httpx.TransportError as error:
            raise TransferInterrupted(
                f"{what}: the connection to registry {self.host} broke "
                f"({error or type(error).__name__}); run it again to resume"
            ) from None

    def get_blob(self, repo: str, digest: str, limit: int = MAX_SMALL_BLOB) -> bytes:
        """A small blob (a config), whole and digest-checked."""
        what = f"download of blob {digest[:19]} from {self.host}/{repo}"
        data = bytearray()
        with self.open_blob(repo, digest) as blob:
            for piece in blob.chunks:
                data += piece
                if len(data) > limit:
                    raise RegistryError(f"{what}: larger than {limit} bytes, refusing it")
        body = bytes(data)
        if sha256_digest(body) != digest:
            raise DigestMismatch(f"{what}: the bytes served do not match the digest")
        return body

    def upload_blob(
        self, repo: str, data: bytes, digest: str | None = None, *, chunk_size: int | None = None
    ) -> str:
        """Upload a blob (POST, then one PUT; or PATCHes of chunk_size bytes and a final PUT).

        Returns its digest; raises DigestMismatch when the registry reports another one."""
        digest = digest or sha256_digest(data)
        what = f"upload of blob {digest[:19]} to {self.host}/{repo}"
        response = self._send("POST", f"/v2/{repo}/blobs/uploads/", what)
        if response.status_code != 202:
            self._fail(response, what, repo, digest)
        location = self._location(response, what)
        body = data
        if chunk_size:
            for start in range(0, len(data), chunk_size):
                piece = data[start : start + chunk_size]
                end = start + len(piece) - 1
                response = self._send(
                    "PATCH",
                    location,
                    what,
                    content=piece,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{end}",
                    },
                )
                if response.status_code != 202:
                    self._fail(response, what, repo, digest)
                location = self._location(response, what)
            body = b""
        response = self._send(
            "PUT",
            _with_param(location, "digest", digest),
            what,
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code != 201:
            self._fail(response, what, repo, digest)
        stored = response.headers.get("docker-content-digest")
        if stored and stored != digest:
            raise DigestMismatch(f"{what}: the registry stored it as {stored}")
        return digest

    def _location(self, response: httpx.Response, what: str) -> str:
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: registry {self.host} gave no upload location")
        return str(urljoin(str(response.request.url), location))

    def get_manifest(self, repo: str, ref: str) -> RawManifest:
        """The manifest (or index) at a tag or digest, digest-checked."""
        what = f"pull of {self.host}/{repo}{'@' if is_digest(ref) else ':'}{ref}"
        response = self._send(
            "GET", f"/v2/{repo}/manifests/{ref}", what, headers={"Accept": ACCEPT}
        )
        if response.status_code != 200:
            self._fail(response, what, repo, ref)
        body = response.content
        if len(body) > MAX_MANIFEST:
            raise RegistryError(f"{what}: the manifest is larger than {MAX_MANIFEST} bytes")
        digest = sha256_digest(body)
        if is_digest(ref) and digest != ref:
            raise DigestMismatch(f"{what}: the manifest served has digest {digest}")
        served = response.headers.get("docker-content-digest")
        if served and served.startswith("sha256:") and served != digest:
            raise DigestMismatch(f"{what}: the registry says {served} but the bytes are {digest}")
        return RawManifest(media_type_of(body, response.headers.get("content-type")), body, digest)

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its digest); returns its digest."""
        digest = sha256_digest(body)
        what = f"push of {self.host}/{repo}:{ref}"
        response = self._send(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            what,
            content=body,
            headers={"Content-Type": media_type},
        )
        if response.status_code not in (200, 201):
            self._fail(response, what, repo, ref)
        stored = response.headers.get("docker-content-digest")
        if stored and stored != digest:
            raise DigestMismatch(f"{what}: the registry stored the manifest as {stored}")
        return digest

    def image_manifest(
        self, ref: Reference, arch: str = "amd64", os: str = "linux"
    ) -> tuple[RawManifest, ImageManifest]:
        """The image manifest ref names, through an index to the os/arch entry if need be."""
        raw = self.get_manifest(ref.repository, ref.manifest_ref)
        if raw.is_index:
            entry = pick_platform(parse_index(raw, str(ref)), arch, os, str(ref))
            raw = self.get_manifest(ref.repository, entry.digest)
        return raw, parse_image_manifest(raw, str(ref))


def client_for(
    ref: Reference,
    *,
    credentials: tuple[str, str] | None = None,
    insecure: bool = False,
    plain_http: bool | None = None,
    connections: int = 16,
) -> RegistryClient:
    """A client for the registry ref names (raises InvalidReference when it names none)."""
    return RegistryClient(
        ref.require_host(),
        credentials=credentials,
        insecure=insecure,
        plain_http=plain_http,
        connections=connections,
    )


def _with_param(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


def _error_body(response: httpx.Response) -> tuple[set[str], str]:
    """The error codes in a registry's JSON error body, and a ': message' suffix for humans."""
    try:
        errors: Any = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return set(), ""
    codes: set[str] = set()
    messages: list[str] = []
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            codes.add(str(error.get("code", "")))
            if error.get("message"):
                messages.append(str(error["message"]))
    return codes, (": " + "; ".join(messages)) if messages else ""


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _is_certificate_error(error: BaseException) -> bool:
    return any(isinstance(c, ssl.SSLCertVerificationError) for c in _causes(error)) or (
        "CERTIFICATE_VERIFY_FAILED" in str(error)
    )


def _is_tls_mismatch(error: BaseException) -> bool:
    text = " ".join(str(c) for c in _causes(error)).upper()
    return (
        "WRONG_VERSION_NUMBER" in text
        or "RECORD_LAYER_FAILURE" in text
        or ("PACKET_LENGTH_TOO_LONG" in text)
    )
