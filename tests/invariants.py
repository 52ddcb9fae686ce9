"""What the connector must keep true under any fault, and the world the fault scenarios run in.

The invariants, checked after every scenario (and the checkpoint ones at every save):

1. every source event lands at least once (in Log Analytics, or in the dead-letter store when
   it cannot become a row or the service refuses it);
2. no event lands twice unless the scenario says why it may (a crash, a lost answer, a
   concurrent run), and a second copy always carries its twin's EventId_s;
3. the checkpoint never moves backward, and never past an event that has not been accepted;
4. a refused row ends up in the durable dead-letter store (Table Storage), never nowhere.

`FIGURES` collects one line per scenario; the suite prints it and writes
test-results/fault-matrix-latest.md at the end of the run (see `pytest_terminal_summary` in conftest).
"""

from __future__ import annotations

import copy
import gzip
import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.data.tables import TableClient

from shared.catalog import default_catalog
from shared.cli import parse_time
from shared.cursor import Cursor
from shared.delivery import LIVE
from shared.pipeline import (
    SETTLE_DELAY_SECONDS,
    Collection,
    CollectionReport,
    invalid_event_row,
    plan_backfill_lanes,
)
from shared.ports import AuditPage, LeaseHeld
from shared.standins import simulate_events
from shared.transform import InvalidEvent, event_id, normalize
from shared.wiring import Connector
from tests.harness import Deployment, start_cli

ORG = "acme"
# Unique per test session: if one of these shows up anywhere but on the wire to its own
# service, a secret leaked.
CANARY_PULUMI_TOKEN = f"pul-canary-{uuid.uuid4().hex}"
CANARY_MONITOR_TOKEN = f"mi-canary-{uuid.uuid4().hex}"

Form = Callable[[dict[str, Any]], Any]
_EXTRA_OCCURRENCES = 8


def identity(org: str, served: Any) -> bytes | None:
    """The connector's identity of an event as served, or None when it cannot become a row."""
    try:
        return normalize(org, served, default_catalog()).identity
    except InvalidEvent:
        return None


def row_id(org: str, served: Any, occurrence: int = 1) -> str:
    """The EventId_s the `occurrence`-th copy of this event gets."""
    return event_id(identity(org, served), occurrence)


def invalid_event_id(org: str, served: Any) -> str:
    """The dead-letter key of an event that cannot become a row."""
    return invalid_event_row(org, served)["EventId_s"]


def _form_key(org: str, served: Any) -> str:
    key = identity(org, served)
    return key.hex() if key is not None else invalid_event_id(org, served)


# -- accounting: which source event landed how often ----------------------------------------------


@dataclass
class Accounting:
    generated: int = 0  # source events, identical copies included
    lost: int = 0  # neither landed nor dead-lettered
    same_id_duplicates: int = 0  # extra copies carrying their twin's EventId_s
    new_id_duplicates: int = 0  # extra copies under a different EventId_s: never allowed
    phantoms: int = 0  # rows that belong to no source event
    lost_examples: list[str] = field(default_factory=list)

    @property
    def duplicated(self) -> int:
        return self.same_id_duplicates + self.new_id_duplicates


def _canonical(event: Any) -> str:
    return json.dumps(event, sort_keys=True, ensure_ascii=True, default=str)


