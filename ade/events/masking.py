"""Secret values out of event payloads, wherever a step may put them.

The dispatcher of a stream masks its secrets in every event before it is written (`StreamWriter`):

- every string, and every object key, with each occurrence replaced by `***` (overlapping occurrences of
  different secrets are masked as one stretch, so no piece of either survives);
- every number whose value is a secret's (`{"v": 123456}` when a secret is `123456`: `"v": "***"`), or
  whose digits contain one (it becomes the masked text, a string);
- each line of a multi-line secret as well as the whole value (output is split into lines, so a PEM key
  printed by a step reaches the dispatcher one line at a time). Lines shorter than MIN_LINE_CHARS after
  trimming spaces are not masked on their own: masking `{` or `-----` everywhere would garble every log
  and hide next to nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_LINE_CHARS = 4
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class Masker:
    """Masks a fixed set of secret values; falsy when there is nothing to mask."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            values.add(secret)
            if "\n" in secret or "\r" in secret:
                values.update(
                    line.strip() for line in secret.splitlines() if len(line.strip()) >= MIN_LINE_CHARS
                )
        self._values = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self._values))) if values else None
        self._ints: set[int] = set()
        self._floats: set[float] = set()
        for value in values:
            if _JSON_NUMBER.fullmatch(value):
                if value.lstrip("-").isdigit():
                    self._ints.add(int(value))
                with contextlib.suppress(OverflowError):
                    self._floats.add(float(value))

    def __bool__(self) -> bool:
        return bool(self._values)

    def reveals(self, text: str) -> bool:
        """Whether `text` contains a secret value."""
        return self._pattern is not None and self._pattern.search(text) is not None

    def text(self, text: str) -> str:
        if not self.reveals(text):
            return text
        covered = bytearray(len(text))
        for secret in self._values:
            start = text.find(secret)
            while start >= 0:
                covered[start : start + len(secret)] = b"\x01" * len(secret)
                start = text.find(secret, start + 1)
        parts: list[str] = []
        index = 0
        while index < len(text):
            if covered[index]:
                parts.append(MASK)
                while index < len(text) and covered[index]:
                    index += 1
            else:
                end = covered.find(1, index)
                end = len(text) if end < 0 else end
                parts.append(text[index:end])
                index = end
        return "".join(parts)

    def value(self, value: Any) -> Any:
        """A JSON-like value (dicts, lists, strings, numbers, …) with every secret masked."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(key): self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return self._number(value)
        return value

    def _number(self, number: float) -> Any:
        if isinstance(number, int) and number in self._ints:
            return MASK
        with contextlib.suppress(OverflowError):  # an int too large for a float
            if float(number) in self._floats:
                return MASK
        text = str(number)
        masked = self.text(text)
        return masked if masked != text else number
