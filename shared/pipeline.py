"""The poll cycle: fetch a page, transform, drop repeats, upload, then checkpoint.

This is the only module that orchestrates the adapters, and it talks to them through
the small interfaces below, so tests run it against in-memory fakes as well as the
real clients. The order per page is what makes the promise hold:

1. fetch one page of the current window (memory stays one page, whatever the backlog);
2. transform it, and drop events the cursor's ledger says were already sent;
3. upload; rows the service refuses go to the dead-letter store, never nowhere;
4. only then save the cursor, conditional on the ETag read at the start.

A crash anywhere before step 4 re-reads the same page next run: at worst that page
is sent twice, with the same EventId_s. A crash after step 4 loses nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.catalog import EventCatalog
from shared.checkpoint_store import (
    MAX_LEDGER_ENTRIES,
    CheckpointConflict,
    CheckpointStore,
    CheckpointUnavailable,
    CursorKey,
)
from shared.cursor import Cursor
from shared.ports import (
    AuditPage,
    AuditSource,
    ContinuationTokenRejected,
    DeadLetterStore,
    DeadLetterUnavailable,
    RefusedRow,
    RowSink,
    SinkUnavailable,
    SourceError,
)
from shared.transform import InvalidEvent, encode_row, normalize, raw_digest, truncate_visibly, valid_utf8

log = logging.getLogger("shared.pipeline")

# Events need a moment to become visible in the API; the live window ends this far back.
SETTLE_DELAY_SECONDS = 60
LIVE_MAX_WINDOW_SECONDS = 3600
BACKFILL_MAX_WINDOW_SECONDS = 86400


@dataclass
class CollectionReport:
    """What one run did for one collection; `status` is ok, stopped (time budget) or failed."""

    org: str
    fetched: int = 0
    sent: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    truncated_rows: int = 0
    pages: int = 0
    lag_seconds: int | None = None
    status: str = "ok"
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def summary(self) -> str:
        line = (
            f"org={self.org} status={self.status} fetched={self.fetched} sent={self.sent} "
            f"duplicates_skipped={self.duplicates} dead_lettered={self.dead_lettered} "
            f"lag_seconds={'unknown' if self.lag_seconds is None else self.lag_seconds} "
            f"pages={self.pages} truncated={self.truncated_rows}"
        )
        return f"{line} error={self.error}" if self.error else line


@dataclass(frozen=True)
class Collection:
    """One cursor to advance: an org's live feed, or a backfill range."""

    org: str
    key: CursorKey
    first_watermark: int
    end_limit: Callable[[int], int]  # now -> the latest window end allowed
    max_window_seconds: int


