"""Domain structs: what is stored and what goes over the wire (snake_case JSON)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

RunStatus = Literal["queued", "waiting_for_build", "running", "succeeded", "failed", "cancelled"]
TERMINAL_RUN_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
StepStatus = Literal["pending", "running", "succeeded", "failed", "cancelled", "skipped"]
BuildStatus = Literal["queued", "building", "ready", "failed", "cancelled", "expired"]
TERMINAL_BUILD_STATUSES: frozenset[str] = frozenset({"ready", "failed", "cancelled", "expired"})

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}

NO_NUL = r"^[^\x00]*$"  # NUL cannot reach argv, the environment or a C string intact: refused outright
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
StepName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Script = Annotated[str, msgspec.Meta(min_length=1, pattern=NO_NUL)]  # length limit: Settings.max_script_bytes
TimeoutS = Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]
EnvText = Annotated[str, msgspec.Meta(max_length=32768, pattern=NO_NUL)]


class SecretValue(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """`{"value": "…", "secret": true}`: never returned by the API, masked as `***` in events.

    The API answers `{"secret": true}` without the value; sending that back on `PUT` keeps the value.
    """

    secret: bool
    value: EnvText | None = None


Environment = dict[EnvName, EnvText | SecretValue]


def plain_environment(environment: Environment) -> dict[str, str]:
    """The values a step sees."""
    return {
        name: value if isinstance(value, str) else (value.value or "") for name, value in environment.items()
    }


def secret_values(environment: Environment) -> list[str]:
    return [v.value for v in environment.values() if isinstance(v, SecretValue) and v.secret and v.value]


def redact_environment(environment: Environment) -> Environment:
    """The environment as the API shows it: secret values removed."""
    return {
        name: SecretValue(secret=True) if isinstance(value, SecretValue) and value.secret else value
        for name, value in environment.items()
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


class Struct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base for request bodies: unknown fields are an error, not silently dropped."""


# Workspaces ----------------------------------------------------------------------------------------


class WorkspaceCreate(Struct):
    name: Name


RunningCap = Annotated[int, msgspec.Meta(ge=0, le=100_000)]


class WorkspaceUpdate(Struct):
    """`PATCH /workspaces/{ws}` (bootstrap token only): the workspace's cap on runs executing at once;
    `null` goes back to `ADE_MAX_RUNNING_PER_WORKSPACE`, `0` is no cap."""

    max_running_runs: RunningCap | None


class Workspace(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: datetime
    max_running_runs: int | None = None  # its own cap (0: none); None: ADE_MAX_RUNNING_PER_WORKSPACE
    account_id: str | None = None  # a build server project's `accountId` (README "Build server API")


# Configurations ------------------------------------------------------------------------------------


# A slug names an image within a workspace's view (its own images and the public ones); a step's `image`
# is a slug, or `build` (BUILD_IMAGE): the image its configuration's build makes. `build` is reserved.
ImageRef = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
BUILD_IMAGE = "build"
MemoryMb = Annotated[int, msgspec.Meta(ge=1)]  # capped by Settings.step_max_memory_mb
ProcessCount = Annotated[int, msgspec.Meta(ge=1)]  # capped by Settings.step_max_processes


# Workflows (README "Workflows"): msgspec checks each field; `ade.core.workflow` checks the graph (names,
# cycles) and that paths stay inside the work directory.
When = Literal["on_success", "always", "on_failure"]
OutputWhen = Literal["on_success", "always"]
WorkPath = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]  # relative to the work directory
CacheKey = Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=NO_NUL)]
DependsOn = Annotated[list[StepName], msgspec.Meta(max_length=1000)]
CacheDirs = Annotated[list[WorkPath], msgspec.Meta(max_length=20)]
OutputPaths = Annotated[list[WorkPath], msgspec.Meta(max_length=100)]
# A runner's label; a configuration's `runs_on` lists the labels a runner must all carry to execute its runs.
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Labels = Annotated[list[Label], msgspec.Meta(max_length=20)]


