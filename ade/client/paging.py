"""Listings fetched a page at a time, shared by both clients: a pager says which request fetches the next
page and which items an answer holds; the clients only send the requests (`_paged`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar

from ade.client.calls import Call, ConsoleStream, Params, console_page, decoder, json_call, seg
from ade.core.models import BuildResource, Page, RunResource, RunStatus
from ade.records.summary import ConsoleLine, ConsolePage

T = TypeVar("T")
P = TypeVar("P")


class Pager(Protocol[P, T]):
    """The requests of a listing, one page each, and the items of their answers."""

    def next_call(self) -> Call[P] | None:
        """The request for the next page; None when the listing is complete."""
        ...

    def take(self, answer: P) -> list[T]:
        """The items of the answer to the last `next_call()`."""
        ...


@dataclass(slots=True)
class Pages(Generic[P, T]):
    """A newest-first listing fetched a page at a time, at most `limit` items: the request for the next page
    and the items of each answer. Shared by both clients, which only send the requests."""

    call: Callable[[int, str | None], Call[P]]  # (page size, before) -> the request
    split: Callable[[P, int], tuple[list[T], str | None]]  # (answer, size asked) -> items, next `before`
    limit: int | None
    page_size: int
    before: str | None = None
    count: int = 0
    asked: int = 0
    done: bool = False

    def next_call(self) -> Call[P] | None:
        """The request for the next page; None when the listing is complete."""
        remaining = self.page_size if self.limit is None else self.limit - self.count
        self.asked = min(self.page_size, remaining)
        return None if self.done or self.asked <= 0 else self.call(self.asked, self.before)

    def take(self, answer: P) -> list[T]:
        items, self.before = self.split(answer, self.asked)
        self.count += len(items)
        self.done = self.before is None or not items
        return items


# Runs


def _list_runs_call(
    workspace_id: str | None,
    configuration_id: str | None,
    statuses: Sequence[RunStatus],
    branch: str | None,
    page_size: int,
    before: str | None,
) -> Call[Page]:
    if workspace_id is not None:
        path = f"/workspaces/{seg(workspace_id)}/runs"
    else:
        assert configuration_id is not None  # list_runs_pages checked
        path = f"/configurations/{seg(configuration_id)}/runs"
    params: Params = [("limit", page_size)]
    params += [("status", status) for status in statuses]
    if workspace_id is not None and configuration_id is not None:
        params.append(("configuration_id", configuration_id))
    if branch is not None:
        params.append(("branch", branch))
    if before is not None:
        params.append(("before", before))
    return Call("GET", path, decoder(Page), params=params)


def _statuses(status: RunStatus | Sequence[RunStatus] | None) -> list[RunStatus]:
    if status is None:
        return []
    if isinstance(status, str):
        return [status]
    return list(status)


def _runs_page(page: Page, asked: int) -> tuple[list[RunResource], str | None]:
    return page.items, page.next_cursor


def list_runs_pages(
    workspace_id: str | None,
    configuration_id: str | None,
    status: RunStatus | Sequence[RunStatus] | None,
    branch: str | None,
    limit: int | None,
    page_size: int,
) -> Pages[Page, RunResource]:
    if workspace_id is None and configuration_id is None:
        raise ValueError("list_runs needs workspace_id or configuration_id")
    call = partial(_list_runs_call, workspace_id, configuration_id, _statuses(status), branch)
    return Pages(call, _runs_page, limit, page_size)


# Builds


def _list_builds_call(configuration_id: str, page_size: int, before: str | None) -> Call[list[BuildResource]]:
    path = f"/configurations/{seg(configuration_id)}/builds"
    return json_call("GET", path, list[BuildResource], limit=page_size, before=before)


def _builds_page(items: list[BuildResource], asked: int) -> tuple[list[BuildResource], str | None]:
    """The endpoint answers a plain list: a full page may have older builds after its last one."""
    return items, items[-1].id if len(items) >= asked else None


def list_builds_pages(
    configuration_id: str, limit: int | None, page_size: int
) -> Pages[list[BuildResource], BuildResource]:
    return Pages(partial(_list_builds_call, configuration_id), _builds_page, limit, min(page_size, 100))


# Console lines


@dataclass(slots=True)
class ConsolePages:
    """A run's console lines logged so far (both streams, or `stream` only), oldest first: JSON pages of
    `GET /runs/{id}/logs`, each after the sequence the previous one ended at, until one ends no further."""

    run_id: str
    stream: ConsoleStream | None
    after: int = 0
    done: bool = False

    def next_call(self) -> Call[ConsolePage] | None:
        return None if self.done else console_page(self.run_id, self.after, self.stream)

    def take(self, answer: ConsolePage) -> list[ConsoleLine]:
        self.done = answer.next_after_sequence <= self.after
        self.after = answer.next_after_sequence
        return answer.items
