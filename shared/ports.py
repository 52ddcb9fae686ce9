"""The ports: what the pipeline needs from the outside world, and the errors each may raise.

The pipeline and the CLI depend on these, never on an adapter's module, so the Pulumi
client, the Logs Ingestion client and the Table stores can each be swapped for an
in-memory fake in tests. Every error message names what is wrong and how to fix it, and
never carries a secret.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# -- the Pulumi audit log source -------------------------------------------------------------------


@dataclass(frozen=True)
class AuditPage:
    events: list[Any]
    next_token: str | None


class SourceError(RuntimeError):
    """The audit API could not give us a page; the message names the org and why."""


class ContinuationTokenRejected(SourceError):
    """The API refused a saved continuation token; the window is read again from its start."""


class AuditSource(Protocol):
    def fetch_page(self, org: str, start: int, end: int, continuation_token: str | None) -> AuditPage: ...


# -- the Logs Ingestion sink -----------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedRow:
    """A row and its JSON exactly as it goes on the wire: serialised once, sized from the same bytes."""

    row: dict[str, Any]
    body: bytes


@dataclass(frozen=True)
class RefusedRow:
    row: dict[str, Any]
    reason: str


class SinkUnavailable(RuntimeError):
    """Logs Ingestion did not accept the rows; nothing is checkpointed, the next run retries."""


class RowSink(Protocol):
    def send(self, rows: Sequence[EncodedRow]) -> list[RefusedRow]: ...


# -- the dead-letter store -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    org: str
    key: str
    row: dict[str, Any]
    reason: str
    failed_at: str


class DeadLetterUnavailable(RuntimeError):
    """Refused rows could not be stored; the run stops so they are fetched again."""


class DeadLetterStore(Protocol):
    def put(self, org: str, refused: Sequence[RefusedRow]) -> None: ...

    def list(self, org: str | None = None) -> Iterator[DeadLetter]: ...

    def remove(self, letter: DeadLetter) -> None: ...
