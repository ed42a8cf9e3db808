"""Helpers for tests that run the `ade` command as a user does: a subprocess against a live system."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ade.client import AdeClient
from ade.core.models import RunResource
from tests.system import BOOTSTRAP_TOKEN, AdeSystem

ADE = [sys.executable, "-m", "ade.cli"]
_UNWANTED = ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "ADE_WORKSPACE", "ADE_URL", "ADE_TOKEN")


def cli_env(system: AdeSystem, **extra: str) -> dict[str, str]:
    """This process's environment with the system's URL and the bootstrap token (no ADE_WORKSPACE)."""
    base = {k: v for k, v in os.environ.items() if k not in _UNWANTED}
    return {**base, "ADE_URL": system.base_url, "ADE_TOKEN": BOOTSTRAP_TOKEN, **extra}


def cli(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADE, *map(str, args)], env=env, capture_output=True, text=True, timeout=60)


def start(env: dict[str, str], *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ADE, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def header_run_id(line: str) -> str:
    """The run's id in the header `runs watch` (and `--follow`) starts with: `run run_… · cfg · …`."""
    assert line.startswith("run run_"), line
    return line.split()[1]


def run_of(ade: AdeClient, ws: str, script: str, **run: Any) -> RunResource:
    cfg = ade.create_configuration(ws, {"name": "cfg", "steps": [{"name": "main", "script": script}]})
    return ade.create_run(cfg.id, **run)
