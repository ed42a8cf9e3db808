"""Step ids of the build server API: `<run_id>.<index>`, and anything else is a 404."""

from __future__ import annotations

import pytest

from ade.core import ids
from ade.core.errors import NotFound
from ade.core.step_ids import parse_step_id, step_id


def test_a_step_id_names_its_run_and_position_and_parses_back() -> None:
    run_id = ids.new_id(ids.RUN)
    for index in (0, 1, 42):
        assert step_id(run_id, index) == f"{run_id}.{index}"
        assert parse_step_id(step_id(run_id, index)) == (run_id, index)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "run_x.0",
        "{run}",
        "{run}.",
        "{run}.-1",
        "{run}.01",
        "{run}.1.2",
        "{run}.one",
        "{run}.1 ",
        "{run}.9999999",
        "cfg_01JZZZZZZZZZZZZZZZZZZZZZZZ.0",
        "{run}/../0",
    ],
)
def test_anything_else_is_step_not_found(junk: str) -> None:
    ident = junk.replace("{run}", ids.new_id(ids.RUN))
    with pytest.raises(NotFound) as raised:
        parse_step_id(ident)
    assert raised.value.code == "step_not_found" and raised.value.status_code == 404