def account(
    events_by_org: Mapping[str, Sequence[Mapping[str, Any]]],
    forms: Sequence[Form | None],
    landed: Counter,
    dead_lettered: Iterable[str],
) -> Accounting:
    """Match landed rows and dead letters to the source events of each org.

    Events the connector cannot tell apart in every form they were served in (`forms`; None is
    the stored form) form one group of `m` identical events, which needs `m` distinct EventId_s
    (occurrences 1..m). An id of any form counts for the group.
    """
    forms = list(forms) or [None]

    def served(event: Mapping[str, Any], form: Form | None) -> Any:
        copied = copy.deepcopy(dict(event))
        return form(copied) if form is not None else copied

    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for org, events in events_by_org.items():
        for event in events:
            key = (org, *(_form_key(org, served(event, form)) for form in forms))
            groups.setdefault(key, []).append(event)
    dead = set(dead_lettered)
    owner: dict[str, tuple] = {}
    result = Accounting()
    for key, members in groups.items():
        org = key[0]
        size = len(members)
        result.generated += size
        row_ids: set[str] = set()
        invalid_ids: set[str] = set()
        extra_ids: set[str] = set()
        for form in forms:
            form_served = served(members[0], form)
            known = identity(org, form_served)
            if known is None:
                invalid_ids.add(invalid_event_id(org, form_served))
                continue
            row_ids.update(event_id(known, occurrence) for occurrence in range(1, size + 1))
            # Occurrences past the number of copies are the same event counted twice.
            extra_ids.update(
                event_id(known, occurrence) for occurrence in range(size + 1, size + _EXTRA_OCCURRENCES + 1)
            )
        for identifier in row_ids | invalid_ids | extra_ids:
            owner[identifier] = key
        landed_ids = {identifier for identifier in row_ids | extra_ids if landed[identifier]}
        accepted = len((landed_ids & row_ids) | (row_ids & dead))
        if invalid_ids & dead:
            accepted = size
        if accepted < size:
            result.lost += size - accepted
            result.lost_examples.append(f"{org}: {_canonical(members[0])[:160]}")
        result.new_id_duplicates += max(0, len(landed_ids) - size)
        result.same_id_duplicates += sum(landed[identifier] - 1 for identifier in landed_ids)
    result.phantoms = sum(count for identifier, count in landed.items() if identifier not in owner and count)
    result.phantoms += len({identifier for identifier in dead if identifier not in owner})
    return result


# -- figures --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureRow:
    scenario: str
    generated: int
    lost: int
    duplicated: int
    dead_lettered: int
    statuses: str
    note: str
    kind: str = "clean"  # "clean", "allowed" (duplicates allowed) or "finding"


class FiguresCollector:
    """One line per scenario that ran; rendered as a Markdown table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, FigureRow] = {}

    def add(self, row: FigureRow) -> None:
        with self._lock:
            self._rows[row.scenario] = row

    @property
    def rows(self) -> list[FigureRow]:
        with self._lock:
            return list(self._rows.values())

    def render(self) -> str:
        rows = self.rows
        lines = [
            "| scenario | events generated | lost | duplicated | dead-lettered | exit status (per run) | note |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row.scenario} | {row.generated} | {row.lost} | {row.duplicated} | {row.dead_lettered} "
                f"| {row.statuses} | {row.note} |"
            )

        def total(kind: str, column: str) -> int:
            return sum(getattr(row, column) for row in rows if row.kind == kind)

        totals = (
            f"**{len(rows)} scenarios**, {sum(row.generated for row in rows)} events generated, "
            f"{sum(row.dead_lettered for row in rows)} dead-lettered. "
            f"Scenarios that allow no duplicates: {total('clean', 'lost')} lost, "
            f"{total('clean', 'duplicated')} duplicated. "
            f"Scenarios that allow same-EventId_s duplicates (a crash, a lost answer, a reset back or --resend): "
            f"{total('allowed', 'lost')} lost, {total('allowed', 'duplicated')} duplicated. "
            f"Open findings (xfail): {total('finding', 'lost')} lost, {total('finding', 'duplicated')} duplicated."
        )
        return "\n".join([*lines, "", totals])

    def document(self, command: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            "# Fault matrix: latest figures\n\n"
            f"Generated by the test run `{command}` on {stamp}; do not edit by hand.\n"
            "See docs/RELIABILITY.md for what each scenario means and how to reproduce it.\n\n"
            "Exit status: the status of each poll cycle in order (`ok`, `failed`, `stopped` for a spent time "
            "budget), or the CLI exit code; `SIGKILL` is a run killed mid-way.\n\n" + self.render() + "\n"
        )


FIGURES = FiguresCollector()


# -- scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A named fault scenario. `play` arranges the fault, runs poll cycles and asserts what is
    specific to it; the invariants are checked afterwards for every scenario alike."""

    name: str
    play: Callable[[World], None]
    duplicates_allowed: str | None = None  # why copies with the same EventId_s may land
    dead_letters: int = 0  # how many rows must end up in the dead-letter store
    finding: str | None = None  # a known defect in the core: the scenario is expected to fail

    def __str__(self) -> str:
        return self.name


