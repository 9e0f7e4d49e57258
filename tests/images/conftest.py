"""Fixtures for image tests: the real registry server from Debian's docker-registry package
(defined in registry_fixtures, which VM tests import too), and a connection-cutting proxy.
Tests import helpers from `image_helpers`, never from `conftest` (that name belongs to whichever
conftest loaded last).
"""

from collections.abc import Iterator

import pytest

from images.image_helpers import CutProxy, Registry
from images.registry_fixtures import (
    htpasswd_registry,
    isolated_credentials,
    registry,
    token_registry,
)

__all__ = ["htpasswd_registry", "isolated_credentials", "registry", "token_registry"]


@pytest.fixture
def cut_proxy(registry: Registry) -> Iterator[CutProxy]:
    proxy = CutProxy(registry.port)
    try:
        yield proxy
    finally:
        proxy.close()
