"""Choosing the accelerator, against tests/fakes/qemu-accel: a fake QEMU that runs the probe guest
as hosts this machine cannot be would run it (this machine's nested KVM, a KVM whose guests never
get a timer interrupt, a healthy KVM, a KVM QEMU refuses, no /dev/kvm). Every test name says
`fake`; the real QEMU of this machine is probed in tests/vm/test_qemu_cli.py.
"""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.qemu_host import (
    FAKE_QEMU,
    HEALTHY_KVM,
    KVM_WITHOUT_INTERRUPTS,
    NESTED_KVM,
    REFUSED_KVM,
    FakeHost,
)
from shoal.backends.base import Actual
from shoal.backends.choose import BackendOptions, choose
from shoal.backends.qemu import QemuBackend, QemuSettings, accel
from shoal.backends.qemu import backend as qemu_backend
from shoal.model.kinds import ImageSpec, VirtualMachineSpec

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    yield FakeHost(tmp_path, monkeypatch)
    accel.forget()


def test_fake_nested_kvm_like_this_machine_is_passed_over_for_tcg(host: FakeHost) -> None:
    host.be(kvm=NESTED_KVM)
    chosen = asyncio.run(host.decide())
    assert chosen.name == "tcg"
    assert chosen.reason.startswith("kvm is no faster than emulation here")
    assert host.runs() == ["tcg probe", "kvm probe"]


def test_fake_kvm_whose_guests_get_no_timer_interrupt_is_passed_over(host: FakeHost) -> None:
    host.be(kvm=KVM_WITHOUT_INTERRUPTS)
    chosen = asyncio.run(host.decide())
    assert chosen.name == "tcg"
    assert chosen.reason == (
        f"kvm does not run guests here: the probe guest got no timer interrupt in "
        f"{accel.TIMER_DEADLINE:.0f} s"
    )


def test_fake_kvm_whose_guest_never_starts_is_passed_over(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "START_DEADLINE", 1.0)
    host.be(kvm={"start": None, "loop": 0.01, "timer": 0.1})
    chosen = asyncio.run(host.decide())
    assert chosen.name == "tcg"
    assert chosen.reason == "kvm does not run guests here: the probe guest did not start in 1 s"


def test_fake_healthy_kvm_is_chosen_and_says_how_much_faster(host: FakeHost) -> None:
    host.be(kvm=HEALTHY_KVM)
    chosen = asyncio.run(host.decide())
    assert chosen.name == "kvm"
    assert "faster than under emulation" in chosen.reason
    assert "timer interrupts" in chosen.reason


def test_fake_kvm_that_qemu_refuses_gives_tcg_with_qemus_words(host: FakeHost) -> None:
    host.be(kvm=REFUSED_KVM)
    chosen = asyncio.run(host.decide())
    assert chosen.name == "tcg"
    assert chosen.reason == (
        "kvm does not run guests here: QEMU exited 1: qemu-system-x86_64: "
        "Could not access KVM kernel module: Permission denied"
    )


def test_fake_host_without_dev_kvm_never_tries_kvm(host: FakeHost) -> None:
    host.be(kvm=None)
    chosen = asyncio.run(host.decide())
    assert (chosen.name, chosen.reason) == ("tcg", f"kvm is not available (no {host.kvm_device})")
    assert host.runs() == ["tcg probe"]


def test_fake_qemu_that_runs_nothing_is_an_error_naming_both(host: FakeHost) -> None:
    host.be(kvm=REFUSED_KVM, tcg={"fail": "no memory"})
    with pytest.raises(RuntimeError) as caught:
        asyncio.run(host.decide())
    assert str(caught.value) == (
        "no accelerator runs guests here (tcg: QEMU exited 1: qemu-system-x86_64: no memory; "
        "kvm: QEMU exited 1: qemu-system-x86_64: Could not access KVM kernel module: "
        "Permission denied)"
    )


def test_fake_forced_accelerator_is_never_probed(host: FakeHost) -> None:
    host.be(kvm=NESTED_KVM)
    chosen = asyncio.run(host.decide("kvm"))
    assert (chosen.name, chosen.reason) == ("kvm", "chosen with --accel kvm; not probed")
    assert host.runs() == []
    with pytest.raises(ValueError, match="unknown accelerator 'xen'"):
        asyncio.run(host.decide("xen"))


