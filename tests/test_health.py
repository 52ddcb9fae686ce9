"""Health rows: one row per org per run in PulumiAuditConnectorHealth_CL, sent after the run's
collections through the DCR's health stream. The row builder alone, then the connector, the CLI
and the demo through the real LogsIngestionClient against the stand-ins and Azurite: what the
ingestion stand-in received on the health stream is what Sentinel would hold."""

from __future__ import annotations

import itertools
import logging
import re
import socket
import time
from datetime import datetime

from shared import __version__
from shared.delivery import lane_name
from shared.health import MAX_ERROR_CHARS, health_rows, one_line
from shared.pipeline import CollectionReport
from shared.schema import HEALTH_TABLE, RUN_KINDS
from shared.standins import Fault, simulate_events
from tests.harness import run_demo, seed_recent

ENDED_AT = 1_780_000_000  # when the runs of the pure specs end
RUN_ID = "0123456789abcdef0123456789abcdef"
PYTHON_TYPES = {"string": str, "long": int, "datetime": str}
INSTANCE = "f3a9c1d2e4b5a6978877665544332211f3a9c1d2e4b5a6978877665544332211"
NOT_SENT = re.compile(r"health rows of run [0-9a-f]{32} not sent, the run carries on: (?P<reason>.+)")


def build(*reports: CollectionReport, ended_at: int = ENDED_AT) -> list[dict]:
    return health_rows(reports, run_id=RUN_ID, ended_at=ended_at, version="9.9.9", host="worker-1")


