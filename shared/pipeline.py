"""The poll cycle: read pages, transform, drop repeats, upload, then save the state.

This is the only module that orchestrates the adapters, and it talks to them through
the ports (shared/ports.py), so tests run it against in-memory fakes as well as the
real clients. Per collection (an org's live feed or a backfill lane), under its lease:

1. a reader thread fetches the pages of the cursor's windows, a few ahead (shared/stages.py);
2. this thread transforms each page and hands it to the cursor in one call (`Cursor.take_page`),
   which drops the events its ledger says were sent and says what to save after the upload;
3. an upload thread fills requests of about 1 MB across pages; rows the service refuses go
   to the dead-letter store, never nowhere;
4. only once every row of a page was accepted is the cursor saved past it, with the page's
   ledger segment, in one transaction conditional on the ETag, strictly in page order.

A crash before step 4 re-reads those pages next run: at worst the rows of the request in
flight are sent twice, with the same EventId_s; the uploader saves before it sends the next
request, so that is one request per collection (several collections run at once). A crash
after step 4 loses nothing. The lease keeps a second run off the collection, so two runs
never send the same page. SIGINT and SIGTERM set `Collector.stop`: reading stops, the request
in flight ends and is saved, and the lease is released (shared/graceful_stop.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from shared.catalog import EventCatalog
from shared.cursor import (
    DIGEST_KEY_BYTES,
    RECENT_REREAD_SECONDS,
    Cursor,
    PendingSave,
    SegmentEntry,
    WindowPlan,
)
from shared.delivery import LIVE, BackfillPlan, OrgState, first_live_cursor, fold_lane, lane_name, plan_backfill
from shared.ports import (
    AuditSource,
    DeadLetterStore,
    DeadLetterUnavailable,
    EncodedRow,
    LeaseHeld,
    RefusedRow,
    RowSink,
    SinkUnavailable,
    SourceError,
    StateConflict,
    StateStore,
    StateUnavailable,
)
from shared.stages import (
    WINDOW_RESTARTED,
    FetchedPage,
    PageReader,
    PageRecord,
    ReadingEnded,
    ReadingFailed,
    Uploader,
)
from shared.transform import InvalidEvent, encode_row, normalize, raw_digest, truncate_visibly, valid_utf8

log = logging.getLogger("shared.pipeline")

# Events need a moment to become visible in the API; the live window ends this far back.
SETTLE_DELAY_SECONDS = 60
LIVE_MAX_WINDOW_SECONDS = 3600
BACKFILL_MAX_WINDOW_SECONDS = 86400
# A run killed while it holds a lease delays that collection by at most this long. A
# working run renews its lease every third of it.
LEASE_SECONDS = 120
# How often the thread that waits for collections wakes up to run a signal's handler.
SIGNAL_CHECK_SECONDS = 0.1
# A finished lane's coverage write can meet another lane's; each conflict means another lane
# folded, so this many attempts outlast every other lane of a backfill (BACKFILL_PARALLELISM <= 16).
FOLD_ATTEMPTS = 17


@dataclass
class CollectionReport:
    """What one run did for one collection; `status` is ok, stopped (time budget, SIGINT or
    SIGTERM), skipped (another run holds the lease) or failed."""

    org: str
    collection: str = LIVE
    fetched: int = 0
    sent: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    truncated_rows: int = 0
    pages: int = 0
    lag_seconds: int | None = None
    watermark: int | None = None
    saved_pages: int = 0  # pages of this run whose rows were accepted and whose cursor was saved
    late_events: int = 0  # new events found in time read before: the API showed them late
    oldest_late_seconds: int = 0  # how old the oldest of them was when read: size LATE_EVENT_OVERLAP above it
    took_over_from: str | None = None  # the holder of a lease taken over at once: its process had ended
    status: str = "ok"
    error: str | None = None

    @property
    def kind(self) -> str:
        return "live" if self.collection == LIVE else "backfill"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def summary(self) -> str:
        where = "" if self.collection == LIVE else f" collection={self.collection}"
        line = (
            f"org={self.org}{where} status={self.status} fetched={self.fetched} sent={self.sent} "
            f"duplicates_skipped={self.duplicates} dead_lettered={self.dead_lettered} "
            f"lag_seconds={'unknown' if self.lag_seconds is None else self.lag_seconds} "
            f"pages={self.pages} truncated={self.truncated_rows}"
        )
        if self.late_events:
            line += f" late_events={self.late_events} oldest_late_seconds={self.oldest_late_seconds}"
        if self.took_over_from:
            line += f" took_over_lease_of={self.took_over_from} (its process ended)"
        return f"{line} error={self.error}" if self.error else line


@dataclass(frozen=True)
class Collection:
    """One cursor to advance: an org's live feed, or a backfill lane."""

    org: str
    name: str
    first_cursor: Callable[[OrgState], Cursor]  # where a collection with no stored cursor starts
    plan: WindowPlan


