"""In-memory fakes of the pipeline's adapters, for fast service-level tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shared.dead_letter import dead_letter_key
from shared.ports import AuditPage, ContinuationTokenRejected, DeadLetter, EncodedRow, RefusedRow, SinkUnavailable
from shared.state_store import MemoryEntities, TableStateStore


class FakeAuditSource:
    """Pages through events with start <= timestamp <= end, in shuffled order, like the API."""

    def __init__(self, page_size: int = 3, seed: int = 7):
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.page_size = page_size
        self.seed = seed
        self.calls: list[tuple[str, int, int, str | None]] = []
        self.failures: dict[str, Exception] = {}
        self.reject_tokens = False
        self.loop_tokens = False
        self.loop_back_at_offset: int | None = None  # the page at this offset points back to the second page

    def add(self, org: str, *events: dict[str, Any]) -> None:
        self.events.setdefault(org, []).extend(events)

    def fetch_page(self, org: str, start: int, end: int, continuation_token: str | None) -> AuditPage:
        self.calls.append((org, start, end, continuation_token))
        if org in self.failures:
            raise self.failures[org]
        if continuation_token and self.reject_tokens:
            self.reject_tokens = False
            raise ContinuationTokenRejected("token refused")
        matching = [event for event in self.events.get(org, []) if start <= event["timestamp"] <= end]
        random.Random(self.seed).shuffle(matching)
        offset = int(continuation_token.split(":")[1]) if continuation_token else 0
        page = matching[offset : offset + self.page_size]
        more = offset + self.page_size < len(matching)
        if self.loop_tokens and continuation_token:
            return AuditPage(events=page, next_token=continuation_token)
        if self.loop_back_at_offset == offset:
            return AuditPage(events=page, next_token=f"{org}:{self.page_size}")
        return AuditPage(events=page, next_token=f"{org}:{offset + self.page_size}" if more else None)


class FakeSink:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.refuse: Callable[[dict[str, Any]], str | None] = lambda row: None
        self.unavailable_for = 0  # the next N send calls raise SinkUnavailable
        self.before_send: Callable[[], None] = lambda: None

    def send(self, rows: Sequence[EncodedRow]) -> list[RefusedRow]:
        self.before_send()
        if self.unavailable_for:
            self.unavailable_for -= 1
            raise SinkUnavailable("Logs Ingestion did not accept the rows after retries (503)")
        refused = []
        for row in (encoded.row for encoded in rows):
            reason = self.refuse(row)
            if reason:
                refused.append(RefusedRow(row, reason))
            else:
                self.rows.append(row)
        return refused


class CrashingStateStore(TableStateStore):
    """The in-memory delivery state, with a process that dies before its Nth cursor save."""

    def __init__(self) -> None:
        super().__init__(MemoryEntities())
        self.saves = 0
        self.fail_saves_after: int | None = None

    def save_cursor(self, org, name, cursor, etag, segments=()):
        if self.fail_saves_after is not None and self.saves >= self.fail_saves_after:
            raise SimulatedCrash("process died before the checkpoint write")
        etag = super().save_cursor(org, name, cursor, etag, segments)
        self.saves += 1
        return etag


class InMemoryDeadLetterStore:
    def __init__(self) -> None:
        self.letters: dict[tuple[str, str], DeadLetter] = {}

    def put(self, org: str, refused: Sequence[RefusedRow]) -> None:
        for item in refused:
            key = dead_letter_key(item.row)
            self.letters[(org, key)] = DeadLetter(org, key, item.row, item.reason, "2026-11-23T00:00:00Z")

    def list(self, org: str | None = None) -> Iterator[DeadLetter]:
        return iter([letter for letter in self.letters.values() if org is None or letter.org == org])

    def remove(self, letter: DeadLetter) -> None:
        self.letters.pop((letter.org, letter.key), None)


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the pipeline catches it."""
