"""A backfill reads its range in lanes at once (BACKFILL_PARALLELISM): how the range is cut, the
lanes running together under one progress bar, a lane killed mid-way and resumed alone, and a
429 from Pulumi that slows every lane of the org together.

The plan is pure (shared/delivery.py); the rest runs a real `python -m shared backfill`, or the
real clients in this process, against the HTTPS stand-ins and Azurite.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from shared.coverage import Coverage
from shared.cursor import Cursor
from shared.delivery import LIVE, OrgState, StoredCursor, lane_name, plan_backfill, split_into_lanes
from shared.pipeline import LEASE_SECONDS, collect_at_once, plan_backfill_lanes
from shared.pulumi_source import PulumiAuditSource, RetryAfterGate
from shared.settings import Secret
from shared.standins import Fault, simulate_events
from shared.token_source import EnvironmentToken
from shared.transform import iso_utc
from tests.harness import PULUMI_TOKEN, expected_ids, start_cli
from tests.invariants import account, record_figures, wait_until

DAY = 86400
WEEK = 7 * DAY
T0 = 1_790_000_000
HOLD = 30  # seconds a held request waits; far longer than any test, never actually waited out


def state_with(live_at: int, folded: Coverage | None = None, lanes: dict[str, Cursor] | None = None) -> OrgState:
    cursors = {LIVE: StoredCursor(Cursor.starting_at(live_at), "live-etag")}
    cursors.update({name: StoredCursor(cursor, f"{name}-etag") for name, cursor in (lanes or {}).items()})
    return OrgState("acme", folded=folded or Coverage(), cursors=cursors)


def tiles(lanes, start: int, end: int) -> bool:
    """The lanes cover [start, end) exactly, one after another, none empty."""
    starts, ends = [a for a, _ in lanes], [b for _, b in lanes]
    return starts == [start, *ends[:-1]] and ends[-1] == end and all(b > a for a, b in lanes)


# == the plan ======================================================================================


def test_a_week_is_cut_into_four_lanes_of_equal_whole_seconds_that_tile_it():
    plan = plan_backfill(state_with(T0), T0 - WEEK, T0, T0, parallelism=4)
    assert plan.new_lanes == tuple((T0 - WEEK + k * 151_200, T0 - WEEK + (k + 1) * 151_200) for k in range(4))
    assert tiles(plan.new_lanes, T0 - WEEK, T0)


def test_lanes_of_an_odd_length_differ_by_at_most_a_second():
    lanes = split_into_lanes([(T0, T0 + 1_000_003)], 4)
    assert tiles(lanes, T0, T0 + 1_000_003)
    assert {end - start for start, end in lanes} == {250_000, 250_001}


def test_the_lanes_go_to_the_longest_gaps_and_never_cover_what_was_delivered():
    delivered = Coverage.of([(T0 - WEEK + 6 * DAY, T0 - 12 * 3600)])
    plan = plan_backfill(state_with(T0, folded=delivered), T0 - WEEK, T0, T0, parallelism=4)
    six_days, half_a_day = (T0 - WEEK, T0 - DAY), (T0 - 12 * 3600, T0)
    assert plan.new_lanes == (
        (six_days[0], six_days[0] + 2 * DAY),
        (six_days[0] + 2 * DAY, six_days[0] + 4 * DAY),
        (six_days[0] + 4 * DAY, six_days[1]),
        half_a_day,
    )


def test_more_gaps_than_lanes_make_one_lane_per_gap():
    delivered = Coverage.of([(T0 - 5 * DAY + k * DAY, T0 - 5 * DAY + k * DAY + 3600) for k in range(4)])
    plan = plan_backfill(state_with(T0, folded=delivered), T0 - 5 * DAY, T0, T0, parallelism=2)
    assert plan.new_lanes == tuple(delivered.gaps(T0 - 5 * DAY, T0))


def test_a_range_of_fewer_seconds_than_lanes_gets_one_lane_per_second():
    assert split_into_lanes([(T0, T0 + 3)], 4) == ((T0, T0 + 1), (T0 + 1, T0 + 2), (T0 + 2, T0 + 3))


def test_one_lane_at_a_time_keeps_each_gap_whole():
    plan = plan_backfill(state_with(T0), T0 - WEEK, T0, T0, parallelism=1)
    assert plan.new_lanes == ((T0 - WEEK, T0),)


def test_a_rerun_resumes_the_unfinished_lane_by_its_name_and_plans_nothing_new():
    lanes = split_into_lanes([(T0 - WEEK, T0)], 4)
    finished, (start, end) = lanes[:3], lanes[3]
    interrupted = Cursor(watermark=start + 3600, origin=start, until=end)
    state = state_with(T0, folded=Coverage.of(finished), lanes={lane_name(start, end): interrupted})
    plan = plan_backfill(state, T0 - WEEK, T0, T0 + LEASE_SECONDS, parallelism=4)
    assert plan.resume == (lane_name(start, end),) and plan.new_lanes == ()


# == lanes at once, through the real command =======================================================


def seed_a_week(deployment, count: int = 160, page_size: int = 10) -> tuple[int, int, list[dict]]:
    """`count` events over a week that ended a day ago; returns (since, until, events)."""
    until = int(time.time()) - DAY
    since = until - WEEK
    events = simulate_events("acme", since, until, count, seed=11)
    deployment.pulumi_api.add_events("acme", events)
    deployment.pulumi_api.page_size = page_size
    return since, until, events


def first_page_of_a_window(request) -> bool:
    return "continuationToken" not in request.query


def test_the_command_reads_four_lanes_at_once_under_one_progress_bar(deployment):
    since, until, events = seed_a_week(deployment)
    lanes = split_into_lanes([(since, until)], 4)
    # Each lane's first page is answered half a second late: one lane after another would ask
    # for its second page before the next lane's first; lanes at once all ask first.
    deployment.pulumi_api.faults.add(Fault.delay(0.5, match=first_page_of_a_window, times=4))
    result = deployment.run_cli("backfill", "--since", str(since), "--until", str(until))
    assert result.returncode == 0, result.stderr
    first_four = deployment.pulumi_api.requests[:4]
    assert sorted(int(request.query["startTime"]) for request in first_four) == [start for start, _ in lanes]
    assert all(first_page_of_a_window(request) for request in first_four)
    assert "  4 lanes, 4 at a time (BACKFILL_PARALLELISM)" in result.stderr
    # tqdm pads a refresh shorter than the one before with spaces (the rate's width varies).
    bar = [line.rstrip() for line in result.stderr.splitlines() if " events [" in line]
    assert bar and all(line.startswith("backfill acme: ") for line in bar)
    assert bar[-1].startswith(f"backfill acme: {len(events)} events [") and "events/s" in bar[-1]
    assert bar[-1].endswith(f"reached {iso_utc(until)}]")
    assert f"backfill acme: sent {len(events)}, skipped 0 already delivered, dead-lettered 0" in result.stderr
    assert Counter(deployment.landed().values()) == Counter({1: len(events)})
    assert set(deployment.landed()) == expected_ids("acme", events)
    state = deployment.state().load_org("acme")
    assert state.lanes == {} and state.folded.within(since, until) == Coverage.of([(since, until)])


def delivered_in_full(deployment, start: int, end: int) -> bool:
    """[start, end) is part of the org's coverage: its lanes finished."""
    return deployment.state().load_org("acme").folded.gaps(start, end) == Coverage()


