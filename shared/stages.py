"""The two workers that let one collection's run overlap its I/O with its CPU work.

- `PageReader` reads pages ahead of the transform, on its own thread: it follows the
  continuation tokens and opens the next windows itself (a window only depends on where
  the previous one ended), so page N+1 is on its way while page N is transformed.
- `Uploader` fills requests of about 1 MB from the rows of consecutive pages, gzips and
  uploads them in order on its own thread (zlib releases the GIL, so this uses the second
  core), and saves a page's cursor only once every row of that page was accepted.

The promise stays what it was with one page at a time: the cursor advances strictly in
order, only past rows accepted with a 204 (or kept in the dead-letter store). A request
may carry the first rows of a page whose last rows go in the next request; the rows it
delivered are then saved in that page's ledger segment right away, so a run that fails
before the page is complete never sends them twice. Memory stays bounded by
`PAGES_AHEAD` pages read ahead, `PAGES_QUEUED_FOR_UPLOAD` pages waiting for the
uploader, and one request being filled.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.cursor import Cursor, LedgerSegment, PendingSave, SegmentEntry, Window, WindowPlan
from shared.ports import (
    MAX_BODY_BYTES,
    AuditPage,
    AuditSource,
    ContinuationTokenRejected,
    DeadLetterStore,
    EncodedRow,
    RefusedRow,
    RowSink,
    StateStore,
)

log = logging.getLogger("shared.pipeline")

PAGES_AHEAD = 2
PAGES_QUEUED_FOR_UPLOAD = 4
# How often a blocked hand-over looks whether the other side gave up.
_HANDOVER_POLL_SECONDS = 0.05


# -- reading ahead -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchedPage:
    window: Window
    page: AuditPage
    loops: bool = False  # its next token was handed out before in this pass: the chain can't be trusted


@dataclass(frozen=True)
class ReadingEnded:
    """No more pages: caught up (`stopped` False), or the run's deadline passed or a stop was
    requested (`stopped` True)."""

    stopped: bool


@dataclass(frozen=True)
class ReadingFailed:
    error: BaseException


WINDOW_RESTARTED = object()  # the API refused the window's token: its pages come again from the first


class _Handover:
    """A bounded queue between two threads, either of which may give up."""

    def __init__(self, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self.closed = threading.Event()

    def put(self, item: Any, gave_up: Callable[[], bool]) -> bool:
        while not (self.closed.is_set() or gave_up()):
            try:
                self._queue.put(item, timeout=_HANDOVER_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def get(self, gave_up: Callable[[], bool] = lambda: False) -> Any:
        while True:
            try:
                return self._queue.get(timeout=_HANDOVER_POLL_SECONDS)
            except queue.Empty:
                if gave_up():
                    return None


@dataclass
class PageReader:
    """Fetches the pages of a collection in order, up to `PAGES_AHEAD` ahead of their transform."""

    source: AuditSource
    org: str
    collection: str
    navigator: Cursor  # a copy of the cursor that walks the windows and tokens ahead of it
    plan: WindowPlan
    deadline: float | None
    monotonic: Callable[[], float]
    stop_requested: threading.Event  # set by SIGINT/SIGTERM: no page is fetched after it
    _handover: _Handover = field(default_factory=lambda: _Handover(PAGES_AHEAD))
    _thread: threading.Thread | None = None

    def start(self) -> PageReader:
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"read-{self.org}-{self.collection}")
        self._thread.start()
        return self

    def next(self) -> FetchedPage | ReadingEnded | ReadingFailed | object | None:
        """The next item; None once a stop was requested, rather than wait for the fetch under way."""
        return self._handover.get(self.stop_requested.is_set)

    def stop(self) -> None:
        """End reading. A fetch under way is waited for, unless a stop was requested: then it is
        abandoned, and its page is read again next run."""
        self._handover.closed.set()
        if self._thread is not None and not self.stop_requested.is_set():
            self._thread.join()

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as error:  # handed to the transform's thread, which raises it in order
            self._handover.put(ReadingFailed(error), lambda: False)

    def _read(self) -> None:
        navigator = self.navigator
        restarted = False
        while not self._handover.closed.is_set():
            if self.stop_requested.is_set() or (self.deadline is not None and self.monotonic() >= self.deadline):
                self._handover.put(ReadingEnded(stopped=True), lambda: False)
                return
            if navigator.window is None:
                if not navigator.open_window(self.plan):
                    self._handover.put(ReadingEnded(stopped=False), lambda: False)
                    return
                restarted = False
            window = navigator.window
            try:
                # The API's bounds are both inclusive, the window's end is not.
                page = self.source.fetch_page(self.org, window.start, window.end - 1, navigator.continuation_token)
            except ContinuationTokenRejected:
                if restarted:
                    raise
                restarted = True
                navigator.restart_window()
                self._handover.put(WINDOW_RESTARTED, lambda: False)
                continue
            if page.next_token and navigator.is_repeated_token(page.next_token):
                self._handover.put(FetchedPage(window, page, loops=True), lambda: False)
                return
            if not self._handover.put(FetchedPage(window, page), lambda: False):
                return
            navigator.follow(page.next_token, self.plan, len(page.events))


# -- filling requests and saving -------------------------------------------------------------------


@dataclass(frozen=True)
class PageRecord:
    """A handled page, and what to save once all of its rows were accepted."""

    save: PendingSave  # the cursor after the page, its ledger segment, and the segments it makes stale
    invalid: tuple[RefusedRow, ...]  # events that could not become rows, dead-lettered before the save
    rows: int  # how many rows of the page go to the sink
    page_number: int  # pages of this run handled up to this one

    @property
    def cursor(self) -> Cursor:
        return self.save.cursor

    @property
    def segment(self) -> LedgerSegment | None:
        return self.save.segment

    @property
    def stale(self) -> tuple[int, ...]:
        return self.save.stale


_FLUSH = object()


class Uploader:
    """Fills, uploads and saves on its own thread, strictly in page order."""

    def __init__(
        self,
        sink: RowSink,
        state: StateStore,
        dead_letters: DeadLetterStore,
        org: str,
        name: str,
        etag: str | None,
        before_save: Callable[[], None],
        after_save: Callable[[Cursor, int], None],
        counts: Any,
        stop: threading.Event,
    ):
        self._sink, self._state, self._dead_letters = sink, state, dead_letters
        self._org, self._name = org, name
        self.etag = etag
        self._before_save, self._after_save = before_save, after_save
        self._counts = counts  # has `sent` and `dead_lettered`
        self._stop = stop  # once set, no request goes out after the one in flight
        self._handover = _Handover(PAGES_QUEUED_FOR_UPLOAD)
        self._rows: deque[tuple[EncodedRow, SegmentEntry]] = deque()
        self._bytes = 1
        self._records: deque[list] = deque()  # [PageRecord, rows not yet accepted, marks of rows accepted]
        self._delivered_in_part: set[int] = set()  # segments written for a page not complete yet
        self._added_pages = self._saved_pages = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"upload-{org}-{name}")
        self._thread.start()

    def add(self, rows: Sequence[EncodedRow], marks: Sequence[SegmentEntry], record: PageRecord) -> None:
        """Hand a page's rows over; blocks while `PAGES_QUEUED_FOR_UPLOAD` pages wait already."""
        self._raise_if_failed()
        self._added_pages += self._handover.put((rows, marks, record), self._ended)
        self._raise_if_failed()

    def finish(self) -> str | None:
        """Send what is left (unless a stop was requested: then only the request in flight ends),
        save the pages whose rows were all accepted, and return the cursor's ETag."""
        self._handover.put(_FLUSH, self._ended)
        self._thread.join()
        self._raise_if_failed()
        return self.etag

    @property
    def all_saved(self) -> bool:
        """Whether every page handed over was saved (once `finish` returned)."""
        return self._saved_pages == self._added_pages

    def abandon(self) -> None:
        """Stop without sending what is left: those pages are read again next run."""
        self._handover.closed.set()
        self._thread.join()

    def _ended(self) -> bool:
        return self.error is not None or not self._thread.is_alive()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._handover.get(lambda: self._handover.closed.is_set() or self._stop.is_set())
                if item is None:
                    return
                if item is _FLUSH:
                    while self._rows and not self._stop.is_set():
                        self._send_request()
                    self._save_completed()
                    return
                rows, marks, record = item
                self._rows.extend(zip(rows, marks, strict=True))
                self._bytes += sum(len(row.body) + 1 for row in rows)
                self._records.append([record, record.rows, []])
                self._save_completed()
                while self._bytes > MAX_BODY_BYTES and not self._stop.is_set():
                    self._send_request()
        except BaseException as error:  # raised again in the transform's thread
            self.error = error

    def _send_request(self) -> None:
        """Upload the longest run of waiting rows that fits one request."""
        batch: list[EncodedRow] = []
        marks: list[SegmentEntry] = []
        size = 1
        while self._rows and (not batch or size + len(self._rows[0][0].body) + 1 <= MAX_BODY_BYTES):
            row, mark = self._rows.popleft()
            batch.append(row)
            marks.append(mark)
            size += len(row.body) + 1
        self._bytes -= size - 1
        refused = self._sink.send(batch)
        if refused:
            self._dead_letter(refused)
        self._counts.sent += len(batch) - len(refused)
        self._account(marks)
        self._save_completed()

    def _account(self, marks: list[SegmentEntry]) -> None:
        """Credit the accepted rows to their pages; a page left half-sent keeps what it delivered."""
        remaining = len(marks)
        for entry in self._records:
            taken = min(entry[1], remaining)
            entry[1] -= taken
            remaining -= taken
            record: PageRecord = entry[0]
            if taken and entry[1] > 0 and record.segment is not None:
                entry[2].extend(marks[-taken:])
                delivered = LedgerSegment(record.segment.sequence, record.segment.pass_number, tuple(entry[2]), ())
                self._state.save_segments(self._org, self._name, [delivered])
                self._delivered_in_part.add(delivered.sequence)
            if remaining == 0:
                return

    def _save_completed(self) -> None:
        completed: list[PageRecord] = []
        while self._records and self._records[0][1] == 0:
            completed.append(self._records.popleft()[0])
        if not completed:
            return
        invalid = [item for record in completed for item in record.invalid]
        if invalid:
            self._dead_letter(invalid)
        stale = {sequence for record in completed for sequence in record.stale}
        segments = [record.segment for record in completed if record.segment is not None]
        written = [segment for segment in segments if segment.sequence not in stale]
        # A page's own segment that is stale at once was never stored, unless a request delivered part of it.
        own = {segment.sequence for segment in segments} - self._delivered_in_part
        self._before_save()
        last = completed[-1]
        self.etag = self._state.save_cursor(self._org, self._name, last.cursor, self.etag, written)
        gone = stale - own
        if gone:
            self._state.delete_segments(self._org, self._name, sorted(gone))
        self._delivered_in_part -= {segment.sequence for segment in segments}
        self._saved_pages += len(completed)
        self._after_save(last.cursor, last.page_number)

    def _dead_letter(self, refused: Sequence[RefusedRow]) -> None:
        self._dead_letters.put(self._org, refused)
        self._counts.dead_lettered += len(refused)
        for item in refused:
            log.error("org=%s dead-lettered row %s: %s", self._org, item.row.get("EventId_s"), item.reason)
