"""A step of a run as the build server API names it: `<run_id>.<index>`, the index being the step's 0-based
position in the run's plan. A runner learns them from a build's `steps` (README "Build server API")."""

from __future__ import annotations

import re

from ade.core.errors import NotFound, not_found

_STEP_ID = re.compile(r"^(?P<run_id>run_[0-9A-HJKMNP-TV-Z]{26})\.(?P<index>0|[1-9][0-9]{0,5})$")


def step_id(run_id: str, index: int) -> str:
    return f"{run_id}.{index}"


def parse_step_id(ident: str) -> tuple[str, int]:
    """(run id, step index) of a step id; `NotFound` (`step_not_found`) for anything else. Whether that run
    exists, is the caller's and has that many steps is for the caller to check (with the same error)."""
    match = _STEP_ID.match(ident)
    if match is None:
        raise step_not_found(ident)
    return match["run_id"], int(match["index"])


def step_not_found(ident: str) -> NotFound:
    return not_found("step", ident)
