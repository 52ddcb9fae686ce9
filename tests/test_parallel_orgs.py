"""A run collects several orgs at once (MAX_PARALLEL_ORGS), each on its own lease and cursor:
one slow org holds up none of the others, and no more orgs run at once than the setting says.
One org failing while three run is a fault-matrix scenario (tests/test_fault_matrix.py)."""

from __future__ import annotations

import logging
import threading
import time

from shared.catalog import default_catalog
from shared.pipeline import Collector, run_cycle
from shared.standins import Fault, simulate_events
from shared.state_store import memory_state_store
from tests.fakes import FakeAuditSource, FakeSink, InMemoryDeadLetterStore

SLOW_SECONDS = 2.0


def test_a_slow_org_holds_up_none_of_the_three_that_run_with_it(deployment):
    # globex, the slow one, comes first: one org after another, it would hold up all three.
    deployment.orgs = ("globex", "acme", "initech", "umbrella")
    now = int(time.time())
    for index, org in enumerate(deployment.orgs):
        deployment.pulumi_api.add_events(org, simulate_events(org, now - 3000, now - 120, 30, seed=index + 1))
    deployment.pulumi_api.page_size = 10
    deployment.pulumi_api.faults.add(Fault.delay(SLOW_SECONDS, match=lambda request: "/globex/" in request.path))
    connector = deployment.connector()
    caught_up: dict[str, float] = {}
    started = time.monotonic()

    def note(collection, cursor, report) -> None:
        if cursor.window is None:
            caught_up[collection.org] = time.monotonic() - started

    connector.collector.progress.append(note)
    reports = connector.run_once()

    assert [(report.org, report.status) for report in reports] == [(org, "ok") for org in deployment.orgs]
    assert [report.sent for report in reports] == [30] * 4
    fast = [caught_up[org] for org in ("acme", "initech", "umbrella")]
    assert max(fast) < SLOW_SECONDS <= caught_up["globex"], caught_up


class MeetingSource(FakeAuditSource):
    """Each org's first page waits until `meeting` orgs are asking at once; counts the most at once."""

    def __init__(self, meeting: int):
        super().__init__(page_size=5)
        self._lock = threading.Lock()
        self._first_pages = threading.Barrier(meeting)
        self._asked: set[str] = set()
        self.in_flight = 0
        self.most_in_flight = 0

    def fetch_page(self, org, start, end, continuation_token):
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            first = org not in self._asked
            self._asked.add(org)
        try:
            if first:
                self._first_pages.wait(timeout=10)
            return super().fetch_page(org, start, end, continuation_token)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_no_more_orgs_run_at_once_than_max_parallel_orgs_and_reports_keep_the_orgs_order():
    now = 1_800_000_000
    orgs = ("a", "b", "c", "d", "e", "f")
    source = MeetingSource(meeting=3)
    for org in orgs:
        events = [{"timestamp": now - 600 + i, "event": "stack-updated", "description": org} for i in range(12)]
        source.add(org, *events)
    sink = FakeSink()
    collector = Collector(
        source=source,
        sink=sink,
        state=memory_state_store(),
        dead_letters=InMemoryDeadLetterStore(),
        catalog=default_catalog(),
        holder="test-run",
        wall_clock=lambda: now,
    )
    reports = run_cycle(collector, orgs, 3600, 600, 480, max_parallel_orgs=3)
    assert [(report.org, report.status, report.sent) for report in reports] == [(org, "ok", 12) for org in orgs]
    assert source.most_in_flight == 3  # three first pages met at once, and never a fourth beside them
    assert len(sink.rows) == 72


def sixteen_orgs_at_once(deployment) -> None:
    """Sixteen orgs of five events each, all collected at once."""
    deployment.orgs = tuple(f"org{index:02d}" for index in range(16))
    deployment.extra["MAX_PARALLEL_ORGS"] = "16"
    now = int(time.time())
    for index, org in enumerate(deployment.orgs):
        deployment.pulumi_api.add_events(org, simulate_events(org, now - 3000, now - 120, 5, seed=index + 1))


def test_sixteen_orgs_at_once_keep_every_connection_to_each_service(deployment, caplog):
    """Each client keeps a connection per thread: no connection is opened only to be thrown away."""
    sixteen_orgs_at_once(deployment)
    # The first request of each org to each service is answered late, so all sixteen are open at once.
    deployment.pulumi_api.faults.add(Fault.delay(0.3, times=16))
    deployment.ingestion.faults.add(Fault.delay(0.3, times=16))
    deployment.managed_identity.faults.add(Fault.delay(0.3, times=16))
    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"):
        reports = deployment.connector().run_once()
    assert [report.status for report in reports] == ["ok"] * 16
    assert [record.getMessage() for record in caplog.records if "pool is full" in record.getMessage()] == []


def test_sixteen_orgs_meeting_no_token_ask_the_identity_endpoint_once(deployment):
    """The identity endpoint limits concurrent requests: the orgs wait for one token, not sixteen."""
    sixteen_orgs_at_once(deployment)
    deployment.managed_identity.faults.add(Fault.delay(0.3, times=16))
    reports = deployment.connector().run_once()
    assert [report.status for report in reports] == ["ok"] * 16
    assert deployment.managed_identity.resources == ["https://monitor.azure.com"]
