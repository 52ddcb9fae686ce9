"""What the connector costs a month, computed from figures measured on the stand-ins.

    python -m benchmarks.cost            # also run by scripts/bench.sh; prints docs/COST.md's tables

Measured here, each in 3 repeats (medians used), with the real connector code:

- a steady live run of one org at 5 events/s, a run a minute, pages of 100 answered 200 ms late
  (`benchmarks.parallel.steady_run`: the real Pulumi client and LogsIngestionClient against the
  stand-ins in another process): wall seconds, CPU seconds and Table Storage operations per run;
- the rows the connector sends for that load (the Logs Ingestion stand-in in this process keeps
  them): billed bytes per event by `benchmarks.billed_size.billed_bytes`, and the health row of a
  run; and the org's stored delivery state after it;
- a backfill of 7 days in 4 lanes: Table Storage operations per event;
- the peak RSS of the connector process over a day of backlog (40,000 events), in a fresh process,
  and of a fresh process that only imports `function_app`.

Then, for 1, 10 and 100 orgs at 5 events/s and for one 30-day backfill of a million events, the
monthly executions, GB-seconds at each Flex instance size, Table transactions and storage, Logs
Ingestion volume, the Flex free grant and the bill at the list prices in PRICES. A change to the
row format or the pipeline changes the measured figures, so rerunning this updates every number.
"""

from __future__ import annotations

import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench import DCR, REPEATS, TOKEN, end_to_end_in_a_fresh_process, standin_collector
from benchmarks.billed_size import billed_bytes
from benchmarks.delivery_state import wire_bytes
from benchmarks.parallel import LANES, StandIns, collector, steady_run
from benchmarks.prices import PRICES, PRICES_AS_OF
from shared.health import health_rows
from shared.pipeline import collect_at_once, plan_backfill_lanes, run_cycle
from shared.schema import AUDIT_TABLE, HEALTH_TABLE
from shared.settings import SETTING_SPECS
from shared.standins import LogsIngestionStandIn, PulumiAuditApiStandIn, simulate_events
from shared.state_store import MemoryEntities, TableStateStore
from shared.token_source import CACHE_SECONDS

REPO = Path(__file__).resolve().parent.parent
MONTH_MINUTES = 30 * 24 * 60
EVENTS_PER_SECOND = 5
ORG_COUNTS = (1, 10, 100)
BACKFILL_MONTH_EVENTS = 1_000_000
BACKFILL_SAMPLE_EVENTS = 7_000
DAY = 86400
OVERLAP_SECONDS = 600
_PARALLEL_SPEC = next(spec for spec in SETTING_SPECS if spec.name == "MAX_PARALLEL_ORGS")
MAX_PARALLEL_ORGS = int(_PARALLEL_SPEC.default)
MAX_PARALLEL_ORGS_LIMIT = _PARALLEL_SPEC.bounds[1]
TIMER_PERIOD_SECONDS = 60
# Flex Consumption instance sizes (Learn, flex-consumption-plan "Instance memory") and their CPU cores.
INSTANCE_CORES = {512: 0.25, 2048: 1.0, 4096: 2.0}
CHOSEN_INSTANCE_MB = 512
# An execution is billed for at least this long (Learn, functions-consumption-costs, Flex Consumption).
MINIMUM_BILLED_SECONDS = 1.0
# Health rows name the instance (WEBSITE_INSTANCE_ID, 64 hex characters on App Service).
HOST_NAME = "f" * 64


@dataclass(frozen=True)
class Measured:
    run_seconds: float  # one org's live run, wall
    run_cpu_seconds: float
    table_operations_per_run: float
    events_read_per_run: int
    events_sent_per_run: int
    bytes_per_event: float  # billed, as sent
    health_row_bytes: float  # billed, one per org and run
    stored_state_bytes: int  # one org's delivery state, steady
    backfill_table_operations_per_event: float
    backfill_pages_per_second: float
    peak_rss_mb: float
    import_rss_mb: float


# -- measuring -------------------------------------------------------------------------------------


def live_runs() -> tuple[float, float, float, int, int]:
    runs = [steady_run() for _ in range(REPEATS)]
    return (
        statistics.median(run.seconds for run in runs),
        statistics.median(run.cpu_seconds for run in runs),
        statistics.median(sum(run.table_operations.values()) for run in runs),
        runs[0].fetched,
        runs[0].sent,
    )


