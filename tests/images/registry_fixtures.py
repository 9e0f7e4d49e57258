"""The registry fixtures, shared by the image tests (re-exported by this directory's conftest)
and by the VM tests that boot images from a registry (which import them from here).

`docker-registry serve CONFIG` runs on a free loopback port with its own storage directory,
anonymous, with htpasswd (basic) auth, or with token (bearer) auth (see image_helpers). Every
registry is killed at teardown, also when its test failed.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.image_helpers import REGISTRY, Registry


@contextlib.contextmanager
def _running(base: Path, auth: str) -> Iterator[Registry]:
    if REGISTRY is None:
        pytest.skip("docker-registry is not installed (make system-deps)")
    base.mkdir(parents=True, exist_ok=True)
    registry = Registry(base, auth)
    try:
        registry.start()
        yield registry
    finally:
        registry.kill()
        if registry.token_service is not None:
            registry.token_service.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Anonymous access."""
    with _running(tmp_path / "registry", "none") as running:
        yield running


@pytest.fixture
def htpasswd_registry(tmp_path: Path) -> Iterator[Registry]:
    """Basic auth from an htpasswd file (bcrypt)."""
    with _running(tmp_path / "registry-htpasswd", "htpasswd") as running:
        yield running


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[Registry]:
    """Bearer tokens from an in-test token service."""
    with _running(tmp_path / "registry-token", "token") as running:
        yield running


@pytest.fixture(autouse=True)
def isolated_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the real user's shoal or docker credential files, nor use a proxy. (Child
    processes started after it, such as `shoal dev`, inherit the same files.)"""
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "shoal-config"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
