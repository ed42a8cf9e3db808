"""A step-mode script (`ade.lifecycle.step_mode.render_script`): every value quoted, so a hostile value is
data, never code; the step's own script run as a worker runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ade.core.models import Plan, Run, SecretValue, Step, utcnow
from ade.lifecycle.step_mode import render_script

HOSTILE = "$(touch pwned) `touch pwned2` '\"; touch pwned3\nnext line ${HOME}"


def a_run(script: str) -> Run:
    step = Step(name="show", script=script, environment={"STEP_VALUE": HOSTILE})
    plan = Plan(
        configuration_id="cfg_x",
        name="cfg",
        steps=[step],
        environment={"RUN_VALUE": HOSTILE, "TOKEN": SecretValue(secret=True, value="s3cr3t")},
        timeout_s=None,
        runs_on=["bash"],
    )
    return Run(
        id="run_01J00000000000000000000000",
        workspace_id="ws_x",
        configuration_id="cfg_x",
        status="running",
        plan=plan,
        created_at=utcnow(),
    )


def test_hostile_values_are_exported_as_they_are_and_never_executed(tmp_path: Path) -> None:
    script = 'printf "%s|%s|%s|%s|" "$RUN_VALUE" "$STEP_VALUE" "$TOKEN" "$ADE_STEP"; pwd'
    (tmp_path / "step.sh").write_text(render_script(a_run(script), 0))
    done = subprocess.run(["bash", "step.sh"], cwd=tmp_path, capture_output=True, text=True, check=True)
    work = tmp_path / "ade-work" / "run_01J00000000000000000000000"
    assert done.stdout == f"{HOSTILE}|{HOSTILE}|s3cr3t|show|{work}\n"
    assert not list(tmp_path.rglob("pwned*"))


def test_the_step_script_keeps_a_workers_semantics_and_its_exit_code(tmp_path: Path) -> None:
    (tmp_path / "step.sh").write_text(render_script(a_run('false; echo "went on: $UNSET_VAR"; exit 7'), 0))
    done = subprocess.run(["bash", "step.sh"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 7 and done.stdout == "went on: \n"  # no errexit/nounset imposed on it
