"""`ade runner --url URL --token T`: executes runs on a machine that reaches the API over HTTP and nothing
else — no Redis, no shared data directory (README "Runners").

Each of `--concurrency` slots long-polls `POST /runner/claim` for a run and executes it with the workers'
engine (`ade.execution.remote`); one task beats (`POST /runner/heartbeat`) every half second while runs
are in flight (every few seconds otherwise), and the answer says which runs to cancel. Every call rides out
network errors and API restarts: it is retried with backoff until it gets an answer, and a chunk of
reports sent again is applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import tarfile
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ade.core.models import Run, Step
from ade.core.outage import Backoff
from ade.core.runner_messages import (
    Assignment,
    Chunk,
    ChunkAnswer,
    Claim,
    Heartbeat,
    HeartbeatAnswer,
)
from ade.core.settings import Settings
from ade.execution.cache_transfer import CacheTooLarge, export_current, import_version
from ade.execution.remote import execute_assignment

log = logging.getLogger("ade.runner")

IDLE_HEARTBEAT_S = 3.0
ANSWERED_MARK = "answered"  # touched in its directory whenever the API answers a heartbeat (health checks)
STALE_AFTER_S = 30.0
_ASSIGNMENT = msgspec.json.Decoder(Assignment)
_CHUNK_ANSWER = msgspec.json.Decoder(ChunkAnswer)
_HEARTBEAT_ANSWER = msgspec.json.Decoder(HeartbeatAnswer)
_ENCODER = msgspec.json.Encoder()
_RETRIED_CODES = {"stream_busy"}  # 409s that clear by themselves


class RunnerRefused(Exception):
    """The API refused this runner for good (its token is revoked or wrong)."""


class RunnerClient:
    """The runner protocol over HTTP; every call retried (with backoff) until the API answers it."""

    def __init__(self, url: str, token: str, settings: Settings) -> None:
        self._settings = settings  # where its cache copies go (`pull`)
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, connect=5.0),
        )
        self._unreachable = False

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        backoff = Backoff(first_s=0.1, max_s=5.0)
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                self._note_unreachable(f"{type(exc).__name__}: {exc}")
                await backoff.sleep()
                continue
            if response.status_code == 401:
                raise RunnerRefused(response.text)
            if response.status_code >= 500 or response.status_code == 429 or self._busy(response):
                self._note_unreachable(f"HTTP {response.status_code}")
                await backoff.sleep()
                continue
            if self._unreachable:
                log.warning("the API answers again")
                self._unreachable = False
            return response

    def _note_unreachable(self, why: str) -> None:
        if not self._unreachable:
            log.warning("the API is not answering (%s); retrying with backoff", why)
            self._unreachable = True

    @staticmethod
    def _busy(response: httpx.Response) -> bool:
        return response.status_code == 409 and _code(response) in _RETRIED_CODES

    async def claim(self, labels: list[str], wait_s: float) -> Assignment | None:
        body = _ENCODER.encode(Claim(labels=labels, wait_s=wait_s))
        response = await self._call(
            "POST",
            "/runner/claim",
            content=body,
            headers=_JSON,
            timeout=httpx.Timeout(wait_s + 30, connect=5.0),
        )
        if response.status_code == 204:
            return None
        _raise_for(response)
        return _ASSIGNMENT.decode(response.content)

    async def heartbeat(self, runs: list[str]) -> HeartbeatAnswer:
        response = await self._call(
            "POST", "/runner/heartbeat", content=_ENCODER.encode(Heartbeat(runs=runs)), headers=_JSON
        )
        _raise_for(response)
        return _HEARTBEAT_ANSWER.decode(response.content)

    async def send_chunk(self, run_id: str, chunk: Chunk) -> ChunkAnswer:
        response = await self._call(
            "POST", f"/runner/runs/{run_id}/chunks", content=_ENCODER.encode(chunk), headers=_JSON
        )
        if response.status_code == 409 and _code(response) == "chunk_gap":
            details = response.json().get("details") or [{}]
            return ChunkAnswer(applied=int(details[0].get("applied", chunk.offset)), cancel_requested=False)
        if response.status_code in (404, 409) and _code(response) in ("run_finished", "run_not_found"):
            # The run ended without us (cancelled before it started, or given up as lost): stop it here.
            log.warning("run %s ended on the API's side: %s", run_id, response.json().get("error"))
            return ChunkAnswer(applied=chunk.offset + len(chunk.reports), cancel_requested=True)
        _raise_for(response)
        return _CHUNK_ANSWER.decode(response.content)

    async def fetch_input(self, run_id: str, index: int, destination: Path) -> None:
        response = await self._call("GET", f"/runner/runs/{run_id}/inputs/{index}")
        _raise_for(response)
        await asyncio.to_thread(destination.write_bytes, response.content)

    async def pull(self, run: Run, step: Step, key_hash: str) -> None:
        """The API's current version of a step's cache, made the current one here (a miss: nothing)."""
        index = _index_of(run, step)
        response = await self._call("GET", f"/runner/runs/{run.id}/caches/{index}/{key_hash}")
        if response.status_code == 404:
            return
        _raise_for(response)
        try:
            await asyncio.to_thread(import_version, self._settings, run, step, key_hash, response.content)
        except (CacheTooLarge, tarfile.TarError) as exc:
            raise OSError(f"the API's cache could not be used: {exc}") from None

    async def push(self, run: Run, step: Step, key_hash: str) -> None:
        """This runner's new version of a step's cache, sent to the API (which keeps it)."""
        data = await asyncio.to_thread(export_current, self._settings, run, step, key_hash)
        if data is None:
            return
        index = _index_of(run, step)
        response = await self._call("PUT", f"/runner/runs/{run.id}/caches/{index}/{key_hash}", content=data)
        if response.status_code >= 400:
            raise OSError(f"the API did not keep it: HTTP {response.status_code} {response.text[:300]}")

    async def upload_output(self, run_id: str, path: str, source: Path) -> None:
        response = await self._call(
            "PUT", f"/runner/runs/{run_id}/outputs/{path}", content=await asyncio.to_thread(source.read_bytes)
        )
        _raise_for(response)


_JSON = {"Content-Type": "application/json"}


def _index_of(run: Run, step: Step) -> int:
    return next(index for index, known in enumerate(run.plan.steps) if known.name == step.name)


def _code(response: httpx.Response) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        return str(response.json().get("code"))
    return None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise RuntimeError(
            f"the API refused {response.request.method} {response.request.url.path}: "
            f"HTTP {response.status_code} {response.text[:500]}"
        )


class Runner:
    def __init__(self, settings: Settings, client: RunnerClient, labels: list[str], concurrency: int) -> None:
        self.settings, self.client, self.labels = settings, client, labels
        self.concurrency = max(1, concurrency)
        self.name = socket.gethostname()
        self._cancels: dict[str, asyncio.Event] = {}
        self._busy = asyncio.Event()
        self._heartbeat_s = 0.5

    async def serve(self) -> None:
        log.info(
            "runner on %s: %d slot(s), labels %s, data in %s",
            self.name,
            self.concurrency,
            ",".join(self.labels) or "(all registered)",
            self.settings.data_dir,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._beat_forever())
            for _ in range(self.concurrency):
                tasks.create_task(self._slot())

    async def _slot(self) -> None:
        while True:
            assignment = await self.client.claim(self.labels, self.settings.runner_claim_wait_s)
            if assignment is None:
                continue
            run_id = assignment.run.id
            self._heartbeat_s = assignment.heartbeat_s
            cancel = self._cancels[run_id] = asyncio.Event()
            self._busy.set()
            log.info("run %s: started", run_id)
            try:
                status = await execute_assignment(
                    self.settings, assignment, self.client.send_chunk, self.client, cancel, self.name
                )
                log.info("run %s: %s", run_id, status)
            finally:
                del self._cancels[run_id]

    async def _beat_forever(self) -> None:
        while True:
            answer = await self.client.heartbeat(list(self._cancels))
            await asyncio.to_thread((self.settings.data_dir / ANSWERED_MARK).touch)
            for run_id in answer.cancel + answer.unknown:
                if event := self._cancels.get(run_id):
                    event.set()
            self._busy.clear()
            interval_s = self._heartbeat_s if self._cancels else IDLE_HEARTBEAT_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._busy.wait(), timeout=interval_s)


def run_runner(url: str, token: str, labels: list[str], concurrency: int, data_dir: Path | None) -> None:
    settings = Settings.from_env()
    directory = (data_dir or Path(os.environ.get("ADE_DATA_DIR") or "./.ade-runner")).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.replace(settings, data_dir=directory)

    async def main() -> None:
        client = RunnerClient(url, token, settings)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await Runner(settings, client, labels, concurrency).serve()
        except asyncio.CancelledError:
            log.info("runner stopped")
        except ExceptionGroup as group:
            refused = group.subgroup(RunnerRefused)
            if refused is None:
                raise
            raise SystemExit(f"the API refused this runner's token: {refused.exceptions[0]}") from None
        finally:
            await client.close()

    asyncio.run(main())
