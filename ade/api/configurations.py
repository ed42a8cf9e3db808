"""Configurations: what a run executes. Admins change them; secret values never leave the server."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, delete, get, post, put

from ade.api import auth
from ade.api.deps import Services
from ade.core import ids, workflow
from ade.core.errors import Invalid, NotFound
from ade.core.models import (
    BUILD_IMAGE,
    BuildSpec,
    Configuration,
    ConfigurationCreate,
    Environment,
    SecretValue,
    Step,
    redact_environment,
    utcnow,
)
from ade.core.settings import Settings
from ade.records.auth import Principal
from ade.records.images import ImageRegistry

public_environment = redact_environment


def public_steps(steps: list[Step]) -> list[Step]:
    return [msgspec.structs.replace(step, environment=redact_environment(step.environment)) for step in steps]


def public_build(spec: BuildSpec | None) -> BuildSpec | None:
    if spec is None:
        return None
    return msgspec.structs.replace(
        spec, environment=redact_environment(spec.environment), steps=public_steps(spec.steps)
    )


def public(cfg: Configuration) -> Configuration:
    """A configuration as the API shows it: secret values removed."""
    return msgspec.structs.replace(
        cfg,
        environment=redact_environment(cfg.environment),
        steps=public_steps(cfg.steps),
        build=public_build(cfg.build),
    )


def check_limits(settings: Settings, data: ConfigurationCreate) -> None:
    details: list[dict[str, Any]] = []
    if len(data.steps) > settings.max_steps:
        details.append({"key": "steps", "message": f"at most {settings.max_steps} steps (ADE_MAX_STEPS)"})
    for index, step in enumerate(data.steps):
        if len(step.script.encode()) > settings.max_script_bytes:
            limit = f"at most {settings.max_script_bytes} bytes (ADE_MAX_SCRIPT_BYTES)"
            details.append({"key": f"steps[{index}].script", "message": limit})
    if details:
        raise Invalid("the configuration exceeds a limit", details=details)


def check_workflow(data: ConfigurationCreate) -> None:
    """The steps as a graph (`ade.core.workflow`): unique names, known dependencies, no cycle, paths inside
    the work directory. A build's steps run in order: they take paths, not `depends_on` or `when`."""
    problems = workflow.check(data.steps)
    if data.build is not None:
        problems += workflow.check_build_steps(data.build.steps, "build.steps")
    if problems:
        message = problems[0].message if len(problems) == 1 else f"{len(problems)} problems with the steps"
        raise Invalid(message, details=[problem.detail() for problem in problems])
    if data.runs_on and data.build is not None:  # a runner shares no build environment with the service
        raise Invalid(
            "a configuration with runs_on cannot have a build: runners execute steps only "
            "(use an image for the step's tools)",
            code="runs_on_with_build",
            details=[{"key": "runs_on", "message": "remove runs_on, or the build"}],
        )


async def check_build_source(services: Services, workspace_id: str, build: BuildSpec | None) -> None:
    """A build's source must be an artifact this workspace uploaded (the same bytes elsewhere do not)."""
    if build is None or build.source is None:
        return
    try:
        await services.artifacts.get(workspace_id, build.source)
    except NotFound:
        raise Invalid(
            f"build source {build.source!r} is not an artifact of this workspace",
            code="unknown_artifact",
            details=[{"key": "build.source", "message": "upload it to this workspace first"}],
        ) from None


async def check_images(services: Services, workspace_id: str, data: ConfigurationCreate) -> None:
    """Each step's `image` must name a docker image the workspace sees (its own or a public one), or be
    `build` — the image of the configuration's build, so only with a `docker` build spec (and never in the
    build's own steps, which run before it is made)."""
    steps = [(f"steps[{index}]", step) for index, step in enumerate(data.steps)]
    if data.build is not None:
        steps += [(f"build.steps[{index}]", step) for index, step in enumerate(data.build.steps)]
    registry = ImageRegistry.of(services.store)
    slugs = {step.image for _, step in steps if step.image is not None and step.image != BUILD_IMAGE}
    seen = {slug: await registry.find(workspace_id, slug) is not None for slug in sorted(slugs)}
    details: list[dict[str, Any]] = []
    for where, step in steps:
        if step.image is None or seen.get(step.image, False):
            continue
        if step.image != BUILD_IMAGE:
            problem = f"no docker image {step.image!r} in this workspace, nor a public one"
        elif data.build is None:
            problem = "`build` names the image of the configuration's build, and it has no `build`"
        elif data.build.constructor != "docker":
            constructor = data.build.constructor
            problem = f"`build` names the image a `docker` build makes; this build is {constructor!r}"
        elif where.startswith("build."):
            problem = "a build step cannot run in the image its build makes"
        else:
            continue
        details.append({"key": f"{where}.image", "step": step.name, "message": problem})
    if details:
        raise Invalid(
            f"step {details[0]['step']!r} names an unknown docker image"
            if len(details) == 1
            else f"{len(details)} steps name unknown docker images",
            code="unknown_image",
            details=details,
        )


