"""Real VMs under QEMU (see backend.py)."""

from shoal.backends.qemu.backend import QemuBackend, QemuSettings

__all__ = ["QemuBackend", "QemuSettings"]
