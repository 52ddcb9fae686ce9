"""Figures of the pipelined data path, each a ratio measured in one run, 3 repeats (min / median / max).

    python -m benchmarks.pipeline            # all figures (about 10 minutes on 2 cores)
    python -m benchmarks.pipeline overlap    # one of: overlap, fill, flat, reads, catch-up

- overlap: with 200 ms per Pulumi page and 300 ms per upload, wall ÷ max(Σ fetch, Σ upload);
- fill: mean request body ÷ 1,000,000 while a day of backlog is caught up, pages of 100 and 1,000;
- flat: peak RSS, events/s and events per connector CPU second at 1M events ÷ at 100k;
- reads: events received ÷ new events delivered in steady live polling (5 events/s, default settings);
- catch-up: the longest of a 50 events/s org's steady live runs ÷ the one-minute timer period, with
  pages of 100 and 200 ms per page.

The end-to-end figures run the real Pulumi client and LogsIngestionClient against the stand-ins
served from another process (benchmarks/bench.py), each run in a fresh process. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks.bench import (
    DCR,
    REPEATS,
    TOKEN,
    end_to_end_in_a_fresh_process,
    spread,
    standin_collector,
)
from shared.cursor import Cursor
from shared.delivery import LIVE
from shared.pipeline import run_cycle
from shared.standins import Fault, LogsIngestionStandIn, PulumiAuditApiStandIn, simulate_events
from shared.state_store import memory_state_store

PAGE_DELAY = 0.2
UPLOAD_DELAY = 0.3
MINUTE = 60
OVERLAP = 600


def overlap() -> None:
    """Σ fetch and Σ upload are the seconds the connector's calls took, delays and the stand-ins' own
    work included (the ingestion stand-in inflates and checks each 1 MB body); the nominal ratio
    counts the delays alone."""
    for page_size, backlog in ((100, 5_000), (1000, 20_000)):
        ratios, nominal = [], []
        for _ in range(REPEATS):
            run = end_to_end_in_a_fresh_process(backlog, page_size, PAGE_DELAY, UPLOAD_DELAY)
            ratios.append(run["seconds"] / max(run["fetch_seconds"], run["upload_seconds"]))
            nominal.append(
                run["seconds"] / max(run["pages"] * PAGE_DELAY, run["ingestion_requests"] * UPLOAD_DELAY)
            )
        print(
            f"overlap, pages of {page_size}: wall ÷ max(Σ fetch, Σ upload) {spread(ratios)}; "
            f"÷ the delays alone {spread(nominal)} ({run['pages']} pages, {run['ingestion_requests']} requests, "
            f"Σ fetch {run['fetch_seconds']} s, Σ upload {run['upload_seconds']} s, wall {run['seconds']} s)"
        )


def fill() -> None:
    for page_size in (100, 1000):
        runs = [end_to_end_in_a_fresh_process(20_000, page_size) for _ in range(REPEATS)]
        print(
            f"fill, pages of {page_size}: mean request body ÷ 1,000,000 "
            f"{spread([run['mean_request_bytes'] / 1_000_000 for run in runs])} "
            f"({runs[0]['ingestion_requests']} requests for {runs[0]['sent']} rows)"
        )


def flat() -> None:
    """Wall-clock events/s also counts the stand-ins, which share the two cores and slow down as they
    hold more events and rows; events per CPU second of the connector's process counts it alone."""
    rss, rate, cpu_rate = [], [], []
    for _ in range(REPEATS):
        small = end_to_end_in_a_fresh_process(100_000, 100)
        large = end_to_end_in_a_fresh_process(1_000_000, 100)
        rss.append(large["peak_rss_mb"] / small["peak_rss_mb"])
        rate.append(large["events_per_second"] / small["events_per_second"])
        cpu_rate.append(large["events_per_cpu_second"] / small["events_per_cpu_second"])
    print(
        f"flat: peak RSS at 1M ÷ at 100k {spread(rss)} ({small['peak_rss_mb']} → {large['peak_rss_mb']} MB); "
        f"events/s at 1M ÷ at 100k {spread(rate)}; events per connector CPU second {spread(cpu_rate)}"
    )


def _steady_polling(events_per_second: int, minutes: int, page_delay: float, page_size: int, measured: int) -> list:
    """Live runs once a (simulated) minute against stand-ins in this process; each minute's events
    show up in the API as it passes. The last `measured` runs get `page_delay` on every page.
    Returns (report, wall seconds) of those runs."""
    start = int(time.time()) - minutes * MINUTE
    per_minute = events_per_second * MINUTE
    with (
        PulumiAuditApiStandIn(TOKEN, page_size=page_size) as api,
        LogsIngestionStandIn(DCR, "Custom-PulumiAuditLogs") as sink,
        tempfile.TemporaryDirectory() as scratch,
    ):
        clock = {"now": start}
        collector = standin_collector(api.url, sink.url, memory_state_store(), scratch, wall_clock=lambda: clock["now"])
        collector.state.create_cursor("acme", LIVE, Cursor.starting_at(start - 2 * MINUTE))
        results = []
        for minute in range(minutes):
            api.add_events("acme", simulate_events("acme", start + (minute - 1) * MINUTE, start + minute * MINUTE,
                                                   per_minute, seed=minute))
            clock["now"] = start + minute * MINUTE + MINUTE
            if minute == minutes - measured and page_delay:
                api.faults.add(Fault.delay(page_delay, times=None))
            started = time.perf_counter()
            [report] = run_cycle(collector, ["acme"], 86400, OVERLAP, budget_seconds=600)
            results.append((report, time.perf_counter() - started))
    return results[-measured:]


def reads() -> None:
    ratios = []
    for _ in range(REPEATS):
        steady = _steady_polling(5, 40, 0, 100, measured=20)
        ratios.append(sum(report.fetched for report, _ in steady) / sum(report.sent for report, _ in steady))
    print(f"reads, steady live polling at 5 events/s: events received ÷ new events delivered {spread(ratios)}")


def catch_up() -> None:
    ratios = []
    for _ in range(REPEATS):
        # Live since 13 minutes: the runs after the overlap and the first band are steady.
        steady = _steady_polling(50, 16, PAGE_DELAY, 100, measured=3)
        ratios.append(max(seconds for _, seconds in steady) / MINUTE)
    print(f"catch-up, 50 events/s, pages of 100, 200 ms a page: longest run ÷ 60 s {spread(ratios)}")


FIGURES = {"overlap": overlap, "fill": fill, "flat": flat, "reads": reads, "catch-up": catch_up}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures", nargs="*", help=f"which figures: {', '.join(FIGURES)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    for name in args.figures or FIGURES:
        FIGURES[name]()


if __name__ == "__main__":
    main()
