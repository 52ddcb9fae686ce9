"""The delivery state in Table Storage (Azurite): transactions, ETags, leases, format versions."""

from __future__ import annotations

import pytest
from azure.data.tables import TableClient

import shared.state_store
from shared.coverage import Coverage
from shared.cursor import Cursor, LedgerSegment, SegmentEntry, Window
from shared.delivery import LIVE, lane_name
from shared.ports import LeaseHeld, StateConflict, StateFormatUnknown, StateUnavailable
from shared.state_store import FORMAT_VERSION, TableStateStore, table_state_store
from tests.harness import write_v1_live_checkpoint

ORG = "acme"
T0 = 1_800_000_000


@pytest.fixture
def table(azurite, table_name) -> TableClient:
    return TableClient.from_connection_string(azurite.connection_string, table_name=table_name)


@pytest.fixture
def store(table) -> TableStateStore:
    return table_state_store(table)


def busy_cursor() -> Cursor:
    return Cursor(
        watermark=T0,
        origin=T0 - 86400,
        window=Window(T0 - 600, T0 + 3600),
        continuation_token="eyJvZmZzZXQiOjEwMH0=",
        pass_number=3,
        next_segment=7,
        span=1234,
    )


def segment(sequence: int, pass_number: int = 3, count: int = 3) -> LedgerSegment:
    return LedgerSegment(
        sequence=sequence,
        pass_number=pass_number,
        entries=tuple(SegmentEntry(index.to_bytes(8, "big"), T0 + index, 1, 1) for index in range(count)),
        tokens=(b"tokendig",),
    )


def test_a_saved_cursor_and_its_segment_read_back_equal(store):
    store.save_cursor(ORG, LIVE, busy_cursor(), None, [segment(6)])
    loaded = store.load_org(ORG).live
    assert loaded == busy_cursor()
    assert store.load_segments(ORG, LIVE) == [segment(6)]


def test_an_org_without_state_has_no_cursor_and_no_coverage(store):
    state = store.load_org("nobody")
    assert state.live is None and state.delivered() == Coverage() and state.leases == {}


def test_a_save_with_a_stale_etag_is_refused_and_writes_nothing_of_the_page(store):
    first = store.save_cursor(ORG, LIVE, busy_cursor(), None, [segment(1)])
    store.save_cursor(ORG, LIVE, busy_cursor(), first, [segment(2)])
    with pytest.raises(StateConflict, match="changed by another run"):
        store.save_cursor(ORG, LIVE, busy_cursor(), first, [segment(3)])
    assert [s.sequence for s in store.load_segments(ORG, LIVE)] == [1, 2]


def test_two_runs_creating_the_same_cursor_conflict(store):
    store.create_cursor(ORG, LIVE, busy_cursor())
    with pytest.raises(StateConflict):
        store.create_cursor(ORG, LIVE, busy_cursor())


def test_stale_segments_are_deleted_in_batches_of_at_most_one_hundred(store):
    etag = None
    for sequence in range(130):
        etag = store.save_cursor(ORG, LIVE, busy_cursor(), etag, [segment(sequence, count=1)])
    store.delete_segments(ORG, LIVE, list(range(125)))
    assert [s.sequence for s in store.load_segments(ORG, LIVE)] == [125, 126, 127, 128, 129]


def test_a_finished_lane_folds_into_the_coverage_and_its_cursor_and_segments_go(store):
    name = lane_name(T0 - 86400, T0)
    lane = Cursor(watermark=T0, origin=T0 - 86400, until=T0, next_segment=2)
    etag = store.save_cursor(ORG, name, lane, None, [segment(1)])
    state = store.load_org(ORG)
    store.finish_lane(ORG, name, etag, state.folded.union([(T0 - 86400, T0)]), state.folded_etag)
    after = store.load_org(ORG)
    assert after.lanes == {} and store.load_segments(ORG, name) == []
    assert list(after.delivered()) == [(T0 - 86400, T0)]


def test_two_lanes_folding_from_the_same_read_cannot_both_win(store):
    store.replace_live(ORG, Cursor.starting_at(T0), None, Coverage(), None)
    state = store.load_org(ORG)
    first = lane_name(T0 - 200, T0 - 100)
    second = lane_name(T0 - 100, T0)
    first_etag = store.save_cursor(ORG, first, Cursor(T0 - 100, T0 - 200, until=T0 - 100), None)
    second_etag = store.save_cursor(ORG, second, Cursor(T0, T0 - 100, until=T0), None)
    store.finish_lane(ORG, first, first_etag, state.folded.union([(T0 - 200, T0 - 100)]), state.folded_etag)
    with pytest.raises(StateConflict):
        store.finish_lane(ORG, second, second_etag, state.folded.union([(T0 - 100, T0)]), state.folded_etag)
    assert second in store.load_org(ORG).lanes  # nothing of the refused fold was written


def test_a_lease_keeps_a_second_run_out_until_it_expires(store):
    store.acquire_lease(ORG, LIVE, "host-a:1", now=T0, seconds=120)
    with pytest.raises(LeaseHeld) as held:
        store.acquire_lease(ORG, LIVE, "host-b:2", now=T0 + 60, seconds=120)
    assert held.value.holder == "host-a:1" and held.value.expires_at == T0 + 120
    taken = store.acquire_lease(ORG, LIVE, "host-b:2", now=T0 + 121, seconds=120)
    assert taken.holder == "host-b:2"


