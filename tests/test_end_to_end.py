"""The timer function, `python -m shared run` and a worker's connector forward events end to end
through the real SDK clients, the real DefaultAzureCredential and Azurite."""

from __future__ import annotations

import json
import time

import pytest
from azure.data.tables import TableClient
from azure.functions.timer import TimerRequest

from benchmarks.row_cost import old_format
from shared import __version__
from shared.catalog import default_catalog
from shared.dead_letter import TableDeadLetterStore
from shared.ports import MAX_BODY_BYTES, RefusedRow, SinkUnavailable
from shared.rebuild import rebuild
from shared.schema import HEALTH_TABLE
from shared.standins import simulate_events
from shared.transform import encode_row, to_row
from tests.harness import MANAGED_IDENTITY_CLIENT_ID, PULUMI_TOKEN, expected_ids, seed_recent


@pytest.fixture(scope="module")
def timer_function():
    import function_app

    [function] = function_app.app.get_functions()  # get_functions() may be called once per app
    return function



def test_the_timer_function_is_bound_to_the_schedule_setting_with_monitor_on(timer_function):
    [binding] = json.loads(timer_function.get_function_json())["bindings"]
    assert binding == {
        "direction": "IN",
        "type": "timerTrigger",
        "name": "timer",
        "schedule": "%TIMER_SCHEDULE%",
        "runOnStartup": False,
        "useMonitor": True,
    }


def test_the_timer_function_forwards_every_event_once_and_logs_a_summary(
    timer_function, deployment, monkeypatch, caplog
):
    caplog.set_level("INFO", logger="shared.run")
    events = seed_recent(deployment)
    for name, value in deployment.environ.items():
        monkeypatch.setenv(name, value)
    from shared.wiring import process_connector

    process_connector.cache_clear()
    try:
        timer_function.get_user_function()(TimerRequest(past_due=True))
    finally:
        process_connector.cache_clear()
    landed = deployment.landed()
    assert set(landed) == expected_ids("acme", events) and set(landed.values()) == {1}
    [summary] = [record.getMessage() for record in caplog.records if record.name == "shared.run"]
    assert summary.startswith(
        "org=acme status=ok fetched=250 sent=250 duplicates_skipped=0 dead_lettered=0 lag_seconds="
    )


def test_the_timer_function_fails_the_invocation_when_an_org_fails(timer_function, deployment, monkeypatch):
    for name, value in {**deployment.environ, "PULUMI_ORGS": "acme,missing-org"}.items():
        monkeypatch.setenv(name, value)
    deployment.pulumi_api.add_org("acme")
    from shared.wiring import CycleFailed, process_connector

    process_connector.cache_clear()
    try:
        with pytest.raises(CycleFailed, match=r"org 'missing-org'.*404"):
            timer_function.get_user_function()(TimerRequest())
    finally:
        process_connector.cache_clear()


def run_timer(timer_function, environ: dict[str, str], monkeypatch) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    from shared.wiring import process_connector

    process_connector.cache_clear()
    try:
        timer_function.get_user_function()(TimerRequest())
    finally:
        process_connector.cache_clear()


def test_the_timer_function_sends_one_health_row_per_org_naming_the_instance(timer_function, deployment, monkeypatch):
    deployment.orgs = ("acme", "globex")
    seed_recent(deployment, "acme", 20)
    seed_recent(deployment, "globex", 30, 2)
    run_timer(timer_function, {**deployment.environ, "WEBSITE_INSTANCE_ID": "a1b2c3d4e5f6"}, monkeypatch)
    rows = deployment.ingestion.rows_of(HEALTH_TABLE.stream)
    assert [(row["OrgName_s"], row["RunKind_s"], row["Status_s"], row["EventsSent_d"]) for row in rows] == [
        ("acme", "live", "ok", 20),
        ("globex", "live", "ok", 30),
    ]
    assert {(row["RunId_s"], row["Host_s"], row["ConnectorVersion_s"]) for row in rows} == {
        (rows[0]["RunId_s"], "a1b2c3d4e5f6", __version__)
    }


def test_a_failed_timer_invocation_has_sent_its_health_rows_first(timer_function, deployment, monkeypatch):
    seed_recent(deployment, "acme", 5)
    from shared.wiring import CycleFailed

    with pytest.raises(CycleFailed):
        run_timer(timer_function, {**deployment.environ, "PULUMI_ORGS": "acme,missing-org"}, monkeypatch)
    acme, missing = deployment.ingestion.rows_of(HEALTH_TABLE.stream)
    assert (acme["Status_s"], acme["EventsSent_d"], acme["Error_s"]) == ("ok", 5, "")
    assert missing["Status_s"] == "failed" and "'missing-org'" in missing["Error_s"] and "404" in missing["Error_s"]


def test_a_run_uses_the_user_assigned_managed_identity_for_logs_ingestion(deployment):
    seed_recent(deployment, count=5)
    deployment.connector().run_once()
    assert MANAGED_IDENTITY_CLIENT_ID in deployment.managed_identity.client_ids
    assert "https://monitor.azure.com" in deployment.managed_identity.resources
    assert len(deployment.ingestion.rows) == 5


def test_every_request_body_stays_under_one_megabyte(deployment, now):
    events = simulate_events("acme", now - 3000, now - 120, 3000, seed=5)
    for event in events:
        event["description"] += " " + "x" * 1500
    deployment.pulumi_api.add_events("acme", events)
    [report] = deployment.connector().run_once()
    assert report.sent == 3000
    sizes = [request.uncompressed_size for request in deployment.ingestion.requests if request.status == 204]
    assert len(sizes) > 4 and max(sizes) <= MAX_BODY_BYTES


