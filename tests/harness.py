"""A connector deployment on this machine: the real clients, wired by the real composition
root, against the HTTPS stand-ins, Azurite and a local managed-identity endpoint."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import EdmType, EntityProperty, TableClient

from shared.catalog import default_catalog
from shared.cursor import Cursor
from shared.dead_letter import TableDeadLetterStore
from shared.ports import DeadLetter
from shared.standins import LogsIngestionStandIn, ManagedIdentityEndpointStandIn, PulumiAuditApiStandIn, simulate_events
from shared.state_store import TableStateStore, table_state_store
from shared.transform import normalize
from shared.wiring import Connector, connector_from_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
PULUMI_TOKEN = "pul-test-token"
MANAGED_IDENTITY_CLIENT_ID = "11111111-2222-3333-4444-555555555555"


@dataclass
class Deployment:
    pulumi_api: PulumiAuditApiStandIn
    ingestion: LogsIngestionStandIn
    managed_identity: ManagedIdentityEndpointStandIn
    azurite_connection_string: str
    table_name: str
    orgs: tuple[str, ...] = ("acme",)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def environ(self) -> dict[str, str]:
        return {
            "PULUMI_ORGS": ",".join(self.orgs),
            "PULUMI_ACCESS_TOKEN": PULUMI_TOKEN,
            "PULUMI_API_URL": self.pulumi_api.url,
            "LOGS_INGESTION_ENDPOINT": self.ingestion.url,
            "DCR_IMMUTABLE_ID": self.ingestion.dcr_id,
            "DCR_STREAM_NAME": self.ingestion.stream_name,
            "MANAGED_IDENTITY_CLIENT_ID": MANAGED_IDENTITY_CLIENT_ID,
            "CHECKPOINT_CONNECTION_STRING": self.azurite_connection_string,
            "CHECKPOINT_TABLE_NAME": self.table_name,
            "DEAD_LETTER_TABLE_NAME": self.table_name + "dead",
            "INITIAL_LOOKBACK": "1h",
            "LATE_EVENT_OVERLAP": "10m",
            **self.extra,
        }

    def connector(self) -> Connector:
        """A fresh connector, as a new Functions worker process would build it."""
        return connector_from_environment(self.environ)

    def run_cli(
        self, *args: str, timeout: float = 60, cwd: Path = REPO_ROOT, environ: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """`python -m shared ...` in a real subprocess with this deployment's settings (or `environ`)."""
        settings = self.environ if environ is None else environ
        environ = {**os.environ, **self.managed_identity.env(), **settings, "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run(
            [sys.executable, "-m", "shared", *args],
            cwd=cwd,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def state(self) -> TableStateStore:
        """The delivery state store, read and written as a separate process would."""
        return table_state_store(
            TableClient.from_connection_string(self.azurite_connection_string, table_name=self.table_name)
        )

    def checkpoint(self, org: str = "acme") -> Cursor | None:
        """The org's live cursor as stored."""
        return self.state().load_org(org).live

    def dead_letters(self) -> list[DeadLetter]:
        table = TableClient.from_connection_string(self.azurite_connection_string, table_name=self.table_name + "dead")
        return list(TableDeadLetterStore(table).list())

    def landed(self) -> Counter:
        """How many times each EventId_s landed in Log Analytics."""
        return Counter(row["EventId_s"] for row in self.ingestion.rows)


def seed_recent(deployment: Deployment, org: str = "acme", count: int = 250, seed_value: int = 1) -> list[dict]:
    """`count` events of the 48 minutes that end 2 minutes before now, published to the Pulumi stand-in.
    Now is when this is called, the connector's own clock: a moment taken at import would be
    minutes old by the time a long suite gets here, and the events would arrive late."""
    now = int(time.time())
    events = simulate_events(org, now - 3000, now - 120, count, seed=seed_value)
    deployment.pulumi_api.add_events(org, events)
    return events


def expected_ids(org: str, events: list[dict]) -> set[str]:
    """The EventId_s the source events should land under; identical events are numbered 1, 2, ..."""
    occurrences: Counter = Counter()
    ids = set()
    for event in events:
        normalized = normalize(org, event, default_catalog())
        occurrences[normalized.identity] += 1
        ids.add(normalized.row(occurrences[normalized.identity])["EventId_s"])
    return ids


def start_cli(deployment: Deployment, *args: str) -> subprocess.Popen:
    """`python -m shared ...` started in the background, so a test can kill it mid-run."""
    environ = {**os.environ, **deployment.managed_identity.env(), **deployment.environ}
    return subprocess.Popen(
        [sys.executable, "-m", "shared", *args],
        cwd=REPO_ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_demo(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m shared demo ... --state-dir state_dir` as a user runs it: a real subprocess, no deployment."""
    return subprocess.run(
        [sys.executable, "-m", "shared", "demo", *args, "--state-dir", str(state_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_v1_live_checkpoint(
    table: TableClient,
    org: str,
    watermark: int,
    origin: int,
    ledger: list[tuple[int, bytes, int, int]],
    window: tuple[int, int] | None = None,
    token: str | None = None,
) -> None:
    """An org's live checkpoint as connector 1.0.0 wrote it: one entity in partition "live" under the
    org's name, no FormatVersion, the ledger's (timestamp, 8-byte key, sent, seen) records packed
    big-endian into binary properties of at most 64,000 bytes."""
    packed = b"".join(struct.pack(">I8sHH", *record) for record in ledger)
    entity = {
        "PartitionKey": "live",
        "RowKey": org,
        "Watermark": EntityProperty(watermark, EdmType.INT64),
        "WatermarkTime": datetime.fromtimestamp(watermark, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Origin": EntityProperty(origin, EdmType.INT64),
        "LedgerEntries": EntityProperty(len(ledger), EdmType.INT64),
    }
    if window:
        entity["WindowStart"] = EntityProperty(window[0], EdmType.INT64)
        entity["WindowEnd"] = EntityProperty(window[1], EdmType.INT64)
    if token:
        entity["ContinuationToken"] = token
    for index in range(0, len(packed), 64_000):
        entity[f"Ledger{index // 64_000}"] = packed[index : index + 64_000]
    with contextlib.suppress(ResourceExistsError):
        table.create_table()
    table.create_entity(entity)
