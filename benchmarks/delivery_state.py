"""What the delivery state costs as the backlog grows, printed as figures (not asserted).

    scripts/bench.sh                         # these figures after those of benchmarks/bench.py
    python -m benchmarks.delivery_state      # these alone

One live collection of a one-day backlog of 200,000 events, at pages of 100, through the real
pipeline and the real Pulumi client (against the audit API stand-in on loopback; rows go to a sink
that keeps nothing, so the figures are the state's), saving to Azurite, which this script starts and
stops by PID. Every save is measured where it happens: the cursor and the ledger segments of the
pages one request of about 1 MB carried (some 9 pages of 100), in one entity-group transaction.
Figures at backlogs of 5k, 50k and 200k events, from that one run:

- bytes a save writes (the entities as JSON, binary as base64), median of the 50 saves up to
  that point;
- time a save takes, the same way;

printed as ratios to the figure at 5k: flat means within 1.2x. Also the bytes of the org's whole
stored state (cursor, ledger segments, lease) at each point: it grows while the first windows fill
and then stays bounded by the events of two live windows (the API serves a window's pages in no
time order, so a page of the window before the last one may still hold overlap events), whatever
the backlog; printed in KB, with 200k ÷ 50k as its ratio. Then, end to end through
the real Pulumi client and LogsIngestionClient (`benchmarks.bench.end_to_end`, each run in a fresh
process): events/s at 200k ÷ events/s at 10k, where the target is at least 0.9. Each figure comes
from 3 repeats, printed as min / median / max.
"""

from __future__ import annotations

import base64
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.data.tables import TableClient

from benchmarks.bench import end_to_end_in_a_fresh_process, spread
from shared.catalog import default_catalog
from shared.cursor import Cursor, LedgerSegment
from shared.dead_letter import FileDeadLetterStore
from shared.pipeline import Collection, CollectionReport, Collector, live_collection
from shared.ports import EncodedRow, RefusedRow
from shared.pulumi_source import PulumiAuditSource
from shared.settings import Secret
from shared.standins import PulumiAuditApiStandIn, simulate_events
from shared.standins.azurite import AzuriteUnavailable, running_azurite
from shared.state_store import TableStateStore, cursor_entity, segment_entity, table_state_store
from shared.token_source import EnvironmentToken

TOKEN = "pul-bench-token"
ORG = "acme"
DAY = 86400
OVERLAP = 600
PAGE_SIZE = 100
BACKLOGS = (5_000, 50_000, 200_000)
SAVES_PER_FIGURE = 50
END_TO_END_BACKLOGS = (10_000, 200_000)
REPEATS = 3


@contextlib.contextmanager
def azurite() -> Iterator[str]:
    """Azurite's connection string while the block runs; if it cannot start, an exit that says why."""
    try:
        with running_azurite() as service:
            yield service.connection_string
    except AzuriteUnavailable as error:
        raise SystemExit(str(error)) from None


def wire_bytes(entity: dict[str, Any]) -> int:
    """An entity's size as JSON, binary as base64: about what its write carries."""
    return len(
        json.dumps(
            {
                name: base64.b64encode(value).decode() if isinstance(value, bytes) else value
                for name, value in entity.items()
                if value is not None
            }
        )
    )


class DiscardingSink:
    """Takes every row and keeps none, so the run measures the state, not the upload."""

    def send(self, rows: Sequence[EncodedRow]) -> list[RefusedRow]:
        return []


@dataclass
class MeasuredStore:
    """The Table store, with each save timed and sized where it happens."""

    store: TableStateStore
    saves: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes written)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def save_cursor(
        self, org: str, name: str, cursor: Cursor, etag: str | None, segments: Sequence[LedgerSegment] = ()
    ) -> str:
        written = wire_bytes(cursor_entity(cursor)) + sum(wire_bytes(segment_entity(segment)) for segment in segments)
        started = time.perf_counter()
        result = self.store.save_cursor(org, name, cursor, etag, segments)
        self.saves.append((time.perf_counter() - started, written))
        return result


@dataclass(frozen=True)
class Figures:
    seconds_per_save: dict[int, float]
    bytes_per_save: dict[int, float]
    stored_bytes: dict[int, int]


