"""Ctrl-C and SIGTERM: a real `python -m shared run|backfill` process, signalled mid-way, stops
reading, ends the request in flight, saves what Logs Ingestion accepted, releases its leases,
prints its summary with status `stopped` and how to resume, and exits 130 (SIGINT) or 143
(SIGTERM) without a traceback. A rerun right away resumes where it stopped. A second SIGINT
exits at once and says the leases will expire. The timer function's worker stops its cycle the
same way, then dies of the SIGTERM as its host asked.

A stand-in holds one chosen request (far longer than a test waits), so the signal arrives at a
known step; no test sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.catalog import default_catalog
from shared.delivery import LIVE
from shared.pipeline import LEASE_SECONDS, Collector, live_collection, plan_backfill_lanes
from shared.standins import Fault, simulate_events
from shared.state_store import memory_state_store
from tests.fakes import FakeAuditSource, FakeSink, InMemoryDeadLetterStore
from tests.harness import REPO_ROOT, Deployment, expected_ids
from tests.invariants import wait_until

HOLD = 30  # seconds a held request waits: far longer than a stop may take, never waited out
STOPPED_WITHIN = 20  # a stop that waited for the held request would take HOLD
BIG = 60_000  # rows of about 120 KB: a request carries 8 of them, so requests go out while pages are read
DAY = 86400


def big_events(org: str, start: int, end: int, count: int) -> list[dict]:
    events = simulate_events(org, start, end, count, seed=3)
    for event in events:
        event["description"] += " " + "p" * BIG
    return events


class Child:
    """`python -m shared ARGS` (or python -c CODE) in the background, its output in files."""

    def __init__(self, deployment: Deployment, folder: Path, *args: str):
        self.out, self.err = folder / "stdout", folder / "stderr"
        environ = {**os.environ, **deployment.managed_identity.env(), **deployment.environ}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, *args], cwd=REPO_ROOT, env=environ, stdout=out, stderr=err, text=True
            )

    def signal_when(self, reached, number: int, what: str) -> None:
        wait_until(lambda: reached() or self.process.poll() is not None, timeout=30, what=what)
        assert self.process.poll() is None, f"ended before {what}: {self.output()}"
        self.process.send_signal(number)

    def ended(self) -> int:
        try:
            return self.process.wait(timeout=STOPPED_WITHIN)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def output(self) -> str:
        return self.stdout() + self.stderr()


def held_lease(deployment: Deployment, name: str) -> str | None:
    lease = deployment.state().load_org("acme").holder(name, int(time.time()))
    return lease.holder if lease else None


def saved_mid_window(deployment: Deployment, name: str | None = None) -> bool:
    state = deployment.state().load_org("acme")
    cursors = [state.live] if name == LIVE else list(state.lanes.values())
    return any(cursor is not None and cursor.continuation_token for cursor in cursors)


def hold_the_fifth_page(deployment: Deployment) -> None:
    deployment.pulumi_api.page_size = 5
    deployment.pulumi_api.faults.add(Fault.delay(HOLD, match=5))


def sigterm_while_a_live_run_waits_for_its_fifth_page(
    deployment: Deployment, folder: Path, *args: str
) -> tuple[Child, list[dict]]:
    """`python ARGS` started on a live backlog of 40 events, and sent SIGTERM once it saved mid-window
    and waits for the fifth page: the moment a host's stop arrives in every SIGTERM story.
    Returns the signalled child and the backlog's events."""
    now = int(time.time())
    events = big_events("acme", now - 3000, now - 120, 40)
    deployment.pulumi_api.add_events("acme", events)
    hold_the_fifth_page(deployment)
    child = Child(deployment, folder, *args)
    child.signal_when(
        lambda: deployment.pulumi_api.request_count >= 5 and saved_mid_window(deployment, LIVE),
        signal.SIGTERM,
        "the fifth page held after a save mid-window",
    )
    return child, events