# -- the world a scenario runs in -----------------------------------------------------------------


class World:
    """A deployment (HTTPS stand-ins + Azurite), a controllable wall clock, and probes that check
    the checkpoint invariants at every save of every connector built here."""

    def __init__(self, deployment: Deployment, sleeps: list[float]):
        self.deployment = deployment
        self.api = deployment.pulumi_api
        self.ingestion = deployment.ingestion
        self.managed_identity = deployment.managed_identity
        self.sleeps = sleeps
        self.now = int(time.time())
        self.forms: list[Form | None] = []  # every form events were served in by some run
        self._form: Form | None = None
        self.reports: list[CollectionReport] = []
        self.statuses: list[str] = []
        self.texts: list[str] = []  # every error and summary a run produced, for the leak checks
        self.violations: list[str] = []
        self.dead_lettered_ids: set[str] = set()
        self._watermarks: dict[str, int] = {}
        self._last_save: dict[str, tuple[int, Any, str | None]] = {}
        self._passes: dict[tuple[str, int, int], list[Counter]] = {}
        self._invalid_seen: set[str] = set()
        self._snapshot: dict[str, list[dict[str, Any]]] = {}
        self._probe_lock = threading.RLock()  # the orgs of a run read and save from their own threads
        self._fetched: dict[str, list[tuple]] = {}  # pages read by the current run, per org
        self._committed: dict[str, int] = {}  # how many of them a save covered
        self._serial = 0

    # -- arranging ----------------------------------------------------------------------------------

    @property
    def orgs(self) -> tuple[str, ...]:
        return self.deployment.orgs

    def seed(self, count: int = 25, *, seed: int = 1, page_size: int = 10, org: str = ORG) -> list[dict[str, Any]]:
        """`count` distinct realistic events in the first window, served `page_size` a page."""
        events = simulate_events(org, self.now - 3000, self.now - 120, count, seed=seed)
        self.api.page_size = page_size
        self.api.add_events(org, events)
        return events

    def event(self, timestamp: int, **fields: Any) -> dict[str, Any]:
        """One plausible event at `timestamp`, unique unless `fields` make it a copy."""
        self._serial += 1
        event: dict[str, Any] = {
            "timestamp": timestamp,
            "sourceIP": "203.0.113.24",
            "event": "stack-update-started",
            "description": f"Started an update of stack 'acme/payments-api/prod' (#{self._serial}).",
            "user": {"name": "Priya Natarajan", "githubLogin": "pnatarajan", "avatarUrl": ""},
        }
        event.update(fields)
        return event

    def add(self, events: Iterable[dict[str, Any]], org: str = ORG) -> list[dict[str, Any]]:
        events = list(events)
        self.api.add_events(org, events)
        return events

    def present(self, form: Form | None) -> None:
        """From now on the API serves every event as `form(event)` (None: as stored)."""
        self.api.present_events(form)
        self._form = form

    def tick(self, seconds: int = 120) -> None:
        self.now += seconds

    # -- operating ----------------------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`python -m shared ARGS` as an operator runs it, on the real clock; its exit code joins the statuses."""
        result = self.deployment.run_cli(*args)
        command = " ".join(arg for arg in args[:2] if not arg.startswith("-"))
        self.statuses.append(f"{command} {result.returncode}")
        self.texts += [result.stdout, result.stderr]
        return result

    def backfill(
        self, since: str, *, resend: bool = False, connector: Connector | None = None
    ) -> list[CollectionReport]:
        """`backfill --since SINCE [--resend]` of every org, in this process on the world's clock: the
        lanes planned, then each collected. Lane saves are not probed; the accounting checks what landed."""
        connector = connector or self.connector()
        collector = connector.collector
        if not any(form is self._form for form in self.forms):
            self.forms.append(self._form)
        lookback = int(connector.settings.source.initial_lookback.total_seconds())
        until = self.now - SETTLE_DELAY_SECONDS
        reports: list[CollectionReport] = []
        for org in self.orgs:
            try:
                plan, lanes = plan_backfill_lanes(
                    collector.state, org, parse_time(since, self.now), until, self.now, lookback, resend
                )
            except LeaseHeld as held:
                reports.append(CollectionReport(org, status="skipped", error=str(held)))
                continue
            reports += [CollectionReport(org, name, status="skipped") for name, _ in plan.busy]
            reports += [collector.collect(lane) for lane in lanes]
        self.reports += reports
        self.statuses.append("backfill " + ("/".join(report.status for report in reports) or "nothing to send"))
        self.texts += [report.summary() for report in reports]
        return reports

    def reset(self, org: str, to: int) -> subprocess.CompletedProcess:
        """`checkpoint reset --org ORG --to TO`. The operator moves the live watermark on purpose, so the
        probes stop comparing with the watermark saved before."""
        result = self.cli("checkpoint", "reset", "--org", org, "--to", str(to))
        self._watermarks.pop(org, None)
        self._last_save.pop(org, None)
        return result

    # -- running ------------------------------------------------------------------------------------

    def connector(self, **environ: str) -> Connector:
        """A fresh connector through the real composition root (optionally with other settings)."""
        saved = dict(self.deployment.extra)
        self.deployment.extra.update(environ)
        try:
            connector = self.deployment.connector()
        finally:
            self.deployment.extra = saved
        connector.collector.wall_clock = lambda: self.now
        return connector

    def run(self, connector: Connector | None = None) -> CollectionReport:
        """One poll cycle (what the timer runs); returns the report of the first org."""
        connector = connector or self.connector()
        self._instrument(connector)
        if not any(form is self._form for form in self.forms):
            self.forms.append(self._form)
        for org in self.orgs:
            self._snapshot[org] = self.api.events(org)
        self._fetched, self._committed = {}, {}
        reports = connector.run_once()
        self.reports += reports
        self.statuses.append("/".join(report.status for report in reports))
        self.texts += [report.summary() for report in reports]
        self._check_stored_checkpoint()
        self.tick()
        return reports[0]

    def _instrument(self, connector: Connector) -> None:
        collector = connector.collector
        source = collector.source
        if not getattr(source, "_world_probe", False):
            fetch = source.fetch_page

            def fetch_page(org: str, start: int, end: int, token: str | None) -> AuditPage:
                page = fetch(org, start, end, token)
                with self._probe_lock:
                    self._on_page(org, start, end, token, page)
                return page

            source.fetch_page = fetch_page
            source._world_probe = True
        dead_letters = collector.dead_letters
        if not getattr(dead_letters, "_world_probe", False):
            put = dead_letters.put

            def put_and_record(org: str, refused) -> None:
                put(org, refused)
                with self._probe_lock:
                    self.dead_lettered_ids.update(str(item.row.get("EventId_s")) for item in refused)

            dead_letters.put = put_and_record
            dead_letters._world_probe = True
        if self._saved not in collector.progress:
            collector.progress.append(self._saved)

    def _saved(self, collection: Collection, cursor: Cursor, report: CollectionReport) -> None:
        with self._probe_lock:  # the orgs of a run save from their own threads
            self._on_save(collection, cursor, report)

    # -- the checkpoint probes --------------------------------------------------------------------

    def _on_page(self, org: str, start: int, end: int, token: str | None, page: AuditPage) -> None:
        # A page counts once the pipeline keeps it, i.e. when a save covers it. Pages are read
        # ahead of their save; the ones a run reads but never keeps (a looping token, a stop) come last.
        with self._probe_lock:
            self._fetched.setdefault(org, []).append((org, start, end, token, page))

    def _commit_pages(self, org: str, saved_pages: int) -> None:
        fetched = self._fetched.get(org, [])
        while self._committed.get(org, 0) < saved_pages:
            _, start, end, token, page = fetched[self._committed.get(org, 0)]
            self._committed[org] = self._committed.get(org, 0) + 1
            passes = self._passes.setdefault((org, start, end), [])
            if token is None or not passes:
                passes.append(Counter())
            catalog = default_catalog()
            for event in page.events:
                try:
                    normalized = normalize(org, event, catalog)
                except InvalidEvent:
                    self._invalid_seen.add(invalid_event_id(org, event))
                    continue
                if start <= normalized.timestamp <= end:  # the API's bounds are both inclusive
                    passes[-1][normalized.identity] += 1

    def _accepted(self) -> set[str]:
        return {row["EventId_s"] for row in self.ingestion.rows} | self.dead_lettered_ids

    def _on_save(self, collection: Collection, cursor: Cursor, report: CollectionReport) -> None:
        if collection.name != LIVE:
            return  # backfill lanes are checked by their scenarios
        with self._probe_lock:
            self._check_save(collection.org, cursor, report)

    def _check_save(self, org: str, cursor: Cursor, report: CollectionReport) -> None:
        self._commit_pages(org, report.saved_pages)
        previous = self._watermarks.get(org)
        if previous is not None and cursor.watermark < previous:
            self.violations.append(f"org {org}: the checkpoint moved backward from {previous} to {cursor.watermark}")
        self._watermarks[org] = cursor.watermark
        self._last_save[org] = (cursor.watermark, cursor.window, cursor.continuation_token)
        accepted = self._accepted()
        for (pass_org, start, end), passes in self._passes.items():
            for seen in passes:
                for known, count in seen.items():
                    missing = [k for k in range(1, count + 1) if event_id(known, k) not in accepted]
                    if pass_org == org and missing:
                        self.violations.append(
                            f"org {org}: a checkpoint was saved past a fetched event of window [{start}, {end}) "
                            f"that had not been accepted (occurrences {missing})"
                        )
        unstored = self._invalid_seen - self.dead_lettered_ids
        if unstored:
            self.violations.append(f"a checkpoint was saved past {len(unstored)} invalid events not dead-lettered")
        if cursor.window is None:
            below = [
                event for event in self._snapshot.get(org, []) if cursor.origin <= event["timestamp"] < cursor.watermark
            ]
            landed = Counter(row["EventId_s"] for row in self.ingestion.rows)
            missing = account({org: below}, self.forms, landed, self.dead_lettered_ids)
            if missing.lost:
                self.violations.append(
                    f"org {org}: the watermark moved to {cursor.watermark} past {missing.lost} events not accepted: "
                    f"{missing.lost_examples[:2]}"
                )

    def _check_stored_checkpoint(self) -> None:
        for org in self.orgs:
            if org not in self._last_save:
                continue
            stored = self.deployment.checkpoint(org)
            expected = self._last_save[org]
            actual = (stored.watermark, stored.window, stored.continuation_token) if stored else None
            if actual != expected:
                self.violations.append(
                    f"org {org}: the stored checkpoint {actual} is not the last one a run saved {expected}"
                )

    # -- results ------------------------------------------------------------------------------------

    def landed(self) -> Counter:
        return self.deployment.landed()

    def rows(self) -> list[dict[str, Any]]:
        return self.ingestion.rows

    def stored_dead_letters(self):
        return self.deployment.dead_letters()

    def accounting(self) -> Accounting:
        dead = {letter.key for letter in self.stored_dead_letters()}
        return account({org: self.api.events(org) for org in self.orgs}, self.forms, self.landed(), dead)