def sent_rows() -> tuple[float, float, int]:
    """Billed bytes per audit row and per health row, as the connector sends them for a steady org,
    and the org's stored delivery state after two runs a minute apart."""
    now = int(time.time())
    per_minute = EVENTS_PER_SECOND * 60
    with (
        PulumiAuditApiStandIn(TOKEN, page_size=100) as api,
        LogsIngestionStandIn(DCR, AUDIT_TABLE.stream) as sink,
        tempfile.TemporaryDirectory() as scratch,
    ):
        api.add_events("acme", simulate_events("acme", now - 3600, now + 60, per_minute * 61, seed=5))
        entities = MemoryEntities()
        clock = {"now": now}
        runner = standin_collector(
            api.url, sink.url, TableStateStore(entities), scratch, holder="cost", wall_clock=lambda: clock["now"]
        )
        run_cycle(runner, ["acme"], 3600, OVERLAP_SECONDS, 3600)
        clock["now"] += 60
        reports = run_cycle(runner, ["acme"], 3600, OVERLAP_SECONDS, 3600)
        rows = sink.rows
    audit = statistics.fmean(billed_bytes(row, AUDIT_TABLE) for row in rows)
    health = health_rows(reports, run_id="0" * 32, ended_at=clock["now"], version="1.0.0", host=HOST_NAME)
    health_bytes = statistics.fmean(billed_bytes(row, HEALTH_TABLE) for row in health)
    stored = sum(wire_bytes(entity) for _, entity, _ in entities.prefixed("acme", ""))
    return audit, health_bytes, stored


def backfill_sample() -> tuple[float, float]:
    """Table operations per event and Pulumi pages/s of a 7-day backfill in LANES lanes."""
    until = int(time.time()) - DAY
    since = until - 7 * DAY
    standins = StandIns({"acme": (since, until - 1, BACKFILL_SAMPLE_EVENTS)})
    try:
        with tempfile.TemporaryDirectory() as state_dir:
            runner, entities = collector(standins, state_dir)
            now = int(time.time())
            _, collections = plan_backfill_lanes(runner.state, "acme", since, until, now, DAY, False, LANES)
            started = time.perf_counter()
            reports = collect_at_once(runner, collections, LANES)
            seconds = time.perf_counter() - started
    finally:
        standins.close()
    sent = sum(report.sent for report in reports)
    if sent != BACKFILL_SAMPLE_EVENTS:
        raise SystemExit(f"the backfill sample sent {sent} of {BACKFILL_SAMPLE_EVENTS} events")
    return sum(entities.operations.values()) / sent, sum(report.pages for report in reports) / seconds


