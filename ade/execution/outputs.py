"""A step's outputs (README "Outputs"): after it ends, the files of the work directory that match its
`output_paths` are copied into the run's outputs, and the files it wrote to `$ADE_OUTPUT_DIR` are put down
to it; and a failed-only re-run's kept steps get their outputs copied from the run they succeeded in.

- **Declared outputs.** Globs relative to the work directory (`*`, `?`, `[…]` within a path component,
  `**` for any number of directories; `*` also matches names starting with a dot; a pattern that matches a
  directory takes every file below it), collected when the step succeeded, or whatever its outcome with
  `output_when: always`. Only regular files reached through real directories count: a symlink is never
  followed (a link to /etc/passwd is simply not an output), nor a symlinked directory entered. Each is
  copied to `outputs/<the same relative path>`: under a temporary name, then renamed, every directory on
  the way opened with O_NOFOLLOW (a link a step planted in the outputs is never written through). When
  the path is already an output, **the last writer wins**: the copy replaces it, its record names the step
  it replaced (`replaced`), and a `console.line` on stderr says so.
- **Files written to `$ADE_OUTPUT_DIR`.** A new file (not yet anyone's) is the ending step's when it
  appeared — its inode change time, which a step cannot set — while this step ran and no other step of
  the run did; otherwise its step stays unknown (`null`), e.g. with two steps writing there side by side.
- **Limits.** The run's outputs, declared copies included, stay within its output limit (the
  configuration's `limits.output_bytes`, at most ADE_MAX_OUTPUT_BYTES), and a step records at most
  MAX_STEP_OUTPUTS files: past either, nothing of its declared outputs is copied, and a step that
  succeeded fails `resource_limit`.

What a step added is returned in its `StepResult.outputs`, which `transitions.finish_step` records in its
`StepState.outputs` (the index the listing, `?step=` and failed-only re-runs read) and its
`run.step.completed` payload. Plain functions: nothing here knows arq or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ade.core import paths, workflow
from ade.core.errors import NotFound
from ade.core.models import Failure, Run, Step, StepOutput
from ade.core.safe_open import open_directory, open_no_follow
from ade.events.payloads import ConsoleLine
from ade.execution.limits import capped
from ade.lifecycle.transitions import Recorder, steps_of
from ade.records.outputs import PARTIAL_PREFIX, owners_of, regular_files

if TYPE_CHECKING:
    from ade.core.settings import Settings
    from ade.events.writer import Emitter
    from ade.execution.scheduler import ExecuteStep, StepResult, StepSlot

log = logging.getLogger(__name__)

MAX_STEP_OUTPUTS = 1000  # files a step's record lists (declared and written to $ADE_OUTPUT_DIR)
_COPY_BYTES = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GLOB_CHARS = re.compile(r"[*?\[]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def collecting(settings: Settings, run: Run, writer: Emitter, execute_step: ExecuteStep) -> ExecuteStep:
    """`execute_step`, then — once the step ended, before its `finish_step` — the collection of its
    outputs (`collect`), one step at a time. Its result carries them, and is `failed` / `resource_limit`
    when a step that succeeded would pass the run's output limit."""
    lock = asyncio.Lock()
    placed: dict[str, str] = {}  # path → step, for what this execution placed (newer than the record's)

    async def execute(slot: StepSlot) -> StepResult:
        result = await execute_step(slot)
        async with lock:
            return await collect(settings, run, writer, slot.index, result, placed)

    return execute