class Step(Struct):
    name: StepName
    script: Script
    timeout_s: TimeoutS | None = None
    environment: Environment = msgspec.field(default_factory=dict)
    image: ImageRef | None = None  # a docker image slug (`DockerImage.slug`), or `build` (BUILD_IMAGE)
    memory_mb: MemoryMb | None = None  # at most ADE_STEP_MAX_MEMORY_MB
    max_processes: ProcessCount | None = None  # at most ADE_STEP_MAX_PROCESSES
    depends_on: DependsOn = msgspec.field(default_factory=list)  # step names
    when: When = "on_success"  # its dependencies succeeded; always: they ended; on_failure: one failed
    cache_dirs: CacheDirs = msgspec.field(default_factory=list)
    cache_key: CacheKey | None = None  # may use `{{ hashFiles('pattern') }}`
    output_paths: OutputPaths = msgspec.field(default_factory=list)  # globs
    output_when: OutputWhen = "on_success"


Steps = Annotated[list[Step], msgspec.Meta(min_length=1)]  # count limit: Settings.max_steps


ArtifactKey = Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
Requirement = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^[^\s-][^\n\r]*$")]
RelativePath = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^[^/\\][^\\]*$")]


ByteCount = Annotated[int, msgspec.Meta(ge=1)]


class SourceLimits(Struct):
    """A build's own limits on its source archive; each is capped by the operator's maximum."""

    unpacked_bytes: ByteCount | None = None  # at most ADE_MAX_ARCHIVE_UNPACKED_BYTES
    members: Annotated[int, msgspec.Meta(ge=1)] | None = None  # at most ADE_MAX_ARCHIVE_MEMBERS


class BuildSpec(Struct):
    """How a configuration's environment is prepared. `python`: a virtualenv, `requirements` installed with
    pip (offline with `find_links`: directories inside the source, plus ADE_PIP_FIND_LINKS), then `steps`;
    `shell`: `steps` only; `docker`: `steps`, then a container image built from the `Containerfile` (or
    `Dockerfile`) at the source's root, which steps with `image: build` run in. `environment` is for the
    build only (a docker build's non-secret values are its build args); `source` is an artifact (tar,
    tar.gz or zip) unpacked into the build's source directory, where the build steps run."""

    constructor: Literal["python", "shell", "docker"]
    requirements: Annotated[list[Requirement], msgspec.Meta(max_length=200)] = msgspec.field(
        default_factory=list
    )
    find_links: Annotated[list[RelativePath], msgspec.Meta(max_length=20)] = msgspec.field(
        default_factory=list
    )
    no_index: bool = False
    steps: Annotated[list[Step], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)
    environment: Environment = msgspec.field(default_factory=dict)
    source: ArtifactKey | None = None
    timeout_s: TimeoutS | None = None
    network: bool = False  # the build's steps and commands reach the network (pip from an index)
    source_limits: SourceLimits = msgspec.field(default_factory=SourceLimits)


class RunLimits(Struct):
    """A configuration's own limits for its runs; each is capped by the operator's maximum."""

    output_bytes: ByteCount | None = None  # the run's outputs (ADE_MAX_OUTPUT_BYTES caps it)
    console_bytes: ByteCount | None = None  # console lines and step events (ADE_MAX_CONSOLE_BYTES_PER_RUN)


class ConfigurationCreate(Struct):
    name: Name
    steps: Steps
    environment: Environment = msgspec.field(default_factory=dict)
    timeout_s: TimeoutS | None = None
    build: BuildSpec | None = None
    network: bool = False  # steps share the host's network (README "Security model")
    limits: RunLimits = msgspec.field(default_factory=RunLimits)
    runs_on: Labels = msgspec.field(default_factory=list)  # empty: the workers; else a runner with them all