def live_collection(org: str, now: int, initial_lookback_seconds: int, overlap_seconds: int) -> Collection:
    return Collection(
        org=org,
        name=LIVE,
        first_cursor=lambda state: first_live_cursor(state, now, initial_lookback_seconds),
        plan=WindowPlan(
            end_limit=now - SETTLE_DELAY_SECONDS,
            max_span=LIVE_MAX_WINDOW_SECONDS,
            overlap=overlap_seconds,
            recent=min(RECENT_REREAD_SECONDS, overlap_seconds),
            settled_before=now - overlap_seconds,
        ),
    )


def lane_collection(org: str, start: int, until: int, now: int) -> Collection:
    """A backfill lane reads settled history once: no overlap, so it keeps no ledger past its window."""
    return Collection(
        org=org,
        name=lane_name(start, until),
        first_cursor=lambda state: Cursor.starting_at(start, until),
        plan=WindowPlan(
            end_limit=min(until, now - SETTLE_DELAY_SECONDS),
            max_span=BACKFILL_MAX_WINDOW_SECONDS,
            overlap=0,
            recent=0,
            settled_before=now,
        ),
    )


class LeaseKeeper:
    """Holds a collection's lease while a run works on it: renewed in the background every
    third of its time, released at the end. A lease that could not be renewed is lost, and
    the run stops before its next save."""

    def __init__(
        self,
        state: StateStore,
        collection: Collection,
        holder: str,
        clock: Callable[[], float],
        holder_ended: Callable[[str], bool],
    ):
        self._state, self._collection, self._clock = state, collection, clock
        self.took_over_from: str | None = None
        org, name = collection.org, collection.name
        try:
            self._lease = state.acquire_lease(org, name, holder, int(clock()), LEASE_SECONDS)
        except LeaseHeld as held:
            # A run killed on this host left its lease: nobody works on the collection, so no need to wait it out.
            if not holder_ended(held.holder):
                raise
            self._lease = state.acquire_lease(org, name, holder, int(clock()), LEASE_SECONDS, held.holder)
            self.took_over_from = held.holder
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True, name="lease-renewal")
        self._thread.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            self.renew()

    def renew(self) -> None:
        with self._lock:
            if self.lost:
                return
            try:
                self._lease = self._state.renew_lease(
                    self._collection.org, self._collection.name, self._lease, int(self._clock()), LEASE_SECONDS
                )
            except (StateConflict, StateUnavailable) as error:
                self.lost = str(error)

    def check(self) -> None:
        if self.lost:
            raise StateConflict(f"the lease on {self._collection.name} of org {self._collection.org!r} was lost")

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            if not self.lost:
                try:
                    self._state.release_lease(self._collection.org, self._collection.name, self._lease)
                except StateUnavailable as error:
                    log.warning(
                        "org=%s could not release the lease on %s (%s); it expires by itself in %d s",
                        self._collection.org,
                        self._collection.name,
                        error,
                        LEASE_SECONDS,
                    )


