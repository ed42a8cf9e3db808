"""README's "Walkthrough with curl" runs as written: its bash block(s), run by bash against a real system
(its URL and the bootstrap token in ADE_URL / ADE_TOKEN), succeed and print what the README says."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.system import BOOTSTRAP_TOKEN, AdeSystem

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Walkthrough with curl"


def walkthrough_script() -> str:
    """The bash blocks of the README's walkthrough section, in order."""
    text = README.read_text()
    section = text[text.index(SECTION) + len(SECTION) :]
    section = section[: section.find("\n## ")] if "\n## " in section else section
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)
    assert blocks, f"no bash block under {SECTION!r}"
    return "\n".join(blocks)


def test_the_walkthrough_is_a_script_that_stops_at_the_first_failure() -> None:
    script = walkthrough_script()
    assert script.startswith("set -euo pipefail\n")
    assert not re.search(r"^\s*alias ", script, flags=re.M)
    requests = [line for line in script.splitlines() if re.match(r"\s*(\w+=\$\()?curl ", line)]
    assert requests and all(" -fsS" in line for line in requests), requests
    assert "logs?follow=true" in script


def test_the_walkthrough_runs_against_a_real_system(system: AdeSystem, tmp_path: Path) -> None:
    env = {**os.environ, "ADE_URL": system.base_url, "ADE_TOKEN": BOOTSTRAP_TOKEN}
    script = tmp_path / "walkthrough.sh"
    script.write_text(walkthrough_script())
    done = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr}"
    assert done.stderr == ""
    out = done.stdout
    run_id = re.search(r"^run (run_\w+), in the web console: (\S+)$", out, flags=re.M)
    assert run_id is not None and run_id.group(2) == f"{system.base_url}/#/runs/{run_id.group(1)}"
    lines = out.splitlines()
    follow_at = lines.index(run_id.group(0))
    assert lines[follow_at + 1 : follow_at + 5] == ["hello 1", "hello 2", "hello 3", "warn"]  # logs?follow
    assert out.count("event: end") == 3  # the created stream, the replay and the resumed one
    assert '"type":"run.completed"' in out and '"status": "succeeded"' in out
    assert re.search(r'^link: <[^>]+before=run_\w+>; rel="next"', out, flags=re.M | re.I)
    assert '"action": "configuration.create"' in out  # the audit log