@pytest.mark.faults
def test_a_lane_killed_mid_backfill_is_the_only_one_a_rerun_reads(deployment):
    # Pages of 2: the lane's first windows are an hour, then twice as long, each holding a few
    # events, and one of its early windows surely takes a second page.
    since, until, events = seed_a_week(deployment, page_size=2)
    *_, (start, end) = split_into_lanes([(since, until)], 4)
    last = lane_name(start, end)

    def lasts_second_page(request) -> bool:
        return int(request.query["startTime"]) >= start and "continuationToken" in request.query

    deployment.pulumi_api.faults.add(Fault.delay(HOLD, match=lasts_second_page))
    process = start_cli(deployment, "backfill", "--since", str(since), "--until", str(until))
    try:
        wait_until(
            lambda: any(map(lasts_second_page, deployment.pulumi_api.requests))
            and delivered_in_full(deployment, since, start),
            timeout=30,
            what="three lanes folded while the fourth waits for its second page",
        )
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    killed = deployment.state().load_org("acme")
    assert set(killed.lanes) == {last} and killed.holder(last, int(time.time())) is not None
    reached = killed.lanes[last].watermark
    deployment.pulumi_api.faults.clear()

    # The killed run's process is gone from this host: a rerun right away takes the lane's lease over.
    connector = deployment.connector()
    collector = connector.collector
    asked_before = deployment.pulumi_api.request_count
    now = int(time.time())
    ended = collector.holder_ended
    plan, lanes = plan_backfill_lanes(collector.state, "acme", since, until, now, 3600, False, 4, ended)
    assert plan.resume == (last,) and plan.new_lanes == () and plan.busy == ()
    [report] = collect_at_once(collector, lanes, 4)
    assert report.status == "ok" and report.collection == last
    assert report.took_over_from == killed.holder(last, now).holder

    asked_again = deployment.pulumi_api.requests[asked_before:]
    assert asked_again and all(int(request.query["startTime"]) >= reached for request in asked_again)
    accounting = account({"acme": events}, [None], deployment.landed(), [])
    record_figures(
        "crash: a backfill lane killed mid-way, the rerun reads only that lane",
        accounting,
        0,
        ["SIGKILL", report.status],
        "4 lanes at once; 3 had folded",
    )
    assert accounting.lost == 0 and accounting.duplicated == 0 and accounting.phantoms == 0
    state = deployment.state().load_org("acme")
    assert state.lanes == {} and state.folded.within(since, until) == Coverage.of([(since, until)])


