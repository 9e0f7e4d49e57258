"""WarmPool: saved, ready-to-resume VMs of a VMConfig; a deploy from that VMConfig claims one
(shoal.warmpool)."""

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from shoal.model.kinds import TypeMeta
from shoal.model.meta import Condition, DNSLabel, Labels, StrictModel, get_condition

WARM_POOL_FINALIZER = "shoal.dev/warmpool"
# On a pool's entries (VirtualMachines): the pool's name.
POOL_LABEL = "warmpools.shoal.dev/pool"
# A pool's entries are VMs named <pool>-w<5 characters>: the name leaves room for that.
MAX_WARM_POOL_NAME = 56
WarmPoolMode = Literal["suspended", "clone"]
# Set by an entry's agent once the entry is saved; from then on the entry never runs as itself,
# and reserves disk but no cpu, memory or VM slot on its node.
SAVED_CONDITION = "Saved"


def is_saved(vm: dict[str, Any]) -> bool:
    """Whether the VM is a saved warm-pool entry (whatever happens to its object after)."""
    condition = get_condition(vm, SAVED_CONDITION)
    return condition is not None and condition.get("status") == "True"


class WarmPoolSpec(StrictModel):
    """Which VMConfig to keep saved VMs of, how many, and for how long."""

    config: DNSLabel
    """The VMConfig (in the pool's namespace) whose VMs the pool serves: it must set
    access.secretRef, and have no other pool."""
    mode: WarmPoolMode = "suspended"
    """suspended: `size` entries, each booted once, saved, and resumed by one VM. clone: one
    golden saved state on each of `size` nodes; every VM on such a node starts from it (memory
    mapped copy-on-write, a disk overlay of its own). Cannot be changed once set."""
    size: Annotated[int, Field(ge=0, le=1000)] = 1
    """How many entries to keep (in clone mode: how many nodes hold a golden); 0 empties the
    pool. Default 1."""
    nodeSelector: Labels = Field(default_factory=dict)
    """Narrows where entries are made, beyond the VMConfig's own nodeSelector."""
    maxIdleSeconds: Annotated[int, Field(ge=60, le=30 * 86400)] | None = None
    """An entry not claimed this many seconds after it was saved is discarded and made again
    (its clock, caches and packages age while it waits)."""
    maxAgeSeconds: Annotated[int, Field(ge=60, le=365 * 86400)] | None = None
    """An entry is discarded this many seconds after it was made (booted), claimed or not; at
    least maxIdleSeconds."""

    @model_validator(mode="after")
    def _idle_within_age(self) -> "WarmPoolSpec":
        if (
            self.maxIdleSeconds is not None
            and self.maxAgeSeconds is not None
            and self.maxIdleSeconds > self.maxAgeSeconds
        ):
            raise ValueError(
                f"maxIdleSeconds {self.maxIdleSeconds} is more than maxAgeSeconds "
                f"{self.maxAgeSeconds}: an entry would reach its age first"
            )
        return self


class WarmPoolStatus(StrictModel):
    """The pool's entries by state, and its problems."""

    ready: Annotated[int, Field(ge=0)] = 0
    """Entries saved and ready to hand out."""
    refilling: Annotated[int, Field(ge=0)] = 0
    """Entries being made (waiting for a node, booting, or being saved)."""
    claiming: Annotated[int, Field(ge=0)] = 0
    """Entries handed to a VM whose node has not released them yet."""
    lastDiscardReason: Annotated[str, Field(max_length=4096)] = ""
    """Why the last entry was discarded: "entry NAME discarded: WHY"."""
    lastDiscardTime: str | None = None
    """When the last entry was discarded (RFC 3339, UTC)."""
    message: Annotated[str, Field(max_length=4096)] = ""
    """How full the pool is ("2/3 ready"), or its problem."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready: True (Full) once ready reaches size; else False, with the reason why
    (Refilling, ConfigNotFound, ImageNotFound, EntriesFailing, EntryRefused, Deleting)."""
    observedGeneration: Annotated[int, Field(ge=0)] = 0
    """The metadata.generation whose spec the pool's loop last acted on."""


class WarmPool(TypeMeta):
    """Saved, ready-to-resume VMs (entries) of a VMConfig: a VM deployed from that VMConfig
    claims one and resumes it instead of booting, or boots cold when none is ready."""

    kind: Literal["WarmPool"] = "WarmPool"
    spec: WarmPoolSpec
    status: WarmPoolStatus = Field(default_factory=WarmPoolStatus)
