"""`python -m shared demo`: the whole data path on this machine, no Azure or Pulumi account.

A simulator of the Pulumi audit API (several orgs, mixed Cloud and ESC events, paging,
one transient 503) and a Logs Ingestion stand-in (which enforces the 1 MB limit and the
schema of both streams, events and health rows, and answers one 429) run on 127.0.0.1.
The real Pulumi client and the real LogsIngestionClient talk to them. The delivery state
goes to Table Storage when CHECKPOINT_CONNECTION_STRING or CHECKPOINT_TABLE_ENDPOINT is
set, else it stays in memory. With --vault, each org's token comes from a local Key Vault
stand-in (shared/demo_vault.py). The health rows of both runs are shown at the end.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from azure.core.credentials import AccessToken

from shared.catalog import default_catalog
from shared.dead_letter import FileDeadLetterStore
from shared.demo_vault import DemoVault
from shared.pipeline import Collector, run_cycle
from shared.pulumi_source import PulumiAuditSource
from shared.schema import AUDIT_TABLE, HEALTH_TABLE
from shared.settings import load_settings
from shared.standins import Fault, LogsIngestionStandIn, PulumiAuditApiStandIn, simulate_events
from shared.state_store import memory_state_store
from shared.token_source import EnvironmentToken
from shared.wiring import (
    HealthReporter,
    holder_process_ended,
    ingestion_sinks,
    run_holder,
    run_host,
    table_stores,
)

DEMO_ORGS = ("acme", "acme-labs", "globex")
DEMO_TOKEN = "pul-demo-token"
DEMO_DCR = "dcr-" + "de70" * 8
EVENTS_PER_ORG = 300
LOOKBACK_SECONDS = 86400


class _DemoCredential:
    """Stands in for the managed identity: the ingestion stand-in accepts any bearer token."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("demo-bearer-token", int(time.time()) + 3600)


