"""Getting into a guest: SSH (asyncssh) through the backend's open_port, the path the tunnels
take, so it works whatever network the guest is on. Exec and startup scripts go through here;
nothing else logs into guests.

Guests are ephemeral and get new host keys at every boot, so host keys are not checked (as
`shoal ssh` does not record them); the connection never leaves the host's loopback or the
backend's own channel to the guest.
"""

import asyncio
import base64
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from shoal.backends.base import Backend, BackendError
from shoal.client import AsyncClient
from shoal.errors import ApiError
from shoal.model.meta import DNS_NAME

log = logging.getLogger(__name__)
SSH_PORT = 22
CONNECT_TIMEOUT = 30.0
BRIDGE_CHUNK = 256 * 1024
# Modern keys first, as OpenSSH asks: some sshds (dropbear 2022.83 with only an ed25519 host key)
# still offer RSA and then abort the handshake when a client picks it.
HOST_KEY_ALGORITHMS = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
]


class GuestAccessError(Exception):
    """The guest could not be reached or would not let us in; the message says which."""


@dataclass(frozen=True)
class Credentials:
    user: str
    private_key: bytes | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def _decoded(data: dict[str, Any], key: str) -> bytes | None:
    value = data.get(key)
    return base64.b64decode(value) if isinstance(value, str) else None


async def credentials_for(client: AsyncClient, vm: dict[str, Any]) -> Credentials:
    """Who to log in as, from the VM's spec.access (its user and ssh-auth Secret) and its Image
    (sshUser). Raises GuestAccessError saying what is missing."""
    spec = vm.get("spec") or {}
    namespace, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
    access = spec.get("access") or {}
    secret_name = (access.get("secretRef") or {}).get("name")
    if not secret_name:
        raise GuestAccessError(
            f"VirtualMachine {name} names no way into its guest: set spec.access.secretRef to an "
            "ssh-auth Secret (shoal secret create ssh)"
        )
    try:
        secret = await client.get("secrets", secret_name, namespace)
    except ApiError as error:
        raise GuestAccessError(f"cannot read Secret {secret_name}: {error.message}") from None
    data = secret.get("data") or {}
    key, password = _decoded(data, "ssh-privatekey"), _decoded(data, "password")
    if key is None and password is None:
        raise GuestAccessError(f"Secret {secret_name} holds neither ssh-privatekey nor password")
    username = _decoded(data, "username")
    user = access.get("user") or (username.decode() if username else None)
    return Credentials(
        user=user or await _image_user(client, str(spec.get("image") or "")),
        private_key=key,
        password=password.decode() if password is not None else None,
    )


async def _image_user(client: AsyncClient, image: str) -> str:
    """The Image's sshUser (root for an OCI reference, whose config is not read here)."""
    with contextlib.suppress(ApiError):
        if DNS_NAME.fullmatch(image):
            found = await client.get("images", image)
            return str((found.get("spec") or {}).get("sshUser") or "root")
    return "root"


async def _bridge(
    local: socket.socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Carry bytes between one end of a socketpair (asyncssh holds the other) and the guest."""
    loop = asyncio.get_running_loop()
    local.setblocking(False)

    async def outward() -> None:
        while data := await loop.sock_recv(local, BRIDGE_CHUNK):
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def inward() -> None:
        while data := await reader.read(BRIDGE_CHUNK):
            await loop.sock_sendall(local, data)
        with contextlib.suppress(OSError):
            local.shutdown(socket.SHUT_WR)

    try:
        await asyncio.gather(outward(), inward())
    except (OSError, ConnectionError):
        pass
    finally:
        local.close()
        writer.close()


@dataclass
class GuestConnection:
    """An SSH connection into a guest and the bridge task that carries it."""

    ssh: asyncssh.SSHClientConnection
    bridge: asyncio.Task[None]

    async def close(self) -> None:
        self.ssh.close()
        with contextlib.suppress(Exception):
            await self.ssh.wait_closed()
        self.bridge.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.bridge


async def connect(
    backend: Backend, vm_id: str, credentials: Credentials, timeout: float = CONNECT_TIMEOUT
) -> GuestConnection:
    """An SSH connection into the guest. Raises GuestAccessError naming what failed: the guest's
    port 22 cannot be reached, it is no SSH server, or it refused the credentials."""
    try:
        reader, writer = await backend.open_port(vm_id, SSH_PORT)
    except BackendError as error:
        raise GuestAccessError(f"cannot reach the guest's SSH port: {error}") from None
    ours, theirs = socket.socketpair()
    bridge = asyncio.create_task(_bridge(theirs, reader, writer))
    keys = [asyncssh.import_private_key(credentials.private_key)] if credentials.private_key else []
    try:
        ssh = await asyncio.wait_for(
            asyncssh.connect(
                vm_id,  # a name for asyncssh's messages; the socket is what it talks over
                SSH_PORT,
                sock=ours,
                username=credentials.user,
                client_keys=keys,
                password=credentials.password,
                known_hosts=None,
                server_host_key_algs=HOST_KEY_ALGORITHMS,
                agent_path=None,
                config=[],
                keepalive_interval=30,
            ),
            timeout,
        )
    except asyncssh.KeyImportError:
        failure = (
            "the Secret's ssh-privatekey cannot be read (an OpenSSH or PEM private key without "
            "a passphrase is needed)"
        )
    except asyncssh.PermissionDenied:
        failure = f"the guest's SSH server refused user {credentials.user!r} with the Secret's credentials"
    except (asyncssh.Error, OSError) as error:
        failure = f"SSH to the guest failed: {error}"
    except TimeoutError:
        failure = f"the guest's SSH server did not let us in within {timeout:.0f} s"
    else:
        return GuestConnection(ssh, bridge)
    ours.close()
    bridge.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await bridge
    raise GuestAccessError(failure)