@pytest.mark.parametrize(
    ("kvm", "expected"),
    [(NESTED_KVM, "tcg"), (KVM_WITHOUT_INTERRUPTS, "tcg"), (HEALTHY_KVM, "kvm"), (None, "tcg")],
    ids=["nested", "no-interrupts", "healthy", "no-dev-kvm"],
)
def test_fake_choice_is_made_once_and_shared_by_every_node(
    host: FakeHost, tmp_path: Path, kvm: dict[str, Any] | None, expected: str
) -> None:
    """The banner, every node's backend and every later heartbeat agree, from one probe per
    candidate, even when the host behaves otherwise afterwards."""
    host.be(kvm=kvm)
    options = BackendOptions("auto", qemu=QemuSettings(state_dir=Path("."), qemu=str(FAKE_QEMU)))

    async def scenario() -> list[str | None]:
        choice = await choose(options, tmp_path / "agents")
        assert choice.name == "qemu"
        assert f"qemu with the {expected} accelerator" in choice.reason
        host.be(kvm=HEALTHY_KVM if expected == "tcg" else NESTED_KVM)  # the host changes its mind
        backends = [choice.factory(name) for name in ("node-1", "node-2", "node-3")]
        seen = []
        for backend in backends:
            for _ in range(2):
                capacity = await backend.capacity()
                assert capacity.accelerator_reason == (await host.decide()).reason
                seen.append(capacity.accelerator)
        return seen

    assert asyncio.run(scenario()) == [expected] * 6
    probes = host.runs()
    assert probes == (["tcg probe"] if kvm is None else ["tcg probe", "kvm probe"])


def test_fake_accelerator_that_stops_working_is_reported_never_swapped(
    host: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VM whose QEMU cannot start fails with QEMU's own words; the node's report says the
    accelerator stopped working (and when it works again), and the choice never changes."""
    monkeypatch.setattr(qemu_backend, "ACCEL_RECHECK_SECONDS", 0.0)
    host.be(kvm=HEALTHY_KVM)
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(2**20))
    image = ImageSpec.model_validate(
        {
            "source": {
                "local": {"disk": {"path": str(disk), "digest": "sha256:" + "0" * 64, "size": 1}}
            }
        }
    ).model_dump(mode="json", exclude_none=True)
    spec = VirtualMachineSpec.model_validate(
        {"image": "blank", "cpu": 1, "memory": "64Mi", "disk": "1Gi"}
    ).model_dump(mode="json")
    backend = QemuBackend(QemuSettings(state_dir=tmp_path / "node", qemu=str(FAKE_QEMU)))
    vm_id = uuid.uuid4().hex

    async def settled(backend: QemuBackend) -> str | None:
        for _ in range(200):
            check = backend._accel_check
            if check is None or check.done():
                break
            await asyncio.sleep(0.05)
        return (await backend.capacity()).accelerator_failure

    async def scenario() -> None:
        assert (await backend.capacity()).accelerator == "kvm"
        assert await settled(backend) is None
        await backend.create(vm_id, {**spec, "resolvedImage": image})
        try:
            host.be(kvm={"fail": "failed to initialize kvm: No such file or directory"})
            await backend.start(vm_id)
            state = await backend.status(vm_id)
            assert (state.actual, state.reason) == (Actual.FAILED, "QemuFailed")
            assert "failed to initialize kvm: No such file or directory" in state.message
            assert "accelerator" not in state.message  # QEMU's words, not a probe's
            await backend._accel_check  # type: ignore[misc]
            capacity = await backend.capacity()
            assert capacity.accelerator == "kvm"  # no flip to tcg
            assert capacity.accelerator_failure == (
                "guests no longer start under kvm: QEMU exited 1: qemu-system-x86_64: "
                "failed to initialize kvm: No such file or directory"
            )
            host.be(kvm=HEALTHY_KVM)  # fixed; the next look sees it
            await settled(backend)
            assert await settled(backend) is None
            assert (await backend.capacity()).accelerator == "kvm"
        finally:
            await backend.delete(vm_id)

    asyncio.run(scenario())
    assert host.runs().count("kvm probe") >= 3  # the decision, the look after the failure, ...
    assert host.runs().count("tcg probe") == 1  # ... but the choice was made only once
