"""How deeply a JSON document nests, measured before it is decoded.

Decoders recurse once per level: a small body nested thousands deep exhausts the stack (a 500), and a
document nested just under the decoder's limit is accepted once, then fails every later decode that wraps
it in an envelope. So request bodies (ADE_MAX_JSON_DEPTH) and step events (MAX_STEP_EVENT_DEPTH in
`ade.execution.console`) are measured first and refused past their limit.
"""

from __future__ import annotations

import re
from itertools import accumulate

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(byte for byte in range(256) if byte not in b"[]{}")
_DEPTH_CHANGE = [1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256)]


def json_depth(document: bytes) -> int:
    """The deepest nesting of arrays and objects in `document` (`{}` is 1, a scalar 0), in linear time.

    Brackets inside strings do not count. A malformed document gets a number, not an error: decoding it
    reports what is wrong.
    """
    brackets = _STRING.sub(b"", document).translate(None, _NOT_A_BRACKET)
    return max(accumulate(map(_DEPTH_CHANGE.__getitem__, brackets)), default=0)