def run_demo(state_dir: str, vault: bool = False) -> int:
    now = int(time.time())
    with (
        PulumiAuditApiStandIn(DEMO_TOKEN, page_size=50, seed=1) as pulumi_api,
        LogsIngestionStandIn(
            DEMO_DCR, AUDIT_TABLE.stream, AUDIT_TABLE.columns, streams={HEALTH_TABLE.stream: HEALTH_TABLE.columns}
        ) as ingestion,
        ExitStack() as stack,
    ):
        backlog = {
            org: simulate_events(org, now - LOOKBACK_SECONDS + 60, now - 120, EVENTS_PER_ORG, seed=index)
            for index, org in enumerate(DEMO_ORGS)
        }
        for org, events in backlog.items():
            pulumi_api.add_events(org, events)
        pulumi_api.faults.add(Fault.respond(503, times=1))
        ingestion.faults.add(Fault.respond(429, headers={"Retry-After": "1"}, times=1))

        environ = {
            **os.environ,
            "PULUMI_ORGS": ",".join(DEMO_ORGS),
            "PULUMI_ACCESS_TOKEN": DEMO_TOKEN,
            "PULUMI_TOKEN_VAULT_URL": "",
            "PULUMI_API_URL": pulumi_api.url,
            "LOGS_INGESTION_ENDPOINT": ingestion.url,
            "DCR_IMMUTABLE_ID": DEMO_DCR,
            "DCR_STREAM_NAME": "Custom-PulumiAuditLogs",
            "INITIAL_LOOKBACK": "1d",
        }
        settings = load_settings(environ, parts=frozenset({"source", "sink"}))
        demo_vault = stack.enter_context(DemoVault(pulumi_api, DEMO_ORGS, _DemoCredential())) if vault else None
        tokens = demo_vault.tokens if demo_vault else EnvironmentToken(settings.source.pulumi_token)
        events_sink, health_sink = ingestion_sinks(settings.sink, _DemoCredential())
        health = HealthReporter(health_sink, run_host(environ))
        collector = Collector(
            source=PulumiAuditSource(settings.source.pulumi_api_url, tokens),
            sink=events_sink,
            catalog=default_catalog(),
            holder=run_holder(),
            holder_ended=holder_process_ended,
            **_stores(environ, Path(state_dir)),
        )
        overlap = int(settings.source.late_event_overlap.total_seconds())

        def cycle(of: Collector) -> list:
            return run_cycle(of, DEMO_ORGS, LOOKBACK_SECONDS, overlap, 300, settings.source.max_parallel_orgs)

        print("Pulumi audit logs -> Sentinel, on local stand-ins (nothing leaves this machine)")
        print(f"simulated Pulumi API at {pulumi_api.url}, Logs Ingestion stand-in at {ingestion.url}\n")
        if demo_vault:
            print(f"each org's own Pulumi token, read from a Key Vault stand-in at {demo_vault.vault.url}:")
            for org, secret_name in demo_vault.secret_names.items():
                print(f"  {org}: secret {secret_name}")
            print()
        print(f"run 1: the last day, {EVENTS_PER_ORG} events per org")
        first = cycle(collector)
        health.report(first, int(collector.wall_clock()))
        for report in first:
            print("  " + report.summary())
        print("  (duplicates_skipped: events re-read in the overlap between windows, dropped by EventId_s)")

        late = {
            org: simulate_events(org, now - 300, now - 120, 10, seed=100 + index) for index, org in enumerate(DEMO_ORGS)
        }
        for org, events in late.items():
            pulumi_api.add_events(org, events)
        if demo_vault:
            demo_vault.rotate(DEMO_ORGS[0])
            print(f"\n{DEMO_ORGS[0]}'s token rotated: a new version of its secret, the old token revoked in Pulumi,")
            print("and the 5-minute token cache has run out")
        print("\nrun 2, one timer tick later: 10 events per org appeared late, inside the window run 1 read")
        next_tick = replace(collector, wall_clock=lambda: time.time() + 60)
        second = cycle(next_tick)
        health.report(second, int(next_tick.wall_clock()))
        for report in second:
            print("  " + report.summary())

        rows = ingestion.rows
        expected = sum(len(events) for events in backlog.values()) + sum(len(events) for events in late.values())
        ids = Counter(row["EventId_s"] for row in rows)
        products = Counter(row["Product_s"] for row in rows)
        print(f"\nLogs Ingestion stand-in accepted {len(rows)} rows ({products['esc']} ESC, {products['cloud']} Cloud)")
        print(f"every event forwarded exactly once: {len(rows) == expected and len(ids) == expected}")
        print("\nthree of the rows:")
        for row in rows[:3]:
            print("  " + json.dumps(row, ensure_ascii=False))
        _print_health(ingestion.rows_of(HEALTH_TABLE.stream))
        failed = [report for report in first + second if report.failed]
        return 0 if not failed and len(rows) == expected and len(ids) == expected else 1


def _print_health(rows: list[dict]) -> None:
    """The health rows the stand-in received, as the Connector health tab of the workbook lists them."""
    print(f"\n{len(rows)} health rows in {HEALTH_TABLE.name}, one per org per run:")
    print(
        f"  {'run':<8}  {'org':<10} {'kind':<5} {'status':<7} {'fetched':>7} {'sent':>5} {'repeats':>7} "
        f"{'dead':>4} {'lag s':>5}  host"
    )
    for row in rows:
        lag = "-" if row["LagSeconds_d"] is None else row["LagSeconds_d"]
        print(
            f"  {row['RunId_s'][:8]:<8}  {row['OrgName_s']:<10} {row['RunKind_s']:<5} {row['Status_s']:<7} "
            f"{row['EventsFetched_d']:>7} {row['EventsSent_d']:>5} {row['DuplicatesSkipped_d']:>7} "
            f"{row['DeadLettered_d']:>4} {lag:>5}  {row['Host_s']}"
        )


def _stores(environ: dict[str, str], state_dir: Path) -> dict:
    """Table Storage when configured, else local files that this demo starts afresh."""
    if environ.get("CHECKPOINT_CONNECTION_STRING") or environ.get("CHECKPOINT_TABLE_ENDPOINT"):
        settings = load_settings(environ, parts=frozenset({"store"}))
        print(f"delivery state: Table Storage table {settings.store.checkpoint_table_name}")
        state, dead_letters = table_stores(settings)
        return {"state": state, "dead_letters": dead_letters}
    dead_letter_file = state_dir / "demo-dead-letters.json"
    dead_letter_file.unlink(missing_ok=True)
    print("delivery state: in memory (set CHECKPOINT_CONNECTION_STRING to use Table Storage)")
    return {"state": memory_state_store(), "dead_letters": FileDeadLetterStore(dead_letter_file)}