async def collect(
    settings: Settings, run: Run, writer: Emitter, index: int, result: StepResult, placed: dict[str, str]
) -> StepResult:
    """Collect the outputs of the step at `index`, which just ended with `result` (see the module's doc);
    `placed` (path → step) is updated with what it placed."""
    step, state = run.plan.steps[index], steps_of(run)[index]
    declared = step.output_paths if result.status == "succeeded" or step.output_when == "always" else []
    owners = {**owners_of(run.steps), **placed}
    others = [
        (_ns(other.started_at), _ns(other.completed_at) if other.completed_at else None)
        for position, other in enumerate(run.steps)
        if position != index and other.started_at is not None
    ]
    window = _Window(_ns(state.started_at) if state.started_at else None, others)
    limit = capped(run.plan.limits.output_bytes, settings.max_output_bytes)
    try:
        found = await asyncio.to_thread(
            gather, settings.data_dir, run.id, step, declared, owners, window, limit
        )
    except OSError as exc:  # the outputs directory itself is unusable (each file's own trouble is a note)
        log.exception("run %s: collecting the outputs of step %r failed", run.id, step.name)
        message = f"step {step.name!r}: collecting its outputs failed: {exc}"
        failure = Failure(stage="step", code="internal_error", message=message, step=step.name)
        found = Found(notes=[f"[ade] {message}"], failure=failure)
    for note in found.notes:
        await writer.emit(ConsoleLine(scope="run", stream="stderr", step=step.name, message=note))
    for output in found.outputs:
        placed[output.path] = step.name
    result = dataclasses.replace(result, outputs=found.outputs)
    if found.failure is not None and result.status == "succeeded":
        result = dataclasses.replace(result, status="failed", failure=found.failure)
    return result


@dataclass(frozen=True, slots=True)
class _Window:
    """When the ending step ran (from its start on), and when the run's other started steps ran (an end of
    None: still running), as epoch nanoseconds."""

    start_ns: int | None
    others: list[tuple[int, int | None]]

    def only_this_step(self, moment_ns: int) -> bool:
        if self.start_ns is None or moment_ns < self.start_ns:
            return False
        return not any(start <= moment_ns and (end is None or moment_ns <= end) for start, end in self.others)


@dataclass(slots=True)
class Found:
    outputs: list[StepOutput] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failure: Failure | None = None


def gather(
    data_dir: Path,
    run_id: str,
    step: Step,
    declared: Sequence[str],
    owners: dict[str, str],
    window: _Window,
    limit: int,
) -> Found:
    """The file work of `collect`, in a thread: copy the declared outputs, then claim the new files of
    `$ADE_OUTPUT_DIR` that appeared while only this step ran."""
    run_dir = paths.run_dir(data_dir, run_id)
    work_below = list(run_dir.work.relative_to(data_dir).parts)
    outputs_below = list(run_dir.outputs.relative_to(data_dir).parts)
    present = {
        relative: (info.st_size, info.st_ctime_ns)
        for relative, _, _, info in regular_files(run_dir.outputs, root=data_dir)
    }
    found = Found()
    if declared:
        _copy_declared(data_dir, work_below, outputs_below, step, declared, owners, present, limit, found)
    placed = {output.path for output in found.outputs}
    claimed = sorted(
        relative
        for relative, (_, changed_ns) in present.items()
        if relative not in owners and relative not in placed and window.only_this_step(changed_ns)
    )
    room = MAX_STEP_OUTPUTS - len(found.outputs)
    if len(claimed) > room:
        found.notes.append(
            f"[ade] {len(claimed) - room} more files this step wrote to $ADE_OUTPUT_DIR stay outputs "
            f"without a step (a step records at most {MAX_STEP_OUTPUTS} outputs)"
        )
    for relative in claimed[: max(room, 0)]:
        found.outputs.append(StepOutput(path=relative, size=present[relative][0], source="output_dir"))
    found.outputs.sort(key=lambda output: output.path)
    return found


