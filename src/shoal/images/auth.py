"""Registry authentication: anonymous, HTTP basic, and the distribution spec's bearer tokens.

On a 401 the registry names a scheme in WWW-Authenticate. Basic: resend with the credentials.
Bearer: GET a token from the challenge's realm (service and scope as query parameters, the
credentials as basic auth when there are any), then resend with `Authorization: Bearer TOKEN`.
Tokens are cached per repository, so a pull asks for one once, not per blob.
"""

import base64
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass, field

import httpx

from shoal.images.errors import AuthError, RegistryError, RegistryUnreachable

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")
_REPO_PATH = re.compile(r"^/v2/(.+)/(?:blobs|manifests|tags|referrers)/")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges in a WWW-Authenticate header value (RFC 7235 auth-params)."""
    challenges: list[Challenge] = []
    position = 0
    while position < len(header):
        scheme = _SCHEME.match(header, position)
        if not scheme:
            break
        position = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(header, position)) and param.end() > position:
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            position = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def repository_of(path: str) -> str:
    """The repository a registry API path is about ("" for /v2/ itself)."""
    match = _REPO_PATH.match(path)
    return match.group(1) if match else ""


class RegistryAuth(httpx.Auth):
    """An httpx auth flow for one registry; safe to share between threads."""

    def __init__(self, host: str, credentials: tuple[str, str] | None, tokens: httpx.Client):
        self.host = host
        self.credentials = credentials
        self._tokens_http = tokens
        self._lock = threading.Lock()
        self._basic = False
        self._by_repo: dict[str, str] = {}

    @property
    def user(self) -> str | None:
        return self.credentials[0] if self.credentials else None

    def _known(self, repo: str) -> str | None:
        with self._lock:
            if repo in self._by_repo:
                return self._by_repo[repo]
            if self._basic and self.credentials:
                return basic_header(*self.credentials)
        return None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        repo = repository_of(request.url.path)
        sent = self._known(repo)
        if sent:
            request.headers["Authorization"] = sent
        response = yield request
        if response.status_code != 401:
            return
        challenges = {
            c.scheme: c for c in parse_challenges(response.headers.get("www-authenticate", ""))
        }
        if "bearer" in challenges:
            header = self._token(challenges["bearer"], repo, sent)
        elif "basic" in challenges and self.credentials:
            header = basic_header(*self.credentials)
            with self._lock:
                self._basic = True
        else:
            return  # anonymous against a registry that wants a login: the caller reports the 401
        if header == sent:
            return  # the same credentials were just refused
        request.headers["Authorization"] = header
        yield request

    def _token(self, challenge: Challenge, repo: str, sent: str | None) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.host} asked for a bearer token without a realm")
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        params += [("scope", scope) for scope in challenge.params.get("scope", "").split() if scope]
        with self._lock:
            cached = self._by_repo.get(repo)
            if cached and cached != sent:
                return cached  # another thread fetched a fresh token meanwhile
        headers = {"Authorization": basic_header(*self.credentials)} if self.credentials else {}
        try:
            response = self._tokens_http.get(realm, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise RegistryUnreachable(
                f"cannot get a token for registry {self.host} from {realm}: {error}"
            ) from None
        if response.status_code in (401, 403):
            if self.credentials:
                raise AuthError(
                    f"registry {self.host} refused the login of user {self.user!r} "
                    f"(token service {realm}): wrong user name or password; "
                    f"run `shoal registry login {self.host}` again"
                )
            raise AuthError(
                f"registry {self.host} needs a login for {repo or 'this'}: "
                f"run `shoal registry login {self.host}`"
            )
        if response.status_code != 200:
            raise RegistryError(
                f"token service {realm} of registry {self.host} answered HTTP "
                f"{response.status_code}: {response.text[:200]}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {realm} of registry {self.host} sent no token")
        header = f"Bearer {token}"
        with self._lock:
            self._by_repo[repo] = header
        return header