@pytest.mark.faults
def test_sigint_stops_a_backfill_which_a_rerun_right_away_resumes(deployment, tmp_path):
    deployment.extra["BACKFILL_PARALLELISM"] = "1"
    now = int(time.time())
    events = big_events("acme", now - 3 * DAY + 600, now - 3 * DAY + 3000, 40)
    deployment.pulumi_api.add_events("acme", events)
    hold_the_fifth_page(deployment)
    child = Child(deployment, tmp_path, "-m", "shared", "backfill", "--since", "3d")
    child.signal_when(
        lambda: deployment.pulumi_api.request_count >= 5 and saved_mid_window(deployment),
        signal.SIGINT,
        "the fifth page held after a save mid-window",
    )

    assert child.ended() == 130, child.output()
    assert "Traceback" not in child.output()
    assert "status=stopped" in child.stdout()
    assert "stopped by SIGINT: what Logs Ingestion accepted is saved and the leases are released" in child.stderr()
    assert "running the same backfill again resumes where this run stopped" in child.stderr()
    stopped = deployment.state().load_org("acme")
    [(lane, cursor)] = stopped.lanes.items()
    assert stopped.holder(lane, int(time.time())) is None, "the lease was released"
    landed_at_stop = len(deployment.ingestion.rows)

    deployment.pulumi_api.faults.clear()
    asked_before = deployment.pulumi_api.request_count
    rerun = deployment.run_cli("backfill", "--since", "3d")
    assert rerun.returncode == 0 and "status=ok" in rerun.stdout, rerun.stdout + rerun.stderr
    assert deployment.pulumi_api.requests[asked_before].query.get("continuationToken") == cursor.continuation_token
    assert landed_at_stop > 0 and Counter(deployment.landed().values()) == Counter({1: 40})
    assert set(deployment.landed()) == expected_ids("acme", events)


@pytest.mark.faults
def test_sigint_stops_every_lane_of_a_backfill_and_releases_every_lease(deployment, tmp_path):
    deployment.extra["BACKFILL_PARALLELISM"] = "4"
    now = int(time.time())
    events = big_events("acme", now - 3 * DAY + 600, now - 2 * DAY, 60)
    deployment.pulumi_api.add_events("acme", events)
    hold_the_fifth_page(deployment)
    child = Child(deployment, tmp_path, "-m", "shared", "backfill", "--since", "3d")
    child.signal_when(
        lambda: deployment.pulumi_api.request_count >= 5 and deployment.ingestion.request_count >= 1,
        signal.SIGINT,
        "the fifth page held after an upload",
    )

    assert child.ended() == 130, child.output()
    assert "Traceback" not in child.output()
    statuses = Counter(line.split("status=")[1].split()[0] for line in child.stdout().splitlines())
    assert statuses["stopped"] >= 1 and statuses["stopped"] + statuses["ok"] == 4, statuses
    stopped = deployment.state().load_org("acme")
    assert len(stopped.lanes) == statuses["stopped"], "a lane that finished is folded, a stopped one is not"
    assert not any(stopped.holder(name, int(time.time())) for name in stopped.lanes)

    deployment.pulumi_api.faults.clear()
    rerun = deployment.run_cli("backfill", "--since", "3d")
    assert rerun.returncode == 0 and rerun.stdout.count("status=ok") == statuses["stopped"], rerun.stdout
    assert Counter(deployment.landed().values()) == Counter({1: 60})
    assert set(deployment.landed()) == expected_ids("acme", events)


@pytest.mark.faults
def test_sigterm_stops_a_run_which_the_next_run_resumes_at_once(deployment, tmp_path):
    child, events = sigterm_while_a_live_run_waits_for_its_fifth_page(deployment, tmp_path, "-m", "shared", "run")

    assert child.ended() == 143, child.output()
    assert "Traceback" not in child.output() and "status=stopped" in child.stdout()
    assert "stopped by SIGTERM" in child.stderr() and "the next run resumes" in child.stderr()
    assert held_lease(deployment, LIVE) is None

    deployment.pulumi_api.faults.clear()
    rerun = deployment.run_cli("run")
    assert rerun.returncode == 0 and "status=ok" in rerun.stdout, rerun.stdout + rerun.stderr
    assert Counter(deployment.landed().values()) == Counter({1: 40})
    assert set(deployment.landed()) == expected_ids("acme", events)


@pytest.mark.faults
def test_a_second_sigint_exits_at_once_and_says_the_leases_will_expire(deployment, tmp_path):
    now = int(time.time())
    deployment.pulumi_api.add_events("acme", big_events("acme", now - 3000, now - 120, 20))
    deployment.ingestion.faults.add(Fault.hold_response(HOLD, match=1))
    child = Child(deployment, tmp_path, "-m", "shared", "run")
    child.signal_when(lambda: deployment.ingestion.request_count >= 1, signal.SIGINT, "the first upload held")
    wait_until(lambda: "SIGINT: stopping after the request in flight" in child.stderr(), what="the first SIGINT")
    child.process.send_signal(signal.SIGINT)

    assert child.ended() == 130, child.output()
    assert "Traceback" not in child.output()
    assert f"second interrupt: exiting at once; the leases of what was under way expire by themselves within " \
        f"{LEASE_SECONDS} s" in child.stderr()
    assert held_lease(deployment, LIVE) is not None


