"""Masking secret values in event payloads: strings, keys, numbers, multi-line secrets, overlaps."""

from __future__ import annotations

import msgspec

from ade.events.masking import MASK, Masker

PEM = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\n}\n-----END KEY-----\n"


def test_strings_keys_and_nested_values_are_masked() -> None:
    masker = Masker(["s3cr3t"])
    payload = {"s3cr3t": {"list": ["a s3cr3t b", {"k": "s3cr3ts3cr3t"}]}, "plain": "ok"}
    assert masker.value(payload) == {MASK: {"list": [f"a {MASK} b", {"k": MASK}]}, "plain": "ok"}


def test_a_number_equal_to_a_secret_becomes_the_mask() -> None:
    masker = Masker(["123456"])
    decoded = msgspec.json.decode(b'{"v": 123456, "f": 123456.0, "e": 1.23456e5, "n": -1, "t": true}')
    assert masker.value(decoded) == {"v": MASK, "f": MASK, "e": MASK, "n": -1, "t": True}


def test_a_number_containing_a_secret_becomes_its_masked_text() -> None:
    masker = Masker(["4242"])
    assert masker.value({"v": 9424249, "w": 42}) == {"v": f"9{MASK}49", "w": 42}


def test_huge_numbers_are_masked_exactly() -> None:
    secret = "12345678901234567890123456789"
    masker = Masker([secret])
    assert masker.value(msgspec.json.decode(f'{{"v": {secret}}}'.encode())) == {"v": MASK}
    assert masker.value({"v": 10**400}) == {"v": 10**400}  # too large for a float: compared as text


def test_each_line_of_a_multi_line_secret_is_masked_and_the_whole_value() -> None:
    masker = Masker([PEM])
    assert masker.text(f"key:\n{PEM}") == f"key:\n{MASK}"
    assert masker.text("MIIEvQIBADANBgkq") == MASK
    assert masker.text("  hkiG9w0BAQEFAASC\r") == f"  {MASK}\r"
    assert masker.text("-----END KEY-----") == MASK
    assert masker.text("}") == "}"  # too short to mask on its own


def test_overlapping_secrets_are_masked_as_one_stretch() -> None:
    masker = Masker(["abcd", "cdef"])
    assert masker.text("xxabcdefyy") == f"xx{MASK}yy"
    assert masker.text("abcdabcd") == MASK


def test_nothing_to_mask_is_falsy_and_changes_nothing() -> None:
    masker = Masker(["", ""])
    assert not masker
    assert masker.value({"a": 1, "b": "c"}) == {"a": 1, "b": "c"}
