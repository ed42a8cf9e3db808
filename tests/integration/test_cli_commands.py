"""The `ade` commands that find things for the user: the workspace from the key or ADE_WORKSPACE,
configurations by name or id prefix, `whoami`, `--version`, `runs get|logs`, `configs list|show|delete`,
`runs list` by name in local time, and `runs watch` attached mid-run. Subprocesses against the live system.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from ade.client import AdeClient
from tests.cli import cli, cli_env, finish, header_run_id, start
from tests.system import BOOTSTRAP_TOKEN, AdeSystem


@pytest.fixture
def env(system: AdeSystem) -> dict[str, str]:
    return cli_env(system)


@pytest.fixture
def ade(system: AdeSystem) -> Iterator[AdeClient]:
    with AdeClient(system.base_url, BOOTSTRAP_TOKEN) as client:
        yield client


def steps(*scripts: str) -> list[dict[str, str]]:
    return [{"name": f"s{index}", "script": script} for index, script in enumerate(scripts, start=1)]


def test_version_and_whoami(env: dict[str, str], ade: AdeClient) -> None:
    shown = cli(env, "--version")
    assert shown.returncode == 0 and shown.stdout == f"ade {version('ade')}\n"

    assert cli(env, "whoami").stdout == "bootstrap admin (every workspace)\n"
    ws = ade.create_workspace("cli-whoami").id
    key = ade.create_api_key(ws, "me", "operator")
    mine = cli({**env, "ADE_TOKEN": key.secret}, "whoami", "--json")
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout) == {"actor": key.id, "role": "operator", "workspace_id": ws}


def test_the_workspace_is_the_flag_else_ade_workspace_else_the_keys_own(
    env: dict[str, str], ade: AdeClient, tmp_path: Path
) -> None:
    ours, theirs = ade.create_workspace("cli-ws-ours").id, ade.create_workspace("cli-ws-theirs").id
    ade.create_configuration(ours, {"name": "ours", "steps": steps("true")})
    ade.create_configuration(theirs, {"name": "theirs", "steps": steps("true")})
    key = ade.create_api_key(ours, "admin", "admin").secret

    def names(*args: str, **extra: str) -> list[str]:
        listed = cli({**env, **extra}, "configs", "list", "--json", *args)
        assert listed.returncode == 0, listed.stderr
        return [cfg["name"] for cfg in json.loads(listed.stdout)]

    assert names(ADE_TOKEN=key) == ["ours"]  # the key's own
    assert names(ADE_WORKSPACE=theirs) == ["theirs"]
    assert names("--workspace", ours, ADE_WORKSPACE=theirs) == ["ours"]  # the flag wins
    nowhere = cli(env, "configs", "list")
    assert nowhere.returncode == 2 and "the bootstrap token belongs to no workspace" in nowhere.stderr

    document = tmp_path / "job.yaml"
    document.write_text("name: job\nsteps: [{name: one, script: 'true'}]\n")
    applied = cli({**env, "ADE_TOKEN": key}, "configs", "apply", document)  # the file names no workspace
    assert applied.returncode == 0, applied.stderr
    assert ade.get_configuration(applied.stdout.strip()).workspace_id == ours
    made = cli({**env, "ADE_WORKSPACE": theirs}, "keys", "create", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["workspace_id"] == theirs
    images = cli({**env, "ADE_WORKSPACE": theirs}, "images", "list", "--json")
    assert images.returncode == 0 and json.loads(images.stdout) == []
    runs = cli({**env, "ADE_TOKEN": key}, "runs", "list", "--json")
    assert runs.returncode == 0 and json.loads(runs.stdout) == []


def test_configurations_by_name_or_id_prefix(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-configs").id
    at = {**env, "ADE_WORKSPACE": ws}
    alpha = ade.create_configuration(
        ws,
        {
            "name": "alpha",
            "environment": {"TOKEN": {"value": "s3cret", "secret": True}},
            "steps": steps("true"),
        },
    )
    beta = ade.create_configuration(ws, {"name": "beta", "steps": steps("echo beta")})
    twins = [ade.create_configuration(ws, {"name": "twin", "steps": steps("true")}).id for _ in range(2)]

    listed = cli(at, "configs", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split() == ["CONFIGURATION", "NAME", "STEPS", "BUILD", "UPDATED"]
    assert [row.split()[1] for row in rows] == ["alpha", "beta", "twin", "twin"]

    shown = cli(at, "configs", "show", "alpha")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# created ")
    assert yaml.safe_load(shown.stdout) == {  # the shape `configs apply` takes, defaults left out
        "id": alpha.id,
        "workspace": ws,
        "name": "alpha",
        "steps": [{"name": "s1", "script": "true"}],
        "environment": {"TOKEN": {"secret": True}},
    }
    by_prefix = cli(at, "configs", "show", beta.id[:-4].lower(), "--json")
    assert by_prefix.returncode == 0 and json.loads(by_prefix.stdout)["id"] == beta.id
    by_id = cli(env, "configs", "show", beta.id, "--json")  # a full id needs no workspace
    assert by_id.returncode == 0 and json.loads(by_id.stdout)["name"] == "beta"

    code, out, err = finish(start(at, "runs", "create", "beta", "--follow"))
    assert code == 0, err
    assert ade.get_run(header_run_id(out.splitlines()[0])).configuration_id == beta.id

    unknown = cli(at, "runs", "create", "gamma")
    assert unknown.returncode == 2
    assert f"no configuration named 'gamma' or whose id starts with it in workspace {ws}" in unknown.stderr
    ambiguous = cli(at, "configs", "show", "twin")
    assert ambiguous.returncode == 2 and "'twin' is ambiguous" in ambiguous.stderr
    assert all(twin in ambiguous.stderr for twin in twins)
    assert cli(at, "configs", "delete", "cfg_").returncode == 2  # every id starts so: ambiguous
    no_workspace = cli(env, "configs", "show", "alpha")
    assert no_workspace.returncode == 2 and "--workspace" in no_workspace.stderr

    deleted = cli(at, "configs", "delete", "beta")
    assert deleted.returncode == 0 and deleted.stdout == f"{beta.id} deleted (beta)\n"
    assert cli(at, "configs", "show", "beta").returncode == 2
    builds = cli(at, "builds", "list", "alpha", "--json")
    assert builds.returncode == 0 and json.loads(builds.stdout) == []


def test_runs_get_and_logs(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-logs").id
    cfg = ade.create_configuration(
        ws, {"name": "talk", "steps": steps("echo one; echo two >&2; echo three", "exit 4", "true")}
    )
    run = ade.wait_for_run(ade.create_run(cfg.id).id)

    got = cli(env, "runs", "get", run.id[:14].lower())
    assert got.returncode == 0, got.stderr
    lines = [line.rstrip() for line in got.stdout.splitlines()]
    assert lines[0] == run.id
    assert lines[1].split() == ["status", "failed"]
    assert lines[2].split() == ["configuration", "talk", f"({cfg.id})"]
    assert f"  web            {env['ADE_URL']}/#/runs/{run.id}" in lines
    assert any(re.fullmatch(r"    ✓ s1 +succeeded in \S+", line) for line in lines)
    assert any(re.fullmatch(r"    ✗ s2 +failed \(exit 4\) in \S+", line) for line in lines)
    assert any(re.fullmatch(r"    ○ s3 +skipped: .+", line) for line in lines)
    as_json = cli(env, "runs", "get", run.id, "--json")
    assert json.loads(as_json.stdout)["status"] == "failed"

    # stdout and stderr are two pipes: how their lines interleave is not defined, each one's order is
    assert sorted(cli(env, "runs", "logs", run.id).stdout.splitlines()) == ["one", "three", "two"]
    assert cli(env, "runs", "logs", run.id, "--stream", "stdout").stdout == "one\nthree\n"
    assert cli(env, "runs", "logs", run.id, "--stream", "stderr").stdout == "two\n"
    stamped = cli(env, "runs", "logs", run.id, "--timestamps").stdout.splitlines()
    assert sorted(line.split(" ", 1)[1] for line in stamped) == ["one", "three", "two"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", line.split()[0]) for line in stamped)
    missing = cli(env, "runs", "logs", "run_01J0000000000000000000000")
    assert missing.returncode == 3 and "run_not_found" in missing.stderr


def test_runs_logs_follow_prints_lines_as_they_come_until_the_run_ends(
    env: dict[str, str], ade: AdeClient
) -> None:
    ws = ade.create_workspace("cli-logs-follow").id
    cfg = ade.create_configuration(ws, {"name": "slow", "steps": steps("echo first; sleep 2; echo second")})
    run = ade.create_run(cfg.id)
    follower = start(env, "runs", "logs", run.id, "--follow")
    assert follower.stdout is not None
    assert follower.stdout.readline() == "first\n"
    assert ade.get_run(run.id).status == "running"  # printed live, not once the run ended
    code, out, err = finish(follower)
    assert code == 0, err
    assert out == "second\n"
    assert ade.get_run(run.id).status == "succeeded"


def test_runs_watch_attached_mid_run(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-watch-late").id
    cfg = ade.create_configuration(ws, {"name": "late", "steps": steps("echo early; sleep 3; echo late")})
    run = ade.create_run(cfg.id)
    for event in ade.events(run.id):
        if event.type == "console.line":
            break
    time.sleep(1.5)
    code, out, err = finish(start(env, "runs", "watch", run.id, "--timestamps"))
    assert code == 0, err
    head, *lines = out.splitlines()
    assert head.startswith(f"run {run.id} · late · attempt 1 · started ")
    assert head.endswith(f" · {env['ADE_URL']}/#/runs/{run.id}")
    age = re.search(r"\((\d+(?:\.\d+)?)s ago\)", head)
    assert age is not None and float(age.group(1)) >= 1.5  # its true age, not since attaching
    assert sum(run.id in line for line in out.splitlines()) == 1
    stamp = r"\d\d:\d\d:\d\d "
    assert all(re.match(stamp, line) for line in lines), lines
    texts = [line[9:] for line in lines]
    assert "  early" in texts and "  late" in texts
    assert texts[-1].startswith("run succeeded in ")
    assert float(texts[-1].split()[-1].rstrip("s")) >= 3  # the run's duration, not the time watched


def test_runs_watch_shows_the_steps_a_cancelled_run_never_ran(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-watch-skips").id
    cfg = ade.create_configuration(
        ws, {"name": "stuck", "runs_on": ["nowhere"], "steps": steps("true", "true")}
    )
    run = ade.create_run(cfg.id)  # no runner has the label: it stays queued
    ade.cancel_run(run.id)
    code, out, _ = finish(start(env, "runs", "watch", run.id))
    assert code == 2
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("○ ")] == ["○ s1 skipped", "○ s2 skipped"]
    assert lines[-1] == "run cancelled (by bootstrap)"


def test_runs_list_shows_configuration_names_and_local_times(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-runs-list").id
    cfg = ade.create_configuration(ws, {"name": "listed", "steps": steps("true")})
    run = ade.wait_for_run(ade.create_run(cfg.id).id)
    paris = {**env, "ADE_WORKSPACE": ws, "TZ": "Europe/Paris"}
    listed = cli(paris, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    _, row = listed.stdout.strip().splitlines()
    created = run.created_at.astimezone(ZoneInfo("Europe/Paris")).strftime("%Y-%m-%d %H:%M:%S %Z")
    assert row.split()[:3] == [run.id, "succeeded", "listed"]
    assert created in row and created.split()[-1] in ("CET", "CEST")
    by_name = cli(paris, "runs", "list", "--config", "listed", "--json")
    assert by_name.returncode == 0, by_name.stderr
    assert [item["id"] for item in json.loads(by_name.stdout)] == [run.id]