def _copy_declared(
    data_dir: Path,
    work_below: list[str],
    outputs_below: list[str],
    step: Step,
    patterns: Sequence[str],
    owners: dict[str, str],
    present: dict[str, tuple[int, int]],
    limit: int,
    found: Found,
) -> None:
    candidates, unmatched = match_files(data_dir, work_below, patterns)
    for pattern in unmatched:
        found.notes.append(f"[ade] output_paths entry {pattern!r} matched no file")
    if len(candidates) > MAX_STEP_OUTPUTS:
        message = (
            f"step {step.name!r}: its output_paths matched {len(candidates)} files, over the limit of "
            f"{MAX_STEP_OUTPUTS} outputs per step; none was collected"
        )
        found.failure = Failure(stage="step", code="resource_limit", message=message, step=step.name)
        found.notes.append(f"[ade] {message}")
        return
    total = sum(size for size, _ in present.values())
    total += sum(size - present.get(relative, (0, 0))[0] for relative, size in candidates.items())
    if limit > 0 and total > limit:
        message = (
            f"step {step.name!r}: with its output_paths the run's outputs would be {total} bytes, over the "
            f"limit of {limit} bytes (the configuration's limits.output_bytes, at most "
            "ADE_MAX_OUTPUT_BYTES); none was collected"
        )
        found.failure = Failure(stage="step", code="resource_limit", message=message, step=step.name)
        found.notes.append(f"[ade] {message}")
        return
    owner = _owner_of(data_dir, outputs_below)
    for relative in sorted(candidates):
        parts = relative.split("/")
        try:
            size = copy_file(data_dir, work_below + parts, outputs_below, parts, owner)
        except _Refused as exc:
            found.notes.append(f"[ade] output {relative!r} not collected: {exc}")
            continue
        except FileNotFoundError:
            why = "it is gone or no longer a regular file"
            found.notes.append(f"[ade] output {relative!r} not collected: {why}")
            continue
        except OSError as exc:
            message = f"step {step.name!r}: collecting output {relative!r} failed: {exc.strerror or exc}"
            found.failure = Failure(stage="step", code="internal_error", message=message, step=step.name)
            found.notes.append(f"[ade] {message}")
            return
        replaced = owners.get(relative) if relative in present else None
        if relative in present:
            earlier = f"step {replaced!r}'s output" if replaced else "the file already in the outputs"
            found.notes.append(f"[ade] output {relative!r} replaces {earlier} (the last writer wins)")
        found.outputs.append(StepOutput(path=relative, size=size, source="output_paths", replaced=replaced))


# Matching output_paths ---------------------------------------------------------------------------------


