"""Join tokens carry the bearer secret and the controller's CA fingerprint in one string.

Format: `SJ1.<id>.<secret>.<sha256 hex of the CA certificate, or "insecure" for plain HTTP>`.
"""

from dataclasses import dataclass

PREFIX = "SJ1"


@dataclass(frozen=True)
class JoinToken:
    bearer: str
    ca_fingerprint: str | None


def format_join_token(bearer: str, ca_fingerprint: str | None) -> str:
    return f"{PREFIX}.{bearer}.{ca_fingerprint or 'insecure'}"


def parse_join_token(text: str) -> JoinToken:
    parts = text.strip().split(".")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise ValueError("not a shoal join token (made by `shoal node join-token create`)")
    fingerprint = None if parts[3] == "insecure" else parts[3]
    return JoinToken(f"{parts[1]}.{parts[2]}", fingerprint)