def test_a_renewed_lease_lasts_from_the_renewal(store):
    lease = store.acquire_lease(ORG, LIVE, "host-a:1", now=T0, seconds=120)
    store.renew_lease(ORG, LIVE, lease, now=T0 + 100, seconds=120)
    with pytest.raises(LeaseHeld):
        store.acquire_lease(ORG, LIVE, "host-b:2", now=T0 + 150, seconds=120)


def test_a_lease_taken_over_after_expiry_cannot_be_renewed_by_its_old_holder(store):
    old = store.acquire_lease(ORG, LIVE, "host-a:1", now=T0, seconds=120)
    store.acquire_lease(ORG, LIVE, "host-b:2", now=T0 + 200, seconds=120)
    with pytest.raises(StateConflict):
        store.renew_lease(ORG, LIVE, old, now=T0 + 201, seconds=120)


def test_a_released_lease_frees_the_collection_at_once(store):
    lease = store.acquire_lease(ORG, LIVE, "host-a:1", now=T0, seconds=120)
    store.release_lease(ORG, LIVE, lease)
    assert store.acquire_lease(ORG, LIVE, "host-b:2", now=T0 + 1, seconds=120).holder == "host-b:2"


def test_two_runs_taking_a_free_lease_at_once_get_one_winner(store):
    store.acquire_lease(ORG, LIVE, "host-a:1", now=T0, seconds=120)
    store.release_lease(ORG, LIVE, store.acquire_lease(ORG, "other", "x", now=T0, seconds=1))
    with pytest.raises(LeaseHeld):
        store.acquire_lease(ORG, LIVE, "host-b:2", now=T0, seconds=120)


@pytest.mark.parametrize("version", [3, None])
def test_state_in_a_format_this_version_does_not_know_is_refused_by_name(store, table, version):
    entity = {"PartitionKey": ORG, "RowKey": "cursor~live", "Watermark": T0}
    if version is not None:
        entity["FormatVersion"] = version
    table.create_table()
    table.create_entity(entity)
    with pytest.raises(StateFormatUnknown) as refused:
        store.load_org(ORG)
    message = str(refused.value)
    assert f"format version {version!r}" in message and f"reads version {FORMAT_VERSION}" in message
    assert "CHECKPOINT_TABLE_NAME" in message


def test_an_unreachable_table_is_reported_with_the_org(azurite):
    unreachable = TableClient.from_connection_string(
        azurite.connection_string.replace(f":{azurite.port}/", ":9/"), table_name="nowhere"
    )
    with pytest.raises(StateUnavailable, match="state of org 'acme'"):
        table_state_store(unreachable).load_org(ORG)


def v1_ledger() -> list[tuple[int, bytes, int, int]]:
    """(timestamp, key, sent, seen) as 1.0.0 kept them: two sent, one identity sent twice, one seen only."""
    return [
        (T0 - 300, b"sentonce", 1, 1),
        (T0 - 200, b"senttwic", 2, 2),
        (T0 + 100, b"inwindow", 1, 1),
        (T0 - 100, b"seenonly", 0, 1),
    ]


def test_a_v1_live_checkpoint_becomes_a_v2_live_cursor_at_its_watermark_with_its_ledger(store, table):
    write_v1_live_checkpoint(
        table, ORG, watermark=T0, origin=T0 - 86400, ledger=v1_ledger(), window=(T0 - 600, T0 + 3600), token="eyJ9"
    )
    live = store.load_org(ORG).live
    assert (live.watermark, live.origin, live.window, live.continuation_token) == (T0, T0 - 86400, None, None)
    [migrated] = store.load_segments(ORG, LIVE)
    assert {(entry.key, entry.timestamp, entry.sent, entry.seen) for entry in migrated.entries} == {
        (b"sentonce", T0 - 300, 1, 0),
        (b"senttwic", T0 - 200, 2, 0),
        (b"inwindow", T0 + 100, 1, 0),
    }
    assert live.next_segment == 1 and list(store.load_org(ORG).delivered()) == [(T0 - 86400, T0)]


def test_the_migration_happens_once_and_later_saves_are_left_alone(store, table):
    write_v1_live_checkpoint(table, ORG, watermark=T0, origin=T0 - 86400, ledger=v1_ledger())
    stored = store.load_org(ORG).cursors[LIVE]
    moved = Cursor(watermark=T0 + 3600, origin=T0 - 86400, next_segment=1)
    store.save_cursor(ORG, LIVE, moved, stored.etag)
    assert store.load_org(ORG).live == moved and len(store.load_segments(ORG, LIVE)) == 1


def test_two_runs_migrating_at_once_both_read_the_one_migrated_cursor(table):
    write_v1_live_checkpoint(table, ORG, watermark=T0, origin=T0 - 86400, ledger=v1_ledger())
    first, second = table_state_store(table), table_state_store(table)
    migrate = shared.state_store.migrate_v1_live_cursor
    calls, raced = [], []

    def the_other_run_first(entities, org):
        calls.append(org)
        if len(calls) == 1:  # the first run is about to migrate: the second one does it first
            raced.append(second.load_org(org))
        return migrate(entities, org)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shared.state_store, "migrate_v1_live_cursor", the_other_run_first)
        live = first.load_org(ORG).live
    assert live == raced[0].live and live.watermark == T0
    assert len(first.load_segments(ORG, LIVE)) == 1


def test_an_org_without_a_v1_checkpoint_starts_fresh(store, table):
    write_v1_live_checkpoint(table, "globex", watermark=T0, origin=T0 - 86400, ledger=[])
    assert store.load_org(ORG).live is None
    assert store.load_org("globex").live == Cursor(watermark=T0, origin=T0 - 86400)
    assert store.load_segments("globex", LIVE) == []
