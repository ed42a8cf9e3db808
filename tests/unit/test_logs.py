"""JSON logs carry the run and build being worked on."""

from __future__ import annotations

import json
import logging

import pytest

from ade.core import logs


def test_json_logs_carry_run_and_build_ids(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADE_LOG_FORMAT", "json")
    logs.configure()
    run_token = logs.current_run_id.set("run_X")
    build_token = logs.current_build_id.set("build_Y")
    try:
        logging.getLogger("ade.test").warning("step failed")
    finally:
        logs.current_run_id.reset(run_token)
        logs.current_build_id.reset(build_token)
    logging.getLogger("ade.test").warning("outside")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "step failed" and lines[0]["level"] == "WARNING"
    assert (lines[0]["run_id"], lines[0]["build_id"], lines[0]["logger"]) == ("run_X", "build_Y", "ade.test")
    assert lines[1]["run_id"] is None
    logging.basicConfig(force=True)  # leave logging as pytest expects