def test_the_checkpoint_lives_in_table_storage_and_advances_to_now_minus_the_settle_delay(deployment, now):
    seed_recent(deployment, count=20)
    deployment.connector().run_once()
    cursor = deployment.checkpoint()
    assert cursor.window is None and now - 120 <= cursor.watermark <= int(time.time()) - 60


def test_several_orgs_each_keep_their_own_checkpoint(deployment):
    deployment.orgs = ("acme", "globex")
    acme, globex = seed_recent(deployment, "acme", 30, 1), seed_recent(deployment, "globex", 40, 2)
    reports = deployment.connector().run_once()
    assert [(report.org, report.sent) for report in reports] == [("acme", 30), ("globex", 40)]
    assert set(deployment.landed()) == expected_ids("acme", acme) | expected_ids("globex", globex)
    assert deployment.checkpoint("globex") is not None


def test_the_cli_run_exits_zero_and_prints_one_summary_line_per_org(deployment):
    seed_recent(deployment, count=12)
    result = deployment.run_cli("run")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("org=acme status=ok fetched=12 sent=12 duplicates_skipped=0")
    assert len(deployment.ingestion.rows) == 12


def test_the_cli_run_exits_non_zero_with_a_one_line_reason_that_never_shows_the_token(deployment):
    deployment.pulumi_api.expected_token = "a-different-token"
    deployment.pulumi_api.add_org("acme")
    result = deployment.run_cli("run")
    assert result.returncode == 1
    [reason] = result.stderr.strip().splitlines()
    assert "rejected the access token for org 'acme' (401)" in reason
    assert PULUMI_TOKEN not in result.stdout + result.stderr


def test_the_cli_reports_every_bad_setting_at_once(deployment):
    deployment.extra = {"PULUMI_ORGS": "../etc", "LOGS_INGESTION_ENDPOINT": "http://example.com"}
    result = deployment.run_cli("run")
    assert result.returncode == 2
    assert "PULUMI_ORGS" in result.stderr and "LOGS_INGESTION_ENDPOINT must use https://" in result.stderr


def test_preview_prints_rows_and_sends_nothing(deployment):
    seed_recent(deployment, count=8)
    result = deployment.run_cli("preview", "--since", "2h", "--limit", "5")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5 and {row["OrgName_s"] for row in rows} == {"acme"}
    assert deployment.ingestion.rows == [] and deployment.checkpoint() is None


def test_backfill_sends_a_past_range_with_original_times_and_live_collection_starts_after_it(deployment, now):
    old = simulate_events("acme", now - 10 * 86400, now - 9 * 86400, 60, seed=9)
    deployment.pulumi_api.add_events("acme", old)
    since, until = str(now - 10 * 86400), str(now - 9 * 86400 + 1)
    result = deployment.run_cli("backfill", "--since", since, "--until", until)
    assert result.returncode == 0, result.stderr
    assert "backfill acme" in result.stderr  # the progress bar
    assert set(deployment.landed()) == expected_ids("acme", old)
    assert all(row["EventTime_t"] == row["TimeGenerated"] for row in deployment.ingestion.rows)
    assert deployment.checkpoint().origin == deployment.checkpoint().watermark >= now - 3600  # INITIAL_LOOKBACK
    again = deployment.run_cli("backfill", "--since", since, "--until", until)
    assert again.returncode == 0 and len(deployment.ingestion.rows) == 60


def test_refused_rows_are_listed_and_replayed_from_the_dead_letter_store(deployment):
    events = seed_recent(deployment, count=10)
    [poison] = expected_ids("acme", events[3:4])
    deployment.ingestion.reject_rows(lambda row: row.get("EventId_s") == poison)
    [report] = deployment.connector().run_once()
    assert report.sent == 9 and report.dead_lettered == 1
    listed = [json.loads(line) for line in deployment.run_cli("deadletter", "list").stdout.splitlines()]
    assert [letter["row"]["EventId_s"] for letter in listed] == [poison]
    assert "400" in listed[0]["reason"]
    deployment.ingestion.reject_rows(None)
    replay = deployment.run_cli("deadletter", "replay")
    assert replay.returncode == 0 and "replayed 1 of 1" in replay.stdout
    assert set(deployment.landed()) == expected_ids("acme", events) and deployment.dead_letters() == []


def test_a_row_dead_lettered_before_extra_fields_existed_is_replayed_in_todays_format(deployment, now):
    [event] = simulate_events("acme", now - 3000, now - 2000, 1, seed=5)
    event["user"]["email"] = "someone@example.test"
    today = to_row("acme", event, 1, default_catalog())
    old = old_format(today, event)
    table = TableClient.from_connection_string(deployment.azurite_connection_string, deployment.table_name + "dead")
    TableDeadLetterStore(table).put("acme", [RefusedRow(old, "400 InvalidPayload")])
    replay = deployment.run_cli("deadletter", "replay")
    assert replay.returncode == 0 and "replayed 1 of 1" in replay.stdout
    assert deployment.ingestion.rows == [today]
    assert rebuild(deployment.ingestion.rows[0]) == event and deployment.dead_letters() == []


def test_tls_trust_comes_from_requests_ca_bundle_for_every_outbound_call(deployment, monkeypatch):
    seed_recent(deployment, count=3)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    connector = deployment.connector()
    [report] = connector.run_once()
    assert report.failed and "SSLError" in report.error
    with pytest.raises(SinkUnavailable, match="unreachable"):
        connector.collector.sink.send([encode_row({"OrgName_s": "acme"})])
    assert deployment.ingestion.rows == []
