"""What a row of each table costs in Sentinel ingestion, printed as figures (not asserted).

    python -m benchmarks.row_cost      # also run by scripts/bench.sh

On the benchmark mix (20,000 events of `shared/standins/simulated_events.py`, through the real
transform): billed bytes per audit row by `benchmarks/billed_size.py`, now and in the format
before ExtraFields_s (the whole event in RawEvent_s, as `json.dumps(event, sort_keys=True,
ensure_ascii=False)` wrote it), against the official connector's 15 columns of the same rows;
what each column costs; the same with `user.email` on 10% of the events, as about 10% of real
events carry a field no column holds; bytes per health row; and the monthly ingestion per org at
1 and 5 events/s at the list price below.
"""

from __future__ import annotations

import json
import statistics
import uuid

from benchmarks.bench import bench_events
from benchmarks.billed_size import billed_bytes
from benchmarks.prices import PRICES
from shared import __version__
from shared.catalog import default_catalog
from shared.health import health_rows
from shared.pipeline import CollectionReport
from shared.schema import AUDIT_TABLE, HEALTH_TABLE, Table
from shared.transform import normalize

EVENTS = 20_000
PRICE_PER_GB_USD = PRICES["sentinel_analytics_gb"]
PRICE_SOURCE = "East US list price, read in 2026 (issue 17); 1 GB = 10^9 bytes"
SECONDS_PER_MONTH = 365.25 / 12 * 86_400
RUNS_PER_MONTH = SECONDS_PER_MONTH / 60  # one health row per org per run, with the 1-minute timer
OFFICIAL_TABLE = Table(
    "PulumiAuditLogs_CL (the official connector's 15 columns)", "", "", AUDIT_TABLE.columns[:15]
)


def rows_of(events: list[dict]) -> list[dict]:
    catalog = default_catalog()
    return [normalize("acme", event, catalog).row(1) for event in events]


def old_format(row: dict, event: dict) -> dict:
    """The row as the connector wrote it before ExtraFields_s: the whole event in RawEvent_s."""
    old = {**row, "RawEvent_s": json.dumps(event, sort_keys=True, ensure_ascii=False)}
    del old["ExtraFields_s"]
    return old


def mean_bytes(rows: list[dict], table: Table) -> float:
    return statistics.fmean(billed_bytes(row, table) for row in rows)


def with_email_on_every_tenth(events: list[dict]) -> list[dict]:
    return [
        {**event, "user": {**event["user"], "email": f"{event['user']['githubLogin']}@example.com"}}
        if index % 10 == 0
        else event
        for index, event in enumerate(events)
    ]


def health_row() -> dict:
    """The health row of an ok live run of one org at 5 events/s, on a Function App instance."""
    report = CollectionReport("acme", fetched=300, sent=300, duplicates=1_450, pages=2, lag_seconds=75,
                              watermark=1_790_000_000)
    host = uuid.uuid4().hex + uuid.uuid4().hex  # WEBSITE_INSTANCE_ID is 64 hex digits
    [row] = health_rows([report], run_id=uuid.uuid4().hex, ended_at=1_790_000_075, version=__version__, host=host)
    return row


def monthly(bytes_per_row: float, rows_per_month: float) -> str:
    gb = bytes_per_row * rows_per_month / 1e9
    return f"{rows_per_month / 1e6:5.2f} M rows, {gb:5.2f} GB, ${gb * PRICE_PER_GB_USD:6.2f}"


def main() -> None:
    events = bench_events(EVENTS)
    rows = rows_of(events)
    new = mean_bytes(rows, AUDIT_TABLE)
    old = mean_bytes([old_format(row, event) for row, event in zip(rows, events, strict=True)], AUDIT_TABLE)
    official = mean_bytes(rows, OFFICIAL_TABLE)
    with_extras = rows_of(with_email_on_every_tenth(events))
    health = billed_bytes(health_row(), HEALTH_TABLE)

    print(f"billed bytes per {AUDIT_TABLE.name} row, {EVENTS:,} simulated events through the transform:")
    print(f"  now (ExtraFields_s)           {new:7.1f}   {new / official:.2f}x the official 15 columns")
    print(f"  before (whole RawEvent_s)     {old:7.1f}   {old / official:.2f}x")
    print(f"  the official 15 columns       {official:7.1f}")
    print(f"  rows with ExtraFields_s set   {sum(1 for row in rows if row['ExtraFields_s']) / len(rows):7.1%}")
    extras = mean_bytes(with_extras, AUDIT_TABLE)
    print(f"  now, user.email on 10% of the events: {extras:.1f} ({extras / official:.2f}x)")
    print("  per column (mean bytes):")
    for column in AUDIT_TABLE.columns:
        single = Table("", "", "", (column,))
        print(f"    {column.name:<20} {mean_bytes(rows, single):6.1f}")
    print(f"billed bytes per {HEALTH_TABLE.name} row (an ok live run): {health}")
    print(f"monthly Sentinel ingestion per org at ${PRICE_PER_GB_USD:.2f}/GB ({PRICE_SOURCE}):")
    for rate in (1, 5):
        print(f"  {rate} event/s, audit rows now:    {monthly(new, rate * SECONDS_PER_MONTH)}")
        print(f"  {rate} event/s, audit rows before: {monthly(old, rate * SECONDS_PER_MONTH)}")
        print(f"  {rate} event/s, official 15:       {monthly(official, rate * SECONDS_PER_MONTH)}")
    print(f"  health rows (1-minute timer):    {monthly(health, RUNS_PER_MONTH)}")


if __name__ == "__main__":
    main()
