"""Benchmark: what isolation costs. The same runs under each executor, measured in the same run:

- host: `ADE_EXECUTOR=host`, a plain `bash -c` (the baseline: no isolation),
- sandbox: `ADE_EXECUTOR=sandbox`, bubblewrap,
- container: a step whose `image` is a registered slug of the test suite's busybox image
  (tests/images/busybox.py), under podman; skipped, with the reason, when podman or the image is missing.

Two private stacks (harness: bench_pickup.ade_stack), both up for the whole measurement: one worker with
`ADE_EXECUTOR=host` runs the host and the container steps (a step with an image always runs in a
container), the other `ADE_EXECUTOR=sandbox`. Each round runs one measurement per executor in a shuffled
order, with a random 0-0.5 s pause before every run, so load that comes and goes on the machine falls on
every executor alike. Warm-up runs (not counted) come first; nothing is dropped afterwards.

Measured per executor:
1. pickup latency: POST sent -> `run.started` created_at, for a step `true` (--runs, default 30);
2. a 100-line run, step `seq 1 100`: POST sent -> `run.completed` created_at, and the step's own
   `run.step.completed` duration_ms (--line-runs, default 20); the 100 console lines are checked.
Then the launchers alone, without the engine (--raw-runs, default 10), each printing the same 100 lines:
the bare tool (`bash -c`, a bubblewrap with just `--unshare-all --ro-bind / /`, `podman run --rm`), and
ADE's own launcher (ade.execution's spawn, with a run step's binds, limits and environment, called
directly); and `podman image inspect`, which ADE's container launcher runs before each step.

Usage: python scripts/bench_isolation.py [--runs 30] [--line-runs 20] [--raw-runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests.images.busybox: the test suite's image
from bench_pickup import (  # noqa: E402  # noqa: E402
    API,
    MAX_GAP_S,
    AdeStack,
    _wait_run_end,
    ade_stack,
    cpu_seconds,
    event_time,
    exit_on_sigterm,
    machine_busy_seconds,
    percentile,
    run_events,
)

from ade.core import paths  # noqa: E402
from ade.core.settings import Settings  # noqa: E402
from ade.execution import isolation  # noqa: E402
from ade.execution.deps import base_environment  # noqa: E402
from ade.execution.limits import Limits  # noqa: E402
from ade.execution.sandbox import WORK_DIR, ExecutorName, prepare_dirs  # noqa: E402
from tests.images.busybox import build_image  # noqa: E402

EXECUTORS = ("host", "sandbox", "container")
IMAGE_SLUG = "bench-busybox"
LINES = 100
LINES_SCRIPT = f"seq 1 {LINES}"
WARMUPS = 2
IDLE_SAMPLE_S = 3.0
RAW_TIMEOUT_S = 30.0


# --- the executors under test -----------------------------------------------------------------------


@dataclass
class Target:
    """One executor: the stack that runs its steps and its two configurations."""

    name: str
    stack: AdeStack
    image: str | None = None  # the slug its steps name (container only)
    client: httpx.AsyncClient | None = None
    pickup_configuration: str = ""
    lines_configuration: str = ""
    pickups_ms: list[float] = field(default_factory=list)
    line_runs: list[LineRun] = field(default_factory=list)


@dataclass(frozen=True)
class LineRun:
    """A 100-line run, ms: the whole of it and its parts, from the run's event timestamps."""

    post_to_completed: float
    step_duration: float  # run.step.completed payload duration_ms
    post_to_started: float  # POST sent -> run.started
    to_step_started: float  # run.started -> run.step.started
    to_first_line: float  # run.step.started -> the first console.line
    lines: float  # first -> last console.line
    to_step_completed: float  # last console.line -> run.step.completed
    to_run_completed: float  # run.step.completed -> run.completed

    PARTS = (
        ("POST->run.started", "post_to_started"),
        ("->step.started", "to_step_started"),
        ("->1st line", "to_first_line"),
        ("->100th line", "lines"),
        ("->step.completed", "to_step_completed"),
        ("->run.completed", "to_run_completed"),
    )


