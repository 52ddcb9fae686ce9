"""Which undelivered time `checkpoint show` lists as a gap, and which part of a backfill's range is
still too recent to read (shared/delivery.py, `OrgState.gaps` and `OrgState.too_recent`)."""

from __future__ import annotations

from shared.coverage import Coverage
from shared.cursor import Cursor
from shared.delivery import LIVE, OrgState, StoredCursor

T0 = 1_800_000_000
HOUR = 3600


def org_with(live: Cursor, folded: list[tuple[int, int]]) -> OrgState:
    return OrgState("acme", folded=Coverage.of(folded), cursors={LIVE: StoredCursor(live, None)})


def test_a_reset_forward_leaves_a_gap_before_live_collection_delivered_anything():
    state = org_with(Cursor.starting_at(T0), [(T0 - 2 * HOUR, T0 - HOUR)])
    assert list(state.gaps()) == [(T0 - HOUR, T0)]


def test_the_gap_stays_listed_once_live_collection_delivered_after_it():
    state = org_with(Cursor(watermark=T0 + HOUR, origin=T0), [(T0 - 2 * HOUR, T0 - HOUR)])
    assert list(state.gaps()) == [(T0 - HOUR, T0)]


def test_live_collection_that_continues_where_delivery_stopped_leaves_no_gap():
    state = org_with(Cursor(watermark=T0 + HOUR, origin=T0 - HOUR), [(T0 - 2 * HOUR, T0 - HOUR)])
    assert list(state.gaps()) == []


def test_an_org_that_never_delivered_anything_has_no_gap_yet():
    assert list(org_with(Cursor.starting_at(T0), []).gaps()) == []


def test_the_unsettled_tail_of_a_backfill_up_to_live_collection_is_too_recent():
    state = org_with(Cursor.starting_at(T0), [(T0 - 2 * HOUR, T0 - 60)])
    assert list(state.too_recent(T0 - 2 * HOUR, T0 + HOUR, settled_before=T0 - 60)) == [(T0 - 60, T0)]
    assert list(state.too_recent(T0 - 2 * HOUR, T0 + HOUR, settled_before=T0 + 60)) == []


def test_nothing_is_too_recent_once_it_was_delivered():
    state = org_with(Cursor.starting_at(T0), [(T0 - 2 * HOUR, T0)])
    assert list(state.too_recent(T0 - 2 * HOUR, T0, settled_before=T0 - 60)) == []