def one_run(connection_string: str, api: PulumiAuditApiStandIn, now: int, table_name: str) -> Figures:
    table = TableClient.from_connection_string(connection_string, table_name=table_name)
    store = MeasuredStore(table_state_store(table))
    fetched_at_save: list[int] = []
    stored: dict[int, int] = {}

    def measure(collection: Collection, cursor: Cursor, report: CollectionReport) -> None:
        fetched_at_save.append(report.fetched)
        for backlog in BACKLOGS:
            if backlog not in stored and report.fetched >= backlog - PAGE_SIZE:
                stored[backlog] = sum(
                    wire_bytes(dict(entity))
                    for entity in table.query_entities("PartitionKey eq @org", parameters={"org": ORG})
                )

    with tempfile.TemporaryDirectory() as folder:
        collector = Collector(
            source=PulumiAuditSource(api.url, EnvironmentToken(Secret(TOKEN))),
            sink=DiscardingSink(),
            state=store,
            dead_letters=FileDeadLetterStore(Path(folder) / "dead.json"),
            catalog=default_catalog(),
            holder="bench",
            progress=[measure],
        )
        report = collector.collect(live_collection(ORG, now, DAY, OVERLAP))
    if report.status != "ok" or report.sent != BACKLOGS[-1]:
        raise SystemExit(f"the run did not deliver the backlog: {report.summary()}")
    near: dict[int, list[tuple[float, int]]] = {}
    for backlog in BACKLOGS:
        index = next(i for i, fetched in enumerate(fetched_at_save) if fetched >= backlog - PAGE_SIZE)
        near[backlog] = store.saves[max(0, index - SAVES_PER_FIGURE + 1) : index + 1]
    return Figures(
        seconds_per_save={backlog: statistics.median(s for s, _ in saves) for backlog, saves in near.items()},
        bytes_per_save={backlog: statistics.median(b for _, b in saves) for backlog, saves in near.items()},
        stored_bytes=stored,
    )


def print_state_figures() -> None:
    now = int(time.time())
    with azurite() as connection_string, PulumiAuditApiStandIn(TOKEN, page_size=PAGE_SIZE) as api:
        api.add_events(ORG, simulate_events(ORG, now - DAY + 60, now - 120, BACKLOGS[-1], seed=3))
        runs = [one_run(connection_string, api, now, f"benchstate{repeat}") for repeat in range(REPEATS)]
    first = BACKLOGS[0]
    print(f"delivery state, one live run of {BACKLOGS[-1]:,} events at pages of {PAGE_SIZE}, Azurite, {REPEATS} runs:")
    for label, attribute, unit, digits in (
        ("time per save (about 9 pages), ms", "seconds_per_save", 1000, 1),
        ("bytes per save (about 9 pages)", "bytes_per_save", 1, 0),
    ):
        at_first = [getattr(run, attribute)[first] * unit for run in runs]
        print(f"  {label}, at {first:,}: {spread(at_first, digits)}")
        for backlog in BACKLOGS[1:]:
            ratios = [getattr(run, attribute)[backlog] / getattr(run, attribute)[first] for run in runs]
            print(f"    at {backlog:,} ÷ at {first:,}: {spread(ratios)}")
    for backlog in BACKLOGS:
        kilobytes = [run.stored_bytes[backlog] / 1000 for run in runs]
        print(f"  stored state of the org at {backlog:,}, KB: {spread(kilobytes, 0)}")
    middle, last = BACKLOGS[-2:]
    ratios = [run.stored_bytes[last] / run.stored_bytes[middle] for run in runs]
    print(f"    at {last:,} ÷ at {middle:,}: {spread(ratios)}")


def print_end_to_end_figures() -> None:
    rates: dict[int, list[float]] = {backlog: [] for backlog in END_TO_END_BACKLOGS}
    for _ in range(REPEATS):
        for backlog in END_TO_END_BACKLOGS:
            rates[backlog].append(end_to_end_in_a_fresh_process(backlog, PAGE_SIZE)["events_per_second"])
    small, large = END_TO_END_BACKLOGS
    print(f"end to end, real clients, pages of {PAGE_SIZE}, {REPEATS} runs each in a fresh process:")
    for backlog in END_TO_END_BACKLOGS:
        print(f"  events/s at {backlog:,}: {spread(rates[backlog], 0)}")
    ratios = [big / little for big, little in zip(rates[large], rates[small], strict=True)]
    print(f"  at {large:,} ÷ at {small:,} (target at least 0.9): {spread(ratios)}")


def main() -> None:
    print_end_to_end_figures()
    print_state_figures()


if __name__ == "__main__":
    main()