async def setup_target(target: Target, client: httpx.AsyncClient) -> None:
    """A workspace (with the image registered, for containers) and its two configurations."""
    target.client = client
    response = await client.post(f"{API}/workspaces", json={"name": f"bench-{target.name}"})
    response.raise_for_status()
    workspace_id = response.json()["id"]
    if target.image is not None:
        body = {"slug": IMAGE_SLUG, "image_url": target.image, "public": False}
        response = await client.post(f"{API}/workspaces/{workspace_id}/docker-images", json=body)
        response.raise_for_status()
    configurations = []
    for script in ("true", LINES_SCRIPT):
        step: dict[str, Any] = {"name": "s", "script": script}
        if target.image is not None:
            step["image"] = IMAGE_SLUG
        body = {"name": f"bench-{target.name}", "steps": [step]}
        response = await client.post(f"{API}/workspaces/{workspace_id}/configurations", json=body)
        response.raise_for_status()
        configurations.append(response.json()["id"])
    target.pickup_configuration, target.lines_configuration = configurations


async def _run(client: httpx.AsyncClient, configuration_id: str) -> tuple[float, list[dict[str, Any]]]:
    """Start a run and wait for its end: (POST sent, its events). Raises unless it succeeded."""
    sent = time.time()
    response = await client.post(f"{API}/configurations/{configuration_id}/runs", json={})
    response.raise_for_status()
    run_id = response.json()["id"]
    await _wait_run_end(client, run_id)
    events = await run_events(client, run_id)
    completed = next((e for e in events if e["type"] == "run.completed"), None)
    if completed is None or completed["payload"].get("status") != "succeeded":
        lines = [e["payload"]["message"] for e in events if e["type"] == "console.line"][-5:]
        raise RuntimeError(f"run {run_id} did not succeed: {completed and completed['payload']} {lines}")
    return sent, events


async def measure_pickup(target: Target) -> float:
    assert target.client is not None
    sent, events = await _run(target.client, target.pickup_configuration)
    started = next(e for e in events if e["type"] == "run.started")
    return (event_time(started) - sent) * 1000


async def measure_lines(target: Target) -> LineRun:
    assert target.client is not None
    sent, events = await _run(target.client, target.lines_configuration)
    lines = [e for e in events if e["type"] == "console.line"]
    if [e["payload"]["message"] for e in lines] != [str(n) for n in range(1, LINES + 1)]:
        raise RuntimeError(f"{target.name}: the step did not print 1..{LINES}")
    at = {e["type"]: event_time(e) for e in events if e["type"] != "console.line"}
    step_completed = next(e for e in events if e["type"] == "run.step.completed")
    first, last = event_time(lines[0]), event_time(lines[-1])
    return LineRun(
        post_to_completed=(at["run.completed"] - sent) * 1000,
        step_duration=float(step_completed["payload"]["duration_ms"]),
        post_to_started=(at["run.started"] - sent) * 1000,
        to_step_started=(at["run.step.started"] - at["run.started"]) * 1000,
        to_first_line=(first - at["run.step.started"]) * 1000,
        lines=(last - first) * 1000,
        to_step_completed=(at["run.step.completed"] - last) * 1000,
        to_run_completed=(at["run.completed"] - at["run.step.completed"]) * 1000,
    )


async def measure(targets: list[Target], runs: int, line_runs: int, rng: random.Random) -> list[str]:
    """Warm up each target (a target whose warm-up fails is dropped, with the reason), then the rounds."""
    skipped = []
    async with contextlib.AsyncExitStack() as exits:
        clients: dict[int, httpx.AsyncClient] = {}
        for target in targets:
            if id(target.stack) not in clients:
                clients[id(target.stack)] = await exits.enter_async_context(target.stack.client())
            await setup_target(target, clients[id(target.stack)])
        for target in list(targets):
            try:
                for _ in range(WARMUPS):
                    await measure_pickup(target)
                    await measure_lines(target)
            except (RuntimeError, httpx.HTTPError) as exc:
                if target.name == "host":  # the baseline: without it nothing compares
                    raise
                skipped.append(f"{target.name}: its warm-up run failed: {exc}")
                targets.remove(target)
        for index in range(max(runs, line_runs)):
            order = list(targets)
            rng.shuffle(order)
            for target in order:
                if index < runs:
                    await asyncio.sleep(rng.uniform(0, MAX_GAP_S))
                    target.pickups_ms.append(await measure_pickup(target))
                if index < line_runs:
                    await asyncio.sleep(rng.uniform(0, MAX_GAP_S))
                    target.line_runs.append(await measure_lines(target))
    return skipped