class Configuration(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str
    name: str
    steps: list[Step]
    environment: Environment
    timeout_s: float | None
    created_at: datetime
    updated_at: datetime
    build: BuildSpec | None = None
    network: bool = False
    limits: RunLimits = msgspec.field(default_factory=RunLimits)
    runs_on: list[str] = msgspec.field(default_factory=list)


# Runs -----------------------------------------------------------------------------------------------


class Commit(Struct):
    repo_url: str | None = None
    branch: str | None = None
    hash: str | None = None
    message: str | None = None
    author: str | None = None


class InputArtifact(Struct):
    """An uploaded artifact placed in the run's `inputs/` as `name` before the first step."""

    key: Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class RunOptions(Struct):
    input_artifacts: Annotated[list[InputArtifact], msgspec.Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )


class RunCreate(Struct):
    stream: bool = False
    options: RunOptions = msgspec.field(default_factory=RunOptions)
    commit: Commit | None = None


class RunRerun(Struct):
    """`POST /runs/{id}/rerun`'s optional body."""

    failed_only: bool = False  # keep the steps that succeeded (and their outputs); run the rest


class Failure(msgspec.Struct, kw_only=True):
    stage: str
    code: str
    message: str
    step: str | None = None


OutputSource = Literal["output_paths", "output_dir"]


class StepOutput(msgspec.Struct, kw_only=True):
    """A file a step added to its run's outputs (README "Outputs")."""

    path: str  # relative to the run's outputs directory, POSIX separators
    size: int
    source: OutputSource  # copied from the work directory (its output_paths), or written to $ADE_OUTPUT_DIR
    replaced: str | None = None  # the step whose output at this path it replaced (the last writer wins)


class StepState(msgspec.Struct, kw_only=True):
    """A step of a run as it stands: `pending → running → succeeded | failed | cancelled | skipped`."""

    name: str
    status: StepStatus = "pending"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    exit_code: int | None = None
    failure: Failure | None = None
    skipped_reason: str | None = None
    outputs: list[StepOutput] = msgspec.field(default_factory=list)  # what it added to the run's outputs
    # A failed-only re-run keeps this step from the run it ran in (never started here; its outputs copied).
    reused_from: str | None = None


class Plan(msgspec.Struct, kw_only=True):
    """The configuration as it was when the run was created; the run executes this, not later edits."""

    configuration_id: str
    name: str
    steps: list[Step]
    environment: Environment
    timeout_s: float | None
    build: BuildSpec | None = None
    network: bool = False
    limits: RunLimits = msgspec.field(default_factory=RunLimits)
    runs_on: list[str] = msgspec.field(default_factory=list)


class Run(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str
    configuration_id: str
    status: RunStatus
    plan: Plan
    commit: Commit | None = None
    input_artifacts: list[InputArtifact] = msgspec.field(default_factory=list)
    attempt: int = 1
    rerun_of: str | None = None  # the run this one re-runs
    failed_only: bool = False  # a failed-only re-run: keeps the steps of `rerun_of` that succeeded
    original_run_id: str | None = None  # the first attempt of the lineage (None: this is it)
    cancel_requested_by: str | None = None
    build_id: str | None = None
    build_reused: bool = False  # the build was ready before this run asked for it
    runner_id: str | None = None  # the runner that claimed it (a run with `runs_on`)
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    exit_code: int | None = None
    failure: Failure | None = None
    worker: str | None = None
    steps: list[StepState] = msgspec.field(default_factory=list)  # in plan order (`transitions.steps_of`)


class RunLinks(msgspec.Struct, kw_only=True):
    self: str
    events: str
    events_stream: str
    logs: str
    logfile: str
    summary: str
    plan: str
    inputs: str
    outputs: str
    diagnostics: str
    cancel: str
    rerun: str


class Waiting(msgspec.Struct, kw_only=True):
    """What a run that has not started waits for (like Concourse's build preparation)."""

    reason: Literal["queue", "no_worker", "build", "workspace_cap", "runner"]
    message: str
    queue_position: int | None = None  # 1: the next job a worker takes
    build_id: str | None = None


class RunResource(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str
    configuration_id: str
    status: RunStatus
    attempt: int
    rerun_of: str | None
    failed_only: bool
    build_id: str | None
    runner_id: str | None  # the runner executing it (a run with `runs_on`)
    commit: Commit | None
    input_artifacts: list[InputArtifact]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    exit_code: int | None
    failure: Failure | None
    cancel_requested_by: str | None
    steps: list[StepState]
    links: RunLinks
    waiting: Waiting | None = None  # set by GET /runs/{id} while the run is queued or waits for its build

    @classmethod
    def of(cls, run: Run, api_prefix: str, waiting: Waiting | None = None) -> RunResource:
        base = f"{api_prefix}/runs/{run.id}"
        return cls(
            id=run.id,
            workspace_id=run.workspace_id,
            configuration_id=run.configuration_id,
            status=run.status,
            attempt=run.attempt,
            rerun_of=run.rerun_of,
            failed_only=run.failed_only,
            build_id=run.build_id,
            runner_id=run.runner_id,
            commit=run.commit,
            input_artifacts=run.input_artifacts,
            created_at=run.created_at,
            started_at=run.started_at,
            completed_at=run.completed_at,
            exit_code=run.exit_code,
            failure=run.failure,
            cancel_requested_by=run.cancel_requested_by,
            steps=run.steps or [StepState(name=step.name) for step in run.plan.steps],
            waiting=waiting,
            links=RunLinks(
                self=base,
                events_stream=f"{base}/events?stream=true",
                **{
                    name: f"{base}/{name}"
                    for name in RunLinks.__struct_fields__
                    if name not in ("self", "events_stream")
                },
            ),
        )


class Page(msgspec.Struct, kw_only=True):
    items: list[RunResource]
    next_cursor: str | None  # older runs: pass as `before`
    prev_cursor: str | None  # newer runs: pass as `after`


# API keys and audit ------------------------------------------------------------------------------


AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class ApiKeyCreate(Struct):
    name: Name
    role: Role
    expires_at: AwareDatetime | None = None


class ApiKey(msgspec.Struct, kw_only=True):
    """Stored form: only a hash of the secret."""

    id: str
    workspace_id: str
    name: str
    role: Role
    secret_sha256: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyResource(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyResource:
        return cls(**{f: getattr(key, f) for f in cls.__struct_fields__})


class ApiKeyCreated(ApiKeyResource, kw_only=True):
    secret: str  # shown once


class AuditEntry(msgspec.Struct, kw_only=True):
    id: str
    created_at: datetime
    workspace_id: str
    actor: str
    action: str
    target: str
    details: dict[str, str | int | float | bool | None] = {}


class Pagination(msgspec.Struct, kw_only=True):
    total: int
    limit: int
    offset: int
    has_more: bool


class AuditPage(msgspec.Struct, kw_only=True):
    audit_logs: list[AuditEntry]
    pagination: Pagination


class StreamToken(msgspec.Struct, kw_only=True):
    token: str
    stream_id: str
    expires_at: datetime
    events_url: str


# Builds -------------------------------------------------------------------------------------------


class BuildOptions(Struct):
    force: bool = False  # rebuild even if a ready build has the same fingerprint
    wait: bool = False  # answer once the build has ended


class BuildCreate(Struct):
    stream: bool = False
    options: BuildOptions = msgspec.field(default_factory=BuildOptions)


class Build(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str
    configuration_id: str
    fingerprint: str
    spec: BuildSpec
    status: BuildStatus
    owner: str  # the actor that asked for it
    force: bool = False
    reused_from: str | None = None  # a reuse record points at the build whose environment it shares
    interpreter: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    last_used_at: datetime | None = None
    failure: Failure | None = None
    worker: str | None = None
    cancel_requested_by: str | None = None

    @property
    def environment_build_id(self) -> str:
        """Whose directory holds this build's environment."""
        return self.reused_from or self.id

    @property
    def image(self) -> str | None:
        """The image a `docker` build makes (in the runtime's store of the worker that built it), which a
        step's `image: build` runs in; None for other constructors."""
        if self.spec.constructor != "docker":
            return None
        return f"localhost/ade-{self.environment_build_id.lower()}"


class BuildLinks(msgspec.Struct, kw_only=True):
    self: str
    inspect: str
    events: str
    events_stream: str
    logs: str
    cancel: str


class BuildResource(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str
    configuration_id: str
    status: BuildStatus
    fingerprint: str
    reused_from: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    failure: Failure | None
    links: BuildLinks

    @classmethod
    def of(cls, build: Build, api_prefix: str) -> BuildResource:
        base = f"{api_prefix}/builds/{build.id}"
        return cls(
            id=build.id,
            workspace_id=build.workspace_id,
            configuration_id=build.configuration_id,
            status=build.status,
            fingerprint=build.fingerprint,
            reused_from=build.reused_from,
            created_at=build.created_at,
            started_at=build.started_at,
            completed_at=build.completed_at,
            failure=build.failure,
            links=BuildLinks(
                self=base,
                events_stream=f"{base}/events?stream=true",
                **{
                    name: f"{base}/{name}"
                    for name in BuildLinks.__struct_fields__
                    if name not in ("self", "events_stream")
                },
            ),
        )


# Docker images ---------------------------------------------------------------------------------------

# A container image reference (`[registry[:port]/]name[:tag][@digest]`): its characters only, so no space, NUL
# or control character, and never a leading `-` (it could be read as an option by a container engine).
ImageUrl = Annotated[
    str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
]


class DockerImageCreate(Struct):
    slug: ImageRef
    image_url: ImageUrl  # a container image reference, e.g. `docker.io/library/alpine:3`
    public: bool = False  # visible to every workspace (the bootstrap token only)


class DockerImage(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str
    slug: str
    image_url: str
    public: bool
    created_at: datetime
    created_by: str


# Runners ----------------------------------------------------------------------------------------------

RunnerLabels = Annotated[list[Label], msgspec.Meta(min_length=1, max_length=20)]  # what a runner offers
RunnerStatus = Literal["idle", "busy", "offline"]


class RunnerCreate(Struct):
    name: Name
    labels: RunnerLabels


class Runner(msgspec.Struct, kw_only=True):
    """Stored form: only a hash of the token. `last_heartbeat_at` and `current_runs` are not in the record
    (a heartbeat writes Redis only); `ade.records.runners` fills them in when it reads one."""

    id: str
    workspace_id: str | None  # None: serves every workspace (registered with the bootstrap token)
    name: str
    labels: list[str]
    created_at: datetime
    created_by: str
    token_sha256: str
    revoked_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    current_runs: list[str] = msgspec.field(default_factory=list)


class RunnerView(msgspec.Struct, kw_only=True):
    id: str
    workspace_id: str | None
    name: str
    labels: list[str]
    status: RunnerStatus
    last_heartbeat_at: datetime | None
    current_runs: list[str]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @classmethod
    def of(cls, runner: Runner, now: datetime, lost_after_s: float) -> RunnerView:
        """`offline` if revoked or silent for `lost_after_s` (ADE_RUNNER_LOST_AFTER_S); else `busy` while it
        has runs, `idle` without."""
        heard = runner.last_heartbeat_at
        if runner.revoked_at is not None or heard is None or (now - heard).total_seconds() > lost_after_s:
            status: RunnerStatus = "offline"
        else:
            status = "busy" if runner.current_runs else "idle"
        return cls(
            id=runner.id,
            workspace_id=runner.workspace_id,
            name=runner.name,
            labels=runner.labels,
            status=status,
            last_heartbeat_at=heard,
            current_runs=runner.current_runs,
            created_at=runner.created_at,
            created_by=runner.created_by,
            revoked_at=runner.revoked_at,
        )


class RunnerCreated(RunnerView, kw_only=True):
    token: str  # `rnr.<runner id>.<secret>`, shown once
