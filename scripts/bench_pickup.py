"""Benchmark: how fast an idle worker picks up a run, and what idling costs Redis.

Pickup latency is the time from just before the client sends `POST /configurations/{id}/runs` to the
`created_at` of that run's `run.started` event (one machine, one clock). The baseline is a plain arq
worker with default settings (it polls every 0.5 s), measured in the same run on its own private Redis.

This module also holds the harness the other benchmark scripts import: `ade_stack()` starts a private
Redis, `ade serve` and `ade worker`, waits for /readyz, and stops all of it on the way out.

Usage: python scripts/bench_pickup.py [--runs 50] [--arq-jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

from ade.cli.redis_server import RedisServer, free_port  # noqa: E402

API = "/api/v1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
IDLE_WINDOW_S = 5.0
MAX_GAP_S = 0.5  # random pause before each run/job, so nothing phase-locks to a 0.5 s poll


# --- harness ---------------------------------------------------------------------------------------


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so every `finally` (and so every cleanup) runs."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _ade_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "ade"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "ade.cli", *args]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def child_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with its output in `log`, terminated (then killed) when the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def redis_server(directory: Path, *, appendonly: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(directory, appendonly=appendonly)
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass(frozen=True)
class AdeStack:
    base_url: str
    token: str  # the bootstrap token: every request carries it as a bearer token
    redis: RedisServer
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)


def _wait_ready(base_url: str, procs: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            for name, (proc, log) in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"`ade {name}` exited with {proc.returncode}:\n{_tail(log)}")
            try:
                response = client.get(f"{base_url}/readyz")
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
    logs = "\n".join(f"--- {name} ---\n{_tail(log)}" for name, (_, log) in procs.items())
    raise RuntimeError(f"ADE not ready after {READY_TIMEOUT_S:g} s (last: {last})\n{logs}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / CLK_TCK


def machine_busy_seconds() -> float:
    """Busy CPU time of the whole machine, all cores (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@contextlib.contextmanager
def ade_stack(root: Path, *, env: dict[str, str] | None = None) -> Iterator[AdeStack]:
    """A private Redis, `ade serve` and `ade worker` under `root`; everything stops when the block ends."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(redis_server(root / "redis"))
        child_env = {
            **os.environ,
            "ADE_REDIS_URL": server.url,
            "ADE_DATA_DIR": str(root / "data"),
            "ADE_PORT": str(port),
            "ADE_LOG_LEVEL": "WARNING",
            "ADE_BOOTSTRAP_TOKEN": token,
            **(env or {}),
        }
        api_log, worker_log = root / "api.log", root / "worker.log"
        serve = _ade_command("serve", "--port", str(port))
        api = stack.enter_context(child_process(serve, child_env, api_log))
        worker = stack.enter_context(child_process(_ade_command("worker"), child_env, worker_log))
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(base_url, {"serve": (api, api_log), "worker": (worker, worker_log)})
        yield AdeStack(base_url=base_url, token=token, redis=server, api=api, worker=worker)


async def create_configuration(client: httpx.AsyncClient, script: str) -> str:
    """A fresh workspace with one single-step configuration; returns the configuration id."""
    response = await client.post(f"{API}/workspaces", json={"name": "bench"})
    response.raise_for_status()
    workspace_id = response.json()["id"]
    body = {"name": "bench", "steps": [{"name": "s", "script": script}]}
    response = await client.post(f"{API}/workspaces/{workspace_id}/configurations", json=body)
    response.raise_for_status()
    configuration_id: str = response.json()["id"]
    return configuration_id


async def run_events(client: httpx.AsyncClient, run_id: str, after: int = 0, limit: int = 1000) -> list[Any]:
    params = {"after_sequence": after, "limit": limit}
    response = await client.get(f"{API}/runs/{run_id}/events", params=params)
    response.raise_for_status()
    items: list[Any] = response.json()["items"]
    return items


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created_at"]).timestamp()


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(pct) - 1]


def redis_commandstats(url: str) -> dict[str, int]:
    with redis.Redis.from_url(url) as client:
        stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def idle_commands_per_s(url: str, window_s: float = IDLE_WINDOW_S) -> tuple[float, dict[str, int]]:
    """Commands per second other clients send to an idle Redis (our own INFO calls excluded)."""
    before = redis_commandstats(url)
    time.sleep(window_s)
    after = redis_commandstats(url)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items() if name != "info"}
    delta = {name: calls for name, calls in delta.items() if calls}
    return sum(delta.values()) / window_s, delta


# --- ADE pickup ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pickup:
    post_to_started_ms: float
    queued_to_started_ms: float
    post_response_ms: float


async def _wait_run_end(client: httpx.AsyncClient, run_id: str) -> None:
    params = {"stream": "true", "after_sequence": "0"}
    async with client.stream("GET", f"{API}/runs/{run_id}/events", params=params) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line == "event: end":
                return
    raise RuntimeError(f"the SSE stream of {run_id} closed before `event: end`")


async def one_ade_run(client: httpx.AsyncClient, configuration_id: str) -> Pickup:
    sent = time.time()
    response = await client.post(f"{API}/configurations/{configuration_id}/runs", json={})
    answered = time.time()
    response.raise_for_status()
    run_id = response.json()["id"]
    await _wait_run_end(client, run_id)
    by_type = {event["type"]: event for event in await run_events(client, run_id)}
    if by_type.get("run.completed", {}).get("payload", {}).get("status") != "succeeded":
        raise RuntimeError(f"run {run_id} did not succeed: {by_type.get('run.completed')}")
    started = event_time(by_type["run.started"])
    return Pickup(
        post_to_started_ms=(started - sent) * 1000,
        queued_to_started_ms=(started - event_time(by_type["run.queued"])) * 1000,
        post_response_ms=(answered - sent) * 1000,
    )


async def ade_pickups(ade: AdeStack, runs: int, warmups: int, rng: random.Random) -> list[Pickup]:
    async with ade.client() as client:
        configuration_id = await create_configuration(client, "true")
        for _ in range(warmups):
            await one_ade_run(client, configuration_id)
        results = []
        for _ in range(runs):
            await asyncio.sleep(rng.uniform(0, MAX_GAP_S))
            results.append(await one_ade_run(client, configuration_id))
        return results


# --- plain arq baseline ----------------------------------------------------------------------------


async def record_start(ctx: dict[str, Any]) -> float:
    """The baseline job: when did a plain arq worker start it?"""
    return time.time()


def run_plain_arq_worker(url: str) -> None:
    Worker(functions=[record_start], redis_settings=RedisSettings.from_dsn(url)).run()


async def _arq_worker_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Enqueue a job and wait until it ran: the worker is then polling."""
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        job = await pool.enqueue_job("record_start")
        assert job is not None
        await job.result(timeout=timeout_s, poll_delay=0.05)
    finally:
        await pool.aclose()


async def arq_pickups(url: str, jobs: int, warmups: int, rng: random.Random) -> list[float]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        latencies = []
        for index in range(warmups + jobs):
            await asyncio.sleep(rng.uniform(0, MAX_GAP_S))
            sent = time.time()
            job = await pool.enqueue_job("record_start")
            assert job is not None
            started: float = await job.result(timeout=30, poll_delay=0.05)
            if index >= warmups:
                latencies.append((started - sent) * 1000)
        return latencies
    finally:
        await pool.aclose()


# --- report ----------------------------------------------------------------------------------------


def _row(label: str, values: list[float]) -> str:
    return f"  {label:<40}{percentile(values, 50):>9.1f}{percentile(values, 99):>9.1f}{max(values):>9.1f}"


def _commands(delta: dict[str, int]) -> str:
    return ", ".join(f"{name} {calls}" for name, calls in sorted(delta.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="measured ADE runs (default 50)")
    parser.add_argument("--arq-jobs", type=int, default=20, help="measured plain arq jobs (default 20)")
    parser.add_argument("--plain-arq-worker", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_arq_worker:  # the baseline worker's own process
        run_plain_arq_worker(args.plain_arq_worker)
        return
    exit_on_sigterm()
    rng = random.Random(1)
    print(f"pickup benchmark: {args.runs} ADE runs, {args.arq_jobs} plain arq jobs ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="ade-bench-") as tmp:
        root = Path(tmp)
        with ade_stack(root / "ade") as ade:
            pickups = asyncio.run(ade_pickups(ade, args.runs, warmups=3, rng=rng))
            time.sleep(1.0)  # let the last run's bookkeeping settle: the system is idle from here
            ade_idle, ade_idle_cmds = idle_commands_per_s(ade.redis.url)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(redis_server(root / "arq-redis", appendonly=False))
            worker_args = [sys.executable, str(Path(__file__).resolve()), "--plain-arq-worker", server.url]
            stack.enter_context(child_process(worker_args, dict(os.environ), root / "arq-worker.log"))
            asyncio.run(_arq_worker_ready(server.url))
            arq_ms = asyncio.run(arq_pickups(server.url, args.arq_jobs, warmups=2, rng=rng))
            time.sleep(1.0)
            arq_idle, arq_idle_cmds = idle_commands_per_s(server.url)

    ade_ms = [p.post_to_started_ms for p in pickups]
    print()
    print("Pickup latency, ms (random 0-500 ms gap between runs; p99 interpolated)")
    print(f"  {'':<40}{'p50':>9}{'p99':>9}{'max':>9}")
    print(_row(f"ADE: POST sent -> run.started (n={len(ade_ms)})", ade_ms))
    print(_row("  of which run.queued -> run.started", [p.queued_to_started_ms for p in pickups]))
    print(_row("  POST sent -> 201 response received", [p.post_response_ms for p in pickups]))
    print(_row(f"plain arq: enqueue -> start (n={len(arq_ms)})", arq_ms))
    p50_ratio = percentile(arq_ms, 50) / percentile(ade_ms, 50)
    p99_ratio = percentile(arq_ms, 99) / percentile(ade_ms, 99)
    print(f"  ADE is {p50_ratio:.0f}x faster at p50, {p99_ratio:.0f}x at p99 than a default arq worker")
    print()
    print(f"Idle Redis load, commands/s over {IDLE_WINDOW_S:g} s (our INFO calls excluded)")
    print(f"  {'ADE worker + API':<40}{ade_idle:>9.1f}   ({_commands(ade_idle_cmds)})")
    print(f"  {'plain arq worker':<40}{arq_idle:>9.1f}   ({_commands(arq_idle_cmds)})")
    print(f"  ratio ADE / plain arq: {ade_idle / arq_idle:.2f}" if arq_idle else "")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # everything was stopped on the way out
        sys.exit(130)
