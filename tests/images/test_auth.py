"""WWW-Authenticate parsing and the basic / bearer flows, against scripted HTTP servers."""

import base64
from collections.abc import Callable

import httpx
import pytest

from shoal.images.auth import Challenge, RegistryAuth, parse_challenges, repository_of
from shoal.images.errors import AuthError, RegistryError

BASIC = "Basic " + base64.b64encode(b"ann:pw").decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.example/token",service="reg.example",'
            'scope="repository:team/vm:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "reg.example",
                        "scope": "repository:team/vm:pull,push",
                    },
                )
            ],
        ),
        ('Basic realm="registry"', [Challenge("basic", {"realm": "registry"})]),
        (
            'Basic realm="a", Bearer realm="b",scope=x',
            [Challenge("basic", {"realm": "a"}), Challenge("bearer", {"realm": "b", "scope": "x"})],
        ),
        ('BEARER Realm="q\\"uoted"', [Challenge("bearer", {"realm": 'q"uoted'})]),
        ("", []),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_repository_of() -> None:
    assert repository_of("/v2/team/vm/blobs/sha256:00") == "team/vm"
    assert repository_of("/v2/a/manifests/latest") == "a"
    assert repository_of("/v2/a/blobs/uploads/1234") == "a"
    assert repository_of("/v2/") == ""


Handler = Callable[[httpx.Request], httpx.Response]


def _clients(
    registry: Handler, tokens: Handler, credentials: tuple[str, str] | None
) -> tuple[httpx.Client, RegistryAuth]:
    auth = RegistryAuth(
        "reg.example", credentials, httpx.Client(transport=httpx.MockTransport(tokens))
    )
    return httpx.Client(transport=httpx.MockTransport(registry), auth=auth), auth


def _no_tokens(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected token request {request.url}")


def test_basic_flow_then_preemptive() -> None:
    seen: list[str | None] = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != BASIC:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(200)

    client, _ = _clients(registry, _no_tokens, ("ann", "pw"))
    assert client.get("https://reg.example/v2/").status_code == 200
    assert client.get("https://reg.example/v2/a/manifests/x").status_code == 200
    assert seen == [None, BASIC, BASIC]


def test_basic_wrong_password_gives_the_401_back() -> None:
    def registry(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    client, _ = _clients(registry, _no_tokens, ("ann", "bad"))
    assert client.get("https://reg.example/v2/").status_code == 401
    anonymous, _ = _clients(registry, _no_tokens, None)
    assert anonymous.get("https://reg.example/v2/").status_code == 401


def test_bearer_flow_caches_the_token_per_repository() -> None:
    token_requests: list[httpx.Request] = []
    registry_calls: list[str | None] = []

    def registry(request: httpx.Request) -> httpx.Response:
        registry_calls.append(request.headers.get("authorization"))
        if request.headers.get("authorization") == "Bearer T1":
            return httpx.Response(200)
        return httpx.Response(
            401,
            headers={
                "WWW-Authenticate": 'Bearer realm="https://auth.example/token",'
                'service="reg.example",scope="repository:team/vm:pull"'
            },
        )

    def tokens(request: httpx.Request) -> httpx.Response:
        token_requests.append(request)
        return httpx.Response(200, json={"access_token": "T1"})

    client, _ = _clients(registry, tokens, ("ann", "pw"))
    for _ in range(3):
        assert client.get("https://reg.example/v2/team/vm/blobs/sha256:00").status_code == 200
    assert len(token_requests) == 1
    token_request = token_requests[0]
    assert token_request.url.params["service"] == "reg.example"
    assert token_request.url.params["scope"] == "repository:team/vm:pull"
    assert token_request.headers["authorization"] == BASIC
    assert registry_calls == [None, "Bearer T1", "Bearer T1", "Bearer T1"]


def test_bearer_wrong_password() -> None:
    def registry(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://a/t"'})

    def tokens(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401)

    client, _ = _clients(registry, tokens, ("ann", "bad"))
    with pytest.raises(
        AuthError, match=r"refused the login of user 'ann'.*wrong user name or password"
    ):
        client.get("https://reg.example/v2/")
    anonymous, _ = _clients(registry, tokens, None)
    with pytest.raises(AuthError, match="needs a login"):
        anonymous.get("https://reg.example/v2/")


def test_bearer_token_service_without_token() -> None:
    def registry(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://a/t"'})

    def tokens(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"nothing": 1})

    client, _ = _clients(registry, tokens, None)
    with pytest.raises(RegistryError, match="sent no token"):
        client.get("https://reg.example/v2/")


def test_bearer_without_realm() -> None:
    def registry(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer service="x"'})

    client, _ = _clients(registry, _no_tokens, None)
    with pytest.raises(RegistryError, match="without a realm"):
        client.get("https://reg.example/v2/")
