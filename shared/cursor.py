"""Where an org's collection stands, and which events it already sent. Pure, no I/O.

A cursor walks time in windows. The watermark W says every event before W has
been handled. A window queries [W - overlap, end): re-reading the overlap catches
events the API shows late, and the ledger drops the ones already sent. Pages of a
window are followed by continuation token; the token is saved after every page,
so a run that stops (crash, time budget) resumes mid-window.

The API has no event id and may return identical events in the same second, so
the ledger counts, per event identity, how many were sent and how many this window
has seen: the n-th identical event is new only when n exceeds what was sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# The ledger keys events by the first bytes of their identity digest.
DIGEST_KEY_BYTES = 8
# A window opens only for at least this much new time: a sliver would re-read the whole
# overlap for nothing. Well under the one-minute timer period.
MIN_NEW_SECONDS = 30


@dataclass
class LedgerEntry:
    timestamp: int
    sent: int = 0
    seen_in_window: int = 0


@dataclass(frozen=True)
class Window:
    start: int
    end: int

    def contains(self, timestamp: int) -> bool:
        return self.start <= timestamp < self.end


@dataclass
class Cursor:
    """Progress of one collection (an org's live feed, or one backfill range)."""

    watermark: int
    origin: int
    window: Window | None = None
    continuation_token: str | None = None
    ledger: dict[bytes, LedgerEntry] = field(default_factory=dict)
    # Digests of the continuation tokens this window has handed out, kept across runs,
    # so a token that comes back (a paging loop) is caught even after a restart.
    window_tokens: set[bytes] = field(default_factory=set)

    @classmethod
    def starting_at(cls, watermark: int) -> Cursor:
        return cls(watermark=watermark, origin=watermark)

    def open_window(self, end_limit: int, overlap: int, max_span: int) -> bool:
        """Start the next window up to `end_limit`; False when there is nothing new to read."""
        if self.window is not None:
            return True
        end = min(end_limit, self.watermark + max_span)
        if end - self.watermark < MIN_NEW_SECONDS:
            return False
        self.window = Window(start=max(self.origin, self.watermark - overlap), end=end)
        self.restart_window()
        return True

    def restart_window(self) -> None:
        """Read the current window from its first page (again, if its token was refused)."""
        self.continuation_token = None
        self.window_tokens.clear()
        for entry in self.ledger.values():
            entry.seen_in_window = 0

    def is_repeated_token(self, token: str) -> bool:
        """Whether this window already handed out `token`: following it would read pages twice."""
        return token_digest(token) in self.window_tokens

    def admit(self, digest: bytes, timestamp: int) -> int | None:
        """The occurrence number of this event if it is new, None if it was already sent."""
        key = digest[:DIGEST_KEY_BYTES]
        entry = self.ledger.get(key)
        if entry is None:
            entry = self.ledger[key] = LedgerEntry(timestamp=timestamp)
        entry.seen_in_window += 1
        if entry.seen_in_window <= entry.sent:
            return None
        entry.sent = entry.seen_in_window
        return entry.seen_in_window

    def finish_page(self, next_token: str | None, overlap: int) -> None:
        """Record a page as handled; the last page of a window moves the watermark."""
        if next_token:
            self.continuation_token = next_token
            self.window_tokens.add(token_digest(next_token))
            return
        assert self.window is not None
        self.watermark = self.window.end
        self.window = None
        self.continuation_token = None
        self.window_tokens.clear()
        horizon = self.watermark - overlap
        self.ledger = {key: entry for key, entry in self.ledger.items() if entry.timestamp >= horizon}

    def trim_ledger(self, max_entries: int, overlap: int) -> int:
        """Keep the ledger within `max_entries`; returns how many entries were dropped.

        Entries the next window's overlap needs are kept longest. A dropped entry can
        only cause a re-send (a duplicate with the same EventId_s), never a loss.
        """
        excess = len(self.ledger) - max_entries
        if excess <= 0:
            return 0
        end = self.window.end if self.window else self.watermark
        needed_from = end - overlap
        order = sorted(self.ledger.items(), key=lambda item: (item[1].timestamp >= needed_from, item[1].timestamp))
        for key, _ in order[:excess]:
            del self.ledger[key]
        return excess

    def lag_seconds(self, now: int) -> int:
        return max(0, now - self.watermark)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()[:DIGEST_KEY_BYTES]
