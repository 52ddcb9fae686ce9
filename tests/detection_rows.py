"""The rows the connector itself writes for a scripted story, with their ingestion times.

A `Story` says what happens in Pulumi (events, published to the audit API at some time) and when
the connector runs. `produce_rows` runs the real connector (the composition root, the real SDK
clients, the HTTPS stand-ins, Azurite) on a virtual clock: each timer run happens at its story
time, and the rows Logs Ingestion accepted during a run get that time as their ingestion time.
Then Azure's own rule is applied: a TimeGenerated more than 2 days before the row was received is
replaced with the receive time. A story may place ingestion times itself (`ingested_at`), to
deliver a week in one backfill run as if the timer had sent it, or to deliver an attack late.

In a test, the `story_rows` fixture (tests/conftest.py) produces each story once per session:
`rows = story_rows(story)`, then `Workspace(rows.tables)` (tests/kql_engine.py).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.pipeline import collect_at_once, plan_backfill_lanes
from shared.schema import AUDIT_TABLE, HEALTH_TABLE
from shared.standins import LogsIngestionStandIn, ManagedIdentityEndpointStandIn, PulumiAuditApiStandIn
from shared.standins.server import Fault
from shared.standins.simulated_events import event_catalog
from tests.conftest import CREDENTIAL_ENV_VARS
from tests.harness import PULUMI_TOKEN, Deployment
from tests.kql_engine import INGESTED_AT

# Azure replaces a TimeGenerated older than this before the receive time with the receive time.
RESTAMP_OLDER_THAN = timedelta(days=2)
# Deployment settings the stories run with (tests/harness.py sets the rest).
LATE_EVENT_OVERLAP = timedelta(minutes=10)
TIMER_PERIOD = timedelta(minutes=1)  # main.bicep's timerSchedule default, '0 * * * * *'


def at(moment: datetime) -> int:
    return int(moment.timestamp())


def audit_event(
    moment: datetime,
    event_id: str,
    *,
    login: str,
    ip: str,
    description: str = "",
    token: str | None = None,
    actor: str | None = None,
    org: str = "acme",
) -> dict[str, Any]:
    """One event as the Pulumi audit API returns it, flags taken from the event catalog. `token`:
    the access token used; `actor`: a non-human actor (a CI identity) that acted."""
    entry = event_catalog()[event_id]
    event: dict[str, Any] = {
        "timestamp": at(moment),
        "sourceIP": ip,
        "event": event_id,
        "description": description or f"{event_id} by {login}",
        "user": {"name": login.title(), "githubLogin": login, "avatarUrl": ""},
    }
    if token is not None:
        event |= {"tokenID": str(uuid.uuid5(uuid.NAMESPACE_URL, token)), "tokenName": token}
    if actor is not None:
        event |= {"actorName": actor, "actorUrn": f"urn:pulumi:org:{org}::actor:{actor}"}
    for flag, key in (
        ("requiresOrgAdmin", "reqOrgAdmin"),
        ("requiresStackAdmin", "reqStackAdmin"),
        ("authenticationFailure", "authFailure"),
    ):
        if entry.get(flag):
            event[key] = True
    return event


@dataclass(frozen=True)
class Batch:
    """Events of one org that the audit API shows from `published` on (None: from the start)."""

    org: str
    events: tuple[dict[str, Any], ...]
    published: datetime | None = None


@dataclass(frozen=True)
class Outage:
    """The audit API answers 503 for `org` from `start` until `end`."""

    org: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Story:
    name: str
    batches: tuple[Batch, ...]
    runs: tuple[datetime, ...]  # when the timer runs the connector
    orgs: tuple[str, ...] = ("acme",)
    # The API knows these orgs (an org in `orgs` but not here gets 404s); default: every org.
    known_orgs: tuple[str, ...] | None = None
    outages: tuple[Outage, ...] = ()
    refused_events: frozenset[str] = frozenset()  # Event_s values Logs Ingestion refuses
    backfill: tuple[datetime, datetime, datetime] | None = None  # (since, until, run at)
    # The ingestion time of an audit row, given the row and when Logs Ingestion accepted it.
    ingested_at: Callable[[Mapping[str, Any], datetime], datetime] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StoryRows:
    audit: tuple[dict[str, Any], ...]
    health: tuple[dict[str, Any], ...]

    @property
    def tables(self) -> dict[str, Sequence[Mapping[str, Any]]]:
        return {AUDIT_TABLE.name: self.audit, HEALTH_TABLE.name: self.health}


def every(start: datetime, end: datetime, period: timedelta = TIMER_PERIOD) -> tuple[datetime, ...]:
    """Timer runs from `start` to `end`, both included."""
    count = int((end - start) / period)
    return tuple(start + index * period for index in range(count + 1))


def _parse_time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _as_received(row: Mapping[str, Any], received: datetime) -> dict[str, Any]:
    """The row as stored: ingestion time kept, TimeGenerated restamped as Azure does."""
    stored = {**row, INGESTED_AT: received}
    if _parse_time(row["TimeGenerated"]) < received - RESTAMP_OLDER_THAN:
        stored["TimeGenerated"] = received.isoformat()
    return stored


@contextlib.contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """`values` set in os.environ (None: unset) for the duration."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def produce_rows(story: Story, server_context: Callable[[], Any], azurite_connection_string: str) -> StoryRows:
    """Run the connector through `story` and return what Logs Ingestion accepted (see module docstring)."""
    with contextlib.ExitStack() as running:
        api = running.enter_context(PulumiAuditApiStandIn(PULUMI_TOKEN, ssl_context=server_context()))
        identity = running.enter_context(ManagedIdentityEndpointStandIn())
        ingestion = running.enter_context(
            LogsIngestionStandIn(
                "dcr-" + uuid.uuid4().hex,
                AUDIT_TABLE.stream,
                AUDIT_TABLE.columns,
                streams={HEALTH_TABLE.stream: HEALTH_TABLE.columns},
                ssl_context=server_context(),
                expected_token=identity.access_token,
            )
        )
        # Only the local managed identity: no credential of the machine's environment.
        running.enter_context(_environment({**dict.fromkeys(CREDENTIAL_ENV_VARS), **identity.env()}))
        deployment = Deployment(
            api, ingestion, identity, azurite_connection_string, "t" + uuid.uuid4().hex, orgs=story.orgs
        )
        deployment.extra["LATE_EVENT_OVERLAP"] = f"{int(LATE_EVENT_OVERLAP.total_seconds())}s"
        for org in story.orgs if story.known_orgs is None else story.known_orgs:
            api.add_org(org)
        if story.refused_events:
            ingestion.reject_rows(lambda row: row.get("Event_s") in story.refused_events)
        connector = deployment.connector()
        clock = [0.0]
        connector.collector.wall_clock = lambda: clock[0]
        unpublished = list(story.batches)
        audit: list[dict[str, Any]] = []
        health: list[dict[str, Any]] = []

        def publish(moment: datetime) -> None:
            for batch in [batch for batch in unpublished if batch.published is None or batch.published <= moment]:
                api.add_events(batch.org, batch.events)
                unpublished.remove(batch)

        def collect_accepted(moment: datetime) -> None:
            for rows, stream in ((audit, AUDIT_TABLE.stream), (health, HEALTH_TABLE.stream)):
                fresh = ingestion.rows_of(stream)[len(rows) :]
                for row in fresh:
                    received = moment
                    if story.ingested_at is not None and stream == AUDIT_TABLE.stream:
                        received = story.ingested_at(row, moment)
                    rows.append(_as_received(row, received))

        steps = [(moment, "run") for moment in story.runs]
        if story.backfill is not None:
            steps.append((story.backfill[2], "backfill"))
        for moment, kind in sorted(steps):
            clock[0] = moment.timestamp()
            publish(moment)
            api.faults.clear()
            for outage in story.outages:
                if outage.start <= moment < outage.end:
                    api.faults.add(
                        Fault.respond(
                            503, match=lambda request, org=outage.org: f"/orgs/{org}/" in request.path, times=None
                        )
                    )
            if kind == "run":
                connector.run_once()
            else:
                since, until, _ = story.backfill
                reports = []
                for org in story.orgs:
                    _, lanes = plan_backfill_lanes(
                        connector.collector.state, org, at(since), at(until), at(moment), 3600, False, 1
                    )
                    reports += collect_at_once(connector.collector, lanes, 1)
                connector.report_health(reports)
            collect_accepted(moment)
        if api.errors or ingestion.errors or identity.errors:
            raise AssertionError(f"a stand-in raised: {api.errors or ingestion.errors or identity.errors}")
        return StoryRows(tuple(audit), tuple(health))


class StoryCache:
    """Each story produced once per test session, by name, without real sleeps: the connector's
    retries back off with time.sleep, and a module-scoped fixture asking for a story runs before
    the suite's function-scoped autouse `no_real_sleep` would patch it."""

    def __init__(self, server_context: Callable[[], Any], azurite_connection_string: str):
        self._server_context = server_context
        self._azurite = azurite_connection_string
        self._produced: dict[str, tuple[Story, StoryRows]] = {}

    def __call__(self, story: Story) -> StoryRows:
        if story.name not in self._produced:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(time, "sleep", lambda seconds: None)
                self._produced[story.name] = (story, produce_rows(story, self._server_context, self._azurite))
        produced_for, rows = self._produced[story.name]
        assert produced_for == story, f"two different stories are named {story.name!r}"
        return rows
