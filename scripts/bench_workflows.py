"""Benchmark: what scheduling a workflow costs per step.

Three configurations of `true` steps, run on one private stack (Redis, `ade serve`, `ade worker`):

- one step (the baseline, measured in the same run),
- a chain of 50 steps (each `depends_on` the one before),
- a fan-out of 50 steps (all depend on one root step; ADE_MAX_PARALLEL_STEPS runs them in waves).

For each: the wall time from `run.started` to `run.completed` (the engine's share, pickup excluded), and
the overhead per step over the one-step run: (workflow - one step) / (steps - 1). Steps run in the default
executor (the bubblewrap sandbox when it works), so the figure includes each step's process start.

Usage: python scripts/bench_workflows.py [--runs 5] [--steps 50]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pickup import (
    API,
    _wait_run_end,
    ade_stack,
    event_time,
    exit_on_sigterm,
    percentile,
    run_events,
)


def chain(steps: int) -> list[dict[str, Any]]:
    return [
        {"name": f"s{i}", "script": "true", **({"depends_on": [f"s{i - 1}"]} if i else {})}
        for i in range(steps)
    ]


def fan_out(steps: int) -> list[dict[str, Any]]:
    return [{"name": "root", "script": "true"}] + [
        {"name": f"leaf{i}", "script": "true", "depends_on": ["root"]} for i in range(steps - 1)
    ]


async def configuration(client: httpx.AsyncClient, workspace_id: str, steps: list[dict[str, Any]]) -> str:
    body = {"name": f"bench-{len(steps)}", "steps": steps}
    response = await client.post(f"{API}/workspaces/{workspace_id}/configurations", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


async def engine_ms(client: httpx.AsyncClient, configuration_id: str) -> float:
    """run.started → run.completed of one run, in ms (the run must succeed)."""
    response = await client.post(f"{API}/configurations/{configuration_id}/runs", json={})
    response.raise_for_status()
    run_id = response.json()["id"]
    await _wait_run_end(client, run_id)
    events: list[dict[str, Any]] = []
    while page := await run_events(client, run_id, after=events[-1]["sequence"] if events else 0):
        events += page
    by_type = {event["type"]: event for event in events}
    if by_type["run.completed"]["payload"]["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} did not succeed: {by_type['run.completed']}")
    return (event_time(by_type["run.completed"]) - event_time(by_type["run.started"])) * 1000


async def measure(runs: int, steps: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="ade-bench-workflows-") as root, ade_stack(Path(root)) as ade:
        async with ade.client(timeout=120.0) as client:
            response = await client.post(f"{API}/workspaces", json={"name": "bench"})
            response.raise_for_status()
            workspace_id = response.json()["id"]
            shapes = {
                "one step": [{"name": "s", "script": "true"}],
                f"chain of {steps}": chain(steps),
                f"fan-out of {steps}": fan_out(steps),
            }
            ids = {name: await configuration(client, workspace_id, spec) for name, spec in shapes.items()}
            for configuration_id in ids.values():  # warm-up, not counted
                await engine_ms(client, configuration_id)
            found: dict[str, list[float]] = {name: [] for name in ids}
            rng = random.Random(7)
            for _ in range(runs):
                order = list(ids.items())
                rng.shuffle(order)  # a load change hits every shape alike
                for name, configuration_id in order:
                    await asyncio.sleep(rng.uniform(0, 0.3))
                    found[name].append(await engine_ms(client, configuration_id))
            return found


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    started = time.monotonic()
    found = asyncio.run(measure(args.runs, args.steps))
    print(f"Workflow scheduling: run.started -> run.completed, ms (n={args.runs} each, `true` steps)")
    print(f"  {'':18}{'min':>9}{'p50':>9}{'max':>9}{'per step over one':>20}")
    baseline = statistics.median(found["one step"])
    for name, values in found.items():
        p50 = percentile(values, 50)
        per_step = "" if name == "one step" else f"{(p50 - baseline) / (args.steps - 1):>17.1f} ms"
        print(f"  {name:18}{min(values):>9.1f}{p50:>9.1f}{max(values):>9.1f}{per_step:>20}")
    print(f"  (took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
