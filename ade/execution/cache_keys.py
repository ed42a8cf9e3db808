"""A step's `cache_key`, evaluated before the step starts (README "Caches").

The key is text with `{{ … }}` expressions, as in GitHub Actions; the one expression is
`hashFiles('pattern', …)`: the SHA-256 (hex) of the regular files of the run's work directory that match
any pattern (and no `!pattern`), or the empty string when none does. Patterns are relative to the work
directory: `*` and `?` match within one path component (dot files included), `[abc]` one character of a
set (`[!abc]` not), `**` as a whole component any number of components. The walk follows no link:
symlinked files are not hashed and symlinked directories are not entered. The digest covers, for each
matched file in path order, its path and the SHA-256 of its contents — renaming a file changes it too.

A key that cannot be evaluated (an unknown expression, a pattern leaving the work directory, more bytes
to hash than ADE_MAX_CACHE_BYTES) is a `CacheKeyError`: the step runs without its cache. A walk told to
stop raises `Stopped`.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ade.core.safe_open import open_directory
from ade.core.workflow import path_problem
from ade.execution.cache_copy import Stopped

DEFAULT_KEY = "default"  # the key of a step with cache_dirs and no cache_key
MAX_HASH_DEPTH = 64  # directory levels below the work directory that hashFiles looks into
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_HASH_FILES = re.compile(r"^hashFiles\s*\((.*)\)$", re.DOTALL)
_ARGUMENT = re.compile(r"""\s*(?:'((?:[^']|'')*)'|"((?:[^"]|"")*)")\s*(,|$)""", re.DOTALL)
_GLOBSTAR = None  # a `**` component
_CHUNK = 1024 * 1024


Segments = tuple[re.Pattern[str] | None, ...]  # a pattern's components; None is `**`


class CacheKeyError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class HashFiles:
    include: tuple[Segments, ...]
    exclude: tuple[Segments, ...]


def parse(template: str) -> list[str | HashFiles]:
    """The key as literal text and expressions; CacheKeyError says what is wrong."""
    parts: list[str | HashFiles] = []
    position = 0
    for match in _EXPRESSION.finditer(template):
        parts.append(template[position : match.start()])
        parts.append(_hash_files(match.group(1).strip()))
        position = match.end()
    rest = template[position:]
    if "{{" in rest:
        raise CacheKeyError("an expression opened with '{{' is not closed with '}}'")
    parts.append(rest)
    return [part for part in parts if part != ""]


def _hash_files(expression: str) -> HashFiles:
    call = _HASH_FILES.match(expression)
    if call is None:
        raise CacheKeyError(
            f"unsupported expression {{{{ {expression} }}}}: the one expression is hashFiles('pattern', …)"
        )
    arguments, position, text = [], 0, call.group(1)
    while position < len(text):
        argument = _ARGUMENT.match(text, position)
        if argument is None:
            raise CacheKeyError(
                f"hashFiles takes quoted patterns separated by commas, e.g. hashFiles('a.lock', '**/*.txt'): "
                f"not {text!r}"
            )
        single, double = argument.group(1), argument.group(2)
        arguments.append(single.replace("''", "'") if single is not None else double.replace('""', '"'))
        position = argument.end()
        if argument.group(3) == "" and position < len(text):
            raise CacheKeyError(f"unexpected text after the patterns of hashFiles: {text[position:]!r}")
    if not arguments:
        raise CacheKeyError("hashFiles needs at least one pattern")
    include: list[Segments] = []
    exclude: list[Segments] = []
    for pattern in arguments:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if not body.strip("/"):
            raise CacheKeyError(f"hashFiles pattern {pattern!r} is empty")
        if (why := path_problem(body)) is not None:
            raise CacheKeyError(f"hashFiles pattern {pattern!r} {why}")
        (exclude if negated else include).append(_compile(body))
    if not include:
        raise CacheKeyError("hashFiles needs at least one pattern that is not an exclusion ('!…')")
    return HashFiles(tuple(include), tuple(exclude))


def _compile(pattern: str) -> Segments:
    # A component never holds "/", so fnmatch's `*` (which would cross one) stays within it.
    return tuple(
        _GLOBSTAR if part == "**" else re.compile(fnmatch.translate(part))
        for part in pattern.split("/")
        if part not in ("", ".")
    )


def _matches(parts: tuple[str, ...], segments: Segments) -> bool:
    if not segments:
        return not parts
    first = segments[0]
    if first is _GLOBSTAR:
        return any(_matches(parts[skip:], segments[1:]) for skip in range(len(parts) + 1))
    return bool(parts) and first.fullmatch(parts[0]) is not None and _matches(parts[1:], segments[1:])


def _may_contain(parts: tuple[str, ...], segments: Segments) -> bool:
    """Whether a file below the directory `parts` could match."""
    if not segments:
        return False
    first = segments[0]
    if first is _GLOBSTAR or not parts:
        return True
    return first.fullmatch(parts[0]) is not None and _may_contain(parts[1:], segments[1:])


@dataclass(slots=True)
class _Walk:
    data_dir: Path
    work: list[str]  # the work directory's components below the data directory
    budget: int  # bytes still to hash
    stop: threading.Event


def evaluate(
    template: str | None,
    data_dir: Path,
    work: list[str],
    max_bytes: int,
    stop: threading.Event | None = None,
) -> str:
    """The key: `template` with each hashFiles(…) replaced by its digest over the work directory (`work`:
    its components below the data directory, opened without following links); DEFAULT_KEY for None."""
    if template is None:
        return DEFAULT_KEY
    walk = _Walk(data_dir, work, max_bytes, stop or threading.Event())
    return "".join(part if isinstance(part, str) else _digest(part, walk) for part in parse(template))


def _digest(spec: HashFiles, walk: _Walk) -> str:
    total = hashlib.sha256()
    matched = 0
    for relative, digest in sorted(_hashed_files(spec, walk)):
        total.update(os.fsencode(relative) + b"\0" + digest)
        matched += 1
    return total.hexdigest() if matched else ""


def _hashed_files(spec: HashFiles, walk: _Walk) -> Iterator[tuple[str, bytes]]:
    pending: list[tuple[str, ...]] = [()]
    while pending:
        if walk.stop.is_set():
            raise Stopped("stopped")
        parts = pending.pop()
        try:
            dir_fd = open_directory(walk.data_dir, [*walk.work, *parts])
        except OSError:
            continue  # gone, or not a real directory (a link is never entered)
        try:
            with os.scandir(dir_fd) as entries:
                found = [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries]
            for name, info in found:
                path = (*parts, name)
                if stat.S_ISDIR(info.st_mode):
                    if len(path) <= MAX_HASH_DEPTH and any(_may_contain(path, s) for s in spec.include):
                        pending.append(path)
                elif (
                    stat.S_ISREG(info.st_mode)
                    and _wanted(spec, path)
                    and (digest := _file_digest(dir_fd, name, walk)) is not None
                ):
                    yield "/".join(path), digest
        finally:
            os.close(dir_fd)


def _wanted(spec: HashFiles, path: tuple[str, ...]) -> bool:
    return any(_matches(path, s) for s in spec.include) and not any(_matches(path, s) for s in spec.exclude)


def _file_digest(dir_fd: int, name: str, walk: _Walk) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
            return None  # vanished or swapped for a link meanwhile
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            walk.budget -= len(chunk)
            if walk.budget < 0:
                raise CacheKeyError("hashFiles matched more bytes than ADE_MAX_CACHE_BYTES allows")
            digest.update(chunk)
        return digest.digest()
    finally:
        os.close(fd)
