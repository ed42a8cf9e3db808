"""The `ade` client commands as a user runs them: subprocesses against the shared live system."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ade.client import AdeClient
from tests.cli import cli, cli_env, finish, header_run_id, run_of, start
from tests.system import BOOTSTRAP_TOKEN, AdeSystem


@pytest.fixture
def env(system: AdeSystem) -> dict[str, str]:
    return cli_env(system)


@pytest.fixture
def ade(system: AdeSystem) -> Iterator[AdeClient]:
    with AdeClient(system.base_url, BOOTSTRAP_TOKEN) as client:
        yield client


# configs apply ------------------------------------------------------------------------------------


def test_configs_apply_yaml_creates_then_replaces_by_name(
    env: dict[str, str], ade: AdeClient, tmp_path: Path
) -> None:
    ws = ade.create_workspace("cli-yaml").id
    path = tmp_path / "etl.yaml"
    document = f"""
workspace: {ws}
name: etl
timeout_s: 600
environment:
  GREETING: hello
  TOKEN: {{value: s3cret, secret: true}}
steps:
  - name: greet
    script: echo "$GREETING"
"""
    path.write_text(document)
    created = cli(env, "configs", "apply", path)
    assert created.returncode == 0, created.stderr
    cfg_id = created.stdout.strip()
    assert cfg_id.startswith("cfg_") and "created" in created.stderr
    cfg = ade.get_configuration(cfg_id)
    assert (cfg.workspace_id, cfg.name, cfg.timeout_s) == (ws, "etl", 600)
    assert [(s.name, s.script) for s in cfg.steps] == [("greet", 'echo "$GREETING"')]
    assert cfg.environment["GREETING"] == "hello"

    path.write_text(document.replace('echo "$GREETING"', "echo changed"))
    replaced = cli(env, "configs", "apply", path)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.strip() == cfg_id and "replaced" in replaced.stderr
    assert [s.script for s in ade.get_configuration(cfg_id).steps] == ["echo changed"]
    assert [c.id for c in ade.list_configurations(ws)] == [cfg_id]  # replaced, not duplicated


def test_configs_apply_toml_and_the_id_wins_over_the_name(
    env: dict[str, str], ade: AdeClient, tmp_path: Path
) -> None:
    ws = ade.create_workspace("cli-toml").id
    path = tmp_path / "job.toml"
    path.write_text(
        f'workspace = "{ws}"\nname = "job"\n\n[environment]\nA = "1"\n\n'
        '[[steps]]\nname = "one"\nscript = "echo one"\ntimeout_s = 30\n\n'
        '[[steps]]\nname = "two"\nscript = "echo two"\n'
    )
    created = cli(env, "configs", "apply", path)
    assert created.returncode == 0, created.stderr
    cfg_id = created.stdout.strip()
    cfg = ade.get_configuration(cfg_id)
    assert [(s.name, s.timeout_s) for s in cfg.steps] == [("one", 30), ("two", None)]
    assert cfg.environment == {"A": "1"}

    renamed = tmp_path / "renamed.toml"
    renamed.write_text(f'id = "{cfg_id}"\nname = "job-v2"\nsteps = [{{name = "only", script = "true"}}]\n')
    replaced = cli(env, "configs", "apply", renamed)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.strip() == cfg_id
    assert ade.get_configuration(cfg_id).name == "job-v2"

    elsewhere = ade.create_workspace("cli-toml-other").id
    wrong = cli(env, "configs", "apply", renamed, "--workspace", elsewhere)
    assert wrong.returncode == 1 and f"belongs to {ws}" in wrong.stderr

    invalid = tmp_path / "invalid.toml"
    invalid.write_text(f'workspace = "{ws}"\nname = "no-steps"\n')
    refused = cli(env, "configs", "apply", invalid)
    assert refused.returncode == 1 and "steps" in refused.stderr
    assert [c.name for c in ade.list_configurations(ws)] == ["job-v2"]


# runs create / watch ------------------------------------------------------------------------------


def test_runs_create_uploads_inputs_and_follows(env: dict[str, str], ade: AdeClient, tmp_path: Path) -> None:
    ws = ade.create_workspace("cli-create").id
    script = (
        'cat "$ADE_INPUT_DIR/data.txt"; echo "oops" >&2; '
        "for i in 1 2 3; do "
        'echo "{\\"type\\":\\"progress\\",\\"current\\":$i,\\"total\\":3}" >&$ADE_EVENTS_FD; done'
    )
    cfg = ade.create_configuration(ws, {"name": "show", "steps": [{"name": "show", "script": script}]})
    data = tmp_path / "data.txt"
    data.write_text("hello from a file\n")
    code, out, err = finish(start(env, "runs", "create", cfg.id, "--input", data, "--follow"))
    assert code == 0, err
    lines = out.splitlines()
    run = ade.get_run(header_run_id(lines[0]))
    assert run.status == "succeeded"
    assert sum(run.id in line for line in lines) == 1  # the id once, in the header
    assert [i.name for i in ade.list_run_inputs(run.id)] == ["data.txt"]
    assert "▶ show" in lines
    assert "  hello from a file" in lines  # stdout as is
    assert "  ! oops" in lines  # stderr told apart
    assert any("3/3" in line for line in lines)  # the progress bar's final state
    assert any(line.startswith("✓ show succeeded in ") for line in lines)
    assert lines[-1].startswith("run succeeded in ")


def test_runs_watch_exits_with_the_outcome(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-watch").id
    succeeded = run_of(ade, ws, "echo fine")
    failed = run_of(ade, ws, "echo bad >&2; exit 3")
    sleeper = run_of(ade, ws, "echo waiting; sleep 30")
    watchers = {run.id: start(env, "runs", "watch", run.id) for run in (succeeded, failed)}

    for event in ade.events(sleeper.id):  # running inside its step: cancel it with the CLI
        if event.type == "console.line":
            cancelled = cli(env, "runs", "cancel", sleeper.id)
            assert cancelled.returncode == 0, cancelled.stderr
            assert cancelled.stdout.strip() == f"{sleeper.id} cancel requested"
    code, out, _ = finish(start(env, "runs", "watch", sleeper.id[:-6].lower()))  # a unique prefix
    assert code == 2
    assert "cancel requested by bootstrap" in out and "run cancelled" in out

    code, out, err = finish(watchers[succeeded.id])
    assert code == 0, err
    assert header_run_id(out.splitlines()[0]) == succeeded.id
    assert "  fine" in out.splitlines() and "run succeeded" in out
    code, out, _ = finish(watchers[failed.id])
    assert code == 1
    assert "  ! bad" in out.splitlines() and "✗ main failed (exit 3) in " in out
    assert "run failed in " in out and "(exit_nonzero)" in out

    missing = cli(env, "runs", "watch", "run_01J0000000000000000000000")
    assert missing.returncode == 3 and "run_not_found" in missing.stderr
    unreachable = cli({**env, "ADE_URL": "http://127.0.0.1:9"}, "runs", "watch", succeeded.id)
    assert unreachable.returncode == 3 and "cannot reach the API" in unreachable.stderr


# runs list / rerun --------------------------------------------------------------------------------


def test_runs_list_and_rerun(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-list").id
    first = run_of(ade, ws, "true")
    second = run_of(ade, ws, "exit 1")
    for run in (first, second):
        ade.wait_for_run(run.id)

    rerun = cli(env, "runs", "rerun", first.id, "--follow")
    assert rerun.returncode == 0, rerun.stderr
    third = ade.get_run(header_run_id(rerun.stdout.splitlines()[0]))
    assert (third.rerun_of, third.attempt, third.status) == (first.id, 2, "succeeded")

    listed = cli(env, "runs", "list", "--workspace", ws)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split() == ["RUN", "STATUS", "CONFIGURATION", "ATTEMPT", "BRANCH", "CREATED", "DURATION"]
    assert [row.split()[:4] for row in rows] == [  # configurations by name
        [third.id, "succeeded", "cfg", "2"],
        [second.id, "failed", "cfg", "1"],
        [first.id, "succeeded", "cfg", "1"],
    ]
    limited = cli(env, "runs", "list", "--workspace", ws, "--limit", "1")
    assert [row.split()[0] for row in limited.stdout.strip().splitlines()[1:]] == [third.id]
    failed = cli(env, "runs", "list", "--workspace", ws, "--status", "failed", "--json")
    assert [run["id"] for run in json.loads(failed.stdout)] == [second.id]
    by_config = cli(env, "runs", "list", "--config", first.configuration_id, "--json")
    assert [run["id"] for run in json.loads(by_config.stdout)] == [third.id, first.id]
    neither = cli(env, "runs", "list")
    assert neither.returncode == 2 and "--workspace or --config" in neither.stderr


# builds create / watch / list, and builds inside `runs watch` ------------------------------------------


def build_config(ade: AdeClient, ws: str, *steps: tuple[str, str], script: str = "true") -> str:
    spec = {"constructor": "shell", "steps": [{"name": name, "script": body} for name, body in steps]}
    cfg = ade.create_configuration(
        ws, {"name": "cfg", "steps": [{"name": "main", "script": script}], "build": spec}
    )
    return cfg.id


def test_builds_create_watch_and_list(env: dict[str, str], ade: AdeClient) -> None:
    ws = ade.create_workspace("cli-builds").id
    cfg = build_config(ade, ws, ("compile", "echo compiled; echo careful >&2"))
    broken = build_config(ade, ws, ("broken", "echo half-done; exit 3"))
    failing = start(env, "builds", "create", broken, "--watch")

    code, out, err = finish(start(env, "builds", "create", cfg, "--watch"))  # the configuration's workspace
    assert code == 0, err
    build_id, *lines = out.splitlines()
    assert ade.get_build(build_id).status == "ready"
    assert lines[0].startswith(f"build {build_id} queued (fingerprint ")
    assert "▶ build: step:compile" in lines
    assert "  compiled" in lines and "  ! careful" in lines  # stderr told apart
    assert any(line.startswith("✓ build: step:compile succeeded in ") for line in lines)
    assert lines[-1].startswith(f"build {build_id} ready in ")

    code, out, err = finish(failing)
    assert code == 1, err
    failed_id = out.splitlines()[0]
    assert "  half-done" in out.splitlines() and "✗ build: step:broken failed in " in out
    assert f"build {failed_id} failed in " in out and "(exit_nonzero)" in out

    reused = cli(env, "builds", "create", cfg, "--workspace", ws, "--watch")
    assert reused.returncode == 0, reused.stderr
    reused_id = reused.stdout.splitlines()[0]
    assert f"reuses the environment of {build_id}" in reused.stderr
    assert reused.stdout.splitlines()[-1] == f"build {reused_id} ready (reused {build_id})"
    forced = cli(env, "builds", "create", cfg, "--force")
    assert forced.returncode == 0, forced.stderr
    forced_id = forced.stdout.strip()
    assert cli(env, "builds", "watch", forced_id[:-6].lower()).returncode == 0  # a unique prefix

    listed = cli(env, "builds", "list", cfg)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split() == ["BUILD", "STATUS", "FINGERPRINT", "REUSED", "FROM", "CREATED"]
    fingerprint = ade.get_build(build_id).fingerprint[:12]
    assert [row.split()[:4] for row in rows] == [
        [forced_id, "ready", fingerprint, rows[0].split()[3]],  # no reuse: the time follows
        [reused_id, "ready", fingerprint, build_id],
        [build_id, "ready", fingerprint, rows[2].split()[3]],
    ]
    limited = cli(env, "builds", "list", cfg, "--limit", "2", "--json")
    assert [b["id"] for b in json.loads(limited.stdout)] == [forced_id, reused_id]
    no_spec = cli(env, "builds", "create", run_of(ade, ws, "true").configuration_id)
    assert no_spec.returncode == 3 and "no_build_spec" in no_spec.stderr


def test_builds_watch_a_cancelled_build_and_runs_watch_shows_the_build(
    env: dict[str, str], ade: AdeClient
) -> None:
    ws = ade.create_workspace("cli-builds-watch").id
    slow = build_config(ade, ws, ("slow", "sleep 30"))
    build = ade.create_build(ws, slow)
    ade.cancel_build(build.id)
    code, out, _ = finish(start(env, "builds", "watch", build.id))
    assert code == 2 and f"build {build.id} cancelled" in out and "build cancel requested by bootstrap" in out

    # The build outlasts the run's pick-up, so the run waits for it (a build ready by then is `reused`).
    cfg = build_config(ade, ws, ("prep", "echo preparing; sleep 0.5"), script="echo running")
    run = ade.create_run(cfg)
    code, out, err = finish(start(env, "runs", "watch", run.id))
    assert code == 0, err
    lines = out.splitlines()
    assert f"waiting for build {run.build_id}" in lines
    assert "▶ build: step:prep" in lines and "  preparing" in lines
    assert any(line.startswith("✓ build: step:prep succeeded in ") for line in lines)
    assert any(line.startswith(f"build {run.build_id} ready in ") for line in lines)
    assert lines.index("  preparing") < lines.index("▶ main") < lines.index("  running")
    assert lines[-1].startswith("run succeeded in ")
