"""Event ids made in batches (`ade.core.ids.new_ids`) are unique, also between batches of one millisecond."""

from __future__ import annotations

from ade.core import ids


def test_batches_made_in_the_same_millisecond_never_share_an_id() -> None:
    made = [event_id for _ in range(2000) for event_id in ids.new_ids(ids.EVENT, 10)]
    assert len(set(made)) == len(made)


def test_a_batch_is_in_increasing_order_and_ulid_shaped() -> None:
    batch = ids.new_ids(ids.EVENT, 50)
    assert batch == sorted(batch)
    assert all(len(event_id) == len("evt_") + 26 for event_id in batch)
