"""The poll cycle, specified against in-memory fakes of the source, sink and stores."""

from __future__ import annotations

from collections import Counter

import pytest

from shared.catalog import default_catalog
from shared.checkpoint_store import CursorKey
from shared.pipeline import SETTLE_DELAY_SECONDS, Collector, backfill_collection, run_cycle
from shared.ports import SourceError
from tests.fakes import FakeAuditSource, FakeSink, InMemoryCheckpointStore, InMemoryDeadLetterStore, SimulatedCrash

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
    checkpoints = InMemoryCheckpointStore()
    dead_letters = InMemoryDeadLetterStore()
    collector = Collector(
        source=source,
        sink=sink,
        checkpoints=checkpoints,
        dead_letters=dead_letters,
        catalog=default_catalog(),
        overlap_seconds=OVERLAP,
        wall_clock=clock.wall,
        monotonic=clock.monotonic,
    )

    class World:
        pass

    w = World()
    w.clock, w.source, w.sink, w.checkpoints, w.dead_letters, w.collector = (
        clock,
        source,
        sink,
        checkpoints,
        dead_letters,
        collector,
    )
    w.run = lambda orgs=("acme",), budget=480: run_cycle(collector, orgs, LOOKBACK, budget)
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
    world.source.add("acme", *[event(NOW - 400 + index, description=f"e{index}") for index in range(10)])
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
    world.checkpoints.delete(CursorKey.live("acme"))
    world.run()
    assert [row["EventId_s"] for row in world.sink.rows] == [first_id, first_id]


def test_when_the_sink_is_unavailable_the_checkpoint_stays_and_the_next_run_sends_everything(world):
    world.source.add("acme", *[event(NOW - 500 + index, description=f"e{index}") for index in range(7)])
    world.sink.unavailable_for = 1
    [report] = world.run()
    assert report.failed and "503" in report.error
    cursor, _ = world.checkpoints.load(CursorKey.live("acme"))
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
    world.sink.before_send = lambda: setattr(world.clock, "monotonic_now", world.clock.monotonic_now + 100)
    [report] = world.run(budget=150)
    assert report.status == "stopped" and report.sent == 6
    world.sink.before_send = lambda: None
    world.run()
    assert sent_descriptions(world.sink) == Counter(f"e{index}" for index in range(9))


def test_a_crash_between_upload_and_checkpoint_duplicates_at_most_one_page_with_the_same_ids(world):
    world.source.add("acme", *[event(NOW - 1000 + index, description=f"e{index}") for index in range(9)])
    world.checkpoints.fail_saves_after = 1
    with pytest.raises(SimulatedCrash):
        world.run()
    world.checkpoints.fail_saves_after = None
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
    cursor, _ = world.checkpoints.load(CursorKey.live("acme"))
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


def test_a_backfill_leaves_the_live_checkpoint_alone_and_keeps_original_event_times(world):
    old = NOW - 30 * 86400
    world.source.add("acme", *[event(old + index * 3600, description=f"old{index}") for index in range(48)])
    report = world.collector.collect(backfill_collection("acme", old, old + 2 * 86400))
    assert report.status == "ok" and report.sent == 48
    assert world.checkpoints.load(CursorKey.live("acme")) == (None, None)
    assert world.sink.rows[0]["EventTime_t"] == world.sink.rows[0]["TimeGenerated"]
    assert {row["Timestamp_d"] for row in world.sink.rows} == {old + index * 3600 for index in range(48)}


def test_an_unexpected_error_in_one_org_is_reported_and_the_others_still_run(world):
    world.source.add("good", event(NOW - 300))
    world.source.failures["odd"] = KeyError("surprise")
    reports = world.run(orgs=("odd", "good"))
    assert reports[0].failed and reports[0].error == "unexpected KeyError: 'surprise'"
    assert reports[1].status == "ok" and len(world.sink.rows) == 1
