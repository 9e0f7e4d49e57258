"""OCI image references: `host[:port]/repo/path[:tag][@sha256:hex]`, parsed and printed.

The first path component is the registry host when it holds a '.' or a ':' or is `localhost`
(the rule docker and the distribution reference grammar use). A reference with no host keeps
`host=None`: which registry that means is the caller's choice, never a built-in default.
"""

import re
from dataclasses import dataclass, replace

from shoal.images.errors import InvalidReference

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{{1,5}}))?$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$", re.ASCII)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_NAME = 255
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    host: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """host/repository, without tag or digest."""
        return f"{self.host}/{self.repository}" if self.host else self.repository

    @property
    def manifest_ref(self) -> str:
        """What goes after /manifests/ in the registry API: the digest when there is one."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "Reference":
        return replace(self, digest=digest)

    def with_host(self, host: str) -> "Reference":
        """This reference on host when it names none (a caller's default registry)."""
        return self if self.host else replace(self, host=_check_host(host, host))

    def require_host(self) -> str:
        if not self.host:
            raise InvalidReference(
                f"{self}: no registry host in the reference; write it in full, "
                f"e.g. registry.example:5000/{self.repository}:{self.tag or DEFAULT_TAG}"
            )
        return self.host

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_digest(text: str) -> bool:
    return bool(_DIGEST.match(text))


def parse(text: str) -> Reference:
    """The Reference in text; the tag is `latest` when neither tag nor digest is given.

    Raises InvalidReference, saying which part is wrong."""
    original = text
    if not text or text != text.strip():
        raise InvalidReference(f"{original!r}: an image reference may not be empty or padded")
    digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidReference(
                f"{original}: digest {digest!r} is not sha256: followed by 64 lowercase hex digits"
            )
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(
                f"{original}: tag {tag!r} must be letters, digits, '_', '.' or '-' "
                "(not starting with '.' or '-'), at most 128 characters"
            )
    host = None
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host = _check_host(first, original)
        text = rest
    if not text:
        raise InvalidReference(f"{original}: no repository name")
    for component in text.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidReference(
                f"{original}: repository part {component!r} must be lowercase letters and "
                "digits, separated by '.', '_', '__' or dashes"
            )
    name = f"{host}/{text}" if host else text
    if len(name) > MAX_NAME:
        raise InvalidReference(f"{original}: the name is longer than {MAX_NAME} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(host=host, repository=text, tag=tag, digest=digest)


def _check_host(host: str, original: str) -> str:
    match = _HOST.match(host)
    if not match or (match.group(1) and int(match.group(1)) > 65535):
        raise InvalidReference(f"{original}: {host!r} is not a valid registry host[:port]")
    return host


def is_reference(text: str) -> bool:
    """Whether text, given as a VM's image, is an OCI reference rather than an Image's name.

    It is one when it parses and names a registry host (`ghcr.io/acme/ci`), a tag
    (`ubuntu:24.04`) or a digest; a bare name such as `ubuntu` names an Image object. (An Image's
    name is a DNS name, which never holds '/', ':' or '@', so no text is both.)"""
    try:
        ref = parse(text)
    except InvalidReference:
        return False
    tagged = ":" in text.partition("@")[0].rpartition("/")[2]
    return ref.host is not None or ref.digest is not None or tagged
