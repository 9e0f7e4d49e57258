"""Joining: exchange a join token for a node credential, pinning the controller's CA on the way.

The credential and CA are kept in the agent's state dir, so a restarted agent needs no join token.
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path

import httpx

from shoal.client import resource_path, ssl_context
from shoal.errors import Unavailable, error_from_status
from shoal.files import write_private
from shoal.jointoken import parse_join_token
from shoal.tls import fetch_pinned_ca


@dataclass(frozen=True)
class Credentials:
    token: str
    ca_pem: str | None


def load_credentials(state_dir: Path) -> Credentials | None:
    token_file = state_dir / "credential"
    if not token_file.exists():
        return None
    ca_file = state_dir / "ca.crt"
    return Credentials(
        token_file.read_text().strip(), ca_file.read_text() if ca_file.exists() else None
    )


async def join(
    server: str, join_token: str, node_name: str, state_dir: Path, *, pinned_ca: str | None = None
) -> Credentials:
    """Credentials for node_name: the saved ones, or new ones from the join token.

    pinned_ca is a CA already fetched and checked against this join token's fingerprint (by the
    first of many nodes joining from one process), so it is not fetched again.
    """
    saved = load_credentials(state_dir)
    if saved is not None:
        return saved
    parsed = parse_join_token(join_token)
    ca_pem: str | None = pinned_ca
    if server.startswith("https://") and ca_pem is None:
        if parsed.ca_fingerprint is None:
            raise ValueError("the join token carries no CA fingerprint, but the server uses https")
        ca_pem = (await asyncio.to_thread(fetch_pinned_ca, server, parsed.ca_fingerprint)).decode()
    async with httpx.AsyncClient(base_url=server, verify=ssl_context(ca_pem), timeout=30) as http:
        try:
            response = await http.post(
                resource_path("nodes", None, node_name, "credentials"),
                headers={"Authorization": f"Bearer {parsed.bearer}"},
            )
        except httpx.TransportError as error:
            raise Unavailable(f"cannot reach {server}: {error}") from None
    if response.status_code >= 400:
        raise error_from_status(response.status_code, response.json())
    token = response.json()["status"]["token"]
    state_dir.mkdir(parents=True, exist_ok=True)
    if ca_pem is not None:
        (state_dir / "ca.crt").write_text(ca_pem)
    write_private(state_dir / "credential", token + "\n")
    return Credentials(token, ca_pem)
