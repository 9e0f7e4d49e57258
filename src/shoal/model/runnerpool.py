"""RunnerPool: CI runners on demand, one fresh VM per queued job (ci/runners/)."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from shoal.model.kinds import (
    Arch,
    Cpu,
    DiskQuantity,
    EnvVar,
    GuestAccess,
    GuestOS,
    MemoryQuantity,
    SecretRef,
    TypeMeta,
)
from shoal.model.meta import Condition, DNSLabel, Labels, StrictModel

Url = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://[^\s/]+(/\S*)?$")]
RunnerLabel = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s,]+$")]
Provider = Literal["github", "jenkins", "buildkite"]
# Held by a pool until its VMs, runner Secrets and CI-side runners are gone.
RUNNER_POOL_FINALIZER = "shoal.dev/runnerpool"
# A VM of the pool is called <pool>-<10 chars>: the pool's name leaves room for that.
MAX_POOL_NAME = 52


class GitHubTarget(StrictModel):
    """Where GitHub Actions jobs come from: an organization's or one repository's. The
    credentials Secret holds `token` (a token that may manage self-hosted runners), or `appId`,
    `installationId` and `privateKey` of a GitHub App; and `webhookSecret`, which the pool's
    webhook checks deliveries against."""

    apiURL: Url = "https://api.github.com"
    organization: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    repository: Annotated[str, Field(pattern=r"^[^/\s]+/[^/\s]+$", max_length=200)] | None = None
    runnerGroup: Annotated[str, Field(min_length=1, max_length=256)] = "Default"
    # A job runs on the pool's runners when all its runs-on labels are among these and
    # GitHub's own (self-hosted, the OS, the architecture).
    labels: list[RunnerLabel] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_scope(self) -> "GitHubTarget":
        if (self.organization is None) == (self.repository is None):
            raise ValueError("give exactly one of organization or repository")
        if self.repository is not None and self.runnerGroup != "Default":
            raise ValueError(
                "runnerGroup: runner groups are an organization's; a repository's runners are "
                "in its Default group"
            )
        return self


class JenkinsTarget(StrictModel):
    """A Jenkins controller whose queued builds for `label` get one agent VM each. The
    credentials Secret holds `username` and `apiToken`."""

    url: Url
    label: RunnerLabel


class BuildkiteTarget(StrictModel):
    """A Buildkite organization's queue. The credentials Secret holds `agentToken` (the agent
    registration token: the metrics API and the agents use it) and `apiToken` (a REST API token
    with read_agents, to find and stop the pool's agents)."""

    organization: Annotated[str, Field(min_length=1, max_length=100)]
    queue: Annotated[str, Field(min_length=1, max_length=100)] = "default"
    apiURL: Url = "https://api.buildkite.com"
    agentAPIURL: Url = "https://agent.buildkite.com"


class RunnerTemplate(StrictModel):
    """The VM each runner gets: a VMConfig, an image, or both (fields here override the
    VMConfig's). The pool sets the rest itself: ephemeral, deleteWhenScriptExits, and the
    startup script that starts the runner."""

    config: DNSLabel | None = None
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    cpu: Cpu | None = None
    memory: MemoryQuantity | None = None
    disk: DiskQuantity | None = None
    os: GuestOS | None = None
    arch: Arch | None = None
    nodeSelector: Labels = Field(default_factory=dict)
    preferredNodeSelector: Labels = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=-1000000, le=1000000)] | None = None
    access: GuestAccess | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _image_or_config(self) -> "RunnerTemplate":
        if self.config is None and self.image is None:
            raise ValueError("give image, config (a VMConfig), or both")
        return self


class RunnerPoolSpec(StrictModel):
    provider: Provider
    github: GitHubTarget | None = None
    jenkins: JenkinsTarget | None = None
    buildkite: BuildkiteTarget | None = None
    credentialsRef: SecretRef
    template: RunnerTemplate
    maxRunners: Annotated[int, Field(ge=0, le=10000)] = 10
    # Runners kept started ahead of demand (at most maxRunners).
    minIdle: Annotated[int, Field(ge=0, le=10000)] = 0
    # The shell script a runner VM runs to start one runner; empty: the provider's default.
    # It gets the registration (JIT config, agent secret, agent token) in its environment.
    runnerCommand: Annotated[str, Field(min_length=1, max_length=65536)] | None = None
    # A runner that has not taken a job this long after its VM was made is removed (a job
    # still queued then gets a new one).
    idleTimeoutSeconds: Annotated[int, Field(ge=30, le=7 * 86400)] = 900
    # How often the CI system is asked again, webhooks or not (they get lost).
    syncIntervalSeconds: Annotated[int, Field(ge=5, le=3600)] = 30

    @model_validator(mode="after")
    def _target_of_provider(self) -> "RunnerPoolSpec":
        given = [p for p in ("github", "jenkins", "buildkite") if getattr(self, p) is not None]
        if given != [self.provider]:
            raise ValueError(
                f"provider {self.provider!r} takes spec.{self.provider} and no other target"
                + (f" (got {', '.join('spec.' + g for g in given)})" if given else "")
            )
        if self.minIdle > self.maxRunners:
            raise ValueError(f"minIdle {self.minIdle} is more than maxRunners {self.maxRunners}")
        return self


class RunnerCounts(StrictModel):
    starting: Annotated[int, Field(ge=0)] = 0
    idle: Annotated[int, Field(ge=0)] = 0
    busy: Annotated[int, Field(ge=0)] = 0
    finishing: Annotated[int, Field(ge=0)] = 0


class RunnerPoolStatus(StrictModel):
    runners: RunnerCounts = Field(default_factory=RunnerCounts)
    jobsWaiting: Annotated[int, Field(ge=0)] = 0
    lastSyncTime: str | None = None
    # Why jobs wait, in words: "2 jobs waiting: at maxRunners 3".
    message: Annotated[str, Field(max_length=4096)] = ""
    conditions: list[Condition] = Field(default_factory=list)
    observedGeneration: Annotated[int, Field(ge=0)] = 0


class RunnerPool(TypeMeta):
    kind: Literal["RunnerPool"] = "RunnerPool"
    spec: RunnerPoolSpec
    status: RunnerPoolStatus = Field(default_factory=RunnerPoolStatus)
