"""The ports: what the pipeline needs from the outside world, and the errors each may raise.

The pipeline and the CLI depend on these, never on an adapter's module, so the Pulumi
client, the Logs Ingestion client and the Table stores can each be swapped for an
in-memory fake in tests. Every error message names what is wrong and how to fix it, and
never carries a secret.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.coverage import Coverage
from shared.cursor import Cursor, LedgerSegment
from shared.delivery import Lease, OrgState
from shared.settings import Secret

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


# -- the Pulumi access tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class OrgToken:
    """An org's Pulumi token and where it came from (named in errors, e.g. after a 401)."""

    secret: Secret
    origin: str


class TokenUnavailable(SourceError):
    """The org's token could not be read; only that org fails, and the message names where it looked."""


class TokenSource(Protocol):
    def token_for(self, org: str) -> OrgToken: ...

    def forget(self, org: str) -> None:
        """Pulumi refused the org's token: read it afresh next time (it may have been rotated)."""


# -- the Logs Ingestion sink -----------------------------------------------------------------------

# Logs Ingestion takes at most 1 MB per call, uncompressed; a request stays a little below it.
MAX_BODY_BYTES = 1_000_000


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


# -- the delivery state store ----------------------------------------------------------------------


class StateUnavailable(RuntimeError):
    """The state store could not be reached or refused the request."""


class StateConflict(RuntimeError):
    """The state changed since this run read it: another run is working on it."""


class StateFormatUnknown(StateUnavailable):
    """The stored state was written in a format this version of the connector does not know."""


class LeaseHeld(RuntimeError):
    """Another run holds the lease; this run leaves the collection alone."""

    def __init__(self, name: str, holder: str, expires_at: int):
        self.name, self.holder, self.expires_at = name, holder, expires_at
        super().__init__(f"{name} is leased by {holder} until {_iso(expires_at)}")


class StateStore(Protocol):
    """Per org: the folded coverage, the cursors with their ledger segments, and the leases.

    Writes are conditional on the ETag that was read, and the writes that must go together
    (a cursor and its page's ledger segment; a finished lane and the coverage it adds) go
    in one atomic transaction.
    """

    def load_org(self, org: str) -> OrgState: ...

    def load_segments(self, org: str, name: str) -> list[LedgerSegment]: ...

    def create_cursor(self, org: str, name: str, cursor: Cursor) -> str: ...

    def save_cursor(
        self, org: str, name: str, cursor: Cursor, etag: str | None, segments: Sequence[LedgerSegment] = ()
    ) -> str: ...

    def save_segments(self, org: str, name: str, segments: Sequence[LedgerSegment]) -> None: ...

    def delete_segments(self, org: str, name: str, sequences: Sequence[int]) -> None: ...

    def claim_lanes(self, org: str, lanes: dict[str, Cursor], folded: Coverage, folded_etag: str | None) -> None: ...

    def finish_lane(self, org: str, name: str, etag: str | None, folded: Coverage, folded_etag: str | None) -> None: ...

    def replace_live(
        self, org: str, cursor: Cursor, etag: str | None, folded: Coverage, folded_etag: str | None
    ) -> None: ...

    def acquire_lease(
        self, org: str, name: str, holder: str, now: int, seconds: int, take_over_from: str | None = None
    ) -> Lease:
        """The lease, unless another holder's has not expired; `take_over_from` names a holder
        known to be gone, whose lease is taken at once (unless it changed hands since)."""
        ...

    def renew_lease(self, org: str, name: str, lease: Lease, now: int, seconds: int) -> Lease: ...

    def release_lease(self, org: str, name: str, lease: Lease) -> None: ...


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