@pytest.mark.faults
def test_the_timer_worker_stops_its_cycle_on_sigterm_then_dies_of_it(deployment, tmp_path):
    timer = (
        "import logging, function_app\n"
        "from shared.wiring import run_timer_cycle\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "run_timer_cycle()\n"
        "print('the worker carried on after SIGTERM')\n"
    )
    child, _ = sigterm_while_a_live_run_waits_for_its_fifth_page(deployment, tmp_path, "-c", timer)

    assert child.ended() == -signal.SIGTERM, child.output()
    assert "status=stopped" in child.stderr() and "stopped by SIGTERM" in child.stderr()
    assert "carried on" not in child.stdout()
    assert held_lease(deployment, LIVE) is None
    deployment.pulumi_api.faults.clear()
    assert deployment.run_cli("run").returncode == 0
    assert Counter(deployment.landed().values()) == Counter({1: 40})


# -- the collector's side of a stop, against in-memory fakes --------------------------------------

NOW = 1_800_000_000


class StopAtFetch(FakeAuditSource):
    """Sets the collector's stop while it fetches page `at` (as a signal arriving then would)."""

    def __init__(self, at: int):
        super().__init__(page_size=10)
        self.at = at
        self.stop = threading.Event()

    def fetch_page(self, org, start, end, continuation_token):
        if len(self.calls) + 1 == self.at:
            self.stop.set()
        return super().fetch_page(org, start, end, continuation_token)


def stoppable(source: StopAtFetch, state) -> Collector:
    return Collector(
        source=source,
        sink=FakeSink(),
        state=state,
        dead_letters=InMemoryDeadLetterStore(),
        catalog=default_catalog(),
        holder="test-run",
        stop=source.stop,
        wall_clock=lambda: NOW,
        monotonic=lambda: 0.0,
    )


def fake_events(count: int) -> list[dict]:
    return [
        {"timestamp": NOW - 3000 + index, "event": "stack-updated", "description": f"e{index}", "user": {"name": "A"}}
        for index in range(count)
    ]


def test_a_stop_fetches_no_page_after_it_saves_what_was_accepted_and_releases_the_lease():
    source, state = StopAtFetch(at=3), memory_state_store()
    source.add("acme", *fake_events(100))
    collector = stoppable(source, state)
    report = collector.collect(live_collection("acme", NOW, 3600, 600))
    assert report.status == "stopped" and len(source.calls) == 3
    assert state.load_org("acme").leases == {}

    # What the stopped run sent is saved: the rerun sends exactly the rest.
    source.stop.clear()
    again = collector.collect(live_collection("acme", NOW, 3600, 600))
    assert again.status == "ok" and len(collector.sink.rows) == 100
    assert len({row["EventId_s"] for row in collector.sink.rows}) == 100


def test_a_collection_not_started_when_the_stop_came_is_left_alone():
    source, state = StopAtFetch(at=0), memory_state_store()
    source.stop.set()
    report = stoppable(source, state).collect(live_collection("acme", NOW, 3600, 600))
    assert report.status == "stopped" and source.calls == []
    assert state.load_org("acme").leases == {} and state.load_org("acme").live is None


def test_an_idle_timer_worker_dies_of_sigterm_at_once():
    idle = "import os, signal, function_app\nos.kill(os.getpid(), signal.SIGTERM)\nprint('carried on')\n"
    result = subprocess.run(
        [sys.executable, "-c", idle], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -signal.SIGTERM and "carried on" not in result.stdout, result.stderr


def test_a_lane_stopped_with_pages_unsent_is_not_folded_and_its_rerun_sends_the_rest_once():
    source, state = StopAtFetch(at=0), memory_state_store()
    start, until = NOW - 86400, NOW - 86400 + 1800  # one window holds the whole lane
    big = [
        {"timestamp": start + 60 * index, "event": "stack-updated", "description": f"e{index} " + "p" * 60_000}
        for index in range(30)
    ]
    source.add("acme", *big)
    source.page_size = 30  # one page: the cursor has finished the lane before its rows are all sent
    collector = stoppable(source, state)
    collector.sink.before_send = source.stop.set  # the signal comes while the first request is in flight
    [lane] = plan_backfill_lanes(state, "acme", start, until, NOW, 3600, False)[1]
    stopped = collector.collect(lane)
    assert stopped.status == "stopped" and 0 < len(collector.sink.rows) < 30
    assert lane.name in state.load_org("acme").lanes, "folded with pages unsent"

    source.stop.clear()
    collector.sink.before_send = lambda: None
    [lane] = plan_backfill_lanes(state, "acme", start, until, NOW, 3600, False)[1]
    assert collector.collect(lane).status == "ok"
    assert state.load_org("acme").lanes == {}
    assert sorted(row["Description_s"][:4] for row in collector.sink.rows) == sorted(e["description"][:4] for e in big)