def record_figures(
    name: str,
    accounting: Accounting,
    dead_lettered: int,
    statuses: Sequence[str],
    note: str,
    kind: str = "clean",
) -> None:
    FIGURES.add(
        FigureRow(
            scenario=name,
            generated=accounting.generated,
            lost=accounting.lost,
            duplicated=accounting.duplicated,
            dead_lettered=dead_lettered,
            statuses=" → ".join(statuses) or "(no run)",
            note=note,
            kind=kind,
        )
    )


def _kind(scenario: Scenario) -> str:
    return "finding" if scenario.finding else "allowed" if scenario.duplicates_allowed else "clean"


def _note(scenario: Scenario, extra: str = "") -> str:
    notes = [extra] if extra else []
    if scenario.duplicates_allowed:
        notes.append(f"duplicates allowed: {scenario.duplicates_allowed}")
    if scenario.finding:
        notes.append("FINDING (xfail): " + scenario.finding.removeprefix("finding: "))
    return "; ".join(notes)


def play_and_check(world: World, scenario: Scenario) -> Accounting:
    """Play the scenario, then check the invariants; the figures are recorded either way."""
    try:
        scenario.play(world)
    except BaseException as error:
        record_figures(
            scenario.name,
            world.accounting(),
            len(world.stored_dead_letters()),
            [*world.statuses, f"raised {type(error).__name__}"],
            _note(scenario),
            _kind(scenario),
        )
        raise
    return check_invariants(world, scenario)


