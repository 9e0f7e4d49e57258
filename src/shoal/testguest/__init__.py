"""A tiny Linux guest for tests that boot real VMs under QEMU.

Built by the project itself from Debian packages (cloud kernel, busybox, dropbear) and cached;
see docs/test-guest.md. `build_test_guest()` returns the paths; `python -m shoal.testguest`
builds it or boots it by hand.
"""

from shoal.testguest.build import (
    BUILD_VERSION,
    READY_LINE,
    TestGuest,
    TestGuestError,
    build_test_guest,
    cached_test_guest,
    default_cache_dir,
    free_port,
)

__all__ = [
    "BUILD_VERSION",
    "READY_LINE",
    "TestGuest",
    "TestGuestError",
    "build_test_guest",
    "cached_test_guest",
    "default_cache_dir",
    "free_port",
]
