"""An org's delivery state as a whole, and the decisions taken on it. Pure, no I/O.

The state of an org is its folded coverage (finished backfills, and what live collection
delivered before a reset), its cursors (the live feed and any running backfill lanes,
each covering [origin, watermark)), and the leases that say who works on which. From it
follow: what a backfill still has to send, what a reset changes, and what
`checkpoint show` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shared.coverage import Coverage, Range
from shared.cursor import Cursor

LIVE = "live"
_LANE_PREFIX = "backfill-"


def lane_name(start: int, end: int) -> str:
    """A backfill lane is named by its absolute range, so a rerun finds it whatever times it was given."""
    return f"{_LANE_PREFIX}{start:010d}-{end:010d}"


def is_lane(name: str) -> bool:
    return name.startswith(_LANE_PREFIX)


@dataclass(frozen=True)
class Lease:
    holder: str
    expires_at: int
    etag: str | None = None

    def active(self, now: int) -> bool:
        return self.expires_at > now


@dataclass(frozen=True)
class StoredCursor:
    cursor: Cursor
    etag: str | None


@dataclass(frozen=True)
class OrgState:
    org: str
    folded: Coverage = field(default_factory=Coverage)
    folded_etag: str | None = None
    cursors: dict[str, StoredCursor] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)

    @property
    def live(self) -> Cursor | None:
        stored = self.cursors.get(LIVE)
        return stored.cursor if stored else None

    @property
    def lanes(self) -> dict[str, Cursor]:
        return {name: stored.cursor for name, stored in self.cursors.items() if is_lane(name)}

    def delivered(self) -> Coverage:
        """Every event-time range delivered, by live collection and backfills alike."""
        return self.folded.union((stored.cursor.origin, stored.cursor.watermark) for stored in self.cursors.values())

    def pending(self) -> Coverage:
        """What running backfill lanes have still to send: nobody else may take it."""
        return Coverage.of((lane.watermark, lane.until) for lane in self.lanes.values() if lane.until is not None)

    def gaps(self) -> Coverage:
        """Undelivered time between delivered ranges, and before where live collection starts:
        a forward reset leaves one at once, before live collection delivers anything after it."""
        delivered = self.delivered()
        live = self.live
        if live is None or not delivered:
            return delivered.internal_gaps()
        return delivered.internal_gaps().union(delivered.gaps(delivered.ranges[0][0], live.origin))

    def too_recent(self, since: int, until: int, settled_before: int) -> Coverage:
        """What of [since, until) no run delivered yet and no backfill may read before `settled_before`
        has passed it (the API shows events late): up to where live collection took over."""
        end = min(until, self.live.watermark) if self.live is not None else until
        return self.delivered().gaps(max(since, settled_before), end)

    def holder(self, name: str, now: int) -> Lease | None:
        lease = self.leases.get(name)
        return lease if lease and lease.active(now) else None


def first_live_cursor(state: OrgState, now: int, lookback_seconds: int) -> Cursor:
    """Where live collection of a new org starts: INITIAL_LOOKBACK back, or after what
    backfills already delivered or claimed there, so the two never read the same time."""
    start = now - lookback_seconds
    claimed = [end for _, end in state.delivered()] + [end for _, end in state.pending()]
    return Cursor.starting_at(min(now, max([start, *claimed])))


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill of [since, until) does: lanes to resume, new lanes, and lanes another run holds."""

    since: int
    until: int
    resume: tuple[str, ...]
    new_lanes: tuple[Range, ...]
    busy: tuple[tuple[str, Lease], ...]
    already_delivered_seconds: int
    resend: bool

    @property
    def resend_seconds(self) -> int:
        return self.already_delivered_seconds if self.resend else 0