@dataclass
class Collector:
    source: AuditSource
    sink: RowSink
    checkpoints: CheckpointStore
    dead_letters: DeadLetterStore
    catalog: EventCatalog
    overlap_seconds: int
    wall_clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    progress: list[Callable[[Cursor], None]] = field(default_factory=list)

    def collect(self, collection: Collection, deadline: float | None = None) -> CollectionReport:
        """Advance one cursor until it is caught up, the deadline passes, or something fails."""
        report = CollectionReport(org=collection.org)
        cursor: Cursor | None = None
        try:
            cursor, etag = self.checkpoints.load(collection.key)
            if cursor is None:
                cursor = Cursor.starting_at(collection.first_watermark)
            self._advance(collection, cursor, etag, report, deadline)
        except (
            SourceError,
            SinkUnavailable,
            CheckpointConflict,
            CheckpointUnavailable,
            DeadLetterUnavailable,
        ) as error:
            report.status = "failed"
            report.error = str(error)
        except Exception as error:  # one org's surprise must not stop the other orgs
            log.exception("org=%s unexpected error", collection.org)
            report.status = "failed"
            report.error = f"unexpected {type(error).__name__}: {str(error)[:300]}"
        if cursor is not None:
            report.lag_seconds = cursor.lag_seconds(int(self.wall_clock()))
        return report

    def _advance(
        self, collection: Collection, cursor: Cursor, etag: str | None, report: CollectionReport, deadline: float | None
    ) -> None:
        # Fixed for the run, so a run never opens a sliver of a window just because the clock
        # ticked while it worked; that would only re-read the overlap.
        end_limit = collection.end_limit(int(self.wall_clock()))
        token_restarted = False
        while True:
            if deadline is not None and self.monotonic() >= deadline:
                report.status = "stopped"
                return
            if cursor.window is None:
                if not cursor.open_window(end_limit, self.overlap_seconds, collection.max_window_seconds):
                    return
                token_restarted = False
            window = cursor.window
            try:
                page = self.source.fetch_page(collection.org, window.start, window.end, cursor.continuation_token)
            except ContinuationTokenRejected:
                if token_restarted:
                    raise
                token_restarted = True
                cursor.restart_window()
                continue
            if page.next_token and cursor.is_repeated_token(page.next_token):
                # The saved token chain can't be trusted: the next run reads the window from its
                # first page again, and the ledger drops what was already sent.
                cursor.restart_window()
                self._save(collection, cursor, etag)
                raise SourceError(
                    f"Pulumi API paging loops for org {collection.org!r}: a continuation token came back twice"
                )
            report.pages += 1
            report.fetched += len(page.events)

            rows, invalid = self._rows_of_page(collection.org, cursor, page, report)
            refused_by_service = self.sink.send([encode_row(row) for row in rows]) if rows else []
            refused = invalid + refused_by_service
            if refused:
                self.dead_letters.put(collection.org, refused)
                for item in refused:
                    log.error("org=%s dead-lettered row %s: %s", collection.org, item.row.get("EventId_s"), item.reason)
            report.sent += len(rows) - len(refused_by_service)
            report.dead_lettered += len(refused)

            cursor.finish_page(page.next_token, self.overlap_seconds)
            dropped = cursor.trim_ledger(MAX_LEDGER_ENTRIES, self.overlap_seconds)
            if dropped:
                log.warning("org=%s dedup ledger full: forgot %d old entries", collection.org, dropped)
            etag = self._save(collection, cursor, etag)

    def _save(self, collection: Collection, cursor: Cursor, etag: str | None) -> str:
        etag = self.checkpoints.save(collection.key, cursor, etag)
        for callback in self.progress:
            callback(cursor)
        return etag

    def _rows_of_page(
        self, org: str, cursor: Cursor, page: AuditPage, report: CollectionReport
    ) -> tuple[list[dict[str, Any]], list[RefusedRow]]:
        window = cursor.window
        rows: list[dict[str, Any]] = []
        invalid: list[RefusedRow] = []
        for event in page.events:
            try:
                normalized = normalize(org, event, self.catalog)
            except InvalidEvent as error:
                invalid.append(RefusedRow(invalid_event_row(org, event), f"invalid event: {error}"))
                continue
            if not window.contains(normalized.timestamp):
                continue  # outside this window (the API bounds are inclusive); a neighbouring window reads it
            occurrence = cursor.admit(normalized.identity, normalized.timestamp)
            if occurrence is None:
                report.duplicates += 1
                continue
            row = normalized.row(occurrence)
            if normalized.truncated_columns:
                report.truncated_rows += 1
                log.warning(
                    "org=%s event %s: truncated %s to 64 KB",
                    org,
                    row["EventId_s"],
                    ", ".join(normalized.truncated_columns),
                )
            rows.append(row)
        return rows, invalid


INVALID_EVENT_PREFIX = "invalid-"


def invalid_event_row(org: str, event: Any) -> dict[str, Any]:
    """What we keep of an event that cannot become a row: its org and its raw JSON."""
    raw = valid_utf8(json.dumps(event, sort_keys=True, ensure_ascii=False, default=str))
    return {
        "OrgName_s": org,
        "EventId_s": INVALID_EVENT_PREFIX + raw_digest(org, event).hex()[:32],
        "RawEvent_s": truncate_visibly(raw),
    }


def live_collection(org: str, now: int, initial_lookback_seconds: int) -> Collection:
    return Collection(
        org=org,
        key=CursorKey.live(org),
        first_watermark=now - initial_lookback_seconds,
        end_limit=lambda current: current - SETTLE_DELAY_SECONDS,
        max_window_seconds=LIVE_MAX_WINDOW_SECONDS,
    )


def backfill_collection(org: str, since: int, until: int) -> Collection:
    return Collection(
        org=org,
        key=CursorKey.backfill(org, since, until),
        first_watermark=since,
        end_limit=lambda current: min(until, current - SETTLE_DELAY_SECONDS),
        max_window_seconds=BACKFILL_MAX_WINDOW_SECONDS,
    )


def run_cycle(
    collector: Collector, orgs: Sequence[str], initial_lookback_seconds: int, budget_seconds: float
) -> list[CollectionReport]:
    """One poll of every org, exactly what the timer runs. One failing org doesn't stop the others."""
    deadline = collector.monotonic() + budget_seconds
    now = int(collector.wall_clock())
    reports = []
    for org in orgs:
        reports.append(collector.collect(live_collection(org, now, initial_lookback_seconds), deadline))
    return reports
