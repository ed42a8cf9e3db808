"""The build server API's bodies (camelCase), and how our records look in them.

Requests ignore fields they do not know (as the build server does); each field is checked like its native
counterpart. Responses leave out what is unknown (a build not yet started has no `startedAt`) rather than
sending `null`, which the build server's document does not allow. Additive fields (a workflow's `steps`, a
build's `steps`, an audit entry's `actor` and `target`) are marked below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ade.core import step_ids, workflow
from ade.core.models import (
    NO_NUL,
    AuditEntry,
    CacheDirs,
    Configuration,
    DependsOn,
    DockerImage,
    ImageRef,
    ImageUrl,
    Labels,
    OutputPaths,
    Run,
    Script,
    StepName,
    StepState,
    Workspace,
)

BuildStatus = Literal["PENDING", "RUNNING", "SUCCESS", "FAILED"]
BUILD_STATUS: dict[str, BuildStatus] = {
    "queued": "PENDING",
    "waiting_for_build": "PENDING",
    "running": "RUNNING",
    "succeeded": "SUCCESS",
    "failed": "FAILED",
    "cancelled": "FAILED",
}
StepStatus = Literal["PENDING", "RUNNING", "SUCCESS", "FAILED", "SKIPPED"]
STEP_STATUS: dict[str, StepStatus] = {
    "pending": "PENDING",
    "running": "RUNNING",
    "succeeded": "SUCCESS",
    "failed": "FAILED",
    "cancelled": "FAILED",
    "skipped": "SKIPPED",
}

AccountId = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
CompatName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NO_NUL)]


class CamelRequest(msgspec.Struct, kw_only=True, rename="camel"):
    """A request body: camelCase; unknown fields are ignored."""


class CamelResponse(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """A response body: camelCase; UNSET fields are left out."""


def _given(value: str | None) -> str | UnsetType:
    return UNSET if value is None else value


# Projects (workspaces) ------------------------------------------------------------------------------


class CompatProjectCreate(CamelRequest, kw_only=True):
    account_id: AccountId
    name: CompatName


class CompatProject(CamelResponse, kw_only=True):
    id: str
    account_id: str | UnsetType = UNSET
    name: str
    created_at: datetime
    updated_at: datetime


def project_of(workspace: Workspace) -> CompatProject:
    # A workspace is never renamed, so it was last changed when it was made.
    return CompatProject(
        id=workspace.id,
        account_id=_given(workspace.account_id),
        name=workspace.name,
        created_at=workspace.created_at,
        updated_at=workspace.created_at,
    )


# Workflows (configurations) --------------------------------------------------------------------------


class CompatStepCreate(CamelRequest, kw_only=True):
    name: StepName
    run_script: Script
    image_slug: ImageRef | None = None  # none: the default sandbox
    depends_on: DependsOn = msgspec.field(default_factory=list)
    cache_dirs: CacheDirs = msgspec.field(default_factory=list)
    output_paths: OutputPaths = msgspec.field(default_factory=list)


class CompatWorkflowCreate(CamelRequest, kw_only=True):
    name: CompatName
    steps: Annotated[list[CompatStepCreate], msgspec.Meta(min_length=1)]
    runs_on: Labels = msgspec.field(default_factory=list)  # additive: the runner labels its runs need


class CompatWorkflowStep(CamelResponse, kw_only=True):
    name: str
    run_script: str
    image_slug: str | UnsetType = UNSET
    depends_on: list[str]
    cache_dirs: list[str]
    output_paths: list[str]


class CompatWorkflow(CamelResponse, kw_only=True):
    id: str
    project_id: str
    name: str
    created_at: datetime
    updated_at: datetime
    steps: list[CompatWorkflowStep]  # additive
    runs_on: list[str]  # additive


def workflow_of(cfg: Configuration) -> CompatWorkflow:
    return CompatWorkflow(
        id=cfg.id,
        project_id=cfg.workspace_id,
        name=cfg.name,
        created_at=cfg.created_at,
        updated_at=cfg.updated_at,
        steps=[
            CompatWorkflowStep(
                name=step.name,
                run_script=step.script,
                image_slug=_given(step.image),
                depends_on=list(step.depends_on),
                cache_dirs=list(step.cache_dirs),
                output_paths=list(step.output_paths),
            )
            for step in cfg.steps
        ],
        runs_on=list(cfg.runs_on),
    )


# Builds (runs) -------------------------------------------------------------------------------------


class CompatBuildCreate(CamelRequest, kw_only=True):
    workflow_id: Annotated[str, msgspec.Meta(min_length=1)]
    commit_hash: str | None = None
    repo_url: str | None = None
    branch: str | None = None
    commit_message: str | None = None
    commit_author: str | None = None


class CompatBuildStep(CamelResponse, kw_only=True):
    """Additive: a step of a build. `id` is what `/api/runner/{stepId}` takes; `dependsOn` names the steps
    it waits for (every earlier step when the workflow has no `dependsOn` at all: they run in order)."""

    id: str
    name: str
    status: StepStatus
    depends_on: list[str]


class CompatBuild(CamelResponse, kw_only=True):
    id: str
    project_id: str
    workflow_id: str
    status: BuildStatus
    commit_hash: str | UnsetType = UNSET
    repo_url: str | UnsetType = UNSET
    branch: str | UnsetType = UNSET
    commit_message: str | UnsetType = UNSET
    commit_author: str | UnsetType = UNSET
    created_at: datetime
    started_at: datetime | UnsetType = UNSET
    finished_at: datetime | UnsetType = UNSET
    steps: list[CompatBuildStep]  # additive


class CompatPagination(CamelResponse, kw_only=True):
    total: int
    limit: int
    offset: int
    has_more: bool


class CompatBuildPage(CamelResponse, kw_only=True):
    builds: list[CompatBuild]
    pagination: CompatPagination


def pagination(total: int, limit: int, offset: int, count: int) -> CompatPagination:
    return CompatPagination(total=total, limit=limit, offset=offset, has_more=offset + count < total)


def build_of(run: Run) -> CompatBuild:
    commit = run.commit
    states = run.steps or [StepState(name=step.name) for step in run.plan.steps]
    names = [step.name for step in run.plan.steps]
    needs = workflow.dependencies(run.plan.steps)
    return CompatBuild(
        id=run.id,
        project_id=run.workspace_id,
        workflow_id=run.configuration_id,
        status=BUILD_STATUS[run.status],
        commit_hash=_given(commit.hash) if commit else UNSET,
        repo_url=_given(commit.repo_url) if commit else UNSET,
        branch=_given(commit.branch) if commit else UNSET,
        commit_message=_given(commit.message) if commit else UNSET,
        commit_author=_given(commit.author) if commit else UNSET,
        created_at=run.created_at,
        started_at=run.started_at or UNSET,
        finished_at=run.completed_at or UNSET,
        steps=[
            CompatBuildStep(
                id=step_ids.step_id(run.id, index),
                name=state.name,
                status=STEP_STATUS[state.status],
                depends_on=[names[dependency] for dependency in needs[index]],
            )
            for index, state in enumerate(states)
        ],
    )


# Docker images ------------------------------------------------------------------------------------


class CompatDockerImageCreate(CamelRequest, kw_only=True):
    slug: ImageRef
    image_url: ImageUrl
    public: bool = False


class CompatDockerImage(CamelResponse, kw_only=True):
    id: str
    slug: str
    image_url: str
    public: bool
    created_at: datetime
    project_id: str | UnsetType = UNSET  # additive: the owning project (none for the bootstrap token's)


def docker_image_of(image: DockerImage, owner_shown: bool) -> CompatDockerImage:
    return CompatDockerImage(
        id=image.id,
        slug=image.slug,
        image_url=image.image_url,
        public=image.public,
        created_at=image.created_at,
        project_id=image.workspace_id if owner_shown else UNSET,
    )


# Audit logs ---------------------------------------------------------------------------------------


class CompatAuditLog(CamelResponse, kw_only=True):
    id: str
    project_id: str
    action: str
    details: dict[str, Any]
    created_at: datetime
    actor: str  # additive: the API key id, or `bootstrap`
    target: str  # additive: the id of what the action changed


class CompatAuditPage(CamelResponse, kw_only=True):
    audit_logs: list[CompatAuditLog]
    pagination: CompatPagination


def audit_log_of(entry: AuditEntry) -> CompatAuditLog:
    return CompatAuditLog(
        id=entry.id,
        project_id=entry.workspace_id,
        action=entry.action,
        details=dict(entry.details),
        created_at=entry.created_at,
        actor=entry.actor,
        target=entry.target,
    )
