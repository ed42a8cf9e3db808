"""`AdeClient.console` and `AsyncAdeClient.console`: a run's console lines with their sequence, time, stream
and step, logged so far or followed live until the run ends (what `ade runs logs --timestamps` prints)."""

from __future__ import annotations

from datetime import datetime

import pytest

from ade.client import AdeClient, AsyncAdeClient
from tests.system import BOOTSTRAP_TOKEN, AdeSystem


@pytest.mark.anyio
async def test_console_lines_carry_their_time_stream_and_step(system: AdeSystem) -> None:
    with AdeClient(system.base_url, BOOTSTRAP_TOKEN) as ade:
        ws = ade.create_workspace("client-console").id
        steps = [
            {"name": "talk", "script": "echo out; echo err >&2"},
            {"name": "more", "script": "echo again"},
        ]
        run = ade.create_run(ade.create_configuration(ws, {"name": "cfg", "steps": steps}).id)
        followed = list(ade.console(run.id, follow=True))
        logged = list(ade.console(run.id))
        assert [(line.step, line.stream, line.message) for line in logged] == [
            ("talk", "stdout", "out"),
            ("talk", "stderr", "err"),
            ("more", "stdout", "again"),
        ]
        assert followed == logged  # live or afterwards, the same records
        assert [line.sequence for line in logged] == sorted(line.sequence for line in logged)
        assert all(datetime.fromisoformat(line.created_at).tzinfo is not None for line in logged)
        assert [line.message for line in ade.console(run.id, stream="stderr")] == ["err"]
    async with AsyncAdeClient(system.base_url, BOOTSTRAP_TOKEN) as aio:
        assert [line async for line in aio.console(run.id, follow=True)] == logged
        assert [line.message async for line in aio.console(run.id, stream="stdout")] == ["out", "again"]