# == a 429 slows every lane of the org =============================================================


class GateClock:
    """The gate's clock, moved only by the gate's own waits, which it records."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_a_429_with_retry_after_holds_the_orgs_next_request_until_then_and_no_other_orgs(
    pulumi_api, no_real_sleep
):
    for org in ("acme", "globex"):
        pulumi_api.add_events(org, simulate_events(org, T0 - DAY, T0, 20, seed=3))
    clock = GateClock()
    source = PulumiAuditSource(
        pulumi_api.url, EnvironmentToken(Secret(PULUMI_TOKEN)), gate=RetryAfterGate(clock, clock.sleep)
    )
    pulumi_api.faults.add(Fault.respond(429, headers={"Retry-After": "7"}, match=1))

    source.fetch_page("acme", T0 - DAY, T0 - DAY // 2, None)  # one lane: 429, then urllib3 retries it
    assert [request.status for request in pulumi_api.requests] == [429, 200] and 7 in no_real_sleep
    source.fetch_page("globex", T0 - DAY, T0, None)
    assert clock.waits == []  # another org is not held
    source.fetch_page("acme", T0 - DAY // 2, T0, None)  # another lane of the same org
    assert clock.waits == [7]
    source.fetch_page("acme", T0 - DAY // 2, T0, None)
    assert clock.waits == [7] and pulumi_api.request_count == 5


def test_a_hostile_retry_after_holds_the_org_no_longer_than_the_cap(pulumi_api):
    from shared.pulumi_source import MAX_RETRY_AFTER_SECONDS

    pulumi_api.add_events("acme", simulate_events("acme", T0 - DAY, T0, 5, seed=3))
    clock = GateClock()
    source = PulumiAuditSource(
        pulumi_api.url, EnvironmentToken(Secret(PULUMI_TOKEN)), gate=RetryAfterGate(clock, clock.sleep)
    )
    pulumi_api.faults.add(Fault.respond(429, headers={"Retry-After": "86400"}, match=1))
    source.fetch_page("acme", T0 - DAY, T0, None)
    source.fetch_page("acme", T0 - DAY, T0, None)
    assert clock.waits == [MAX_RETRY_AFTER_SECONDS]


def test_every_lane_of_the_org_waits_out_a_429_that_one_lane_got(deployment):
    since, until, events = seed_a_week(deployment, count=200)
    waits: list[tuple[str, float]] = []
    lock = threading.Lock()

    def recorded(seconds: float) -> None:
        with lock:
            waits.append((threading.current_thread().name, seconds))

    connector = deployment.connector()
    connector.collector.source = PulumiAuditSource(
        deployment.pulumi_api.url, EnvironmentToken(Secret(PULUMI_TOKEN)), gate=RetryAfterGate(sleep=recorded)
    )
    deployment.pulumi_api.faults.add(Fault.respond(429, headers={"Retry-After": "5"}, match=1))
    now = int(time.time())
    _, lanes = plan_backfill_lanes(connector.collector.state, "acme", since, until, now, 3600, False, 4)
    reports = collect_at_once(connector.collector, lanes, 4)

    assert [report.status for report in reports] == ["ok"] * 4
    assert Counter(deployment.landed().values()) == Counter({1: len(events)})
    lane_threads = {name for name, _ in waits}
    assert len(lane_threads) == 4, waits  # every lane held, the one that got the 429 and the three others
    assert all(4 < seconds <= 5 for _, seconds in waits), waits
