"""Fixtures for tests on real QEMU guests: the test guest (built once, cached across sessions)
and a `shoal dev --backend qemu` whose VMs are all gone when the test ends, passed or failed."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import Cli, free_port
from qemu_dev import QemuDev, import_test_image
from shoal.testguest import TestGuest, build_test_guest


@pytest.fixture(scope="session")
def guest_image() -> TestGuest:
    return build_test_guest()


@pytest.fixture
def qemu_dev(tmp_path: Path, guest_image: TestGuest) -> Iterator[QemuDev]:
    env = {**os.environ, "SHOAL_CONFIG": str(tmp_path / "config.yaml")}
    dev = QemuDev(tmp_path, Cli(env), free_port())
    dev.start()
    try:
        import_test_image(dev, guest_image)
        yield dev
    finally:
        dev.tear_down()