def _keep_secrets(new: Environment, old: Environment, where: str) -> Environment:
    """A secret sent back without its value (as the API shows it) keeps the stored value."""
    merged: Environment = {}
    for name, value in new.items():
        if isinstance(value, SecretValue) and value.value is None:
            previous = old.get(name)
            if not (isinstance(previous, SecretValue) and previous.value is not None):
                raise Invalid(
                    f"secret {name!r} needs a value",
                    details=[{"key": f"{where}.{name}", "message": "no value"}],
                )
            value = previous
        merged[name] = value
    return merged


def _configuration(data: ConfigurationCreate, current: Configuration | None, **fields: Any) -> Configuration:
    old_steps = {step.name: step for step in current.steps} if current else {}
    steps = [
        msgspec.structs.replace(
            step,
            environment=_keep_secrets(
                step.environment,
                old_steps[step.name].environment if step.name in old_steps else {},
                f"steps[{index}].environment",
            ),
        )
        for index, step in enumerate(data.steps)
    ]
    environment = _keep_secrets(data.environment, current.environment if current else {}, "environment")
    build = data.build
    if build is not None:
        old_build = current.build.environment if current and current.build else {}
        build = msgspec.structs.replace(
            build, environment=_keep_secrets(build.environment, old_build, "build.environment")
        )
    return Configuration(
        name=data.name,
        steps=steps,
        environment=environment,
        timeout_s=data.timeout_s,
        build=build,
        network=data.network,
        limits=data.limits,
        runs_on=list(data.runs_on),
        **fields,
    )


async def create_configuration(
    services: Services, principal: Principal, workspace_id: str, data: ConfigurationCreate
) -> Configuration:
    """Check, store and audit a new configuration of a workspace the caller may change (as stored: with
    its secrets; `public` shows it)."""
    check_limits(services.settings, data)
    check_workflow(data)
    await check_build_source(services, workspace_id, data.build)
    await check_images(services, workspace_id, data)
    now = utcnow()
    cfg = _configuration(
        data,
        None,
        id=ids.new_id(ids.CONFIGURATION),
        workspace_id=workspace_id,
        created_at=now,
        updated_at=now,
    )
    await services.store.put_configuration(cfg)
    await services.audit.record(
        principal.actor, workspace_id, "configuration.create", cfg.id, {"name": cfg.name}
    )
    return cfg


class ConfigurationController(Controller):
    tags = ["configurations"]

    @post("/workspaces/{workspace_id:str}/configurations", status_code=201, summary="Create a configuration")
    async def create(
        self, workspace_id: str, data: ConfigurationCreate, services: Services, principal: Principal
    ) -> Configuration:
        await auth.workspace(services, principal, workspace_id, "admin")
        return public(await create_configuration(services, principal, workspace_id, data))

    @get("/workspaces/{workspace_id:str}/configurations", summary="List a workspace's configurations")
    async def list(self, workspace_id: str, services: Services, principal: Principal) -> list[Configuration]:
        await auth.workspace(services, principal, workspace_id)
        return [public(cfg) for cfg in await services.store.list_configurations(workspace_id)]

    @get("/configurations/{configuration_id:str}", summary="Get a configuration")
    async def read(self, configuration_id: str, services: Services, principal: Principal) -> Configuration:
        return public(await auth.configuration(services, principal, configuration_id))

    @put("/configurations/{configuration_id:str}", summary="Replace a configuration")
    async def update(
        self, configuration_id: str, data: ConfigurationCreate, services: Services, principal: Principal
    ) -> Configuration:
        current = await auth.configuration(services, principal, configuration_id, "admin")
        check_limits(services.settings, data)
        check_workflow(data)
        await check_build_source(services, current.workspace_id, data.build)
        await check_images(services, current.workspace_id, data)
        cfg = _configuration(
            data,
            current,
            id=current.id,
            workspace_id=current.workspace_id,
            created_at=current.created_at,
            updated_at=utcnow(),
        )
        await services.store.put_configuration(cfg)
        await services.audit.record(
            principal.actor, cfg.workspace_id, "configuration.update", cfg.id, {"name": cfg.name}
        )
        return public(cfg)

    @delete("/configurations/{configuration_id:str}", status_code=204, summary="Delete a configuration")
    async def remove(self, configuration_id: str, services: Services, principal: Principal) -> None:
        cfg = await auth.configuration(services, principal, configuration_id, "admin")
        await services.store.delete_configuration(cfg)
        await services.audit.record(
            principal.actor, cfg.workspace_id, "configuration.delete", cfg.id, {"name": cfg.name}
        )