def import_rss_mb() -> float:
    """Peak RSS (VmHWM, which starts afresh at exec) of a process that imports the Function App and
    its SDKs, and nothing else."""
    code = (
        "import function_app\n"
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return int(result.stdout.strip()) / 1024


def measure() -> Measured:
    # The fresh processes first: a child's ru_maxrss starts at its parent's peak when it is forked.
    rss = max(end_to_end_in_a_fresh_process(40_000, 100)["peak_rss_mb"] for _ in range(REPEATS))
    imported = max(import_rss_mb() for _ in range(REPEATS))
    seconds, cpu, operations, read, sent = live_runs()
    audit_bytes, health_bytes, stored = sent_rows()
    backfill_operations, backfill_pages = backfill_sample()
    return Measured(
        run_seconds=seconds,
        run_cpu_seconds=cpu,
        table_operations_per_run=operations,
        events_read_per_run=read,
        events_sent_per_run=sent,
        bytes_per_event=audit_bytes,
        health_row_bytes=health_bytes,
        stored_state_bytes=stored,
        backfill_table_operations_per_event=backfill_operations,
        backfill_pages_per_second=backfill_pages,
        peak_rss_mb=rss,
        import_rss_mb=imported,
    )


# -- the monthly model -----------------------------------------------------------------------------


def execution_seconds(measured: Measured, orgs: int, instance_mb: int, parallel_orgs: int) -> float:
    """One timer execution: the orgs in rounds of `parallel_orgs`, each round one org's run, or the
    CPU of all orgs on the instance's cores, whichever is longer. The measured wall includes the CPU
    at about one core; a smaller instance stretches that part."""
    cores = INSTANCE_CORES[instance_mb]
    per_round = measured.run_seconds + measured.run_cpu_seconds * (1 / cores - 1)
    rounds = math.ceil(orgs / parallel_orgs) * per_round
    cpu_bound = orgs * measured.run_cpu_seconds / min(cores, 1.0)
    return max(MINIMUM_BILLED_SECONDS, rounds, cpu_bound)


def parallel_orgs_needed(measured: Measured, orgs: int) -> int:
    """MAX_PARALLEL_ORGS: the default, or the maximum (32) where the default's run outlasts the
    one-minute timer period at the chosen instance size."""
    fits = execution_seconds(measured, orgs, CHOSEN_INSTANCE_MB, MAX_PARALLEL_ORGS) <= TIMER_PERIOD_SECONDS
    return MAX_PARALLEL_ORGS if fits else MAX_PARALLEL_ORGS_LIMIT


def flex_bill(executions: float, gb_seconds: float) -> float:
    billed_gb_seconds = max(0.0, gb_seconds - PRICES["flex_free_gb_seconds"])
    billed_executions = max(0.0, executions - PRICES["flex_free_executions"])
    return billed_gb_seconds * PRICES["flex_gb_second"] + billed_executions / 1e6 * PRICES["flex_million_executions"]


@dataclass(frozen=True)
class Month:
    label: str
    executions: float
    execution_seconds: dict[int, float]  # one execution's, by instance size
    gb_seconds: dict[int, float]
    table_transactions: float
    table_storage_gb: float
    ingestion_gb: float
    key_vault_operations: float

    def bill(self, instance_mb: int) -> dict[str, float]:
        lines = {
            "Functions (Flex)": flex_bill(self.executions, self.gb_seconds[instance_mb]),
            "Logs Ingestion (Sentinel)": self.ingestion_gb * PRICES["sentinel_analytics_gb"],
            "Table transactions": self.table_transactions / 1e4 * PRICES["table_10k_transactions"],
            "Table storage": self.table_storage_gb * PRICES["table_gb_month"],
            "Key Vault reads": self.key_vault_operations / 1e4 * PRICES["key_vault_10k_operations"],
        }
        return {**lines, "Total": sum(lines.values())}


def live_month(measured: Measured, orgs: int) -> Month:
    events = orgs * EVENTS_PER_SECOND * 60 * MONTH_MINUTES
    health_rows_month = orgs * MONTH_MINUTES
    parallel = parallel_orgs_needed(measured, orgs)
    seconds = {size: execution_seconds(measured, orgs, size, parallel) for size in INSTANCE_CORES}
    return Month(
        label=f"{orgs} org{'s' if orgs > 1 else ''} at {EVENTS_PER_SECOND} events/s, MAX_PARALLEL_ORGS {parallel}",
        executions=MONTH_MINUTES,
        execution_seconds=seconds,
        gb_seconds={size: MONTH_MINUTES * seconds[size] * size / 1024 for size in INSTANCE_CORES},
        table_transactions=orgs * measured.table_operations_per_run * MONTH_MINUTES,
        table_storage_gb=orgs * measured.stored_state_bytes / 1e9,
        ingestion_gb=(events * measured.bytes_per_event + health_rows_month * measured.health_row_bytes) / 1e9,
        key_vault_operations=orgs * MONTH_MINUTES * 60 / CACHE_SECONDS,
    )


def backfill_month(measured: Measured) -> Month:
    """A 30-day backfill of a million events, run from the command line (`python -m shared backfill`),
    so no Function execution: its Table operations and its rows."""
    return Month(
        label=f"one 30-day backfill of {BACKFILL_MONTH_EVENTS:,} events",
        executions=0,
        execution_seconds=dict.fromkeys(INSTANCE_CORES, 0.0),
        gb_seconds=dict.fromkeys(INSTANCE_CORES, 0.0),
        table_transactions=BACKFILL_MONTH_EVENTS * measured.backfill_table_operations_per_event,
        table_storage_gb=0.0,
        ingestion_gb=BACKFILL_MONTH_EVENTS * measured.bytes_per_event / 1e9,
        key_vault_operations=0,
    )


def telemetry_daily_cap_gb() -> float:
    """The default of main.bicep's telemetryDailyCapGb."""
    text = (REPO / "infra" / "main.bicep").read_text()
    return float(re.search(r"^param telemetryDailyCapGb string = '([0-9.]+)'", text, re.M).group(1))


# -- the report ------------------------------------------------------------------------------------


def print_report(measured: Measured) -> None:
    print(f"Measured ({REPEATS} repeats, medians; `python -m benchmarks.cost`):")
    print()
    print("| Figure | Value |")
    print("|---|---|")
    print(f"| One org's live run, 5 events/s, pages of 100 at 200 ms | {measured.run_seconds:.2f} s wall, "
          f"{measured.run_cpu_seconds:.2f} s CPU, {measured.events_read_per_run:,} events read for "
          f"{measured.events_sent_per_run:,} new |")
    print(f"| Table Storage operations per org and run | {measured.table_operations_per_run:.0f} |")
    print(f"| Billed bytes per event as sent (PulumiAuditLogs_CL) | {measured.bytes_per_event:,.0f} |")
    print(f"| Billed bytes per health row (one per org and run) | {measured.health_row_bytes:,.0f} |")
    print(f"| One org's stored delivery state, steady | {measured.stored_state_bytes / 1e3:,.0f} KB |")
    per_event = measured.backfill_table_operations_per_event
    print(f"| Table operations per backfilled event ({LANES} lanes) | {per_event:.3f} |")
    print(f"| Backfill pace ({LANES} lanes, 200 ms a page) | {measured.backfill_pages_per_second:.1f} Pulumi pages/s |")
    print(f"| Peak RSS, connector process, a day of backlog (40,000 events) | {measured.peak_rss_mb:.0f} MB |")
    print(f"| Peak RSS, a process importing function_app only | {measured.import_rss_mb:.0f} MB |")
    print()
    months = [live_month(measured, orgs) for orgs in ORG_COUNTS] + [backfill_month(measured)]
    print("Monthly volumes (30 days, a run a minute):")
    print()
    sizes = sorted(INSTANCE_CORES)
    print("| Scenario | Executions | Seconds each at 512 / 2048 MB | "
          + " | ".join(f"GB-s at {size} MB" for size in sizes)
          + " | Table transactions | Table storage | Logs Ingestion |")
    print("|---" * (6 + len(sizes)) + "|")
    for month in months:
        each = " / ".join(f"{month.execution_seconds[size]:.1f}" for size in (512, 2048))
        print(f"| {month.label} | {month.executions:,.0f} | {each} | "
              + " | ".join(f"{month.gb_seconds[size]:,.0f}" for size in sizes)
              + f" | {month.table_transactions:,.0f} | {month.table_storage_gb * 1e3:,.1f} MB"
              + f" | {month.ingestion_gb:,.2f} GB |")
    print()
    print(f"Flex free grant a month, per subscription: {PRICES['flex_free_gb_seconds']:,} GB-s and "
          f"{PRICES['flex_free_executions']:,} executions (on-demand only).")
    cap = telemetry_daily_cap_gb()
    print(f"Application Insights telemetry: at most {cap * 30:.1f} GB a month (the {cap} GB daily cap of its own "
          f"workspace), at most {cap * 30 * PRICES['log_analytics_gb']:.2f} USD, less the free 5 GB a month of "
          "Log Analytics ingestion per billing account.")
    print()
    for size in (CHOSEN_INSTANCE_MB, 2048):
        chosen = " (the default)" if size == CHOSEN_INSTANCE_MB else ""
        print(f"Monthly bill, USD, instance {size} MB{chosen}, {PRICES_AS_OF}:")
        print()
        lines = list(months[0].bill(size))
        print("| Scenario | " + " | ".join(lines) + " |")
        print("|---" * (1 + len(lines)) + "|")
        for month in months:
            bill = month.bill(size)
            print(f"| {month.label} | " + " | ".join(f"{bill[line]:,.2f}" for line in lines) + " |")
        print()


def main() -> None:
    measured = measure()
    print_report(measured)


if __name__ == "__main__":
    main()
