"""The runner protocol (README "Runners"): what an `ade runner` calls, with its runner token. Thin: the
work is `ade.lifecycle.remote`.

    POST /runner/claim                          a run to execute (long poll), or 204
    POST /runner/heartbeat                      "still here, running these"; answers which to cancel
    POST /runner/runs/{run_id}/chunks           reports (events) of a run, applied once each
    PUT  /runner/runs/{run_id}/outputs/{path}   an output file of a run
    GET  /runner/runs/{run_id}/inputs/{index}   an input file of a run
    GET  /runner/runs/{run_id}/caches/{index}/{key_hash}   a step's cache (a tar), or 404 cache_miss
    PUT  /runner/runs/{run_id}/caches/{index}/{key_hash}   a step's new cache version
"""

from __future__ import annotations

import asyncio
import tarfile
from typing import Any

from litestar import Controller, Request, Response, get, post, put
from litestar.response import File

from ade.api.auth import RUNNER_ROUTES
from ade.api.deps import Services
from ade.api.openapi import BINARY, JSON, Answer, documented
from ade.core import keys
from ade.core.errors import Forbidden, Invalid, NotFound, TooLarge, Unauthorized
from ade.core.models import TERMINAL_RUN_STATUSES, Run, Runner, Step, utcnow
from ade.core.runner_messages import (
    Assignment,
    Chunk,
    ChunkAnswer,
    Claim,
    Heartbeat,
    HeartbeatAnswer,
    UploadedOutput,
)
from ade.execution import cache_transfer
from ade.lifecycle import remote
from ade.records import runners

CLAIM_POLL_S = 0.1  # how often a waiting claim looks at the offers again