def match_files(
    data_dir: Path, work_below: list[str], patterns: Sequence[str]
) -> tuple[dict[str, int], list[str]]:
    """({relative path: size} of the regular files of the work directory that match a pattern (or lie
    below a directory that does), the patterns that matched nothing). Nothing is followed: links are not
    files here, symlinked directories are not entered."""
    compiled = [(pattern, glob_regex(pattern)) for pattern in patterns]
    found: dict[str, int] = {}
    matched: set[str] = set()
    for base in _bases(patterns):
        for relative, size in _files_below(data_dir, work_below, base):
            for pattern, regex in compiled:
                if _matches(regex, relative):
                    found[relative] = size
                    matched.add(pattern)
    return found, [pattern for pattern in patterns if pattern not in matched]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative paths as a regex: `**` (a whole component) is any number of directories
    (none included), `*` and `?` stay within a component, `[…]` is a class (`[!…]` negated)."""
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    regex = ""
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _component_regex(part) + ("" if last else "/")
    return re.compile(regex, re.DOTALL)


def _component_regex(part: str) -> str:
    regex, position = "", 0
    while position < len(part):
        char = part[position]
        position += 1
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "[" and (end := part.find("]", position + 1)) != -1:
            body = part[position:end]
            position = end + 1
            negated = body.startswith("!")
            body = body[1:] if negated else body
            escaped = "".join("\\" + c if c in "\\^[]" else c for c in body)
            regex += f"[^/{escaped}]" if negated else f"[{escaped}]"
        else:
            regex += re.escape(char)
    return regex


def _matches(regex: re.Pattern[str], relative: str) -> bool:
    """The path, or a directory it lies in, matches."""
    if regex.fullmatch(relative):
        return True
    parts = relative.split("/")
    return any(regex.fullmatch("/".join(parts[:depth])) for depth in range(1, len(parts)))


def _bases(patterns: Sequence[str]) -> list[list[str]]:
    """Where to look: each pattern's leading literal components, without those below another's."""
    bases: list[list[str]] = []
    for pattern in patterns:
        base: list[str] = []
        for part in pattern.split("/"):
            if part in ("", "."):
                continue
            if _GLOB_CHARS.search(part):
                break
            base.append(part)
        bases.append(base)
    kept: list[list[str]] = []
    for base in sorted(bases, key=len):
        if not any(base[: len(other)] == other for other in kept):
            kept.append(base)
    return kept


def _files_below(data_dir: Path, work_below: list[str], base: list[str]) -> Iterator[tuple[str, int]]:
    """(relative path, size) of the regular files at or below `base` (a directory, or a file itself)."""
    work_dir = data_dir.joinpath(*work_below)
    if base:
        try:
            parent = open_directory(data_dir, work_below + base[:-1])
        except (OSError, ValueError):
            return
        try:
            info = os.stat(base[-1], dir_fd=parent, follow_symlinks=False)
        except (OSError, ValueError):
            return
        finally:
            os.close(parent)
        if stat.S_ISREG(info.st_mode):
            yield "/".join(base), info.st_size
            return
        if not stat.S_ISDIR(info.st_mode):
            return
    for relative, _, _, info in regular_files(work_dir, root=data_dir, start=base):
        yield relative, info.st_size


# Copying without following links ------------------------------------------------------------------------


class _Refused(Exception):
    """Something in the outputs directory is in the way (a link, a file where a directory should be, a
    directory where the file should be)."""


def _owner_of(data_dir: Path, outputs_below: list[str]) -> tuple[int, int] | None:
    """Whom copies belong to: the outputs directory's owner (the sandbox's uid) when this worker is root,
    so later steps can change them; None (this process) otherwise."""
    if os.geteuid() != 0:
        return None
    fd = open_directory(data_dir, outputs_below)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return info.st_uid, info.st_gid


def copy_file(
    data_dir: Path,
    source: list[str],
    target_below: list[str],
    relative: list[str],
    owner: tuple[int, int] | None,
) -> int:
    """Copy the regular file `data_dir/source` to `data_dir/target_below/relative`, creating directories
    on the way; returns the bytes copied. Both ends are reached component by component with O_NOFOLLOW
    from `data_dir`: `FileNotFoundError` when the source is missing or not a regular file (a link),
    `_Refused` when something in the target is in the way. The copy is written under a PARTIAL_PREFIX name
    and renamed over the target (which replaces a file, or a link itself, never what it points at)."""
    source_fd = open_no_follow(data_dir, source)
    try:
        dir_fd = _directories(data_dir, target_below, relative[:-1], owner)
        try:
            return _write_into(source_fd, dir_fd, relative[-1], owner)
        finally:
            os.close(dir_fd)
    finally:
        os.close(source_fd)


def _directories(data_dir: Path, below: list[str], parts: list[str], owner: tuple[int, int] | None) -> int:
    fd = open_directory(data_dir, below)
    try:
        for position, part in enumerate(parts):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # made meanwhile, or a link: the open decides
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = _open_made(fd, part, parts[: position + 1])
                if owner is not None:
                    os.fchown(child, *owner)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _not_a_directory(parts[: position + 1]) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_made(fd: int, part: str, where: list[str]) -> int:
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _not_a_directory(where) from None
        raise


def _not_a_directory(where: list[str]) -> _Refused:
    return _Refused(f"{'/'.join(where)!r} in the outputs is not a directory")


def _write_into(source_fd: int, dir_fd: int, name: str, owner: tuple[int, int] | None) -> int:
    temporary = f"{PARTIAL_PREFIX}{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    target = os.open(temporary, flags, 0o644, dir_fd=dir_fd)
    try:
        try:
            copied = _copy_bytes(source_fd, target)
            if owner is not None:
                os.fchown(target, *owner)
        finally:
            os.close(target)
        try:
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except IsADirectoryError:
            raise _Refused("a directory of that name is in the outputs") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    return copied


def _copy_bytes(source_fd: int, target_fd: int) -> int:
    copied = 0
    try:
        while chunk := os.copy_file_range(source_fd, target_fd, _COPY_BYTES):
            copied += chunk
        return copied
    except OSError as exc:
        if copied or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while data := os.read(source_fd, _COPY_BYTES):
        os.write(target_fd, data)  # a regular file: write() writes it all
        copied += len(data)
    return copied


def _ns(moment: datetime) -> int:
    """A recorded time as epoch nanoseconds (exactly: a record keeps microseconds)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