def check_invariants(world: World, scenario: Scenario) -> Accounting:
    """Record the scenario's figures, then assert the four invariants."""
    accounting = world.accounting()
    stored = world.stored_dead_letters()
    record_figures(scenario.name, accounting, len(stored), world.statuses, _note(scenario), _kind(scenario))

    assert world.violations == [], "\n".join(world.violations)
    assert accounting.lost == 0, f"{accounting.lost} events lost, e.g. {accounting.lost_examples[:3]}"
    assert accounting.phantoms == 0, f"{accounting.phantoms} rows belong to no source event"
    assert accounting.new_id_duplicates == 0, (
        f"{accounting.new_id_duplicates} copies landed under a different EventId_s than their twin"
    )
    if not scenario.duplicates_allowed:
        assert accounting.same_id_duplicates == 0, f"{accounting.same_id_duplicates} duplicates without a crash"
    assert world.dead_lettered_ids <= {letter.key for letter in stored}, "a refused row is not in the durable store"
    assert len(stored) == scenario.dead_letters, [letter.reason for letter in stored]
    assert world.statuses and world.statuses[-1].split("/") == ["ok"] * len(world.orgs), world.statuses
    for org in world.orgs:
        cursor = world.deployment.checkpoint(org)
        newest = max((event["timestamp"] for event in world.api.events(org)), default=0)
        assert cursor is not None and cursor.window is None and cursor.watermark > newest, "not caught up"
    return accounting