@dataclass
class Collector:
    source: AuditSource
    sink: RowSink
    state: StateStore
    dead_letters: DeadLetterStore
    catalog: EventCatalog
    holder: str
    # Whether a lease's holder is a process of this host that has ended (see wiring.holder_process_ended).
    holder_ended: Callable[[str], bool] = lambda holder: False
    # Set on SIGINT/SIGTERM: collections stop reading, end the request in flight, save and release.
    stop: threading.Event = field(default_factory=threading.Event)
    wall_clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    progress: list[Callable[[Collection, Cursor, CollectionReport], None]] = field(default_factory=list)

    def collect(self, collection: Collection, deadline: float | None = None) -> CollectionReport:
        """Advance one cursor until it is caught up, the deadline passes, or something fails."""
        report = CollectionReport(org=collection.org, collection=collection.name)
        if self.stop.is_set():
            report.status = "stopped"
            return report
        cursor: Cursor | None = None
        keeper: LeaseKeeper | None = None
        try:
            keeper = LeaseKeeper(self.state, collection, self.holder, self.wall_clock, self.holder_ended)
            if keeper.took_over_from:
                report.took_over_from = keeper.took_over_from
                log.warning(
                    "org=%s took over the lease on %s at once: its holder %s ended on this host",
                    collection.org,
                    collection.name,
                    keeper.took_over_from,
                )
            state = self.state.load_org(collection.org)
            stored = state.cursors.get(collection.name)
            if stored is None:
                cursor, etag = collection.first_cursor(state), None
            else:
                cursor, etag = stored.cursor, stored.etag
            # Segments without a cursor hold rows a failed first run delivered: they are not sent again.
            cursor.restore(self.state.load_segments(collection.org, collection.name), collection.plan)
            etag, all_saved = self._advance(collection, cursor, etag, report, deadline, keeper)
            if cursor.finished and all_saved:
                self._fold(collection, etag)
        except LeaseHeld as held:
            report.status = "skipped"
            report.error = f"another run works on it: {held}"
        except (
            SourceError,
            SinkUnavailable,
            StateConflict,
            StateUnavailable,
            DeadLetterUnavailable,
        ) as error:
            report.status = "failed"
            report.error = str(error)
        except Exception as error:  # one org's surprise must not stop the other orgs
            log.exception("org=%s unexpected error", collection.org)
            report.status = "failed"
            report.error = f"unexpected {type(error).__name__}: {str(error)[:300]}"
        finally:
            if keeper is not None:
                keeper.release()
        if cursor is not None:
            report.lag_seconds = cursor.lag_seconds(int(self.wall_clock()))
            report.watermark = cursor.watermark
        return report

    def _advance(
        self,
        collection: Collection,
        cursor: Cursor,
        etag: str | None,
        report: CollectionReport,
        deadline: float | None,
        keeper: LeaseKeeper,
    ) -> tuple[str | None, bool]:
        """Transform pages as the reader hands them over, and hand their rows to the uploader.
        The cursor's ETag, and whether every page handled was saved (a stop leaves some unsent)."""

        def after_save(saved: Cursor, page_number: int) -> None:
            report.saved_pages = page_number
            for callback in self.progress:
                callback(collection, saved, report)

        reader = PageReader(
            self.source,
            collection.org,
            collection.name,
            cursor.navigator(),
            collection.plan,
            deadline,
            self.monotonic,
            self.stop,
        ).start()
        uploader = Uploader(
            self.sink, self.state, self.dead_letters, collection.org, collection.name, etag, keeper.check, after_save,
            report, self.stop,
        )

        def finish(stopped: bool) -> tuple[str | None, bool]:
            etag = uploader.finish()
            # A stop may come when the cursor has read everything, or before the last pages were sent.
            if not uploader.all_saved or (stopped and not cursor.finished):
                report.status = "stopped"
            return etag, uploader.all_saved

        try:
            while True:
                if self.stop.is_set():
                    return finish(stopped=True)
                item = reader.next()
                if item is None:
                    continue  # a stop was requested
                if isinstance(item, ReadingEnded):
                    return finish(item.stopped)
                if isinstance(item, ReadingFailed):
                    uploader.finish()  # what was read before the failure is sent and saved
                    raise item.error
                if item is WINDOW_RESTARTED:
                    cursor.restart_window()
                    continue
                if item.loops:
                    save = cursor.abandon_pass(item.window, collection.plan)
                    uploader.add([], [], PageRecord(save, (), 0, report.pages))
                    uploader.finish()
                    raise SourceError(
                        f"Pulumi API paging loops for org {collection.org!r}: a continuation token came back twice"
                    )
                report.pages += 1
                report.fetched += len(item.page.events)
                rows, marks, invalid, save = self._take_page(collection, cursor, item, report)
                uploader.add(rows, marks, PageRecord(save, tuple(invalid), len(rows), report.pages))
        finally:
            reader.stop()
            uploader.abandon()

    def _fold(self, collection: Collection, etag: str | None) -> None:
        """A finished lane becomes part of the org's coverage, and its cursor goes."""
        for _ in range(FOLD_ATTEMPTS):
            state = self.state.load_org(collection.org)
            lane = state.cursors[collection.name]
            try:
                self.state.finish_lane(
                    collection.org, collection.name, etag, fold_lane(state, lane.cursor), state.folded_etag
                )
                return
            except StateConflict:
                continue  # another lane folded at the same moment; read the coverage again
        raise StateConflict(f"could not fold {collection.name} of org {collection.org!r} into its coverage")

    def _take_page(
        self, collection: Collection, cursor: Cursor, item: FetchedPage, report: CollectionReport
    ) -> tuple[list[EncodedRow], list[SegmentEntry], list[RefusedRow], PendingSave]:
        """The page's new rows, serialised; what each adds to the ledger; the events that can't be
        rows; and what to save once the rows are accepted."""
        org = collection.org
        read_at = collection.plan.settled_before + collection.plan.overlap
        valid = []
        invalid: list[RefusedRow] = []
        for event in item.page.events:
            try:
                valid.append(normalize(org, event, self.catalog))
            except InvalidEvent as error:
                invalid.append(RefusedRow(invalid_event_row(org, event), f"invalid event: {error}"))
        taken = cursor.take_page(
            item.window,
            [(normalized.identity, normalized.timestamp) for normalized in valid],
            item.page.next_token,
            len(item.page.events),
            collection.plan,
        )
        report.duplicates += taken.duplicates
        rows: list[EncodedRow] = []
        marks: list[SegmentEntry] = []
        for normalized, occurrence, late in zip(valid, taken.occurrences, taken.late, strict=True):
            if occurrence is None:
                continue
            if late:
                report.late_events += 1
                report.oldest_late_seconds = max(report.oldest_late_seconds, read_at - normalized.timestamp)
            row = normalized.row(occurrence)
            if normalized.truncated_columns:
                report.truncated_rows += 1
                log.warning(
                    "org=%s event %s: truncated %s to 64 KB",
                    org,
                    row["EventId_s"],
                    ", ".join(normalized.truncated_columns),
                )
            rows.append(encode_row(row))
            marks.append(SegmentEntry(normalized.identity[:DIGEST_KEY_BYTES], normalized.timestamp, 0, occurrence))
        return rows, marks, invalid, taken.save


