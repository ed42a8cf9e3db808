"""The build server's runner API (README "Step mode"): `GET /api/runner/{stepId}` answers a step's bash
script, `POST /api/runner/{stepId}/complete` records how it ended. No `/api/v1` prefix: the paths are the
build server's. A thin layer over `ade.lifecycle.step_mode`: access checks, shapes, errors
(`{error, code, details}`, the build server's `{error, details}` plus our machine code)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, post
from litestar.enums import MediaType

from ade.api.auth import RUNNER_ROUTES
from ade.api.deps import Services
from ade.api.openapi import TEXT, Answer, documented
from ade.core.errors import NotFound
from ade.core.models import Run
from ade.core.step_ids import parse_step_id, step_not_found
from ade.lifecycle import step_mode
from ade.records import runners
from ade.records.auth import Principal

STEP_MODE_PREFIX = "/api/runner"
OutputPath = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class StepCompletion(msgspec.Struct, kw_only=True, rename="camel"):
    """The body of `complete` (unknown fields are ignored, as the build server does)."""

    status: Literal["success", "failed"]
    logs: str = ""  # the step's output: one console line per line
    output_paths: Annotated[list[OutputPath], msgspec.Meta(max_length=1000)] = msgspec.field(
        default_factory=list
    )  # relative paths in the run's outputs (README "Step mode")


class StepCompletionAnswer(msgspec.Struct, kw_only=True, rename="camel"):
    success: bool
    step_status: str  # the step's status now: succeeded, failed (or cancelled, skipped)
    build_complete: bool  # whether the run has ended


async def _principal_may_execute(services: Services, principal: Principal, run: Run) -> bool:
    """Whether `principal` may execute `run`'s steps: a registered runner's token serving its workspace and
    carrying all of its `runs_on` labels, an operator (or admin) key of its workspace (the role is checked
    after), or the bootstrap token."""
    if principal.runner_id is not None:
        try:
            runner = await runners.get(services.store, principal.runner_id)
        except NotFound:
            return False
        return runners.serves(runner, run.workspace_id) and set(run.plan.runs_on) <= set(runner.labels)
    return principal.sees(run.workspace_id) and principal.stream_id is None


async def _step_of(services: Services, principal: Principal, ident: str) -> tuple[Run, int]:
    """The run and index a step id names, if the caller may execute it: anything else is the same 404
    (a step of another workspace is never revealed); a weak role is 403."""
    run_id, index = parse_step_id(ident)
    try:
        run = await services.store.get_run(run_id)
    except NotFound:
        raise step_not_found(ident) from None
    if not await _principal_may_execute(services, principal, run) or index >= len(run.plan.steps):
        raise step_not_found(ident)
    if principal.runner_id is None:
        principal.require("operator")
    return run, index


class StepModeController(Controller):
    path = STEP_MODE_PREFIX
    tags = ["Runner"]
    security = [{"bearer": []}]
    opt = RUNNER_ROUTES  # registered runners' tokens are accepted here (as well as keys)

    @get(
        "/{stepId:str}",
        media_type=MediaType.TEXT,
        summary="Get build step script",
        description="The step's bash script (starting the step, and the run on its first step). A step "
        "whose dependencies have not ended as it needs is 409 `step_not_ready`; an ended one 409 "
        "`step_finished`; a running one answers the same script again.",
        opt=documented(
            Answer(200, "The step's bash script", {TEXT: {"type": "string", "description": "a bash script"}}),
            errors=(409,),
        ),
    )
    async def script(self, stepId: str, services: Services, principal: Principal) -> str:
        run, index = await _step_of(services, principal, stepId)
        return await step_mode.script_of(services.settings, services.store, run, index)

    @post(
        "/{stepId:str}/complete",
        status_code=200,
        summary="Complete a build step",
        description="Records the step's end (its logs as console lines, its output paths), skips what can "
        "no longer run and ends the run once every step has ended. Completing an ended step again with the "
        "same status answers its current state and changes nothing.",
    )
    async def complete(
        self, stepId: str, data: StepCompletion, services: Services, principal: Principal
    ) -> StepCompletionAnswer:
        run, index = await _step_of(services, principal, stepId)
        done = await step_mode.complete_step(
            services.settings, services.store, run, index, data.status, data.logs, data.output_paths
        )
        return StepCompletionAnswer(success=True, step_status=done.step_status, build_complete=done.run_ended)
