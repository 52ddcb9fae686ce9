"""The poll cycle, specified against in-memory fakes of the source, sink and stores."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from shared.catalog import default_catalog
from shared.cursor import FIRST_WINDOW_SECONDS, RECENT_REREAD_SECONDS
from shared.delivery import LIVE, lane_name
from shared.ingestion_sink import MAX_BODY_BYTES
from shared.pipeline import (
    LEASE_SECONDS,
    LIVE_MAX_WINDOW_SECONDS,
    SETTLE_DELAY_SECONDS,
    Collector,
    plan_backfill_lanes,
    run_cycle,
)
from shared.ports import LeaseHeld, SourceError
from shared.state_store import memory_state_store
from tests.fakes import CrashingStateStore, FakeAuditSource, FakeSink, InMemoryDeadLetterStore, SimulatedCrash

NOW = 1_800_000_000
LOOKBACK = 3 * 3600
OVERLAP = 600


def event(timestamp: int, name: str = "stack-updated", description: str = "", user: str = "alice") -> dict:
    return {
        "timestamp": timestamp,
        "event": name,
        "description": description or f"{name} at {timestamp}",
        "sourceIP": "203.0.113.7",
        "user": {"name": user.title(), "githubLogin": user, "avatarUrl": ""},
    }


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now
        self.monotonic_now = 0.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.monotonic_now


@pytest.fixture
def world():
    clock = Clock()
    source = FakeAuditSource(page_size=3)
    sink = FakeSink()
    state = CrashingStateStore()
    dead_letters = InMemoryDeadLetterStore()
    collector = Collector(
        source=source,
        sink=sink,
        state=state,
        dead_letters=dead_letters,
        catalog=default_catalog(),
        holder="test-run",
        wall_clock=clock.wall,
        monotonic=clock.monotonic,
    )

    class World:
        pass

    w = World()
    w.clock, w.source, w.sink, w.state, w.dead_letters, w.collector = (
        clock,
        source,
        sink,
        state,
        dead_letters,
        collector,
    )
    w.run = lambda orgs=("acme",), budget=480: run_cycle(collector, orgs, LOOKBACK, OVERLAP, budget)
    w.live = lambda org="acme": state.load_org(org).live
    return w


def sent_descriptions(sink: FakeSink) -> Counter:
    return Counter(row["Description_s"] for row in sink.rows)


def test_first_run_sends_every_event_of_the_lookback_exactly_once(world):
    events = [event(NOW - LOOKBACK + offset * 60, description=f"e{offset}") for offset in range(150)]
    world.source.add("acme", *events)
    [report] = world.run()
    assert report.status == "ok" and report.sent == 150
    assert sent_descriptions(world.sink) == Counter(f"e{offset}" for offset in range(150))


def test_events_before_the_lookback_or_inside_the_settle_delay_wait(world):
    world.source.add("acme", event(NOW - LOOKBACK - 5, description="too old"), event(NOW - 10, description="too new"))
    world.run()
    assert world.sink.rows == []
    world.clock.now += SETTLE_DELAY_SECONDS
    world.run()
    assert sent_descriptions(world.sink) == Counter({"too new": 1})


def test_a_second_run_resends_nothing_from_the_re_read_overlap(world):
    world.source.add("acme", *[event(NOW - 200 + index, description=f"e{index}") for index in range(10)])
    world.run()
    world.clock.now += 120
    [report] = world.run()
    assert report.sent == 0 and report.duplicates == 10
    assert len(world.sink.rows) == 10


def test_an_event_that_shows_up_late_inside_a_polled_window_is_sent_once(world):
    world.source.add("acme", event(NOW - 300, description="on time"))
    world.run()
    world.source.add("acme", event(NOW - 290, description="late"))
    world.clock.now += 60
    world.run()
    world.clock.now += 60
    world.run()
    assert sent_descriptions(world.sink) == Counter({"on time": 1, "late": 1})


def test_identical_events_in_the_same_second_are_each_sent_once_with_distinct_ids(world):
    twin = event(NOW - 200, name="environment-open", description="opened prod")
    world.source.add("acme", dict(twin), dict(twin), dict(twin))
    world.run()
    world.clock.now += 60
    world.run()
    assert len(world.sink.rows) == 3
    assert len({row["EventId_s"] for row in world.sink.rows}) == 3


def test_the_same_event_read_twice_gets_the_same_id(world):
    world.source.add("acme", event(NOW - 200))
    world.run()
    first_id = world.sink.rows[0]["EventId_s"]
    world.collector.state = memory_state_store()
    world.run()
    assert [row["EventId_s"] for row in world.sink.rows] == [first_id, first_id]


def test_when_the_sink_is_unavailable_the_checkpoint_stays_and_the_next_run_sends_everything(world):
    world.source.add("acme", *[event(NOW - 500 + index, description=f"e{index}") for index in range(7)])
    world.sink.unavailable_for = 1
    [report] = world.run()
    assert report.failed and "503" in report.error
    cursor = world.live()
    assert cursor.watermark <= NOW - 500 and cursor.continuation_token is None
    world.run()
    assert sent_descriptions(world.sink) == Counter(f"e{index}" for index in range(7))


def test_rows_the_service_refuses_go_to_the_dead_letter_store_and_the_rest_land(world):
    world.source.add("acme", *[event(NOW - 500 + index, description=f"e{index}") for index in range(6)])
    world.sink.refuse = lambda row: "400 InvalidPayload" if row["Description_s"] == "e3" else None
    [report] = world.run()
    assert report.status == "ok" and report.sent == 5 and report.dead_lettered == 1
    [letter] = world.dead_letters.list("acme")
    assert letter.row["Description_s"] == "e3" and letter.reason == "400 InvalidPayload"


def test_an_event_without_a_usable_timestamp_is_dead_lettered_with_the_reason(world):
    world.source.add("acme", event(NOW - 300))
    world.source.events["acme"].append({"timestamp": NOW - 300, "event": "", "description": "no type"})
    [report] = world.run()
    assert report.sent == 1 and report.dead_lettered == 1
    [letter] = world.dead_letters.list("acme")
    assert "'event' is missing" in letter.reason and '"no type"' in letter.row["RawEvent_s"]


def test_a_run_past_its_time_budget_stops_cleanly_and_the_next_run_resumes_mid_window(world):
    world.source.add("acme", *[event(NOW - 1000 + index, description=f"e{index}") for index in range(9)])
    fetch = world.source.fetch_page

    def slow_fetch(*args):
        page = fetch(*args)
        world.clock.monotonic_now += 100 if page.events else 0
        return page

    world.source.fetch_page = slow_fetch
    [report] = world.run(budget=150)
    assert report.status == "stopped" and report.sent == 6
    world.source.fetch_page = fetch
    world.run()
    assert sent_descriptions(world.sink) == Counter(f"e{index}" for index in range(9))


def test_a_crash_between_upload_and_checkpoint_duplicates_at_most_one_page_with_the_same_ids(world):
    world.source.add("acme", *[event(NOW - 1000 + index, description=f"e{index}") for index in range(9)])
    world.state.fail_saves_after = 1
    with pytest.raises(SimulatedCrash):
        world.run()
    world.state.fail_saves_after = None
    world.run()
    counts = sent_descriptions(world.sink)
    assert set(counts) == {f"e{index}" for index in range(9)}
    assert sum(counts.values()) - 9 <= world.source.page_size
    ids_by_description = {}
    for row in world.sink.rows:
        assert ids_by_description.setdefault(row["Description_s"], row["EventId_s"]) == row["EventId_s"]


def test_a_refused_continuation_token_restarts_the_window_without_duplicates(world):
    world.source.add("acme", *[event(NOW - 1000 + index, description=f"e{index}") for index in range(9)])
    world.source.reject_tokens = True
    [report] = world.run()
    assert report.status == "ok"
    assert sent_descriptions(world.sink) == Counter(f"e{index}" for index in range(9))


def test_a_paging_loop_fails_the_org_with_a_clear_error(world):
    world.source.add("acme", *[event(NOW - 1000 + index) for index in range(9)])
    world.source.loop_tokens = True
    [report] = world.run()
    assert report.failed and "paging loops for org 'acme'" in report.error


def test_a_token_that_loops_back_restarts_the_window_and_nothing_is_resent(world):
    world.source.add("acme", *[event(NOW - 1000 + index, description=f"e{index}") for index in range(12)])
    world.source.loop_back_at_offset = 6
    first, second = world.run(), world.run()
    assert first[0].failed and second[0].failed and "paging loops" in second[0].error
    assert sorted(sent_descriptions(world.sink).values()) == [1] * 6
    cursor = world.live()
    assert cursor.window is not None and cursor.continuation_token is None  # the window is read afresh
    world.source.loop_back_at_offset = None
    world.run()
    assert sorted(sent_descriptions(world.sink).values()) == [1] * 12


def test_one_failing_org_does_not_stop_the_others(world):
    world.source.add("good", event(NOW - 300))
    world.source.failures["bad"] = SourceError("org 'bad' not found (404)")
    reports = world.run(orgs=("bad", "good"))
    assert [(report.org, report.status) for report in reports] == [("bad", "failed"), ("good", "ok")]
    assert len(world.sink.rows) == 1


def test_a_long_backlog_is_walked_in_windows_of_at_most_an_hour(world):
    world.source.add("acme", *[event(NOW - LOOKBACK + index * 600, description=f"e{index}") for index in range(18)])
    world.run()
    spans = {end - start for _, start, end, _ in world.source.calls}
    assert max(spans) <= 3600 + OVERLAP
    assert len(world.sink.rows) == 18


def test_the_summary_reports_lag_behind_now(world):
    world.source.add("acme", event(NOW - 300))
    [report] = world.run()
    assert report.lag_seconds == SETTLE_DELAY_SECONDS
    assert "lag_seconds=60" in report.summary() and "sent=1" in report.summary()


def backfill(world, since: int, until: int, resend: bool = False) -> list:
    _, lanes = plan_backfill_lanes(world.state, "acme", since, until, int(world.clock.now), LOOKBACK, resend)
    return [world.collector.collect(lane) for lane in lanes]


def test_a_backfill_leaves_the_live_checkpoint_alone_and_keeps_original_event_times(world):
    old = NOW - 30 * 86400
    world.source.add("acme", *[event(old + index * 3600, description=f"old{index}") for index in range(48)])
    [report] = backfill(world, old, old + 2 * 86400)
    assert report.status == "ok" and report.sent == 48
    assert world.live().watermark == world.live().origin == NOW - LOOKBACK
    assert world.sink.rows[0]["EventTime_t"] == world.sink.rows[0]["TimeGenerated"]
    assert {row["Timestamp_d"] for row in world.sink.rows} == {old + index * 3600 for index in range(48)}


def test_a_backfill_leaves_the_live_cursor_of_a_first_live_run_under_way_to_that_run(world):
    world.state.acquire_lease("acme", LIVE, "timer-run", NOW, LEASE_SECONDS)
    with pytest.raises(LeaseHeld) as held:
        backfill(world, NOW - 86400, NOW)
    assert held.value.holder == "timer-run" and world.live() is None


def test_an_unexpected_error_in_one_org_is_reported_and_the_others_still_run(world):
    world.source.add("good", event(NOW - 300))
    world.source.failures["odd"] = KeyError("surprise")
    reports = world.run(orgs=("odd", "good"))
    assert reports[0].failed and reports[0].error == "unexpected KeyError: 'surprise'"
    assert reports[1].status == "ok" and len(world.sink.rows) == 1


def written_bytes_per_save(world) -> list[int]:
    """Bytes each cursor save hands to the store per page it covers (the cursor and the pages' segments)."""
    from shared.state_store import cursor_entity, segment_entity

    sizes = []
    save = world.state.save_cursor

    def measured(org, name, cursor, etag, segments=()):
        entities = [cursor_entity(cursor)] + [segment_entity(segment) for segment in segments]
        sizes.append(sum(len(repr(entity)) for entity in entities) / max(1, len(segments)))
        return save(org, name, cursor, etag, segments)

    world.state.save_cursor = measured
    return sizes


def test_a_page_save_costs_what_the_page_changed_whatever_the_backlog(world):
    world.source.page_size = 10
    world.source.add("acme", *[event(NOW - 9000 + index, description=f"e{index}") for index in range(2000)])
    sizes = written_bytes_per_save(world)
    world.run()
    assert len(world.sink.rows) == 2000
    assert max(sizes[-20:]) <= 1.2 * max(sizes[:20])


def test_the_ledger_holds_only_the_overlap_and_the_open_window_whatever_was_sent(world):
    world.source.page_size = 50
    backlog = range(NOW - LOOKBACK, NOW - SETTLE_DELAY_SECONDS, 2)
    world.source.add("acme", *[event(timestamp, description=f"e{timestamp}") for timestamp in backlog])
    world.run()
    segments = world.state.load_segments("acme", "live")
    remembered = {entry.key for segment in segments for entry in segment.entries if entry.sent}
    assert len(world.sink.rows) == len(backlog)
    # what the last window and the overlap hold: a live window spans at most an hour
    assert len(remembered) <= (LIVE_MAX_WINDOW_SECONDS + OVERLAP) // 2 < len(backlog) // 2


def windows_read(source: FakeAuditSource) -> list[tuple[int, int]]:
    """The windows the source was asked for, in order, each once (the API's end is inclusive)."""
    return list(dict.fromkeys((start, end + 1) for _, start, end, _ in source.calls))


def test_a_dense_backlog_is_read_in_windows_of_about_window_events(world, monkeypatch):
    monkeypatch.setattr("shared.cursor.WINDOW_EVENTS", 200)
    world.source.page_size = 50
    backlog = range(NOW - LOOKBACK, NOW - OVERLAP, 2)  # an event every 2 s
    world.source.add("acme", *[event(timestamp, description=f"e{timestamp}") for timestamp in backlog])
    [report] = world.run()
    assert report.status == "ok" and len(world.sink.rows) == len(backlog)
    first, *later = [window for window in windows_read(world.source) if window[1] <= backlog.stop]
    assert first[1] - first[0] == FIRST_WINDOW_SECONDS
    held = [sum(1 for timestamp in backlog if start <= timestamp < end) for start, end in later]
    assert len(held) >= 10 and all(200 // 2 <= count <= 2 * 200 for count in held)


def test_a_sparse_backlog_is_read_in_windows_twice_as_long_as_the_one_before(world):
    old = NOW - 30 * 86400
    world.source.add("acme", *[event(old + index * 7200, description=f"old{index}") for index in range(48)])
    backfill(world, old, old + 4 * 86400)
    spans = [end - start for start, end in windows_read(world.source)]
    assert spans[:6] == [FIRST_WINDOW_SECONDS * 2**step for step in range(5)] + [86400]


def test_a_busy_live_org_reads_its_new_minute_in_one_window(world, monkeypatch):
    """Its recent re-read alone holds more than WINDOW_EVENTS: the span bounds new time, not the re-read."""
    monkeypatch.setattr("shared.cursor.WINDOW_EVENTS", 200)
    world.source.page_size = 100
    every_second = range(NOW - LOOKBACK, NOW - SETTLE_DELAY_SECONDS)
    world.source.add("acme", *[event(t, description=f"e{t}") for t in every_second])
    world.run()
    watermark = world.live().watermark
    world.clock.now += 60
    world.source.add("acme", *[event(t, description=f"e{t}") for t in range(NOW - SETTLE_DELAY_SECONDS, NOW)])
    read_before = len(windows_read(world.source))
    [report] = world.run()
    new_time = [window for window in windows_read(world.source)[read_before:] if window[1] > watermark]
    assert report.status == "ok" and new_time == [(watermark - RECENT_REREAD_SECONDS, NOW)]


def test_a_catch_up_reads_settled_time_once_in_windows_that_tile_it(world):
    world.source.page_size = 50
    backlog = range(NOW - LOOKBACK, NOW - SETTLE_DELAY_SECONDS, 2)
    world.source.add("acme", *[event(timestamp, description=f"e{timestamp}") for timestamp in backlog])
    world.run()
    settled = [window for window in windows_read(world.source) if window[1] <= NOW - OVERLAP]
    assert len(settled) >= 2
    assert all(later[0] == earlier[1] for earlier, later in pairwise(settled))


def test_a_rerun_backfill_sends_nothing(world):
    old = NOW - 10 * 86400
    world.source.add("acme", *[event(old + index * 600, description=f"old{index}") for index in range(300)])
    backfill(world, old, old + 3 * 86400)
    sent = len(world.sink.rows)
    reports = backfill(world, old - 3600, old + 3 * 86400)
    assert sent == 300 and len(world.sink.rows) == 300
    assert [(report.collection, report.sent) for report in reports] == [(lane_name(old - 3600, old), 0)]


def test_an_interrupted_backfill_resumes_where_it_stopped(world):
    old = NOW - 10 * 86400
    padding = "x" * 60_000  # rows of about 60 KB: a request carries about 16 of them
    world.source.add("acme", *[event(old + i * 600, description=f"old{i} {padding}") for i in range(300)])
    world.state.fail_saves_after = 5
    with pytest.raises(SimulatedCrash):
        backfill(world, old, old + 3 * 86400)
    delivered_before_the_crash = len(world.sink.rows)
    world.state.fail_saves_after = None
    backfill(world, old, old + 3 * 86400)
    counts = sent_descriptions(world.sink)
    assert len(counts) == 300 and 0 < delivered_before_the_crash < 300
    assert sum(counts.values()) - 300 <= MAX_BODY_BYTES // 60_000  # at most the request in flight at the crash


def test_a_backfill_fills_the_gap_a_forward_reset_left_and_nothing_else(world):
    world.source.add("acme", *[event(NOW - LOOKBACK + index * 60, description=f"e{index}") for index in range(170)])
    world.run()
    from shared.delivery import plan_reset

    state = world.state.load_org("acme")
    plan = plan_reset(state, NOW + 600)
    world.state.replace_live("acme", plan.cursor, state.cursors["live"].etag, plan.folded, state.folded_etag)
    world.source.add("acme", *[event(NOW + index * 60, description=f"gap{index}") for index in range(10)])
    world.clock.now += 1800
    world.run()
    assert not any(row["Description_s"].startswith("gap") for row in world.sink.rows)
    world.clock.now += 60
    backfill(world, NOW - LOOKBACK, NOW + 3600)
    counts = sent_descriptions(world.sink)
    assert all(count == 1 for count in counts.values())
    assert {f"gap{index}" for index in range(10)} <= set(counts)


def test_resend_sends_a_delivered_range_again_with_the_same_ids(world):
    old = NOW - 10 * 86400
    world.source.add("acme", *[event(old + index * 600, description=f"old{index}") for index in range(30)])
    backfill(world, old, old + 86400)
    first = {row["Description_s"]: row["EventId_s"] for row in world.sink.rows}
    backfill(world, old, old + 86400, resend=True)
    assert len(world.sink.rows) == 60
    assert all(first[row["Description_s"]] == row["EventId_s"] for row in world.sink.rows)


def test_an_org_another_run_holds_is_skipped_naming_the_holder(world):
    world.source.add("acme", event(NOW - 300))
    world.state.acquire_lease("acme", "live", "other-host:42:abc", NOW, 120)
    [report] = world.run()
    assert report.status == "skipped" and not report.failed
    assert "other-host:42:abc" in report.error and world.sink.rows == []


def test_a_lease_left_by_a_killed_run_delays_the_org_by_at_most_the_lease_time(world):
    from shared.pipeline import LEASE_SECONDS

    world.source.add("acme", event(NOW - 300))
    world.state.acquire_lease("acme", "live", "killed-run", NOW, LEASE_SECONDS)
    world.clock.now += LEASE_SECONDS + 1
    [report] = world.run()
    assert report.status == "ok" and len(world.sink.rows) == 1


def test_a_run_releases_its_lease_when_it_ends(world):
    world.source.add("acme", event(NOW - 300))
    world.run()
    assert world.state.load_org("acme").leases == {}


def poll_every_minute(world, minutes: int, arrivals) -> list:
    """Runs the timer once a minute for `minutes`; before each run, `arrivals(now)` adds the events
    that showed up in the API since the last one."""
    reports = []
    for _ in range(minutes):
        world.clock.now += 60
        world.source.add("acme", *arrivals(int(world.clock.now)))
        reports += world.run()
    return reports


def test_an_event_that_shows_up_five_minutes_late_is_delivered_by_the_next_run(world):
    world.source.add("acme", event(NOW - 100, description="on time"))
    world.run()
    late_at = {NOW + 5 * 60}

    def arrivals(now):
        return [event(now - 300, description="late by 5 minutes")] if now in late_at else []

    reports = poll_every_minute(world, 5, arrivals)
    assert sent_descriptions(world.sink)["late by 5 minutes"] == 1
    assert reports[4].sent == 1 and reports[4].late_events == 1 and reports[4].oldest_late_seconds >= 300


def test_an_event_that_shows_up_as_late_as_the_overlap_is_delivered_at_most_two_minutes_later(world):
    world.source.add("acme", event(NOW - 100, description="on time"))
    world.run()
    happened = NOW + 60
    shows_up = happened + OVERLAP

    def arrivals(now):
        return [event(happened, description="late by the whole overlap")] if now == shows_up else []

    poll_every_minute(world, (shows_up + 120 - NOW) // 60, arrivals)  # up to 2 minutes after it showed up
    counts = sent_descriptions(world.sink)
    assert counts["late by the whole overlap"] == 1 and counts["on time"] == 1
    poll_every_minute(world, 15, arrivals)
    assert sent_descriptions(world.sink)["late by the whole overlap"] == 1


def test_steady_polling_reads_each_new_event_at_most_six_times(world):
    world.source.page_size = 50
    world.run()
    per_minute = 300  # 5 events/s

    def arrivals(now):
        start = now - 120  # the minute that just settled
        return [event(start + index * 60 // per_minute, description=f"{now}-{index}") for index in range(per_minute)]

    reports = poll_every_minute(world, 40, arrivals)
    steady = reports[20:]
    read = sum(report.fetched for report in steady)
    new = sum(report.sent for report in steady)
    assert new == 20 * per_minute and read / new <= 6.0