# --- the launchers alone ----------------------------------------------------------------------------


Launch = Callable[[Path], Awaitable[None]]  # runs one process printing the lines, in this directory


def _command(argv: list[str]) -> Launch:
    async def launch(cwd: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdin=DEVNULL, stdout=PIPE, stderr=PIPE, start_new_session=True
        )
        out, err = await asyncio.wait_for(proc.communicate(), RAW_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"`{shlex.join(argv[:3])} …` exited {proc.returncode}: {err[-300:]!r}")
        if argv[1] != "image" and out.split() != [str(n).encode() for n in range(1, LINES + 1)]:
            raise RuntimeError(f"`{shlex.join(argv[:3])} …` did not print 1..{LINES}")

    return launch


def _ade_launcher(executor: ExecutorName, image: str | None) -> Launch:
    """The executor's own spawn, as the engine calls it for a run step (binds, limits, environment) but
    without the engine: start, read stdout and stderr to the end, wait, kill what is left."""
    settings = Settings()

    async def launch(cwd: Path) -> None:
        run_dir = paths.run_dir(cwd, f"run_bench{os.urandom(4).hex()}")
        run_dir.create()
        prepare_dirs(settings, run_dir.work, run_dir.outputs)
        job = isolation.step_job(
            settings,
            name=isolation.container_name("bench", 0),
            script=LINES_SCRIPT,
            env={**base_environment(), **isolation.run_locations(run_dir, executor)},
            executor=executor,
            host_cwd=run_dir.work,
            cwd=WORK_DIR,
            binds=isolation.run_binds(run_dir),
            network=False,
            limits=Limits(memory_mb=settings.step_max_memory_mb, processes=settings.step_max_processes),
            image=image,
        )
        read_fd, write_fd = os.pipe()
        try:
            step = await isolation.spawner(settings, job, executor)(write_fd)
        finally:
            os.close(write_fd)
            os.close(read_fd)
        out, err = await asyncio.wait_for(step.proc.communicate(), RAW_TIMEOUT_S)
        await step.kill()
        if step.proc.returncode != 0 or out.split() != [str(n).encode() for n in range(1, LINES + 1)]:
            raise RuntimeError(f"ADE's {executor} launcher exited {step.proc.returncode}: {err[-300:]!r}")

    return launch


def launchers(executors: list[str], image: str | None) -> dict[str, Launch]:
    """Each executor's floor: the bare tool, then ADE's launcher (ade.execution) called directly."""
    found = {
        "bash -c": _command(["bash", "-c", LINES_SCRIPT]),
        "ADE host launcher": _ade_launcher("host", None),
    }
    if "sandbox" in executors:
        bwrap = ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        found["bwrap --unshare-all --ro-bind / /"] = _command([*bwrap, "bash", "-c", LINES_SCRIPT])
        found["ADE sandbox launcher"] = _ade_launcher("sandbox", None)
    if "container" in executors and image is not None:
        ulimits = [arg for limit in Settings().container_ulimits.split(",") for arg in ("--ulimit", limit)]
        podman = ["podman", "run", "--rm", "--network", "none", "--log-driver", "none", *ulimits, image]
        found["podman run --rm (+ ADE's --ulimit)"] = _command([*podman, "sh", "-c", LINES_SCRIPT])
        found["podman image inspect"] = _command(["podman", "image", "inspect", "--format", "{{.Id}}", image])
        found["ADE container launcher (w/ inspect)"] = _ade_launcher("container", image)
    return found


