"""Throughput and memory of the connector, printed as figures (not asserted).

    scripts/bench.sh            # all figures
    python -m benchmarks.bench --backlog 20000   # one end-to-end run

End to end: the real Pulumi client and LogsIngestionClient against the stand-ins on loopback
(served from a separate process, so the measured process holds only the connector), with an
in-memory delivery state. Peak RSS is the connector process's own; it should stay flat as the
backlog grows, because the pipeline holds one page at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.catalog import default_catalog
from shared.cursor import Cursor
from shared.dead_letter import FileDeadLetterStore
from shared.pipeline import Collector, run_cycle
from shared.pulumi_source import PulumiAuditSource
from shared.settings import Secret, load_settings
from shared.standins import LogsIngestionStandIn, PulumiAuditApiStandIn, simulate_events
from shared.state_store import memory_state_store
from shared.token_source import EnvironmentToken
from shared.transform import normalize
from shared.wiring import ingestion_sink

TOKEN = "pul-bench-token"
DCR = "dcr-" + "be7c" * 8


class _Credential:
    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("bench", int(time.time()) + 3600)


def _serve(backlog: int, now: int, connection) -> None:
    """Child process: the stand-ins, holding the simulated backlog and the received rows."""
    with (
        PulumiAuditApiStandIn(TOKEN, page_size=100) as api,
        LogsIngestionStandIn(DCR, "Custom-PulumiAuditLogs") as sink,
    ):
        api.add_events("acme", simulate_events("acme", now - 86400 + 60, now - 120, backlog, seed=3))
        connection.send((api.url, sink.url))
        connection.recv()  # run finished
        connection.send((len(sink.rows), len(sink.requests)))


def end_to_end(backlog: int) -> dict:
    now = int(time.time())
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(backlog, now, child), daemon=True)
    server.start()
    api_url, ingestion_url = parent.recv()
    environ = {
        "PULUMI_ORGS": "acme",
        "PULUMI_ACCESS_TOKEN": TOKEN,
        "PULUMI_API_URL": api_url,
        "LOGS_INGESTION_ENDPOINT": ingestion_url,
        "DCR_IMMUTABLE_ID": DCR,
    }
    settings = load_settings(environ, parts=frozenset({"source", "sink"}))
    with tempfile.TemporaryDirectory() as state:
        collector = Collector(
            source=PulumiAuditSource(api_url, EnvironmentToken(Secret(TOKEN))),
            sink=ingestion_sink(settings.sink, _Credential()),
            state=memory_state_store(),
            dead_letters=FileDeadLetterStore(Path(state) / "dead.json"),
            catalog=default_catalog(),
            holder="bench",
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        [report] = run_cycle(collector, ["acme"], 86400, 600, budget_seconds=3600)
        seconds = time.perf_counter() - started
    parent.send("done")
    rows, requests = parent.recv()
    server.join(5)
    return {
        "backlog_events": backlog,
        "sent": report.sent,
        "rows_received": rows,
        "ingestion_requests": requests,
        "pages": report.pages,
        "seconds": round(seconds, 2),
        "events_per_second": round(report.sent / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_run_mb": round(rss_before / 1024, 1),
    }


def transform_only(count: int) -> dict:
    """The pure part: digest, dedup ledger and row mapping, no I/O."""
    now = int(time.time())
    events = simulate_events("acme", now - 86400, now, count, seed=4)
    catalog = default_catalog()
    cursor = Cursor.starting_at(now - 86400)
    cursor.open_window(now + 1, 0, 2 * 86400)
    started = time.perf_counter()
    for event in events:
        normalized = normalize("acme", event, catalog)
        normalized.row(cursor.admit(normalized.identity, normalized.timestamp))
    seconds = time.perf_counter() - started
    return {"events": count, "seconds": round(seconds, 3), "events_per_second": round(count / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, help="one end-to-end run with this many events (JSON out)")
    args = parser.parse_args()
    if args.backlog:
        print(json.dumps(end_to_end(args.backlog)))
        return
    print("transform + dedup (pure):", json.dumps(transform_only(20_000)))
    print("end to end, one org, one day of backlog (each in a fresh process):")
    for backlog in (2_000, 10_000, 40_000):
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench", "--backlog", str(backlog)],
            capture_output=True,
            text=True,
            check=True,
        )
        print("  " + result.stdout.strip())


if __name__ == "__main__":
    main()