INVALID_EVENT_PREFIX = "invalid-"


def invalid_event_row(org: str, event: Any) -> dict[str, Any]:
    """What we keep of an event that cannot become a row: its org and its raw JSON."""
    raw = valid_utf8(json.dumps(event, sort_keys=True, ensure_ascii=False, default=str))
    return {
        "OrgName_s": org,
        "EventId_s": INVALID_EVENT_PREFIX + raw_digest(org, event).hex()[:32],
        "RawEvent_s": truncate_visibly(raw),
    }


def run_cycle(
    collector: Collector,
    orgs: Sequence[str],
    initial_lookback_seconds: int,
    overlap_seconds: int,
    budget_seconds: float,
    max_parallel_orgs: int = 1,
) -> list[CollectionReport]:
    """One poll of every org, exactly what the timer runs (with MAX_PARALLEL_ORGS): up to
    `max_parallel_orgs` orgs at once, each on its own lease and cursor, so one org's slowness or
    failure holds up no other. The reports come in the order of `orgs`."""
    deadline = collector.monotonic() + budget_seconds
    now = int(collector.wall_clock())
    collections = [live_collection(org, now, initial_lookback_seconds, overlap_seconds) for org in orgs]
    return collect_at_once(collector, collections, max_parallel_orgs, deadline)