# Failed-only re-runs ---------------------------------------------------------------------------------


def kept_steps(source: Run) -> dict[int, str]:
    """Index → the run it succeeded in, of each step of `source` a failed-only re-run keeps: the steps that
    succeeded there and all of whose dependencies (transitively) are kept too. Every other step runs again:
    those that failed, were cancelled or skipped, and everything downstream of them (in order, without
    `depends_on`: every step after the first that runs again)."""
    states = steps_of(source)
    dependencies = workflow.dependencies(source.plan.steps)
    keep = {index for index, state in enumerate(states) if state.status == "succeeded"}
    changed = True
    while changed:
        changed = False
        for index in sorted(keep):
            if any(dependency not in keep for dependency in dependencies[index]):
                keep.discard(index)
                changed = True
    return {index: states[index].reused_from or source.id for index in sorted(keep)}


Kept = list[tuple[int, str, list[StepOutput]]]  # (step index, the run it succeeded in, its outputs here)


async def keep_succeeded(rec: Recorder, run: Run) -> Kept:
    """A failed-only re-run: copy the outputs of the steps it keeps (`kept_steps` of the run it repeats)
    into its own outputs. A kept step's outputs are the files it was the last to write there. When they
    cannot be copied, nothing is kept (a stderr `console.line` says why) and every step runs again."""
    if not run.failed_only or run.rerun_of is None:
        return []
    try:
        source = await rec.store.get_run(run.rerun_of)
    except NotFound:
        await _note(rec, f"[ade] run {run.rerun_of} is gone: every step runs again")
        return []
    kept = kept_steps(source)
    owners = owners_of(steps_of(source))
    wanted = [
        (index, origin, [o for o in state.outputs if owners.get(o.path) == state.name])
        for index, origin in kept.items()
        for state in [source.steps[index]]
    ]
    try:
        return await asyncio.to_thread(_copy_kept, rec.store.data_dir, source.id, run.id, wanted)
    except OSError as exc:
        log.warning("run %s: could not copy the kept steps' outputs from %s: %s", run.id, source.id, exc)
        message = f"[ade] the outputs of the steps kept from run {source.id} could not be copied ({exc})"
        await _note(rec, f"{message}: every step runs again")
        return []


def _copy_kept(data_dir: Path, source_id: str, run_id: str, wanted: Kept) -> Kept:
    source_below = list(paths.run_dir(data_dir, source_id).outputs.relative_to(data_dir).parts)
    target_below = list(paths.run_dir(data_dir, run_id).outputs.relative_to(data_dir).parts)
    owner = _owner_of(data_dir, target_below)
    kept: Kept = []
    for index, origin, outputs in wanted:
        copied: list[StepOutput] = []
        for output in outputs:
            parts = output.path.split("/")
            try:
                size = copy_file(data_dir, source_below + parts, target_below, parts, owner)
            except FileNotFoundError:
                continue  # no longer there (a later step removed it): not an output of that run either
            except _Refused as exc:
                raise OSError(errno.EEXIST, f"{output.path}: {exc}") from None
            copied.append(StepOutput(path=output.path, size=size, source=output.source))
        kept.append((index, origin, copied))
    return kept


async def _note(rec: Recorder, message: str) -> None:
    await rec.writer.emit(ConsoleLine(scope="run", stream="stderr", message=message))
