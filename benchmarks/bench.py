"""Throughput and memory of the connector, printed as figures (not asserted).

    scripts/bench.sh            # all figures
    python -m benchmarks.bench --backlog 20000 --page-size 1000   # one end-to-end run (JSON out)

CPU figures are ratios to a floor measured in the same run: `json.dumps` of ~1 MB batches of
rows plus gzip at the SDK's level (zlib's default), on one core. Each figure is measured in 3
repeats and printed as min / median / max.

- The transform + encode + gzip path: fetched events to gzipped request bodies, as the pipeline
  does it per page, without I/O.
- End to end: the real Pulumi client and LogsIngestionClient against the stand-ins on loopback
  (served from a separate process, so the measured process holds only the connector), with an
  in-memory delivery state.
- Transform only, after ÷ before: `normalize` + dedup + `row` of this tree against the same of
  `BASELINE_COMMIT` (read from git), on the same events in the same process.

Peak RSS is the connector process's own; it should stay flat as the backlog grows, because the
pipeline holds one page at a time.

Measured on the 2-core development machine, medians of 3:

- transform only, new events: 52,400 before, 77,700 after (1.48x); events read again, which the
  ledger drops: 58,600 before, 114,700 after (1.97x), as RawEvent_s is now written only for rows;
- transform + encode + gzip ÷ floor (97,100 rows/s): 0.50 at pages of 100, 0.49 at 1,000;
- end to end: 13,900 events/s at pages of 100 and 18,900 at 1,000 (÷ floor 0.16 and 0.20), from
  5,600 and 13,200 before (about 0.06 and 0.14).

Of the 11.8 us a new event took then, the standard library's JSON encoder spent 2.8 us on
RawEvent_s, which new rows no longer fill (ExtraFields_s holds only what no column does), and
2.0 us on the identity behind EventId_s, which must stay byte-identical and so stays with
json.dumps. orjson writes the row body: 0.6 us, where json.dumps took 5 us, three times per row.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from shared.catalog import default_catalog
from shared.cursor import Cursor, WindowPlan
from shared.dead_letter import FileDeadLetterStore
from shared.ingestion_sink import batches, request_body
from shared.pipeline import Collector, run_cycle
from shared.ports import StateStore
from shared.pulumi_source import PulumiAuditSource
from shared.settings import Secret, load_settings
from shared.standins import Fault, LogsIngestionStandIn, PulumiAuditApiStandIn, simulate_events
from shared.state_store import memory_state_store
from shared.token_source import EnvironmentToken
from shared.transform import encode_row, normalize
from shared.wiring import ingestion_sink

TOKEN = "pul-bench-token"
DCR = "dcr-" + "be7c" * 8
REPO = Path(__file__).resolve().parent.parent
# The last commit before the transform was profiled and sped up.
BASELINE_COMMIT = "2562ce1dac6fa119468cacf52bd11e2524a1ddcb"
REPEATS = 3
CPU_EVENTS = 20_000
END_TO_END_EVENTS = 20_000
FLOOR_BATCH_BYTES = 1_000_000


class _Credential:
    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("bench", int(time.time()) + 3600)


def standin_collector(
    api_url: str,
    ingestion_url: str,
    state: StateStore,
    scratch: str,
    holder: str = "bench",
    wall_clock: Callable[[], float] = time.time,
) -> Collector:
    """The connector's Collector for org acme, with the real Pulumi client and LogsIngestionClient
    wired by the real settings to the stand-ins at `api_url` and `ingestion_url`, so every benchmark
    measures the same code path; dead letters go to a file in the folder `scratch`."""
    environ = {
        "PULUMI_ORGS": "acme",
        "PULUMI_ACCESS_TOKEN": TOKEN,
        "PULUMI_API_URL": api_url,
        "LOGS_INGESTION_ENDPOINT": ingestion_url,
        "DCR_IMMUTABLE_ID": DCR,
    }
    settings = load_settings(environ, parts=frozenset({"source", "sink"}))
    return Collector(
        source=PulumiAuditSource(api_url, EnvironmentToken(Secret(TOKEN))),
        sink=ingestion_sink(settings.sink, _Credential()),
        state=state,
        dead_letters=FileDeadLetterStore(Path(scratch) / "dead.json"),
        catalog=default_catalog(),
        holder=holder,
        wall_clock=wall_clock,
    )


# -- the floor and the CPU path ------------------------------------------------------------------


def bench_events(count: int) -> list[dict]:
    return simulate_events("acme", 1_790_000_000, 1_790_086_400, count, seed=4)


def floor_rows_per_second(rows: Sequence[dict]) -> float:
    """`json.dumps` of ~1 MB batches plus gzip at the SDK's level, on one core."""
    per_batch = max(1, FLOOR_BATCH_BYTES // len(json.dumps(rows[0])))
    started = time.perf_counter()
    for index in range(0, len(rows), per_batch):
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        compressor.compress(json.dumps(rows[index : index + per_batch]).encode("utf-8"))
        compressor.flush()
    return len(rows) / (time.perf_counter() - started)


def _open_cursor() -> Cursor:
    cursor = Cursor.starting_at(1_789_990_000)
    cursor.open_window(WindowPlan(1_790_100_000, 2 * 86400, 0, 0, 1_790_100_000))
    return cursor


def transform_events_per_second(normalize_event: Callable, events: Sequence[dict]) -> tuple[float, float]:
    """The pure part (identity, dedup ledger, row mapping, no I/O), in events/s: first for new
    events, then for the same events read again, as a window's overlap is, which the ledger drops."""
    catalog = default_catalog()
    cursor = _open_cursor()
    rates = []
    for _ in ("new", "read again"):
        cursor.restart_window()
        started = time.perf_counter()
        for event in events:
            normalized = normalize_event("acme", event, catalog)
            occurrence = cursor.admit(normalized.identity, normalized.timestamp)
            if occurrence is not None:
                normalized.row(occurrence)
        rates.append(len(events) / (time.perf_counter() - started))
    return rates[0], rates[1]


def cpu_path_rows_per_second(events: Sequence[dict], page_size: int) -> float:
    """Events to gzipped request bodies, page by page as the pipeline sends them."""
    catalog = default_catalog()
    cursor = _open_cursor()
    started = time.perf_counter()
    for start in range(0, len(events), page_size):
        rows = []
        for event in events[start : start + page_size]:
            normalized = normalize("acme", event, catalog)
            rows.append(normalized.row(cursor.admit(normalized.identity, normalized.timestamp)))
        for batch in batches([encode_row(row) for row in rows]):
            request_body(batch)
    return len(events) / (time.perf_counter() - started)


def baseline_transform() -> ModuleType | None:
    """shared/transform.py as it was at BASELINE_COMMIT, or None without the git history."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:shared/transform.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = sys.modules["baseline_transform"] = ModuleType("baseline_transform")  # dataclasses look it up
    exec(compile(source, f"{BASELINE_COMMIT[:7]}:shared/transform.py", "exec"), module.__dict__)
    return module


def spread(values: Sequence[float], digits: int = 2) -> str:
    return " / ".join(f"{value:.{digits}f}" for value in (min(values), statistics.median(values), max(values)))


# -- end to end ----------------------------------------------------------------------------------


def _serve(backlog: int, page_size: int, now: int, delays: tuple[float, float], connection) -> None:
    """Child process: the stand-ins, holding the simulated backlog and the received rows. `delays`:
    seconds each Pulumi page and each upload takes, on top of the work."""
    with (
        PulumiAuditApiStandIn(TOKEN, page_size=page_size) as api,
        LogsIngestionStandIn(DCR, "Custom-PulumiAuditLogs") as sink,
    ):
        api.add_events("acme", simulate_events("acme", now - 86400 + 60, now - 120, backlog, seed=3))
        page_delay, upload_delay = delays
        if page_delay:
            api.faults.add(Fault.delay(page_delay, times=None))
        if upload_delay:
            sink.faults.add(Fault.delay(upload_delay, times=None))
        connection.send((api.url, sink.url))
        connection.recv()  # run finished
        sizes = [request.uncompressed_size for request in sink.requests if request.uncompressed_size]
        connection.send((len(sink.rows), len(sink.requests), sizes))


def _cpu_seconds() -> float:
    """CPU time of this process, every thread: the connector's alone, as the stand-ins run in a child."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(call: Callable, busy: dict[str, float], kind: str) -> Callable:
    """`call`, adding the seconds each call takes to `busy[kind]` (one thread makes every such call)."""

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            busy[kind] += time.perf_counter() - started

    return timed


def end_to_end(backlog: int, page_size: int = 100, page_delay: float = 0, upload_delay: float = 0) -> dict:
    now = int(time.time())
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(
        target=_serve, args=(backlog, page_size, now, (page_delay, upload_delay), child), daemon=True
    )
    server.start()
    api_url, ingestion_url = parent.recv()
    with tempfile.TemporaryDirectory() as scratch:
        collector = standin_collector(api_url, ingestion_url, memory_state_store(), scratch)
        busy = {"fetch": 0.0, "upload": 0.0}
        collector.source.fetch_page = _timed(collector.source.fetch_page, busy, "fetch")
        collector.sink.send = _timed(collector.sink.send, busy, "upload")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        [report] = run_cycle(collector, ["acme"], 86400, 600, budget_seconds=3600)
        seconds = time.perf_counter() - started
        cpu_seconds = _cpu_seconds() - cpu_before
    parent.send("done")
    rows, requests, sizes = parent.recv()
    server.join(5)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    floor_rows = [normalize("acme", event, default_catalog()).row(1) for event in bench_events(10_000)]
    return {
        "backlog_events": backlog,
        "page_size": page_size,
        "sent": report.sent,
        "rows_received": rows,
        "ingestion_requests": requests,
        "mean_request_bytes": round(sum(sizes) / max(1, len(sizes))),
        "pages": report.pages,
        "seconds": round(seconds, 2),
        "events_per_second": round(report.sent / seconds),
        "connector_cpu_seconds": round(cpu_seconds, 2),
        "fetch_seconds": round(busy["fetch"], 2),
        "upload_seconds": round(busy["upload"], 2),
        "events_per_cpu_second": round(report.sent / cpu_seconds),
        "floor_rows_per_second": round(floor_rows_per_second(floor_rows)),
        "peak_rss_mb": round(peak_rss / 1024, 1),
        "rss_before_run_mb": round(rss_before / 1024, 1),
    }


def end_to_end_in_a_fresh_process(backlog: int, page_size: int, page_delay: float = 0, upload_delay: float = 0) -> dict:
    result = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.bench", "--backlog", str(backlog), "--page-size", str(page_size),
            "--page-delay", str(page_delay), "--upload-delay", str(upload_delay),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


# -- the report ----------------------------------------------------------------------------------


def print_cpu_figures() -> None:
    events = bench_events(CPU_EVENTS)
    rows = [normalize("acme", event, default_catalog()).row(1) for event in events]
    baseline = baseline_transform()
    floors, paths, after, before = [], {100: [], 1000: []}, [], []
    for _ in range(REPEATS):
        floor = floor_rows_per_second(rows)
        floors.append(floor)
        for page_size, ratios in paths.items():
            ratios.append(cpu_path_rows_per_second(events, page_size) / floor)
        after.append(transform_events_per_second(normalize, events))
        if baseline:
            before.append(transform_events_per_second(baseline.normalize, events))
    print(f"json+gzip floor (1 MB batches, gzip level 6, one core), rows/s: {spread(floors, 0)}")
    for page_size, ratios in paths.items():
        print(f"transform+encode+gzip ÷ floor, pages of {page_size}: {spread(ratios)}")
    for index, kind in enumerate(("new events", "events read again (repeats)")):
        print(f"transform only, {kind}, events/s: {spread([rates[index] for rates in after], 0)}")
        if not baseline:
            print(f"  before: n/a (git history with {BASELINE_COMMIT[:7]} not available)")
            continue
        print(f"  before ({BASELINE_COMMIT[:7]}): {spread([rates[index] for rates in before], 0)}")
        print(f"  after ÷ before: {spread([new[index] / old[index] for new, old in zip(after, before, strict=True)])}")


def print_end_to_end_figures() -> None:
    for page_size in (100, 1000):
        runs = [end_to_end_in_a_fresh_process(END_TO_END_EVENTS, page_size) for _ in range(REPEATS)]
        rates = [run["events_per_second"] for run in runs]
        ratios = [run["events_per_second"] / run["floor_rows_per_second"] for run in runs]
        print(
            f"end to end, pages of {page_size}: events/s {spread(rates, 0)}; ÷ floor {spread(ratios)}; "
            f"requests {runs[0]['ingestion_requests']} for {runs[0]['sent']} rows"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, help="one end-to-end run with this many events (JSON out)")
    parser.add_argument("--page-size", type=int, default=100, help="events per Pulumi API page (default 100)")
    parser.add_argument("--page-delay", type=float, default=0, help="seconds each Pulumi page takes (default 0)")
    parser.add_argument("--upload-delay", type=float, default=0, help="seconds each upload takes (default 0)")
    args = parser.parse_args()
    if args.backlog:
        print(json.dumps(end_to_end(args.backlog, args.page_size, args.page_delay, args.upload_delay)))
        return
    # The fresh processes first: a child's peak RSS starts at its parent's RSS when it is forked.
    print(f"end to end, one org, {END_TO_END_EVENTS} events, {REPEATS} runs each in a fresh process:")
    print_end_to_end_figures()
    print("memory, end to end, one day of backlog, pages of 100 (each in a fresh process):")
    for backlog in (2_000, 10_000, 40_000):
        print("  " + json.dumps(end_to_end_in_a_fresh_process(backlog, 100)))
    print(f"CPU, {CPU_EVENTS} simulated events, {REPEATS} repeats (min / median / max):")
    print_cpu_figures()


if __name__ == "__main__":
    main()
