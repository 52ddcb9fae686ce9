"""Where one collection stands, and which events it already sent. Pure, no I/O.

A collection is an org's live feed or one backfill lane. Its cursor walks time in
windows: the watermark W says every event before W was handled, and [origin, W) is
what this cursor delivered. Re-reading time already read catches events the API shows
late, and the ledger drops the ones already sent. It is done in two tiers, so that
steady polling does not read every event eleven times:

- every window starts `recent` seconds before W, so an event that shows up a few
  minutes late is delivered by the next run;
- time a window read before it was LATE_EVENT_OVERLAP old stays `unsettled`; once a
  band of it is that old, a re-read window reads the band once more. Time read when
  it was already that old (a catch-up) needs no second read.

Pages of a window are followed by continuation token, and the token is saved with
every page, so a run that stops resumes mid-window. The ledger holds every event of the
window being read, so a window is sized to hold about WINDOW_EVENTS at the density of the
one before it: a denser backlog gets shorter windows, not more memory.

The API has no event id and may return identical events in the same second, so the
ledger counts, per event identity, how many were sent and how many this pass over the
window has seen: the n-th identical event is new only when n exceeds what was sent.

The ledger is stored as one small segment per saved page (what that page changed),
never rewritten whole, so a save costs what the page changed whatever the backlog.
Segments nothing needs any more are listed by `stale_segments` for deletion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.coverage import Coverage

# The ledger keys events by the first bytes of their identity digest.
DIGEST_KEY_BYTES = 8
# A window opens only for at least this much new time: a sliver would re-read the whole
# overlap for nothing. Well under the one-minute timer period.
MIN_NEW_SECONDS = 30
# Every live window re-reads this much before the watermark. With the one-minute timer an
# event that shows up up to RECENT_REREAD_SECONDS + 60 s after its time is read by the next
# run: the window ends 60 s back, and the last run read up to a minute before that.
RECENT_REREAD_SECONDS = 240
# The older part of the overlap is re-read once, in bands of at least this long: with the
# one-minute timer, a band each run, read once its newest event had LATE_EVENT_OVERLAP to show
# up. So an event that shows up at most that late is delivered at most LATE_EVENT_OVERLAP + 2
# minutes after its time, and a run reads about 6 minutes of events per minute of new ones.
REREAD_BAND_SECONDS = 60
# About how many events a window holds: its ledger (some 120 bytes an event) is in memory while
# it is read, and a window ends with a part-filled page.
WINDOW_EVENTS = 10_000
# A collection's first window, before any density is known: an hour, as long as a live window
# may be, where a backfill's day of a busy org would not fit in memory. Each window after it is
# sized to WINDOW_EVENTS, and at most twice as long as the one before.
FIRST_WINDOW_SECONDS = 3600


# A ledger entry is one int: the event's time, how many copies of it were sent, and how many this
# pass over the window saw, 16 bits a count. The ledger is the largest thing a run holds, and an
# object with three fields would take 50 bytes an event more.
_COUNT_BITS = 16
_COUNT_MAX = (1 << _COUNT_BITS) - 1


def _ledger_entry(timestamp: int, sent: int, seen: int) -> int:
    return timestamp << 2 * _COUNT_BITS | min(sent, _COUNT_MAX) << _COUNT_BITS | min(seen, _COUNT_MAX)


def _entry_timestamp(entry: int) -> int:
    return entry >> 2 * _COUNT_BITS


def _entry_counts(entry: int) -> tuple[int, int]:
    """How many copies were sent, and how many this pass saw."""
    return entry >> _COUNT_BITS & _COUNT_MAX, entry & _COUNT_MAX


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    reread: bool = False  # a band of unsettled time read once more; it settles the band, it moves no watermark

    def contains(self, timestamp: int) -> bool:
        return self.start <= timestamp < self.end


@dataclass(frozen=True)
class WindowPlan:
    """How a run walks windows: fixed for the run, so no sliver of a window opens."""

    end_limit: int  # the latest window end this run may read
    max_span: int
    overlap: int  # LATE_EVENT_OVERLAP: how late an event may show up and still be delivered
    recent: int  # what every window re-reads before the watermark (at most `overlap`)
    settled_before: int  # events before this had `overlap` to show up when this run reads them


@dataclass(frozen=True)
class SegmentEntry:
    key: bytes
    timestamp: int
    seen: int  # copies of this identity the saved pages held
    sent: int  # the sent count the saved pages raised it to; 0 when they sent none


@dataclass(frozen=True)
class LedgerSegment:
    """What a save changed in the ledger: the events its pages held and the tokens they handed out."""

    sequence: int
    pass_number: int
    entries: tuple[SegmentEntry, ...]
    tokens: tuple[bytes, ...]

    @property
    def info(self) -> SegmentInfo:
        return SegmentInfo(
            pass_number=self.pass_number,
            newest=max((entry.timestamp for entry in self.entries), default=0),
            sent_any=any(entry.sent for entry in self.entries),
        )


@dataclass(frozen=True)
class PendingSave:
    """What to save once the rows of the pages handled so far are accepted."""

    cursor: Cursor  # the position after them, as a save writes it (no ledger)
    segment: LedgerSegment | None  # what they changed in the ledger
    stale: tuple[int, ...]  # segments nothing needs once this is saved (may name `segment` itself)


@dataclass(frozen=True)
class PageTaken:
    """What one page did to the cursor: which of its events to send, and what to save after."""

    occurrences: tuple[int | None, ...]  # per event: its occurrence number when it is to be sent, else None
    late: tuple[bool, ...]  # per event: new, though in time read before (the API showed it late)
    duplicates: int  # events of the window the ledger says were sent already
    save: PendingSave


@dataclass(frozen=True)
class SegmentInfo:
    """What deciding whether a stored segment is still needed takes."""

    pass_number: int
    newest: int
    sent_any: bool


@dataclass
class Cursor:
    """Progress of one collection: an org's live feed (`until` None) or a backfill lane."""

    watermark: int
    origin: int
    until: int | None = None
    window: Window | None = None
    continuation_token: str | None = None
    pass_number: int = 0
    next_segment: int = 0
    unsettled: Coverage = field(default_factory=Coverage)  # time read before the overlap had passed over it
    span: int = FIRST_WINDOW_SECONDS  # how much new time the next window may read (at most the plan's max_span)
    window_fetched: int = 0  # events the API returned in this pass over the window
    ledger: dict[bytes, int] = field(default_factory=dict)  # event key -> _ledger_entry
    # Digests of the continuation tokens this pass handed out, so a token that comes back
    # (a paging loop) is caught, even after a restart.
    window_tokens: set[bytes] = field(default_factory=set)
    segments: dict[int, SegmentInfo] = field(default_factory=dict)
    _page_entries: dict[bytes, list[int]] = field(default_factory=dict, repr=False)
    _page_tokens: list[bytes] = field(default_factory=list, repr=False)

    @classmethod
    def starting_at(cls, watermark: int, until: int | None = None) -> Cursor:
        return cls(watermark=watermark, origin=watermark, until=until)

    def horizon(self, plan: WindowPlan) -> int:
        """The oldest time a window of this cursor may still read: the ledger keeps what lies after it."""
        oldest_unsettled = self.unsettled.ranges[0][0] if self.unsettled else self.watermark
        return max(self.origin, min(oldest_unsettled, self.watermark - plan.recent))

    def _due_band(self, plan: WindowPlan) -> Window | None:
        """The oldest unsettled time that has had the whole overlap to show up, once it is a band long."""
        if not self.unsettled:
            return None
        start, end = self.unsettled.ranges[0]
        old_enough = self.watermark - plan.overlap
        band_end = min(end, old_enough, start + plan.max_span)
        if band_end <= start or (band_end - start < REREAD_BAND_SECONDS and band_end < end):
            return None
        return Window(start=start, end=band_end, reread=True)

    @property
    def finished(self) -> bool:
        """A backfill lane that reached its end; a live cursor never finishes."""
        return self.until is not None and self.watermark >= self.until and self.window is None

    def restore(self, segments: list[LedgerSegment], plan: WindowPlan) -> None:
        """Rebuild the ledger and the pass's tokens from the stored segments. Events before
        the window this cursor reads (or will read next) are never admitted, so they are left out."""
        horizon = self.window.start if self.window else self.horizon(plan)
        for segment in segments:
            self.segments[segment.sequence] = segment.info
            current = self.window is not None and segment.pass_number == self.pass_number
            for item in segment.entries:
                if item.timestamp < horizon:
                    continue
                entry = self.ledger.get(item.key, _ledger_entry(item.timestamp, 0, 0))
                sent, seen = _entry_counts(entry)
                seen = seen + item.seen if current else seen
                self.ledger[item.key] = _ledger_entry(_entry_timestamp(entry), max(sent, item.sent), seen)
            if current:
                self.window_tokens.update(segment.tokens)

    def open_window(self, plan: WindowPlan) -> bool:
        """Start the next window; False when there is nothing new to read.

        A band of the overlap that is due is read first; then the window of new time, which
        also re-reads the recent part of the overlap.
        """
        if self.window is not None:
            return True
        band = self._due_band(plan)
        if band is not None:
            self.window = band
            self.restart_window()
            return True
        # Time before a settled watermark was read once it had the whole overlap to show up, or
        # else it is unsettled and its band is read again: the recent re-read would find nothing.
        settled = plan.recent < plan.overlap and self.watermark <= plan.settled_before
        start = self.watermark if settled else max(self.origin, self.watermark - plan.recent)
        end = min(plan.end_limit, self.watermark + min(plan.max_span, self.span))
        if self.until is not None:
            end = min(end, self.until)
            if end <= self.watermark:
                return False
        elif end - self.watermark < MIN_NEW_SECONDS:
            return False
        self.window = Window(start=start, end=end)
        self.restart_window()
        return True

    def take_page(
        self,
        window: Window,
        events: Sequence[tuple[bytes, int]],
        next_token: str | None,
        fetched: int,
        plan: WindowPlan,
    ) -> PageTaken:
        """The whole per-page protocol in one call: a page of `window` (as the reader opened it)
        holding `fetched` events, `events` the (identity digest, time) of those that can be rows.

        Events outside the window are left to the window that holds them (the API's bounds are
        inclusive); the others are admitted to the ledger; then the page is finished, and what
        to save once the rows are accepted is taken.
        """
        self._enter(window)
        previous_watermark = self.watermark
        occurrences: list[int | None] = []
        late: list[bool] = []
        duplicates = 0
        for digest, timestamp in events:
            occurrence = self.admit(digest, timestamp) if window.contains(timestamp) else None
            if occurrence is None and window.contains(timestamp):
                duplicates += 1
            occurrences.append(occurrence)
            late.append(occurrence is not None and (window.reread or timestamp < previous_watermark))
        self.finish_page(next_token, plan, fetched)
        return PageTaken(tuple(occurrences), tuple(late), duplicates, self.pending_save(plan))

    def abandon_pass(self, window: Window, plan: WindowPlan) -> PendingSave:
        """The window's token chain can't be trusted: the next run reads it from its first page
        again, and the ledger drops what was already sent."""
        self._enter(window)
        self.restart_window()
        return self.pending_save(plan)

    def _enter(self, window: Window) -> None:
        """Start reading `window`, the one the reader's copy of this cursor opened next."""
        if self.window is None:
            self.window = window
            self.restart_window()
        assert self.window == window, f"the reader is in {window}, the cursor in {self.window}"

    def pending_save(self, plan: WindowPlan) -> PendingSave:
        segment = self.take_segment()
        return PendingSave(self.snapshot(), segment, tuple(self.stale_segments(plan)))

    def restart_window(self) -> None:
        """Read the current window from its first page (again, if its token was refused)."""
        self.pass_number += 1
        self.continuation_token = None
        self.window_fetched = 0
        self.window_tokens.clear()
        self.ledger = {key: entry >> _COUNT_BITS << _COUNT_BITS for key, entry in self.ledger.items()}

    def is_repeated_token(self, token: str) -> bool:
        """Whether this pass already handed out `token`: following it would read pages twice."""
        return token_digest(token) in self.window_tokens

    def admit(self, digest: bytes, timestamp: int) -> int | None:
        """The occurrence number of this event if it is new, None if it was already sent."""
        key = digest[:DIGEST_KEY_BYTES]
        entry = self.ledger.get(key)
        if entry is None:
            entry = _ledger_entry(timestamp, 0, 0)
        sent, seen = _entry_counts(entry)
        seen += 1
        self.ledger[key] = _ledger_entry(_entry_timestamp(entry), max(sent, seen), seen)
        page = self._page_entries.setdefault(key, [timestamp, 0, 0])
        page[1] += 1
        if seen <= sent:
            return None
        page[2] = seen
        return seen

    def finish_page(self, next_token: str | None, plan: WindowPlan, fetched: int) -> None:
        """Record a page of `fetched` events as handled; the last page of a window moves the
        watermark (or the re-read mark)."""
        if next_token:
            self._page_tokens.append(token_digest(next_token))
        self.follow(next_token, plan, fetched)
        if self.window is None:
            horizon = self.horizon(plan)
            self.ledger = {key: entry for key, entry in self.ledger.items() if _entry_timestamp(entry) >= horizon}

    def follow(self, next_token: str | None, plan: WindowPlan, fetched: int) -> None:
        """Move past a page of `fetched` events: to the one `next_token` names, or past the end of the window."""
        self.window_fetched += fetched
        if next_token:
            self.continuation_token = next_token
            self.window_tokens.add(token_digest(next_token))
            return
        window = self.window
        assert window is not None
        if window.reread:
            self.unsettled = self.unsettled.without(window.start, window.end)
        else:
            self.watermark = window.end
            self.span = next_span(window, self.window_fetched)
            # What this window read once it had the whole overlap to show up is settled; the rest
            # of what it read beyond the recent re-read waits for its band.
            settled = min(window.end, max(window.start, plan.settled_before))
            if plan.recent < plan.overlap:
                self.unsettled = self.unsettled.without(window.start, settled).union([(settled, window.end)])
        self.window = None
        self.continuation_token = None
        self.window_fetched = 0
        self.window_tokens.clear()

    def take_segment(self) -> LedgerSegment | None:
        """What the pages handled since the last save changed, to store with the cursor."""
        if not self._page_entries and not self._page_tokens:
            return None
        segment = LedgerSegment(
            sequence=self.next_segment,
            pass_number=self.pass_number,
            entries=tuple(
                SegmentEntry(key, timestamp, seen, sent) for key, (timestamp, seen, sent) in self._page_entries.items()
            ),
            tokens=tuple(self._page_tokens),
        )
        self.next_segment += 1
        self._page_entries = {}
        self._page_tokens = []
        self.segments[segment.sequence] = segment.info
        return segment

    def stale_segments(self, plan: WindowPlan) -> list[int]:
        """Stored segments nothing needs any more; they are forgotten here and can be deleted.

        A segment of a finished pass is needed only for the events it sent that the next
        window's overlap may read again.
        """
        horizon = self.horizon(plan)
        stale = [
            sequence
            for sequence, info in self.segments.items()
            if (self.window is None or info.pass_number != self.pass_number)
            and (not info.sent_any or info.newest < horizon)
        ]
        for sequence in stale:
            del self.segments[sequence]
        return stale

    def moved_to(self, target: int) -> Cursor:
        """This cursor restarted at `target`, in a new pass. The stored segments still hold what
        it sent, so a re-read skips events the overlap kept, and re-sends the rest with the
        same EventId_s."""
        return Cursor(
            watermark=target,
            origin=target,
            until=self.until,
            pass_number=self.pass_number + 1,
            next_segment=self.next_segment,
            span=self.span,
        )

    def snapshot(self) -> Cursor:
        """The cursor's position as a save writes it (no ledger): what a later upload commits."""
        return Cursor(
            watermark=self.watermark,
            origin=self.origin,
            until=self.until,
            window=self.window,
            continuation_token=self.continuation_token,
            pass_number=self.pass_number,
            next_segment=self.next_segment,
            unsettled=self.unsettled,
            span=self.span,
        )

    def navigator(self) -> Cursor:
        """A copy that walks the same windows and tokens, for reading pages ahead of this cursor."""
        ahead = self.snapshot()
        ahead.window_tokens = set(self.window_tokens)
        ahead.window_fetched = self.window_fetched
        return ahead

    def lag_seconds(self, now: int) -> int:
        return max(0, now - self.watermark)


def next_span(window: Window, fetched: int) -> int:
    """How much new time holds about WINDOW_EVENTS at the density `window` had: at most twice its
    length, since a window resumed mid-way counted only part of its events. A live window also
    re-reads the recent overlap, which the ledger keeps whatever the span."""
    length = window.end - window.start
    return max(MIN_NEW_SECONDS, min(2 * length, length * WINDOW_EVENTS // max(1, fetched)))


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()[:DIGEST_KEY_BYTES]
