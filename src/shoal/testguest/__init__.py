"""A tiny Linux guest for tests that boot real VMs under QEMU.

Built by the project itself from Debian packages (cloud kernel, busybox, dropbear) and cached;
see docs/test-guest.md. `build_test_guest()` returns the paths, `bootable_disk(guest, firmware)`
a variant that SeaBIOS or OVMF boots from its own disk; `python -m shoal.testguest` builds them
or boots them by hand.
"""

from shoal.testguest.bootdisk import bootable_disk
from shoal.testguest.build import (
    BUILD_VERSION,
    OVMF_CODE,
    OVMF_VARS,
    READY_LINE,
    Firmware,
    TestGuest,
    TestGuestError,
    build_test_guest,
    cached_test_guest,
    default_cache_dir,
    free_port,
)

__all__ = [
    "BUILD_VERSION",
    "OVMF_CODE",
    "OVMF_VARS",
    "READY_LINE",
    "Firmware",
    "TestGuest",
    "TestGuestError",
    "bootable_disk",
    "build_test_guest",
    "cached_test_guest",
    "default_cache_dir",
    "free_port",
]