# -- reading the stores raw, for the security checks ---------------------------------------------


def raw_entities(connection_string: str, table_name: str) -> list[dict[str, Any]]:
    """Every entity of a table with every property, as stored."""
    table = TableClient.from_connection_string(connection_string, table_name=table_name)
    try:
        return [dict(entity) for entity in table.list_entities()]
    except Exception:  # the table was never created
        return []


def entity_text(entity: Mapping[str, Any]) -> str:
    """Everything an entity holds, as text; gzip'd row chunks are inflated first."""
    parts = []
    chunks = []
    for name, value in entity.items():
        raw = getattr(value, "value", value)
        if name.startswith("Row") and name[3:].isdigit():
            chunks.append((int(name[3:]), bytes(raw)))
        elif isinstance(raw, bytes | bytearray):
            parts.append(bytes(raw).decode("latin-1"))
        else:
            parts.append(f"{name}={raw}")
    if chunks:
        packed = b"".join(chunk for _, chunk in sorted(chunks))
        parts.append(gzip.decompress(packed).decode("utf-8", "replace"))
    return "\n".join(parts)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `condition` without sleeping (an Event wait), up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        pause.wait(0.01)


def kill_cli_when(deployment: Deployment, reached: Callable[[], bool], *args: str, what: str) -> str:
    """Start `python -m shared ARGS`, SIGKILL it as soon as `reached()`; its output."""
    process = start_cli(deployment, *args)
    try:
        wait_until(lambda: reached() or process.poll() is not None, timeout=30, what=what)
        assert process.poll() is None, f"{args[0]} ended before {what}: {process.communicate()}"
        process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    return stdout + stderr