def collect_at_once(
    collector: Collector, collections: Sequence[Collection], parallelism: int, deadline: float | None = None
) -> list[CollectionReport]:
    """Advance up to `parallelism` collections at once (orgs, or the lanes of a backfill), each
    in its own thread; the reports come in the order of `collections`."""
    workers = max(1, min(parallelism, len(collections)))
    with ThreadPoolExecutor(workers, thread_name_prefix="collect") as pool:
        running = [pool.submit(collector.collect, collection, deadline) for collection in collections]
        # Wait in slices: Python runs a signal's handler (SIGINT, SIGTERM) only in the main thread,
        # between bytecodes, and a wait on a lock is not woken by a signal another thread received.
        while wait(running, timeout=SIGNAL_CHECK_SECONDS).not_done:
            continue
        return [future.result() for future in running]


def ensure_live_cursor(state: StateStore, org: str, now: int, initial_lookback_seconds: int) -> OrgState:
    """The org's state with a live cursor: a backfill reads only what lies before it.

    The cursor is created under the live lease, so a first live run of the org that is under way
    never finds its cursor created behind its back (its first save would fail, and its first page
    land twice): LeaseHeld means that run creates it, and the backfill should come back later.
    """
    current = state.load_org(org)
    if current.live is None:
        lease = state.acquire_lease(org, LIVE, f"backfill-planner:{uuid.uuid4().hex[:8]}", now, LEASE_SECONDS)
        try:
            current = state.load_org(org)
            if current.live is None:
                state.create_cursor(org, LIVE, first_live_cursor(current, now, initial_lookback_seconds))
        finally:
            state.release_lease(org, LIVE, lease)
        current = state.load_org(org)
    return current


def plan_backfill_lanes(
    state: StateStore,
    org: str,
    since: int,
    until: int,
    now: int,
    initial_lookback_seconds: int,
    resend: bool,
    parallelism: int = 1,
    holder_ended: Callable[[str], bool] = lambda holder: False,
) -> tuple[BackfillPlan, list[Collection]]:
    """What a backfill of [since, until) sends: the lanes of an interrupted backfill to resume,
    and up to `parallelism` new lanes over what no run delivered (the whole range with `resend`).

    The new lanes are claimed at once, in one transaction conditional on the org's coverage: a
    backfill planning at the same moment then plans again, and finds them running."""
    for _ in range(FOLD_ATTEMPTS):
        current = ensure_live_cursor(state, org, now, initial_lookback_seconds)
        plan = plan_backfill(
            current, since, until, now, resend=resend, parallelism=parallelism, holder_ended=holder_ended
        )
        claims = {lane_name(start, end): Cursor.starting_at(start, end) for start, end in plan.new_lanes}
        try:
            if claims:
                state.claim_lanes(org, claims, current.folded, current.folded_etag)
            break
        except StateConflict:
            continue
    else:
        raise StateConflict(f"could not claim backfill lanes of org {org!r}: other backfills kept planning")
    lanes = [current.lanes[name] for name in plan.resume]
    collections = [lane_collection(org, lane.origin, lane.until, now) for lane in lanes]
    collections += [lane_collection(org, start, end, now) for start, end in plan.new_lanes]
    return plan, collections