async def time_launchers(
    launches: dict[str, Launch], runs: int, rng: random.Random
) -> dict[str, list[float]]:
    """Wall ms of each, interleaved like the ADE runs; the first round is a warm-up."""
    results: dict[str, list[float]] = {label: [] for label in launches}
    cwd = Path(tempfile.mkdtemp(prefix="ade-bench-raw-"))  # podman's conmon leaves an `oom` file in its cwd
    try:
        for index in range(runs + 1):
            order = list(launches.items())
            rng.shuffle(order)
            for label, launch in order:
                await asyncio.sleep(rng.uniform(0, MAX_GAP_S))
                started = time.perf_counter()
                await launch(cwd)
                if index:
                    results[label].append((time.perf_counter() - started) * 1000)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    return results


# --- load -------------------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def others_busy_cores(window_s: float = IDLE_SAMPLE_S) -> float:
    """Cores kept busy by everything else on the machine (nothing of ours runs yet)."""
    before = machine_busy_seconds()
    time.sleep(window_s)
    return (machine_busy_seconds() - before) / window_s


@dataclass
class CpuWatch:
    """Machine CPU during the measurement, split into ours (stacks + client) and everything else."""

    pids: list[int]
    started: float = 0.0
    machine: float = 0.0
    ours: float = 0.0
    client: float = 0.0
    result: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuWatch:
        self.started, self.machine = time.monotonic(), machine_busy_seconds()
        self.ours, self.client = sum(cpu_seconds(pid) for pid in self.pids), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.monotonic() - self.started
        machine = machine_busy_seconds() - self.machine
        ours = sum(cpu_seconds(pid) for pid in self.pids) - self.ours + time.process_time() - self.client
        self.result = {"wall": wall, "machine": machine, "ours": ours, "others": max(0.0, machine - ours)}


# --- report -----------------------------------------------------------------------------------------

HEADER = f"  {'':<12}{'min':>8}{'p50':>8}{'p99':>8}{'max':>8}{'p50/host':>10}{'p99/host':>10}"


def _table(title: str, rows: dict[str, list[float]]) -> None:
    print()
    print(title)
    print(HEADER)
    base = rows.get("host")
    for name, values in rows.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        ratios = ""
        if base:
            ratios = f"{p50 / percentile(base, 50):>9.2f}x{p99 / percentile(base, 99):>9.2f}x"
        print(f"  {name:<12}{min(values):>8.1f}{p50:>8.1f}{p99:>8.1f}{max(values):>8.1f}{ratios}")


def _values(runs: list[LineRun], part: str) -> list[float]:
    return [float(getattr(run, part)) for run in runs]


def report(
    targets: list[Target],
    raw: dict[str, list[float]],
    cpu: dict[str, float],
    loads: tuple[str, str],
    others_before: float,
) -> None:
    pickups = {t.name: t.pickups_ms for t in targets if t.pickups_ms}
    walls = {t.name: _values(t.line_runs, "post_to_completed") for t in targets if t.line_runs}
    steps = {t.name: _values(t.line_runs, "step_duration") for t in targets if t.line_runs}
    n_pick = len(next(iter(pickups.values()), []))
    n_lines = len(next(iter(walls.values()), []))
    _table(f"Pickup latency, ms: POST sent -> run.started, step `true` (n={n_pick} each)", pickups)
    _table(f"100-line run, ms: POST sent -> run.completed, step `{LINES_SCRIPT}` (n={n_lines} each)", walls)
    _table("  its step: run.step.completed duration_ms (same runs)", steps)
    print()
    print("Where a 100-line run's time goes: p50 of each part, ms (event timestamps; p50s need not add up)")
    print(f"  {'':<12}" + "".join(f"{label:>18}" for label, _ in LineRun.PARTS))
    for target in targets:
        if target.line_runs:
            cells = (percentile(_values(target.line_runs, part), 50) for _, part in LineRun.PARTS)
            print(f"  {target.name:<12}" + "".join(f"{value:>18.1f}" for value in cells))
    if raw:
        print()
        n_raw = len(next(iter(raw.values())))
        print(f"The launchers alone, no engine: wall ms to print {LINES} lines and exit (n={n_raw} each)")
        print(f"  {'':<40}{'min':>8}{'p50':>8}{'p99':>8}{'max':>8}")
        for label, values in raw.items():
            row = (min(values), percentile(values, 50), percentile(values, 99), max(values))
            print(f"  {label:<40}" + "".join(f"{value:>8.1f}" for value in row))
    print()
    cores = os.cpu_count() or 1
    print(f"Machine: {cores} cores; load average (1/5/15 min) {loads[0]} before, {loads[1]} after")
    print(f"  others CPU before we started: {others_before:.2f} cores busy (over {IDLE_SAMPLE_S:g} s)")
    if cpu:
        wall = cpu["wall"]
        print(
            f"  during the ADE runs ({wall:.0f} s): machine {cpu['machine'] / wall:.2f} cores busy, "
            f"ours (stacks + their waited-for children + client) {cpu['ours'] / wall:.2f}, "
            f"others {cpu['others'] / wall:.2f}"
        )
        print('  ("others" includes podman\'s conmon and cleanup processes, which no ADE process waits for)')


