"""`python -m shared`: run, backfill, preview, checkpoint, deadletter and demo.

Exit status: 0 success, 1 a run that did not complete (the reason on one line),
2 bad settings or arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from tqdm import tqdm

from shared.checkpoint_store import CheckpointStore, CheckpointUnavailable, CursorKey
from shared.cursor import Cursor
from shared.logs import quiet_library_logs
from shared.pipeline import INVALID_EVENT_PREFIX, SETTLE_DELAY_SECONDS, CollectionReport, backfill_collection
from shared.ports import DeadLetterUnavailable, SourceError
from shared.settings import SettingsError, load_settings, org_name_problem, parse_duration
from shared.transform import InvalidEvent, encode_row, iso_utc, normalize


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="one poll cycle of every org, exactly what the timer runs")

    backfill = commands.add_parser("backfill", help="send a past time range; resumable; leaves the live checkpoint")
    backfill.add_argument("--since", required=True, help="start: 2026-10-01, 2026-10-01T00:00:00Z, Unix time or 30d")
    backfill.add_argument("--until", help="end (default: where live collection of the org began)")
    backfill.add_argument("--org", action="append", help="only this org (repeatable; default: PULUMI_ORGS)")

    preview = commands.add_parser("preview", help="fetch and transform; print rows as JSON lines; send nothing")
    preview.add_argument("--org", action="append", help="only this org (default: PULUMI_ORGS)")
    preview.add_argument("--since", default="1h", help="start (default: 1h ago)")
    preview.add_argument("--until", help="end (default: now)")
    preview.add_argument("--limit", type=int, default=20, help="at most this many rows per org (default 20)")

    checkpoint = commands.add_parser("checkpoint", help="show or reset checkpoints")
    checkpoint_commands = checkpoint.add_subparsers(dest="action", required=True)
    show = checkpoint_commands.add_parser("show", help="print checkpoints as JSON lines")
    show.add_argument("--org", help="only this org's live checkpoint")
    reset = checkpoint_commands.add_parser("reset", help="restart an org's live collection")
    reset.add_argument("--org", required=True)
    reset.add_argument("--to", help="resume from this time (default: forget it; next run starts INITIAL_LOOKBACK back)")

    deadletter = commands.add_parser("deadletter", help="rows Logs Ingestion refused")
    deadletter_commands = deadletter.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "print refused rows and reasons"),
        ("replay", "send them again; remove those accepted"),
    ):
        sub = deadletter_commands.add_parser(name, help=text)
        sub.add_argument("--org")

    demo = commands.add_parser("demo", help="the whole path on local stand-ins; no Azure or Pulumi account")
    demo.add_argument("--state-dir", default=".connector-state", help="where the demo keeps its local checkpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    quiet_library_logs()
    args = build_parser().parse_args(argv)
    try:
        _check_org_options(args)
        return _dispatch(args)
    except (SettingsError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (SourceError, CheckpointUnavailable, DeadLetterUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from shared.demo import run_demo

        return run_demo(args.state_dir)
    if args.command == "preview":
        return _preview(args)
    if args.command == "checkpoint":
        return _checkpoint(args)
    if args.command == "deadletter":
        return _deadletter(args)

    from shared.wiring import connector_from_environment

    connector = connector_from_environment()
    if args.command == "run":
        return _finish(connector.run_once())
    return _backfill(connector, args)


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
    given = getattr(args, "org", None)
    for org in [given] if isinstance(given, str) else given or []:
        if problem := org_name_problem(org):
            raise UsageError(f"--org: {problem}")


def _backfill(connector, args: argparse.Namespace) -> int:
    now = int(time.time())
    since = parse_time(args.since, now)
    reports = []
    for org in args.org or connector.settings.source.orgs:
        until = parse_time(args.until, now) if args.until else _live_origin(connector.collector.checkpoints, org, now)
        if until <= since:
            raise UsageError(f"backfill of org {org!r}: --until ({iso_utc(until)}) is not after --since")
        collection = backfill_collection(org, since, until)
        with tqdm(total=until - since, unit="s", desc=f"backfill {org}", unit_scale=True, file=sys.stderr) as bar:

            def show(cursor: Cursor, bar: tqdm = bar) -> None:
                bar.update(cursor.watermark - since - bar.n)

            connector.collector.progress.append(show)
            try:
                reports.append(connector.collector.collect(collection))
            finally:
                connector.collector.progress.remove(show)
    return _finish(reports)


def _live_origin(checkpoints: CheckpointStore, org: str, now: int) -> int:
    """Where live collection of the org began, so a backfill ends where live took over."""
    cursor, _ = checkpoints.load(CursorKey.live(org))
    return cursor.origin if cursor else now - SETTLE_DELAY_SECONDS


def _preview(args: argparse.Namespace) -> int:
    from shared.catalog import default_catalog
    from shared.pulumi_source import PulumiAuditSource

    settings = load_settings(os.environ, parts=frozenset({"source"})).source
    now = int(time.time())
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now
    source = PulumiAuditSource(settings.pulumi_api_url, settings.pulumi_token)
    catalog = default_catalog()
    for org in args.org or settings.orgs:
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


def _stores(parts: frozenset[str]):
    """The settings of `parts`, the checkpoint store and the dead-letter store."""
    from shared.wiring import table_stores

    settings = load_settings(os.environ, parts=parts)
    return (settings, *table_stores(settings))


def _checkpoint(args: argparse.Namespace) -> int:
    _, checkpoints, _ = _stores(frozenset({"store"}))
    now = int(time.time())
    if args.action == "show":
        keys = [CursorKey.live(args.org)] if args.org else sorted(checkpoints.keys(), key=lambda k: (k.kind, k.name))
        for key in keys:
            cursor, _ = checkpoints.load(key)
            if cursor is None:
                print(json.dumps({"kind": key.kind, "name": key.name, "checkpoint": None}))
                continue
            print(
                json.dumps(
                    {
                        "kind": key.kind,
                        "name": key.name,
                        "watermark": iso_utc(cursor.watermark),
                        "origin": iso_utc(cursor.origin),
                        "window": [iso_utc(cursor.window.start), iso_utc(cursor.window.end)] if cursor.window else None,
                        "mid_window": cursor.continuation_token is not None,
                        "ledger_entries": len(cursor.ledger),
                        "lag_seconds": cursor.lag_seconds(now),
                    }
                )
            )
        return 0
    key = CursorKey.live(args.org)
    if args.to is None:
        checkpoints.delete(key)
        print(f"checkpoint of org {args.org!r} removed; the next run starts INITIAL_LOOKBACK back")
        return 0
    _, etag = checkpoints.load(key)
    checkpoints.save(key, Cursor.starting_at(parse_time(args.to, now)), etag)
    print(f"checkpoint of org {args.org!r} set to {iso_utc(parse_time(args.to, now))}")
    return 0


def _deadletter(args: argparse.Namespace) -> int:
    if args.action == "list":
        _, _, dead_letters = _stores(frozenset({"store"}))
        for letter in dead_letters.list(args.org):
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
    from shared.ports import SinkUnavailable
    from shared.wiring import azure_credential, ingestion_sink

    settings, _, dead_letters = _stores(frozenset({"store", "sink"}))
    sink = ingestion_sink(settings.sink, azure_credential(settings))
    # Events that could not become rows need a person, not a replay.
    letters = [letter for letter in dead_letters.list(args.org) if not letter.key.startswith(INVALID_EVENT_PREFIX)]
    try:
        refused = {id(item.row) for item in sink.send([encode_row(letter.row) for letter in letters])}
    except SinkUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    accepted = [letter for letter in letters if id(letter.row) not in refused]
    for letter in accepted:
        dead_letters.remove(letter)
    print(
        f"replayed {len(accepted)} of {len(letters)} dead-lettered rows; {len(letters) - len(accepted)} still refused"
    )
    return 0 if len(accepted) == len(letters) else 1
