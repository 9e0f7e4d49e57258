"""Which backend a node runs, for `shoal agent` and `shoal dev` alike.

`auto` takes qemu when QEMU boots a guest here (under the accelerator accel.decide chooses), and
falls back to simulated VMs otherwise, saying why.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from shoal.backends.base import Backend
from shoal.backends.qemu import QemuBackend, QemuSettings
from shoal.backends.qemu import accel as accelerators
from shoal.backends.sim import SimBackend, SimSettings
from shoal.backends.tart import TartBackend, TartSettings

BACKENDS = ("auto", "sim", "qemu", "tart")


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str  # one line for the operator: what runs and why
    factory: Callable[[str], Backend]  # node name -> its backend


@dataclass(frozen=True)
class BackendOptions:
    kind: str = "auto"
    sim: SimSettings = field(default_factory=SimSettings)
    qemu: QemuSettings = field(default_factory=lambda: QemuSettings(state_dir=Path(".")))
    tart: str = "tart"  # the tart executable


async def choose(options: BackendOptions, state_dir: Path) -> BackendChoice:
    """Raises ValueError for an unknown backend or a qemu that cannot run guests."""
    if options.kind not in BACKENDS:
        raise ValueError(f"unknown backend {options.kind!r}: choose {', '.join(BACKENDS)}")
    if options.kind == "sim":
        return BackendChoice("sim", "sim (simulated VMs)", lambda _name: SimBackend(options.sim))
    if options.kind == "tart":
        return BackendChoice(
            "tart",
            f"tart ({options.tart})",
            lambda name: TartBackend(
                TartSettings(state_dir=state_dir / name / "tart", tart=options.tart)
            ),
        )
    try:
        accel = await accelerators.decide(options.qemu.qemu, options.qemu.accelerator)
    except RuntimeError as error:
        if options.kind == "qemu":
            raise ValueError(f"the qemu backend cannot run here: {error}") from None
        return BackendChoice(
            "sim",
            f"sim (simulated VMs), because QEMU cannot run guests here: {error}",
            lambda _name: SimBackend(options.sim),
        )
    # Every node's backend asks accel.decide again and gets this same answer: it is made once
    # per process, so no node can disagree with this banner.
    return BackendChoice(
        "qemu",
        f"qemu with the {accel.name} accelerator ({accel.reason})",
        lambda name: QemuBackend(replace(options.qemu, state_dir=state_dir / name / "qemu")),
    )
