"""`python -m shared`: run, backfill, preview, checkpoint, deadletter and demo.

Settings come from the environment and, for what it does not set, from the `Values` of
`local.settings.json` in the current folder (the file `func start` reads), so one file
serves both.

Exit status: 0 success (an org another run holds is skipped, not failed), 1 a run that
did not complete (the reason on one line), 2 bad settings or arguments, 130 or 143 stopped by
SIGINT or SIGTERM (`run`, `backfill` and `deadletter replay` save what was accepted first).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from shared.cursor import Cursor
from shared.delivery import LIVE, describe, plan_reset
from shared.graceful_stop import GracefulStop
from shared.logs import quiet_library_logs
from shared.pipeline import (
    INVALID_EVENT_PREFIX,
    LEASE_SECONDS,
    SETTLE_DELAY_SECONDS,
    Collection,
    CollectionReport,
    collect_at_once,
    plan_backfill_lanes,
)
from shared.ports import DeadLetterUnavailable, LeaseHeld, SourceError, StateConflict, StateUnavailable
from shared.settings import SettingsError, load_settings, org_name_problem, parse_duration
from shared.transform import InvalidEvent, current_row, encode_row, iso_utc, normalize

LOCAL_SETTINGS_FILE = "local.settings.json"
EXIT_CODES = (
    "exit status: 0 every org ok or skipped (another run holds it), 1 an org failed, 2 bad settings or arguments, "
    "130/143 stopped by SIGINT/SIGTERM after saving what was accepted"
)


class UsageError(ValueError):
    """A command-line argument is malformed."""


def parse_time(text: str, now: int) -> int:
    """Unix seconds from '2026-11-01', '2026-11-01T12:00:00Z', a Unix time, or '7d' (ago)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return now - int(parse_duration(text).total_seconds())
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is not a time: use 2026-11-01, 2026-11-01T12:00:00Z, a Unix time or 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def describe_seconds(seconds: int) -> str:
    days, rest = divmod(max(0, seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m" if days else f"{hours}h {rest // 60}m {rest % 60}s"


def cli_environment(environ: Mapping[str, str], folder: Path) -> dict[str, str]:
    """The environment, over the `Values` of local.settings.json in `folder` when there is one."""
    path = folder / LOCAL_SETTINGS_FILE
    if not path.is_file():
        return dict(environ)
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (ValueError, AttributeError, OSError) as error:
        raise UsageError(f"{path} is not a local.settings.json with a 'Values' object: {error}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: 'Values' must be an object of setting names to strings")
    return {**{str(name): str(value) for name, value in values.items()}, **environ}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__.splitlines()[0], epilog=EXIT_CODES)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run", help="one poll cycle of every org, exactly what the timer runs", description=EXIT_CODES
    )

    backfill = commands.add_parser(
        "backfill",
        help="send what is not yet delivered of a past range; rerun to resume",
        description="Send the parts of a range that no run delivered yet. " + EXIT_CODES,
    )
    backfill.add_argument("--since", required=True, help="start: 2026-10-01, 2026-10-01T00:00:00Z, Unix time or 30d")
    backfill.add_argument("--until", help="end (default: now; never past where live collection stands)")
    backfill.add_argument("--org", action="append", help="only this org (repeatable; default: PULUMI_ORGS)")
    backfill.add_argument(
        "--resend", action="store_true", help="send the whole range again, delivered or not (same EventId_s)"
    )

    preview = commands.add_parser("preview", help="fetch and transform; print rows as JSON lines; send nothing")
    preview.add_argument("--org", action="append", help="only this org (repeatable; default: PULUMI_ORGS)")
    preview.add_argument("--since", default="1h", help="start (default: 1h ago)")
    preview.add_argument("--until", help="end (default: now)")
    preview.add_argument("--limit", type=int, default=20, help="at most this many rows per org (default 20)")

    checkpoint = commands.add_parser("checkpoint", help="show or move the delivery state of orgs")
    checkpoint_commands = checkpoint.add_subparsers(dest="action", required=True)
    show = checkpoint_commands.add_parser(
        "show", help="watermark, lag, delivered ranges, gaps, running backfills and lease holders"
    )
    show.add_argument("--org", help="only this org (default: every org of PULUMI_ORGS)")
    show.add_argument("--json", action="store_true", help="one JSON object per org, for machines")
    reset = checkpoint_commands.add_parser(
        "reset", help="move an org's live collection: back re-reads from T, forward leaves a gap for backfill"
    )
    reset.add_argument("--org", required=True, help="the org whose live collection moves")
    reset.add_argument("--to", required=True, help="the time live collection continues from")

    deadletter = commands.add_parser("deadletter", help="rows Logs Ingestion refused")
    deadletter_commands = deadletter.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "print refused rows and reasons"),
        ("replay", "send them again; remove those accepted"),
    ):
        sub = deadletter_commands.add_parser(name, help=text)
        sub.add_argument("--org", help="only this org (default: every org)")

    demo = commands.add_parser("demo", help="the whole path on local stand-ins; no Azure or Pulumi account")
    demo.add_argument("--state-dir", default=".connector-state", help="where the demo keeps its local files")
    demo.add_argument("--vault", action="store_true", help="read each org's token from a local Key Vault stand-in")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    quiet_library_logs()
    args = build_parser().parse_args(argv)
    try:
        _check_org_options(args)
        environ = cli_environment(os.environ, Path.cwd())
        return _dispatch(args, environ)
    except (SettingsError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (SourceError, StateUnavailable, StateConflict, DeadLetterUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, environ: dict[str, str]) -> int:
    if args.command == "demo":
        from shared.demo import run_demo

        return run_demo(args.state_dir, args.vault)
    if args.command == "preview":
        return _preview(args, environ)
    if args.command == "checkpoint":
        return _checkpoint(args, environ)
    if args.command == "deadletter":
        return _deadletter(args, environ)

    from shared.wiring import connector_from_environment

    stop = GracefulStop(LEASE_SECONDS)
    stop.install()
    connector = connector_from_environment(environ, stop.requested)
    if args.command == "run":
        status = _finish(connector.run_once())
        again = "the next run"
    else:
        status = _backfill(connector, args, stop.requested)
        again = "running the same backfill again"
    return _stopped(stop, again) if stop.requested.is_set() else status


def _stopped(stop: GracefulStop, again: str) -> int:
    print(stop.resume_line(again), file=sys.stderr)
    return stop.exit_status or 1


def _finish(reports: list[CollectionReport]) -> int:
    for report in reports:
        print(report.summary())
    failed = [report for report in reports if report.failed]
    if failed:
        print("error: " + "; ".join(f"org {report.org!r}: {report.error}" for report in failed), file=sys.stderr)
        return 1
    return 0


def _check_org_options(args: argparse.Namespace) -> None:
    """Every --org names a Pulumi org, so it can never change a request path or a table key."""
    for org in _given_orgs(args):
        if problem := org_name_problem(org):
            raise UsageError(f"--org: {problem}")


def _given_orgs(args: argparse.Namespace) -> list[str]:
    given = getattr(args, "org", None)
    return [given] if isinstance(given, str) else list(given or [])


def _chosen_orgs(args: argparse.Namespace, configured: Sequence[str]) -> list[str]:
    """The --org options, each one of PULUMI_ORGS, or every org of PULUMI_ORGS."""
    given = _given_orgs(args)
    unknown = [org for org in given if org not in configured]
    if unknown:
        raise UsageError(
            f"--org {', '.join(unknown)}: not in PULUMI_ORGS ({', '.join(configured)}); "
            "add it to PULUMI_ORGS first, so live collection owns it too"
        )
    return given or list(configured)


def _backfill(connector, args: argparse.Namespace, stop: threading.Event) -> int:
    settings = connector.settings
    collector = connector.collector
    now = int(collector.wall_clock())
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now - SETTLE_DELAY_SECONDS
    requested_until = until if args.until else now  # the end asked for; its last minute may be too recent
    if until <= since:
        raise UsageError(f"--until ({iso_utc(until)}) is not after --since ({iso_utc(since)})")
    reports: list[CollectionReport] = []
    lookback = int(settings.source.initial_lookback.total_seconds())
    for org in _chosen_orgs(args, settings.source.orgs):
        if stop.is_set():
            break
        try:
            plan, lanes = plan_backfill_lanes(
                collector.state,
                org,
                since,
                until,
                now,
                lookback,
                args.resend,
                settings.source.backfill_parallelism,
                collector.holder_ended,
            )
        except LeaseHeld as held:
            reports.append(_live_cursor_being_created(org, held))
            continue
        print(
            f"backfill {org}: [{iso_utc(plan.since)}, {iso_utc(plan.until)}) "
            f"{describe_seconds(plan.already_delivered_seconds)} of it already delivered",
            file=sys.stderr,
        )
        if plan.until < until:
            print(f"  live collection covers {iso_utc(plan.until)} onwards; the backfill stops there", file=sys.stderr)
        if plan.resend_seconds:
            print(
                f"  --resend: re-sends {describe_seconds(plan.resend_seconds)} of delivered time, "
                "with the same EventId_s",
                file=sys.stderr,
            )
        for name, lease in plan.busy:
            reports.append(
                CollectionReport(
                    org=org,
                    collection=name,
                    status="skipped",
                    error=f"another run works on it: {lease.holder} until {iso_utc(lease.expires_at)}",
                )
            )
        if lanes:
            reports += _run_lanes(collector, lanes, settings.source.backfill_parallelism)
        else:
            print(f"  nothing to send for {org}", file=sys.stderr)
        settled_before = now - SETTLE_DELAY_SECONDS
        tail = collector.state.load_org(org).too_recent(since, requested_until, settled_before)
        if tail and not stop.is_set():
            print(
                f"  the last {tail.seconds()} s are too recent (the API shows events up to "
                f"{SETTLE_DELAY_SECONDS} s late); run again after {iso_utc(tail.ranges[-1][1] + SETTLE_DELAY_SECONDS)}",
                file=sys.stderr,
            )
    connector.report_health(reports)
    return _finish(reports)


def _live_cursor_being_created(org: str, held: LeaseHeld) -> CollectionReport:
    """Another run is creating the live cursor a backfill of `org` ends at: not a failure."""
    return CollectionReport(
        org=org,
        status="skipped",
        error=f"another run is creating the org's live cursor ({held}); run the backfill again once it is done",
    )


def _run_lanes(collector, lanes: list[Collection], parallelism: int) -> list[CollectionReport]:
    """Read up to `parallelism` lanes of one org at once, under one progress bar for the whole
    range: the events sent, their rate, and the date every lane has reached (the lowest date
    of the lanes still reading)."""
    org = lanes[0].org
    state = collector.state.load_org(org)
    reached = {
        lane.name: state.lanes[lane.name].watermark if lane.name in state.lanes else lane.first_cursor(state).watermark
        for lane in lanes
    }
    reading = set(reached)
    counted = dict.fromkeys(reached, 0)
    lock = threading.Lock()
    print(f"  {len(lanes)} lanes, {min(parallelism, len(lanes))} at a time (BACKFILL_PARALLELISM)", file=sys.stderr)
    with tqdm(unit=" events", desc=f"backfill {org}", file=sys.stderr, dynamic_ncols=True) as bar:

        def show_date() -> None:
            lowest = min((reached[name] for name in reading), default=max(reached.values()))
            bar.set_postfix_str(f"reached {iso_utc(lowest)}", refresh=False)

        def show(collection: Collection, cursor: Cursor, report: CollectionReport) -> None:
            if collection.name not in reached:
                return
            with lock:
                handled = report.sent + report.dead_lettered
                bar.update(handled - counted[collection.name])
                counted[collection.name] = handled
                reached[collection.name] = cursor.watermark
                if cursor.finished:
                    reading.discard(collection.name)
                show_date()

        show_date()
        collector.progress.append(show)
        try:
            reports = collect_at_once(collector, lanes, parallelism)
        finally:
            collector.progress.remove(show)
    sent = sum(report.sent for report in reports)
    skipped = sum(report.duplicates for report in reports)
    dead = sum(report.dead_lettered for report in reports)
    print(
        f"backfill {org}: sent {sent}, skipped {skipped} already delivered, dead-lettered {dead}",
        file=sys.stderr,
    )
    return reports


def _preview(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from shared.catalog import default_catalog
    from shared.pulumi_source import PulumiAuditSource
    from shared.wiring import pulumi_tokens

    settings = load_settings(environ, parts=frozenset({"source"}))
    now = int(time.time())
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now
    source = PulumiAuditSource(settings.source.pulumi_api_url, pulumi_tokens(settings))
    catalog = default_catalog()
    for org in _chosen_orgs(args, settings.orgs):
        printed, token, occurrences = 0, None, {}
        while printed < args.limit:
            page = source.fetch_page(org, since, until, token)
            for event in page.events:
                try:
                    normalized = normalize(org, event, catalog)
                    occurrences[normalized.identity] = occurrences.get(normalized.identity, 0) + 1
                    row = normalized.row(occurrences[normalized.identity])
                except InvalidEvent as error:
                    print(f"warning: org {org!r}: {error}", file=sys.stderr)
                    continue
                print(json.dumps(row, ensure_ascii=False))
                printed += 1
                if printed >= args.limit:
                    break
            token = page.next_token
            if not token:
                break
    return 0


def _stores(environ: Mapping[str, str], parts: frozenset[str]):
    """The settings of `parts` (always with PULUMI_ORGS), the state store and the dead-letter store."""
    from shared.wiring import table_stores

    settings = load_settings(environ, parts=parts | {"orgs", "store"})
    return (settings, *table_stores(settings))


def _checkpoint(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings, state, _ = _stores(environ, frozenset())
    now = int(time.time())
    orgs = _chosen_orgs(args, settings.orgs)
    if args.action == "show":
        views = [describe(state.load_org(org), now) for org in orgs]
        if args.json:
            for view in views:
                print(json.dumps(view))
        else:
            print("\n\n".join(_render(view) for view in views))
        return 0
    return _reset(state, orgs[0], parse_time(args.to, now), now)


def _render(view: dict) -> str:
    def span(pair) -> str:
        return f"{iso_utc(pair[0])} .. {iso_utc(pair[1])}"

    if view["watermark"] is None:
        head = f"{view['org']}: no live collection yet (the next run starts INITIAL_LOOKBACK back)"
    else:
        head = (
            f"{view['org']}: watermark {iso_utc(view['watermark'])}, lag {describe_seconds(view['lag_seconds'])}"
            + (", mid-window" if view["mid_window"] else "")
        )
    lines = [head]
    lease = view["live_lease"]
    lines.append(f"  live lease   {lease['holder']} until {iso_utc(lease['expires_at'])}" if lease else
                 "  live lease   free")
    lines += [f"  delivered    {span(pair)}" for pair in view["delivered"]] or ["  delivered    nothing yet"]
    lines += [f"  gap          {span(pair)}  (fill it with: backfill --org {view['org']} --since "
              f"{iso_utc(pair[0])} --until {iso_utc(pair[1])})" for pair in view["gaps"]]
    for lane in view["backfills"]:
        holder = f"run by {lane['holder']} until {iso_utc(lane['expires_at'])}" if lane["holder"] else "interrupted"
        lines.append(f"  backfill     {span(lane['range'])} reached {iso_utc(lane['reached'])}, {holder}")
    return "\n".join(lines)


def _live_lease(state, org: str, now: int):
    """The org's live lease for a reset, taken over at once from a process of this host that ended."""
    from shared.wiring import holder_process_ended, run_holder

    holder = run_holder()
    try:
        return state.acquire_lease(org, LIVE, holder, now, LEASE_SECONDS)
    except LeaseHeld as held:
        if not holder_process_ended(held.holder):
            raise
        lease = state.acquire_lease(org, LIVE, holder, now, LEASE_SECONDS, held.holder)
        print(f"org {org!r}: took over the live lease of {held.holder}, whose process ended")
        return lease


def _reset(state, org: str, target: int, now: int) -> int:
    try:
        lease = _live_lease(state, org, now)
    except LeaseHeld as held:
        print(f"error: org {org!r} is being collected right now ({held}); try again then", file=sys.stderr)
        return 1
    try:
        current = state.load_org(org)
        plan = plan_reset(current, target)
        stored = current.cursors.get(LIVE)
        if plan.reread_seconds:
            print(
                f"org {org!r}: moving back re-reads {describe_seconds(plan.reread_seconds)} of already delivered "
                "time; events the overlap still remembers are skipped, the others are sent again with the same "
                "EventId_s"
            )
        state.replace_live(org, plan.cursor, stored.etag if stored else None, plan.folded, current.folded_etag)
    finally:
        state.release_lease(org, LIVE, lease)
    if current.live is None:
        print(f"org {org!r}: live collection starts at {iso_utc(target)}")
    else:
        print(f"org {org!r}: live collection moved from {iso_utc(plan.previous)} to {iso_utc(target)}")
    if plan.gap_seconds:
        print(
            f"org {org!r}: this leaves {describe_seconds(plan.gap_seconds)} undelivered from "
            f"{iso_utc(plan.previous)}; fill it with: backfill --org {org} --since {iso_utc(plan.previous)} "
            f"--until {iso_utc(target)}"
        )
    return 0


def _deadletter(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.action == "list":
        settings, _, dead_letters = _stores(environ, frozenset())
        orgs = _chosen_orgs(args, settings.orgs) if args.org else [None]
        letters = [letter for org in orgs for letter in dead_letters.list(org)]
        if not letters:
            print("no dead-lettered rows" + (f" for org {args.org!r}" if args.org else ""), file=sys.stderr)
        for letter in letters:
            print(
                json.dumps(
                    {
                        "org": letter.org,
                        "key": letter.key,
                        "failed_at": letter.failed_at,
                        "reason": letter.reason,
                        "row": letter.row,
                    },
                    ensure_ascii=False,
                )
            )
        return 0
    from shared.catalog import default_catalog
    from shared.ingestion_sink import batches
    from shared.ports import SinkUnavailable
    from shared.wiring import azure_credential, ingestion_sink

    stop = GracefulStop(LEASE_SECONDS)
    stop.install()
    settings, _, dead_letters = _stores(environ, frozenset({"sink"}))
    orgs = _chosen_orgs(args, settings.orgs) if args.org else [None]
    sink = ingestion_sink(settings.sink, azure_credential(settings))
    # Events that could not become rows need a person, not a replay.
    letters = [
        letter for org in orgs for letter in dead_letters.list(org) if not letter.key.startswith(INVALID_EVENT_PREFIX)
    ]
    # A row dead-lettered by an earlier version is sent in today's format, under its own EventId_s.
    catalog = default_catalog()
    rows = [current_row(letter.row, catalog) for letter in letters]
    by_row = {id(row): letter for letter, row in zip(letters, rows, strict=True)}
    tried = accepted = 0
    try:
        # A request at a time, so a stop waits for one request at most.
        for batch in batches([encode_row(row) for row in rows]):
            if stop.requested.is_set():
                break
            refused = {id(item.row) for item in sink.send(batch)}
            tried += len(batch)
            for encoded in batch:
                if id(encoded.row) not in refused:
                    dead_letters.remove(by_row[id(encoded.row)])
                    accepted += 1
    except SinkUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    untried = f"; {len(letters) - tried} not tried" if tried < len(letters) else ""
    print(f"replayed {accepted} of {len(letters)} dead-lettered rows; {tried - accepted} still refused{untried}")
    if stop.requested.is_set():
        print(stop.resume_line("running deadletter replay again", leases=False), file=sys.stderr)
        return stop.exit_status or 1
    return 0 if accepted == len(letters) else 1
