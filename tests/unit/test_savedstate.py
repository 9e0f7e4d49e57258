"""What makes a saved state unfit for a VM, decided before QEMU starts (shoal.backends.qemu.savedstate)."""

from pathlib import Path

from shoal.backends.qemu.machine import Machine
from shoal.backends.qemu.savedstate import Entry, mismatch

QEMU = "QEMU emulator version 7.2.22"


def machine(**changes: object) -> Machine:
    fields: dict[str, object] = {
        "vm_id": "v1", "cpu": 1, "memory_mib": 256, "guest_os": "linux", "boot": "kernel",
        "firmware": "bios", "kernel": "/k", "initrd": "/i", "cmdline": "", "base": "/base.qcow2",
        "image_digest": "sha256:aa",
    }  # fmt: skip
    fields.update(changes)
    return Machine(**fields)  # type: ignore[arg-type]


def entry(size: int = 10, **changes: object) -> Entry:
    fields: dict[str, object] = {
        "qemu_version": QEMU, "image_digest": "sha256:aa", "base": "/base.qcow2", "cpu": 1,
        "memory_mib": 256, "size": size, "sha256": "00", "saved_at": 0.0,
    }  # fmt: skip
    fields.update(changes)
    return Entry(**fields)  # type: ignore[arg-type]


def test_a_state_that_fits_is_taken(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_bytes(bytes(10))
    assert mismatch(entry(), machine(), QEMU, state) is None


def test_every_way_a_state_does_not_fit_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_bytes(bytes(10))
    other_qemu = mismatch(entry(), machine(), "QEMU emulator version 9.2.0", state)
    assert other_qemu is not None and "saved by QEMU" in other_qemu
    assert "another image" in str(mismatch(entry(), machine(base="/other"), QEMU, state))
    assert "another image" in str(mismatch(entry(), machine(image_digest="sha256:bb"), QEMU, state))
    assert "512 MiB" in str(mismatch(entry(), machine(memory_mib=512), QEMU, state))
    assert "2 cpu" in str(mismatch(entry(), machine(cpu=2), QEMU, state))
    assert "truncated" in str(mismatch(entry(size=11), machine(), QEMU, state))
    assert "missing" in str(mismatch(entry(), machine(), QEMU, tmp_path / "gone"))