def iso_seconds(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def health_of(deployment) -> list[dict]:
    return deployment.ingestion.rows_of(HEALTH_TABLE.stream)



def as_reported(row: dict) -> tuple:
    """What a health row says about its org, in the order of a run's summary line."""
    return (
        row["OrgName_s"],
        row["Status_s"],
        row["EventsFetched_d"],
        row["EventsSent_d"],
        row["DuplicatesSkipped_d"],
        row["DeadLettered_d"],
        row["Truncated_d"],
        row["LagSeconds_d"],
    )


def summary_of(report: CollectionReport) -> tuple:
    return (
        report.org,
        report.status,
        report.fetched,
        report.sent,
        report.duplicates,
        report.dead_lettered,
        report.truncated_rows,
        report.lag_seconds,
    )


def warnings_and_above(caplog) -> list[tuple[str, str, str]]:
    return [
        (record.name, record.levelname, record.getMessage())
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]


# == the row builder ===============================================================================


def test_a_row_has_every_column_of_the_health_table_with_its_type():
    report = CollectionReport(
        org="acme", fetched=12, sent=10, duplicates=2, pages=1, lag_seconds=75, watermark=ENDED_AT - 75
    )
    [row] = build(report)
    assert tuple(row) == HEALTH_TABLE.column_names
    for column in HEALTH_TABLE.columns:
        assert isinstance(row[column.name], PYTHON_TYPES[column.type]), column.name
        if column.values:
            assert row[column.name] in column.values, column.name
    assert iso_seconds(row["TimeGenerated"]) == ENDED_AT and iso_seconds(row["WatermarkTime_t"]) == ENDED_AT - 75


def test_a_row_carries_the_reports_counts_and_the_runs_identity():
    report = CollectionReport(
        org="acme", fetched=40, sent=35, duplicates=3, dead_lettered=2, truncated_rows=1, lag_seconds=90, watermark=1
    )
    [row] = build(report)
    assert as_reported(row) == summary_of(report)
    assert (row["RunId_s"], row["RunKind_s"], row["ConnectorVersion_s"], row["Host_s"]) == (
        RUN_ID,
        "live",
        "9.9.9",
        "worker-1",
    )
    assert row["Error_s"] == ""


def test_every_org_of_a_run_gets_a_row_under_the_same_run_id():
    reports = [CollectionReport(org=org) for org in ("acme", "globex", "initech")]
    rows = build(*reports)
    assert [row["OrgName_s"] for row in rows] == ["acme", "globex", "initech"]
    assert {row["RunId_s"] for row in rows} == {RUN_ID}


def test_a_backfill_lane_is_a_backfill_row():
    [row] = build(CollectionReport(org="acme", collection=lane_name(ENDED_AT - 86400, ENDED_AT), sent=60))
    assert row["RunKind_s"] == "backfill" and row["EventsSent_d"] == 60


def test_an_org_that_failed_before_its_state_was_read_has_no_lag_and_no_watermark():
    [row] = build(CollectionReport(org="acme", status="failed", error="cannot read the state of org 'acme'"))
    assert row["LagSeconds_d"] is None and row["WatermarkTime_t"] is None
    assert row["Status_s"] == "failed" and row["Error_s"] == "cannot read the state of org 'acme'"


def test_an_error_is_kept_on_one_line_and_capped():
    error = "Pulumi API answered 500 for org 'acme':\n  Traceback-like\tdetail " + "x" * 5000
    [row] = build(CollectionReport(org="acme", status="failed", error=error))
    assert "\n" not in row["Error_s"] and "\t" not in row["Error_s"]
    assert row["Error_s"].startswith("Pulumi API answered 500 for org 'acme': Traceback-like detail xxx")
    assert len(row["Error_s"]) == MAX_ERROR_CHARS and row["Error_s"].endswith("...")


def test_a_short_error_is_kept_whole():
    assert one_line("another run works on it: h:1:ab until 2026-01-01T00:00:00Z") == (
        "another run works on it: h:1:ab until 2026-01-01T00:00:00Z"
    )


def test_both_kinds_of_collection_are_kinds_the_health_table_declares():
    live, lane = CollectionReport(org="acme"), CollectionReport(org="acme", collection=lane_name(1, 2))
    assert [row["RunKind_s"] for row in build(live, lane)] == list(RUN_KINDS)


# == live runs through the real connector ==========================================================


def test_a_run_of_healthy_orgs_sends_one_ok_row_per_org(deployment, now):
    deployment.orgs = ("acme", "globex")
    deployment.extra["WEBSITE_INSTANCE_ID"] = INSTANCE
    seed_recent(deployment, "acme", 30)
    seed_recent(deployment, "globex", 40, seed_value=2)
    reports = deployment.connector().run_once()
    rows = health_of(deployment)
    assert [as_reported(row) for row in rows] == [summary_of(report) for report in reports]
    assert [(row["OrgName_s"], row["Status_s"], row["EventsSent_d"]) for row in rows] == [
        ("acme", "ok", 30),
        ("globex", "ok", 40),
    ]
    assert len({row["RunId_s"] for row in rows}) == 1
    assert {(row["RunKind_s"], row["ConnectorVersion_s"], row["Host_s"], row["Error_s"]) for row in rows} == {
        ("live", __version__, INSTANCE, "")
    }
    assert now <= iso_seconds(rows[0]["TimeGenerated"]) <= int(time.time())
    assert [iso_seconds(row["WatermarkTime_t"]) for row in rows] == [report.watermark for report in reports]


def test_each_run_has_its_own_run_id(deployment):
    seed_recent(deployment, "acme", 5)
    connector = deployment.connector()
    connector.run_once()
    connector.run_once()
    first, second = health_of(deployment)
    assert first["RunId_s"] != second["RunId_s"]
    assert (first["EventsSent_d"], second["EventsSent_d"]) == (5, 0)


def test_a_failing_org_gets_a_failed_row_with_its_error_next_to_the_ok_orgs(deployment):
    deployment.orgs = ("acme", "missing-org", "globex")
    seed_recent(deployment, "acme", 10)
    seed_recent(deployment, "globex", 20, seed_value=2)
    reports = deployment.connector().run_once()
    acme, missing, globex = health_of(deployment)
    assert [(row["OrgName_s"], row["Status_s"]) for row in (acme, missing, globex)] == [
        ("acme", "ok"),
        ("missing-org", "failed"),
        ("globex", "ok"),
    ]
    assert "404" in missing["Error_s"] and missing["Error_s"] == reports[1].error
    assert (missing["EventsFetched_d"], missing["EventsSent_d"]) == (0, 0)
    assert (acme["EventsSent_d"], globex["EventsSent_d"]) == (10, 20) and acme["Error_s"] == globex["Error_s"] == ""


def test_rows_the_service_refused_show_as_dead_lettered(deployment, now):
    events = simulate_events("acme", now - 3000, now - 120, 10, seed=1)
    poison = events[3]["description"] = "the one description the service refuses"
    deployment.pulumi_api.add_events("acme", events)
    deployment.ingestion.reject_rows(lambda row: row.get("Description_s") == poison)
    [report] = deployment.connector().run_once()
    [row] = health_of(deployment)
    assert (row["Status_s"], row["EventsSent_d"], row["DeadLettered_d"]) == ("ok", 9, 1)
    assert as_reported(row) == summary_of(report)


def test_an_org_another_run_holds_gets_a_skipped_row_naming_the_holder(deployment):
    deployment.orgs = ("acme", "globex")
    seed_recent(deployment, "acme", 5)
    seed_recent(deployment, "globex", 7, seed_value=2)
    deployment.state().acquire_lease("acme", "live", "other-host:42:abc", int(time.time()), 120)
    deployment.connector().run_once()
    acme, globex = health_of(deployment)
    assert (acme["Status_s"], acme["EventsFetched_d"], acme["EventsSent_d"]) == ("skipped", 0, 0)
    assert "other-host:42:abc" in acme["Error_s"]
    assert (globex["Status_s"], globex["EventsSent_d"]) == ("ok", 7)


def test_a_run_that_runs_out_of_time_gets_a_stopped_row(deployment):
    seed_recent(deployment, "acme", 30)
    deployment.pulumi_api.page_size = 10
    connector = deployment.connector()
    clock = itertools.count(0, 200)  # each look at the clock is 200 s later: the 8-minute budget ends mid-window
    connector.collector.monotonic = lambda: next(clock)
    [report] = connector.run_once()
    [row] = health_of(deployment)
    assert report.status == row["Status_s"] == "stopped"
    assert 0 < row["EventsSent_d"] == report.sent < 30


# == the health stream failing =====================================================================


def test_a_health_stream_answering_500_costs_no_event_and_is_one_warning_line(deployment, caplog):
    caplog.set_level(logging.INFO)
    seed_recent(deployment, "acme", 12)
    deployment.ingestion.faults.add(Fault.respond(500, times=None, match=lambda r: "ConnectorHealth" in r.path))
    [report] = deployment.connector().run_once()
    assert report.status == "ok" and report.sent == 12 and len(deployment.ingestion.rows) == 12
    assert health_of(deployment) == []
    [(logger, level, line)] = warnings_and_above(caplog)
    assert (logger, level) == ("shared.health", "WARNING")
    assert NOT_SENT.fullmatch(line)["reason"] == (
        "Logs Ingestion did not accept the rows after retries (500 InternalServerError "
        "An internal error occurred while processing the request.)"
    )
    assert [record.name for record in caplog.records if record.name.startswith("shared.")] == ["shared.health"]


def test_health_rows_the_service_refuses_are_one_warning_line_and_never_dead_lettered(deployment, caplog):
    caplog.set_level(logging.WARNING)
    deployment.orgs = ("acme", "globex")
    seed_recent(deployment, "acme", 3)
    seed_recent(deployment, "globex", 4, seed_value=2)
    deployment.ingestion.reject_rows(lambda row: "RunId_s" in row)
    reports = deployment.connector().run_once()
    assert [report.status for report in reports] == ["ok", "ok"] and len(deployment.ingestion.rows) == 7
    [(logger, level, line)] = warnings_and_above(caplog)
    assert (logger, level) == ("shared.health", "WARNING")
    assert re.fullmatch(
        r"health rows of run [0-9a-f]{32}: Logs Ingestion refused 2 of 2, the run carries on: "
        r"400 InvalidPayload Row 0 was refused by the data collection rule\.",
        line,
    )
    assert deployment.dead_letters() == []


def test_a_dcr_without_the_health_stream_names_the_setting_to_check(deployment, caplog):
    caplog.set_level(logging.WARNING)
    seed_recent(deployment, "acme", 3)
    deployment.extra["DCR_HEALTH_STREAM_NAME"] = "Custom-NotInThisDcr"
    [report] = deployment.connector().run_once()
    assert report.status == "ok" and len(deployment.ingestion.rows) == 3
    [(_, _, line)] = warnings_and_above(caplog)
    reason = NOT_SENT.fullmatch(line)["reason"]
    assert reason.startswith("Logs Ingestion has no such DCR or stream (404 NotFound")
    assert reason.endswith("check LOGS_INGESTION_ENDPOINT, DCR_IMMUTABLE_ID and DCR_HEALTH_STREAM_NAME")


def test_the_failure_an_org_already_reported_is_not_repeated(deployment, caplog):
    caplog.set_level(logging.WARNING)
    seed_recent(deployment, "acme", 3)
    deployment.ingestion.faults.add(Fault.respond(503, times=None))
    [report] = deployment.connector().run_once()
    assert report.failed and report.error.startswith("Logs Ingestion did not accept the rows after retries (503")
    [(_, _, line)] = warnings_and_above(caplog)
    assert NOT_SENT.fullmatch(line)["reason"] == "the same failure as org 'acme'"


# == the command line ==============================================================================


def test_the_cli_run_sends_the_health_rows_of_its_run(deployment):
    seed_recent(deployment, "acme", 8)
    result = deployment.run_cli("run")
    assert result.returncode == 0, result.stderr
    [row] = health_of(deployment)
    assert (row["OrgName_s"], row["RunKind_s"], row["Status_s"], row["EventsSent_d"]) == ("acme", "live", "ok", 8)
    assert row["Host_s"] == socket.gethostname()


def test_the_cli_run_exit_status_ignores_a_health_failure(deployment):
    seed_recent(deployment, "acme", 8)
    deployment.ingestion.faults.add(Fault.respond(503, times=None, match=lambda r: "ConnectorHealth" in r.path))
    result = deployment.run_cli("run")
    assert result.returncode == 0
    assert result.stdout.startswith("org=acme status=ok fetched=8 sent=8")
    [line] = result.stderr.splitlines()
    assert line.startswith("WARNING shared.health ") and NOT_SENT.fullmatch(line.removeprefix("WARNING shared.health "))
    assert len(deployment.ingestion.rows) == 8 and health_of(deployment) == []


def test_a_backfill_sends_one_backfill_row_per_lane(deployment, now):
    old = simulate_events("acme", now - 10 * 86400, now - 9 * 86400, 60, seed=9)
    deployment.pulumi_api.add_events("acme", old)
    result = deployment.run_cli("backfill", "--since", str(now - 10 * 86400), "--until", str(now - 9 * 86400 + 1))
    assert result.returncode == 0, result.stderr
    rows = health_of(deployment)
    assert len(rows) == len(result.stdout.splitlines()) >= 1  # one summary line per lane
    assert {(row["RunKind_s"], row["Status_s"]) for row in rows} == {("backfill", "ok")}
    assert len({row["RunId_s"] for row in rows}) == 1
    assert sum(row["EventsSent_d"] for row in rows) == 60 == len(deployment.ingestion.rows)


def test_a_backfill_lane_another_run_holds_gets_a_skipped_backfill_row(deployment, now):
    since, until = now - 10 * 86400, now - 9 * 86400
    deployment.extra["BACKFILL_PARALLELISM"] = "1"  # the range is one lane
    deployment.pulumi_api.add_events("acme", simulate_events("acme", since, until - 1, 20, seed=4))
    deployment.state().acquire_lease("acme", lane_name(since, until), "other-host:42:abc", int(time.time()), 120)
    result = deployment.run_cli("backfill", "--since", str(since), "--until", str(until))
    assert result.returncode == 0, result.stderr
    [row] = health_of(deployment)
    assert (row["RunKind_s"], row["Status_s"], row["EventsSent_d"]) == ("backfill", "skipped", 0)
    assert "other-host:42:abc" in row["Error_s"] and deployment.ingestion.rows == []


# == the demo ======================================================================================


def test_the_demo_shows_the_health_rows_it_sent(tmp_path):
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stderr
    shown = result.stdout.split(f"6 health rows in {HEALTH_TABLE.name}, one per org per run:\n", 1)[1]
    header, *lines = shown.splitlines()
    assert header.split() == ["run", "org", "kind", "status", "fetched", "sent", "repeats", "dead", "lag", "s", "host"]
    assert [line.split()[1:4] for line in lines] == [
        [org, "live", "ok"] for _ in range(2) for org in ("acme", "acme-labs", "globex")
    ]
    assert sum(int(line.split()[5]) for line in lines) == 930  # every row the demo sent, 300 + 10 per org
