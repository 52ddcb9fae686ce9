"""Parallelism figures: orgs at once and backfill lanes at once, printed as ratios (not asserted).

    python -m benchmarks.parallel        # also run by scripts/bench.sh

The real Pulumi client and LogsIngestionClient run in this process; the stand-ins run in a
separate one (as in benchmarks/bench.py) and answer every Pulumi page 200 ms late, the latency
the throughput issue measured. The delivery state is in memory, fresh for each run. Each figure
is measured in 3 repeats and printed as min / median / max.

- Orgs: the wall time of one poll cycle over 3 orgs with equal load ÷ the same over 1 org.
- Backfill lanes: the wall time of a 7-day backfill with BACKFILL_PARALLELISM=4 ÷ with 1.
- Steady state: what one org costs per minute of live polling at 5 events/s (Pulumi pages,
  Logs Ingestion requests, Table operations, run time), the model docs/SCALING.md scales up.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

from benchmarks.bench import DCR, REPEATS, TOKEN, spread, standin_collector
from shared.pipeline import Collector, collect_at_once, plan_backfill_lanes, run_cycle
from shared.standins import Fault, LogsIngestionStandIn, PulumiAuditApiStandIn, simulate_events
from shared.state_store import MemoryEntities, TableStateStore

PAGE_SECONDS = 0.2
PAGE_SIZE = 100
DAY = 86400
ORGS = ("acme", "globex", "initech")
EVENTS_PER_ORG = 2_000  # over the last day: 24 hourly live windows of about one page each
LANES = 4
BACKFILL_EVENTS = 7_000  # over a week: 10 pages a day
STEADY_RATE = 5  # events per second, as in the throughput issue
OVERLAP_SECONDS = 600
PARALLEL_ORGS = 4  # the MAX_PARALLEL_ORGS default


# -- the stand-ins, in their own process -----------------------------------------------------------


def _serve(events: dict[str, tuple[int, int, int]], connection) -> None:
    """Child process: the stand-ins; `events` maps an org to (start, end, count). Answers each
    message with the Pulumi requests, Logs Ingestion requests and their uncompressed bytes so
    far, until "stop"."""
    with (
        PulumiAuditApiStandIn(TOKEN, page_size=PAGE_SIZE) as api,
        LogsIngestionStandIn(DCR, "Custom-PulumiAuditLogs") as sink,
    ):
        api.faults.add(Fault.delay(PAGE_SECONDS, times=None))
        for org, (start, end, count) in events.items():
            api.add_events(org, simulate_events(org, start, end, count, seed=3))
        connection.send((api.url, sink.url))
        while connection.recv() != "stop":
            uploaded = sum(request.uncompressed_size or 0 for request in sink.requests)
            connection.send((api.request_count, sink.request_count, uploaded))


class StandIns:
    def __init__(self, events: dict[str, tuple[int, int, int]]):
        self._connection, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(events, child), daemon=True
        )
        self._process.start()
        self.api_url, self.ingestion_url = self._connection.recv()

    def requests(self) -> tuple[int, int, int]:
        """(Pulumi API requests, Logs Ingestion requests, their uncompressed bytes) so far."""
        self._connection.send("count")
        return self._connection.recv()

    def close(self) -> None:
        self._connection.send("stop")
        self._process.join(10)


class CountedEntities(MemoryEntities):
    """The in-memory delivery state, counting the Table Storage operations it stands for."""

    def __init__(self) -> None:
        super().__init__()
        self.operations: Counter = Counter()

    def get(self, org, row_key):
        self.operations["point reads"] += 1
        return super().get(org, row_key)

    def prefixed(self, org, prefix):
        self.operations["queries"] += 1
        return super().prefixed(org, prefix)

    def transact(self, org, operations):
        self.operations["writes"] += 1
        return super().transact(org, operations)


def collector(standins: StandIns, state_dir: str, wall_clock=time.time) -> tuple[Collector, CountedEntities]:
    entities = CountedEntities()
    runner = standin_collector(
        standins.api_url, standins.ingestion_url, TableStateStore(entities), state_dir, wall_clock=wall_clock
    )
    return runner, entities


def _timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


# -- orgs at once ----------------------------------------------------------------------------------


def orgs_figure() -> None:
    now = int(time.time())
    standins = StandIns({org: (now - DAY + 60, now - 120, EVENTS_PER_ORG) for org in ORGS})
    one, three = [], []
    try:
        with tempfile.TemporaryDirectory() as state_dir:
            for _ in range(REPEATS):
                for orgs, walls in ((ORGS[:1], one), (ORGS, three)):
                    runner, _ = collector(standins, state_dir)
                    seconds, reports = _timed(
                        lambda runner=runner, orgs=orgs: run_cycle(
                            runner, orgs, DAY, OVERLAP_SECONDS, 3600, PARALLEL_ORGS
                        )
                    )
                    assert all(report.status == "ok" and report.sent == EVENTS_PER_ORG for report in reports)
                    walls.append(seconds)
    finally:
        standins.close()
    print(
        f"orgs at once (MAX_PARALLEL_ORGS={PARALLEL_ORGS}): one poll cycle, {EVENTS_PER_ORG} events per org over a "
        f"day, pages of {PAGE_SIZE}, {PAGE_SECONDS * 1000:.0f} ms per page"
    )
    print(f"  wall for 1 org, s: {spread(one)}")
    print(f"  wall for {len(ORGS)} orgs, s: {spread(three)}")
    print(f"  {len(ORGS)} orgs ÷ 1 org: {spread([b / a for a, b in zip(one, three, strict=True)])} (target <= 1.2)")


# -- backfill lanes --------------------------------------------------------------------------------


def backfill(standins: StandIns, state_dir: str, since: int, until: int, lanes: int) -> tuple[float, int]:
    """One backfill of [since, until) in up to `lanes` lanes at once: (wall seconds, pages read)."""
    runner, _ = collector(standins, state_dir)
    now = int(time.time())
    _, collections = plan_backfill_lanes(runner.state, "acme", since, until, now, DAY, False, lanes)
    seconds, reports = _timed(lambda: collect_at_once(runner, collections, lanes))
    assert all(report.status == "ok" for report in reports) and sum(r.sent for r in reports) == BACKFILL_EVENTS
    return seconds, sum(report.pages for report in reports)


def lanes_figure() -> None:
    until = int(time.time()) - DAY
    since = until - 7 * DAY
    standins = StandIns({"acme": (since, until - 1, BACKFILL_EVENTS)})
    one, four, pages = [], [], Counter()
    try:
        with tempfile.TemporaryDirectory() as state_dir:
            for _ in range(REPEATS):
                for count, walls in ((1, one), (LANES, four)):
                    seconds, read = backfill(standins, state_dir, since, until, count)
                    walls.append(seconds)
                    pages[count] = read
    finally:
        standins.close()
    print(
        f"backfill lanes: a 7-day range, {BACKFILL_EVENTS} events, pages of {PAGE_SIZE}, "
        f"{PAGE_SECONDS * 1000:.0f} ms per page"
    )
    for count, walls in ((1, one), (LANES, four)):
        rate = pages[count] / statistics.median(walls)
        print(f"  wall with {count} lane(s), s: {spread(walls)}; {pages[count]} pages, {rate:.1f} pages/s")
    print(f"  {LANES} lanes ÷ 1 lane: {spread([b / a for a, b in zip(one, four, strict=True)])} (target <= 0.35)")


# -- steady state ----------------------------------------------------------------------------------


@dataclass
class SteadyRun:
    seconds: float
    cpu_seconds: float
    pulumi_pages: int
    ingestion_requests: int
    ingestion_bytes: int
    table_operations: Counter
    fetched: int
    sent: int


def steady_run() -> SteadyRun:
    """The second of two live runs a minute apart, for one org at STEADY_RATE events/s."""
    now = int(time.time())
    standins = StandIns({"acme": (now - 3600, now + 60, STEADY_RATE * 3660)})
    clock = {"now": now}
    try:
        with tempfile.TemporaryDirectory() as state_dir:
            runner, entities = collector(standins, state_dir, wall_clock=lambda: clock["now"])
            run_cycle(runner, ["acme"], 3600, OVERLAP_SECONDS, 3600)
            clock["now"] += 60
            before, operations_before = standins.requests(), Counter(entities.operations)
            cpu_before = time.process_time()
            seconds, [report] = _timed(lambda: run_cycle(runner, ["acme"], 3600, OVERLAP_SECONDS, 3600))
            cpu_seconds = time.process_time() - cpu_before
            after = standins.requests()
    finally:
        standins.close()
    return SteadyRun(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        pulumi_pages=after[0] - before[0],
        ingestion_requests=after[1] - before[1],
        ingestion_bytes=after[2] - before[2],
        table_operations=entities.operations - operations_before,
        fetched=report.fetched,
        sent=report.sent,
    )


def steady_figure() -> None:
    runs = [steady_run() for _ in range(REPEATS)]
    run = runs[0]
    table = sum(run.table_operations.values())
    wall = statistics.median(r.seconds for r in runs)
    cpu = statistics.median(r.cpu_seconds for r in runs)
    print(
        f"steady live polling, one org at {STEADY_RATE} events/s, a run a minute, LATE_EVENT_OVERLAP 10m, "
        f"pages of {PAGE_SIZE}, {PAGE_SECONDS * 1000:.0f} ms per page (the second run):"
    )
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(run.table_operations.items()))
    print(
        f"  per org and run: {run.pulumi_pages} Pulumi pages, {run.ingestion_requests} Logs Ingestion requests, "
        f"{table} Table operations ({kinds}); {run.fetched} events read for {run.sent} new, "
        f"{run.ingestion_bytes / 1e6:.2f} MB uploaded ({run.ingestion_bytes / max(1, run.sent):.0f} bytes a row)"
    )
    print(f"  run time, s: {spread([r.seconds for r in runs])}; CPU time, s: {spread([r.cpu_seconds for r in runs])}")
    print("  per minute, scaled by org count (a run: orgs in rounds of MAX_PARALLEL_ORGS, or the CPU, the longer):")
    for orgs in (1, 10, 100):
        rounds = {parallel: -(-orgs // parallel) * wall for parallel in (PARALLEL_ORGS, 32)}
        print(
            f"  {orgs:>3} orgs: {orgs * run.pulumi_pages} Pulumi pages, {orgs * run.ingestion_requests} ingestion "
            f"requests (a DCR takes 12,000), {orgs * table} Table operations; a run takes "
            f"{rounds[PARALLEL_ORGS]:.0f} s at {PARALLEL_ORGS} orgs at once, {rounds[32]:.0f} s at 32, "
            f"and {orgs * cpu:.1f} s of CPU; {orgs * run.ingestion_bytes / 1e6:.1f} MB to the DCR (it takes 2 GB)"
        )


def main() -> None:
    orgs_figure()
    lanes_figure()
    steady_figure()


if __name__ == "__main__":
    main()
