"""What a `docker` build's Containerfile may not do, checked before `podman build` runs it.

The runtime's build runs as the worker's user (root on a rootful host) and does some things outside the
RUN instructions' containers, so a few instructions are refused (README "Security model"):

- `RUN --mount=…` (and any other RUN flag): a bind mount whose source is a symbolic link — planted in the
  build context by a build step, or in an image the tenant built before — mounts the *host's* directory
  (CVE-2024-1753, fixed in buildah 1.35 / podman 5.0); RUN's `--network` and `--security` flags would
  undo the build's own settings where the runtime supports them.
- `ADD <url>` (and `ADD` of a git repository) without `network: true`: the runtime itself fetches the
  URL, on the host's network, whatever `--network` the build has.
- `ONBUILD` instructions are checked like the ones they add (they run in a later build FROM this image).

The parser follows the Containerfile rules that matter here: the `escape` parser directive, line
continuations, comments (also inside a continued instruction), instructions in any case. It errs on the
side of refusing.
"""

from __future__ import annotations

import re

DIRECTIVE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(\S*)\s*$")
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://|git@")
RAW_RUN_FLAG = re.compile(r"^\s*(onbuild\s+)?run\s+--", re.IGNORECASE)  # whatever the joining decided


def instructions(text: str) -> list[tuple[int, str]]:
    """(line number, text) of each instruction, continuations joined, comments left out."""
    lines = text.splitlines()
    escape = "\\"
    index = 0
    while index < len(lines):  # parser directives: only at the very top
        match = DIRECTIVE.match(lines[index].strip())
        if not match:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
        index += 1
    found: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(lines[index:], start=index + 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue  # a comment, or an empty line inside a continued instruction
        if not stripped:
            continue
        if not current:
            start = number
        body = line.rstrip()
        if body.endswith(escape):
            current.append(body[: -len(escape)])
            continue
        current.append(body)
        found.append((start, " ".join(part.strip() for part in current)))
        current = []
    if current:
        found.append((start, " ".join(part.strip() for part in current)))
    return found


def problems(text: str, *, network: bool) -> list[str]:
    """What this Containerfile does that an ADE build refuses (empty: nothing)."""
    found = []
    for number, instruction in instructions(text):
        words = instruction.split(None, 1)
        keyword, rest = words[0].upper(), (words[1] if len(words) > 1 else "")
        if keyword == "ONBUILD":
            inner = rest.split(None, 1)
            keyword, rest = (inner[0].upper() if inner else ""), (inner[1] if len(inner) > 1 else "")
        if keyword == "RUN" and rest.lstrip().startswith("--"):
            flag = rest.lstrip().split(None, 1)[0].split("=", 1)[0]
            found.append(f"line {number}: `RUN {flag}` is not allowed in an ADE docker build")
        elif keyword == "ADD" and not network and URL.search(rest):
            found.append(
                f"line {number}: `ADD` of a URL or git repository needs `network: true` in the build spec"
            )
    if not found:
        for number, line in enumerate(text.splitlines(), start=1):
            if RAW_RUN_FLAG.match(line):
                found.append(f"line {number}: RUN flags are not allowed in an ADE docker build")
    return found