def plan_backfill(
    state: OrgState,
    since: int,
    until: int,
    now: int,
    *,
    resend: bool = False,
    parallelism: int = 1,
    holder_ended: Callable[[str], bool] = lambda holder: False,
) -> BackfillPlan:
    """Only what is not yet delivered (all of it with `resend`), never past where live
    collection took over, and never what a running lane still has to send; cut into up to
    `parallelism` new lanes of about equal length, to be read at once. A lane whose holder
    ended is resumed at once (its lease is taken over)."""
    live = state.live
    end = min(until, live.watermark) if live is not None else until
    delivered = state.delivered().within(since, end)
    resume, busy = [], []
    for name, lane in sorted(state.lanes.items()):
        if lane.until is None or lane.watermark >= end or lane.until <= since:
            continue
        holder = state.holder(name, now)
        (busy.append((name, holder)) if holder and not holder_ended(holder.holder) else resume.append(name))
    wanted = Coverage.of([(since, end)]) if resend else state.delivered().gaps(since, end)
    gaps: list[Range] = []
    for start, stop in wanted:
        gaps.extend(state.pending().gaps(start, stop))
    return BackfillPlan(
        since=since,
        until=end,
        resume=tuple(resume),
        new_lanes=split_into_lanes(gaps, parallelism),
        busy=tuple(busy),
        already_delivered_seconds=delivered.seconds(),
        resend=resend,
    )


def split_into_lanes(ranges: Sequence[Range], lanes: int) -> tuple[Range, ...]:
    """`ranges` cut into about `lanes` adjacent parts of near-equal length, in whole seconds.

    Every range is at least one part, so there are more parts than `lanes` only when there are
    more ranges. The extra parts go, one at a time, to the range whose parts are longest; no
    part is shorter than a second. The parts tile each range exactly: they never overlap, and
    each is a lane named by its own range, which a rerun finds in the state.
    """
    lengths = [end - start for start, end in ranges]
    counts = [1] * len(ranges)
    while ranges and sum(counts) < lanes:
        longest = max(range(len(ranges)), key=lambda index: lengths[index] / counts[index])
        if lengths[longest] <= counts[longest]:
            break
        counts[longest] += 1
    return tuple(
        (start + length * part // count, start + length * (part + 1) // count)
        for (start, _), length, count in zip(ranges, lengths, counts, strict=True)
        for part in range(count)
    )


@dataclass(frozen=True)
class ResetPlan:
    """A live cursor moved to `target`: back re-reads delivered time, forward leaves a gap."""

    previous: int
    target: int
    cursor: Cursor
    folded: Coverage
    reread_seconds: int
    gap_seconds: int


def plan_reset(state: OrgState, target: int) -> ResetPlan:
    live = state.live
    if live is None:
        return ResetPlan(target, target, Cursor.starting_at(target), state.folded, 0, 0)
    folded = state.folded.union([(live.origin, live.watermark)])
    return ResetPlan(
        previous=live.watermark,
        target=target,
        cursor=live.moved_to(target),
        folded=folded,
        reread_seconds=folded.within(target, live.watermark).seconds(),
        gap_seconds=folded.union(state.pending()).gaps(live.watermark, target).seconds(),
    )


def fold_lane(state: OrgState, lane: Cursor) -> Coverage:
    """The folded coverage once a finished lane's range is part of it."""
    return state.folded.union([(lane.origin, lane.watermark)])


def describe(state: OrgState, now: int) -> dict:
    """What `checkpoint show` reports for one org, as plain data."""
    live = state.live
    delivered = state.delivered()
    lease = state.holder(LIVE, now)
    return {
        "org": state.org,
        "watermark": live.watermark if live else None,
        "lag_seconds": live.lag_seconds(now) if live else None,
        "mid_window": bool(live and live.window is not None),
        "delivered": list(delivered),
        "gaps": list(state.gaps()),
        "live_lease": {"holder": lease.holder, "expires_at": lease.expires_at} if lease else None,
        "backfills": [
            {
                "name": name,
                "range": (lane.origin, lane.until),
                "reached": lane.watermark,
                "holder": holder.holder if (holder := state.holder(name, now)) else None,
                "expires_at": holder.expires_at if holder else None,
            }
            for name, lane in sorted(state.lanes.items())
        ],
    }