class RunnerProtocolController(Controller):
    path = "/runner"
    tags = ["runner protocol"]
    opt = RUNNER_ROUTES  # the only handlers a runner token opens (`ade.api.auth`)

    @post(
        "/claim",
        summary="Take a run to execute (long poll: waits up to wait_s for one)",
        status_code=200,
        opt=documented(
            Answer(200, "A run to execute, with what it needs", {JSON: Assignment}),
            Answer(204, "No run for this runner now: ask again"),
        ),
    )
    async def claim(self, data: Claim, services: Services, runner: Runner) -> Response[Assignment | None]:
        registered = set(runner.labels)
        wanted = set(data.labels) or registered
        if not wanted <= registered:
            extra = ", ".join(sorted(wanted - registered))
            raise Forbidden(
                f"this runner was not registered with the labels {extra}", code="labels_not_registered"
            )
        settings = services.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(data.wait_s, settings.runner_claim_wait_s)
        while True:
            if (await runners.get(services.store, runner.id)).revoked_at is not None:  # revoked meanwhile
                raise Unauthorized(runners.INVALID_TOKEN, code="invalid_token")
            assignment = await remote.take_run(settings, services.store, runner, runner.workspace_id, wanted)
            if assignment is not None:
                return Response(assignment)
            if loop.time() >= deadline or services.hub.draining:  # draining: this process is stopping
                return Response(None, status_code=204)  # nothing for it now: it asks again
            await asyncio.sleep(CLAIM_POLL_S)

    @post("/heartbeat", summary="Still here, running these runs: which to cancel", status_code=200)
    async def heartbeat(self, data: Heartbeat, services: Services, runner: Runner) -> HeartbeatAnswer:
        cancel: list[str] = []
        unknown: list[str] = []
        mine: list[str] = []
        for run_id in data.runs:
            try:
                run = await remote.run_of(services.store, runner, run_id)
            except NotFound:
                unknown.append(run_id)
                continue
            if run.status in TERMINAL_RUN_STATUSES:
                unknown.append(run_id)
            else:
                mine.append(run_id)
                if await services.redis.exists(keys.run_cancel(run_id)):
                    cancel.append(run_id)
        await remote.keep_alive(services.settings, services.redis, runner, mine)
        await runners.heartbeat(services.store, runner.id, mine, utcnow())
        return HeartbeatAnswer(cancel=cancel, unknown=unknown)

    @post(
        "/runs/{run_id:str}/chunks",
        summary="Report a chunk of a run's events (applied once)",
        description='Body: `{offset, reports: [{id, type, payload, source}]}` (README "Runners"). Decoded '
        "here straight into its struct: at a million events a run, the generic body parsing was the API's "
        "largest cost.",
        status_code=200,
        opt=documented(request={JSON: Chunk}),
    )
    async def chunk(
        self, run_id: str, request: Request[Any, Any, Any], services: Services, runner: Runner
    ) -> ChunkAnswer:
        data = remote.decode_chunk(await request.body())
        return await remote.apply_chunk(services.settings, services.store, runner, run_id, data)

    @put(
        "/runs/{run_id:str}/outputs/{path:path}",
        summary="Upload an output file of a run",
        request_max_body_size=None,  # bounded by ADE_MAX_OUTPUT_BYTES while streaming instead
        status_code=200,
        opt=documented(request={"application/octet-stream": BINARY}),
    )
    async def output(
        self, run_id: str, path: str, request: Request[Any, Any, Any], services: Services, runner: Runner
    ) -> UploadedOutput:
        run = await remote.run_of(services.store, runner, run_id)
        parts = remote.output_parts(path)
        body = await _bounded_body(request, services.settings.max_output_bytes, "outputs")
        written = await asyncio.to_thread(remote.write_output, services.settings, run.id, parts, [body])
        return UploadedOutput(path="/".join(parts), size=written)

    @get(
        "/runs/{run_id:str}/inputs/{index:int}",
        summary="Download an input file of a run",
        opt=documented(Answer(200, "The input's bytes", {"application/octet-stream": BINARY})),
    )
    async def input(self, run_id: str, index: int, services: Services, runner: Runner) -> File:
        run = await remote.run_of(services.store, runner, run_id)
        if not 0 <= index < len(run.input_artifacts):
            raise NotFound(f"run {run_id!r} has no input {index}", code="input_not_found")
        artifact = await services.artifacts.get(run.workspace_id, run.input_artifacts[index].key)
        return File(services.artifacts.path_of(artifact.key), media_type="application/octet-stream")

    @get(
        "/runs/{run_id:str}/caches/{index:int}/{key_hash:str}",
        summary="A step's current cache version (a tar), or 404 cache_miss",
        media_type="application/x-tar",
        opt=documented(Answer(200, "The cache, a tar", {"application/x-tar": BINARY})),
    )
    async def cache(
        self, run_id: str, index: int, key_hash: str, services: Services, runner: Runner
    ) -> Response[bytes]:
        run, step = await _step_of(services, runner, run_id, index, key_hash)
        data = await asyncio.to_thread(cache_transfer.export_current, services.settings, run, step, key_hash)
        if data is None:
            raise NotFound(f"step {step.name!r} has no cache under this key yet", code="cache_miss")
        return Response(data, media_type="application/x-tar")

    @put(
        "/runs/{run_id:str}/caches/{index:int}/{key_hash:str}",
        summary="Save a step's new cache version (a tar)",
        request_max_body_size=None,  # bounded by ADE_MAX_CACHE_BYTES while streaming instead
        status_code=204,
        opt=documented(request={"application/x-tar": BINARY}),
    )
    async def save_cache(
        self,
        run_id: str,
        index: int,
        key_hash: str,
        request: Request[Any, Any, Any],
        services: Services,
        runner: Runner,
    ) -> None:
        run, step = await _step_of(services, runner, run_id, index, key_hash)
        limit = services.settings.max_cache_bytes
        body = await _bounded_body(request, limit + limit // 10 + 1024 * 1024 if limit else 0, "cache")
        try:
            await asyncio.to_thread(
                cache_transfer.import_version, services.settings, run, step, key_hash, body
            )
        except cache_transfer.CacheTooLarge as exc:
            raise TooLarge(f"{exc} (ADE_MAX_CACHE_BYTES)", code="cache_too_large") from None
        except tarfile.TarError as exc:
            raise Invalid(f"the cache is not a valid tar: {exc}", code="bad_cache") from None


async def _step_of(
    services: Services, runner: Runner, run_id: str, index: int, key_hash: str
) -> tuple[Run, Step]:
    run = await remote.run_of(services.store, runner, run_id)
    if not 0 <= index < len(run.plan.steps) or not cache_transfer.KEY_HASH.match(key_hash):
        raise NotFound(f"run {run_id!r} has no step {index} with that cache", code="cache_miss")
    return run, run.plan.steps[index]


async def _bounded_body(request: Request[Any, Any, Any], limit_bytes: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if limit_bytes and size > limit_bytes:
            raise TooLarge(f"the {what} exceeds {limit_bytes} bytes", code=f"{what}_too_large")
        chunks.append(chunk)
    return b"".join(chunks)