# --- main -------------------------------------------------------------------------------------------


def container_image() -> tuple[str | None, str]:
    """The busybox image's reference, or None and why not."""
    if shutil.which("podman") is None:
        return None, "podman is not on PATH"
    image = build_image("podman")
    if image is None:
        return None, "no static busybox, or `podman import` failed (tests/images/busybox.py)"
    return image, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="pickup runs per executor (default 30)")
    parser.add_argument("--line-runs", type=int, default=20, help="100-line runs per executor (default 20)")
    parser.add_argument("--raw-runs", type=int, default=10, help="runs of each bare launcher (default 10)")
    parser.add_argument(
        "--executors", default=",".join(EXECUTORS), help="a comma-separated subset (host is always measured)"
    )
    args = parser.parse_args()
    exit_on_sigterm()
    wanted = {"host", *(name.strip() for name in args.executors.split(",") if name.strip())}
    rng = random.Random(1)
    skipped: list[str] = []
    image: str | None = None
    if "container" in wanted:
        image, reason = container_image()
        if image is None:
            skipped.append(f"container: {reason}")
    if "sandbox" in wanted and shutil.which("bwrap") is None:
        skipped.append("sandbox: bwrap is not on PATH")
        wanted.discard("sandbox")
    print(
        f"isolation benchmark: per executor {args.runs} pickup runs and {args.line_runs} runs of "
        f"`{LINES_SCRIPT}`, then {args.raw_runs} runs of each bare launcher ...",
        flush=True,
    )
    others_before = others_busy_cores()
    loads = [load_average()]
    cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ade-bench-") as tmp, contextlib.ExitStack() as stacks:
        root = Path(tmp)
        host = stacks.enter_context(ade_stack(root / "host", env={"ADE_EXECUTOR": "host"}))
        targets = [Target("host", host)]
        if "sandbox" in wanted:
            try:
                sandbox = stacks.enter_context(ade_stack(root / "sandbox", env={"ADE_EXECUTOR": "sandbox"}))
                targets.append(Target("sandbox", sandbox))
            except RuntimeError as exc:
                skipped.append(f"sandbox: the ADE_EXECUTOR=sandbox stack did not start: {exc}")
        if image is not None:
            targets.append(Target("container", host, image=image))
        pids = []
        for stack in {id(t.stack): t.stack for t in targets}.values():
            assert stack.redis.process is not None
            pids += [stack.api.pid, stack.worker.pid, stack.redis.process.pid]
        with CpuWatch(pids) as watch:
            skipped += asyncio.run(measure(targets, args.runs, args.line_runs, rng))
        cpu = watch.result
    measured = [t.name for t in targets]
    raw = {}
    if args.raw_runs > 0:
        raw = asyncio.run(time_launchers(launchers(measured, image), args.raw_runs, rng))
    loads.append(load_average())

    print()
    print(
        "Stacks: one worker with ADE_EXECUTOR=host runs the host and the container steps (the latter name "
        f"the image slug `{IMAGE_SLUG}`), another ADE_EXECUTOR=sandbox; both up throughout, runs "
        f"interleaved in a shuffled order each round, {WARMUPS} warm-up runs each not counted, a random "
        f"0-{MAX_GAP_S * 1000:.0f} ms pause before every run; p99 interpolated."
    )
    for reason in skipped:
        print(f"  skipped {reason}")
    report(targets, raw, cpu, (loads[0], loads[1]), others_before)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # everything was stopped on the way out
        sys.exit(130)
