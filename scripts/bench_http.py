"""Benchmark: requests/s of ADE's API against a bare Litestar app on the same server stack.

`GET /api/v1/runs/{id}` and `POST /api/v1/configurations/{id}/runs` with an API key, against a bare
Litestar app (this file, `--bare`) whose handlers return (and, for POST, decode) a struct of the same
size, both served by uvicorn with uvloop and httptools, one process each, measured in the same run, in
interleaved rounds (each figure is the median of its rounds). Beside each: the server process's CPU time
per request (user + system, its threads included), which says what a rate cannot on a machine whose load
generator shares the cores: what the request itself costs.
The load: `--connections` keep-alive HTTP/1.1 connections from this process, each sending its next request
as soon as the answer arrived.

Usage: python scripts/bench_http.py [--seconds 3] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
from litestar.response import Stream

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pickup import API, REPO, ade_stack, child_process, cpu_seconds, exit_on_sigterm, free_port


class Thing(msgspec.Struct):
    id: str
    workspace_id: str
    status: str
    steps: list[dict[str, Any]]
    created_at: str


def bare_app() -> Any:
    """The baseline: Litestar handlers with nothing of ours; `/stored/{id}` also reads its struct from Redis
    (`BENCH_REDIS_URL`) with redis-py, as `GET /runs/{id}` must."""
    import os

    from litestar import Litestar, get, post
    from redis.asyncio import Redis

    thing = Thing("run_x", "ws_x", "queued", [{"name": "s", "status": "pending"}], "2026-11-30T00:00:00Z")
    redis = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    decoder = msgspec.json.Decoder(Thing)

    @get("/thing/{thing_id:str}")
    async def read(thing_id: str) -> Thing:
        return thing

    @get("/stored/{thing_id:str}")
    async def read_stored(thing_id: str) -> Thing:
        raw = await redis.get(f"thing:{thing_id}")
        if raw is None:  # the first request stores it
            await redis.set(f"thing:{thing_id}", msgspec.json.encode(thing))
            return thing
        return decoder.decode(raw)

    @post("/thing", status_code=201)
    async def create(data: dict[str, Any]) -> Thing:
        return thing

    @get("/stream")
    async def stream() -> Stream:
        """An idle SSE stream: one frame, then nothing until the client leaves (`bench_idle_sse`)."""

        async def frames() -> AsyncIterator[bytes]:
            yield b"retry: 3000\n\n"
            await asyncio.Event().wait()

        return Stream(frames(), media_type="text/event-stream")

    return Litestar([read, read_stored, create, stream])


@contextlib.contextmanager
def bare_server(redis_url: str, log_dir: Path) -> Iterator[tuple[int, int]]:
    """`bare_app` served like `ade serve` (uvicorn, uvloop, httptools, one process): its (port, pid)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench_http:bare_app",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--app-dir",
        str(REPO / "scripts"),
    ]
    with child_process(command, {"BENCH_REDIS_URL": redis_url}, log_dir / "bare.log") as bare:
        for _ in range(100):
            try:
                subprocess.run(
                    ["curl", "-fs", f"http://127.0.0.1:{port}/stored/x"], check=True, capture_output=True
                )
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        yield port, bare.pid


async def load(port: int, request: bytes, seconds: float, connections: int) -> float:
    """Requests/s of `request` (a complete HTTP/1.1 request) over keep-alive connections."""
    done = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            writer.write(request)
            status = await reader.readline()
            if not status.startswith(b"HTTP/1.1 2"):
                raise RuntimeError(status.decode())
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            done += 1
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    return done / (time.monotonic() - started)


def http_request(method: str, path: str, token: str | None, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def ade_requests(base_url: str, bootstrap: str) -> tuple[bytes, bytes]:
    """A workspace, an operator key, a configuration and a run: the GET and POST requests to measure."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {bootstrap}"}) as http:
        ws = (await http.post(f"{API}/workspaces", json={"name": "http"})).json()["id"]
        key = (
            await http.post(f"{API}/workspaces/{ws}/api-keys", json={"name": "k", "role": "operator"})
        ).json()
        # Offered to runners (none runs here): the runs the POSTs create never load the machine.
        body = {"name": "http", "steps": [{"name": "s", "script": "true"}], "runs_on": ["nobody"]}
        cfg = (await http.post(f"{API}/workspaces/{ws}/configurations", json=body)).json()["id"]
        run_id = (await http.post(f"{API}/configurations/{cfg}/runs", json={})).json()["id"]
    token = key["secret"]
    return (
        http_request("GET", f"{API}/runs/{run_id}", token),
        http_request("POST", f"{API}/configurations/{cfg}/runs", token, b"{}"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    exit_on_sigterm()
    posting = max(1, args.connections // 4)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ade-http-")))
        ade = stack.enter_context(ade_stack(tmp / "ade"))
        bare_port, bare_pid = stack.enter_context(bare_server(ade.redis.url, tmp))
        ade_port = int(ade.base_url.rsplit(":", 1)[1])
        ade_get, ade_post = asyncio.run(ade_requests(ade.base_url, ade.token))
        plan = {  # figure: (port, request, connections)
            "bare_get": (bare_port, http_request("GET", "/thing/x", None), args.connections),
            "bare_redis_get": (bare_port, http_request("GET", "/stored/x", None), args.connections),
            "GET /runs/{id}": (ade_port, ade_get, args.connections),
            "bare_post": (bare_port, http_request("POST", "/thing", None, b"{}"), posting),
            "POST .../runs": (ade_port, ade_post, posting),
        }
        # Interleaved rounds, medians: a machine whose speed drifts over a minute shifts both sides.
        samples: dict[str, list[float]] = {name: [] for name in plan}
        cpu_us: dict[str, list[float]] = {name: [] for name in plan}  # server CPU per request
        for port, request, connections in plan.values():  # warm-up: connections, pools, caches
            asyncio.run(load(port, request, 1.0, connections))
        for _ in range(args.rounds):
            for name, (port, request, connections) in plan.items():
                pid = ade.api.pid if port == ade_port else bare_pid
                cpu_before = cpu_seconds(pid)
                rate = asyncio.run(load(port, request, args.seconds, connections))
                samples[name].append(rate)
                cpu_us[name].append(1e6 * (cpu_seconds(pid) - cpu_before) / (rate * args.seconds))
    figures = {name: statistics.median(values) for name, values in samples.items()}
    bare_get, bare_post = figures["bare_get"], figures["bare_post"]
    print(
        "HTTP: requests/s, one server process each, uvicorn + uvloop + httptools, keep-alive connections "
        f"(median of {args.rounds} interleaved rounds), and the server's CPU per request"
    )
    for label, name, base in (
        ("bare Litestar GET", "bare_get", None),
        ("bare Litestar GET + one Redis GET", "bare_redis_get", bare_get),
        ("ADE GET /runs/{id} (API key)", "GET /runs/{id}", bare_get),
        ("bare Litestar POST (decode + encode)", "bare_post", None),
        ("ADE POST /configurations/{id}/runs", "POST .../runs", bare_post),
    ):
        ratio = f"{figures[name] / base:5.2f} of bare" if base else " " * 13
        cpu = f"{statistics.median(cpu_us[name]):6,.0f} µs CPU"
        rounds = ", ".join(f"{value:,.0f}" for value in samples[name])
        print(f"  {label:38s} {figures[name]:8,.0f}  {ratio}  {cpu}   (rounds: {rounds})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
