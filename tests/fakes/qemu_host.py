"""A host for tests/fakes/qemu-accel: the fake QEMU's behaviour file, its run log and a
stand-in /dev/kvm, with the behaviours of the hosts the accelerator choice must get right."""

import json
from pathlib import Path
from typing import Any

import pytest

from shoal.backends.qemu import accel

FAKE_QEMU = Path(__file__).resolve().parents[1] / "fakes" / "qemu-accel"
EMULATION = {"start": 0.05, "loop": 0.5, "timer": 0.1}  # tcg, as on every host
# This machine's KVM: ~3-5 s before the guest runs, then ~1000x slower than emulation.
NESTED_KVM = {"start": 2.9, "loop": 500.0, "timer": 0.1}
# Starts and computes fast, but the guest's timer interrupts never arrive: real guests hang.
KVM_WITHOUT_INTERRUPTS = {"start": 0.05, "loop": 0.02, "timer": None}
HEALTHY_KVM = {"start": 0.1, "loop": 0.03, "timer": 0.1}
REFUSED_KVM = {"fail": "Could not access KVM kernel module: Permission denied"}


class FakeHost:
    """The fake QEMU's behaviour file, its run log, and a stand-in /dev/kvm."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Also makes this process forget its accelerator choice, and look for /dev/kvm at the
        stand-in (call accel.forget() again when the test is done)."""
        accel.forget()
        monkeypatch.setattr(accel, "KVM_DEVICE", root / "kvm")
        self.behaviour = root / "behaviour.json"
        self.log = root / "runs.log"
        self.log.touch()
        self.kvm_device = root / "kvm"
        monkeypatch.setenv("FAKE_QEMU_BEHAVIOUR", str(self.behaviour))
        monkeypatch.setenv("FAKE_QEMU_LOG", str(self.log))

    def be(self, *, kvm: dict[str, Any] | None, tcg: dict[str, Any] | None = None) -> None:
        hosts = {"tcg": tcg or EMULATION} | ({"kvm": kvm} if kvm is not None else {})
        self.behaviour.write_text(json.dumps(hosts))
        if kvm is None:
            self.kvm_device.unlink(missing_ok=True)
        else:
            self.kvm_device.touch()

    def runs(self) -> list[str]:
        return self.log.read_text().splitlines()

    async def decide(self, wanted: str = "auto") -> accel.Accelerator:
        return await accel.decide(
            str(FAKE_QEMU), wanted, platform="linux", kvm_device=self.kvm_device
        )
