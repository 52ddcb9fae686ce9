"""Quiet, useful logs: the connector's own line says what happened, once. What the libraries say
about retries and refusals the connector handles, and about every request, is DEBUG
(shared/logs.py). Through the real clients, against the stand-ins, with logs captured."""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import urlsplit

import pytest

from shared.logs import quiet_library_logs
from shared.schema import AUDIT_TABLE
from shared.standins import Fault, simulate_events
from tests.harness import MANAGED_IDENTITY_CLIENT_ID
from tests.invariants import World, row_id
from tests.test_fault_matrix import closed_port_url

# What the health reporter says when the health rows met the failure an org's line already tells.
HEALTH_NOT_SENT = re.compile(
    r"health rows of run [0-9a-f]{32} not sent, the run carries on: the same failure as org 'acme'"
)
NO_TOKEN = "no Azure identity gave a token for https://monitor.azure.com/.default: "
ASSIGNED_IDENTITY = (
    f"check that the user-assigned identity MANAGED_IDENTITY_CLIENT_ID={MANAGED_IDENTITY_CLIENT_ID} "
    "is assigned to the Function App"
)


def lines_at(caplog, level: int) -> list[tuple[str, str, str]]:
    records = [record for record in caplog.records if record.levelno >= level]
    return [(record.name, record.levelname, record.getMessage()) for record in records]


def library_records(caplog, logger: str, prefix: str = "") -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == logger and str(record.msg).startswith(prefix)]


# -- retries and refusals the connector handles -----------------------------------------------------


def test_a_dropped_connection_the_pulumi_client_retries_leaves_no_warning(world: World, caplog):
    caplog.set_level(logging.WARNING)
    world.seed()
    world.api.faults.add(Fault.reset(match=2))
    assert world.run().status == "ok"
    assert lines_at(caplog, logging.WARNING) == []


def test_urllib3s_retry_warning_is_still_there_at_debug(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    world.seed()
    world.api.faults.add(Fault.reset(match=2))
    assert world.run().status == "ok"
    [retry] = library_records(caplog, "urllib3.connectionpool", "Retrying (")
    assert retry.levelname == "DEBUG" and "RemoteDisconnected" in retry.getMessage()


def test_throttling_logs_ingestion_retries_leaves_no_warning(world: World, caplog):
    caplog.set_level(logging.WARNING)
    world.seed()
    world.ingestion.faults.add(Fault.respond(429, times=2))
    assert world.run().status == "ok"
    assert lines_at(caplog, logging.WARNING) == []


def test_a_refused_row_is_one_line_of_ours_and_none_of_the_sdks(world: World, caplog):
    caplog.set_level(logging.WARNING)
    world.seed()
    poison = world.add([world.event(world.now - 700, description="a row the service refuses")])[0]
    world.ingestion.reject_rows(lambda row: row.get("Description_s") == poison["description"])
    assert world.run().dead_lettered == 1
    assert lines_at(caplog, logging.WARNING) == [
        (
            "shared.pipeline",
            "ERROR",
            f"org=acme dead-lettered row {row_id('acme', poison)}: "
            "400 InvalidPayload Row 0 was refused by the data collection rule.",
        )
    ]


def test_a_403_while_the_role_propagates_is_one_info_line_of_ours(world: World, caplog):
    caplog.set_level(logging.INFO)
    world.seed()
    world.ingestion.faults.add(Fault.respond(403, times=3))
    assert world.run().status == "ok"
    assert lines_at(caplog, logging.WARNING) == []
    assert library_records(caplog, "azure.core.pipeline.policies.http_logging_policy") == []
    assert [line for line in lines_at(caplog, logging.INFO) if line[0].startswith("shared.")] == [
        (
            "shared.ingestion_sink",
            "INFO",
            "Logs Ingestion refused the identity (403); retrying every 15 s for up to 120 s "
            "while a new role assignment reaches the DCR",
        )
    ]


def test_every_request_and_response_the_azure_sdks_log_is_debug(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    world.seed()
    assert world.run().status == "ok"
    logged = library_records(caplog, "azure.core.pipeline.policies.http_logging_policy")
    assert len(logged) > 6 and {record.levelname for record in logged} == {"DEBUG"}


# -- failures: one line that names what to fix ------------------------------------------------------


def test_pulumi_unreachable_names_the_setting_and_the_host(world: World, caplog):
    caplog.set_level(logging.WARNING)
    world.seed()
    url = closed_port_url().replace("http://", "https://")
    report = world.run(world.connector(PULUMI_API_URL=url))
    assert report.error == (
        f"Pulumi API unreachable for org 'acme' at {urlsplit(url).netloc} (ConnectionError): "
        "check PULUMI_API_URL and the network"
    )
    assert lines_at(caplog, logging.WARNING) == []


def test_pulumi_failing_after_retries_names_the_setting_and_the_host(world: World, caplog):
    caplog.set_level(logging.WARNING)
    world.seed()
    world.api.faults.add(Fault.respond(503, times=None))
    report = world.run()
    assert report.error == (
        f"Pulumi API answered 503 for org 'acme' after retries: Service Unavailable "
        f"({urlsplit(world.api.url).netloc}, from PULUMI_API_URL)"
    )
    assert lines_at(caplog, logging.WARNING) == []


def test_a_credential_failure_is_one_line_naming_the_managed_identity_setting(world: World, caplog):
    caplog.set_level(logging.WARNING)
    world.seed()
    world.managed_identity.faults.add(Fault.respond(400, times=None))
    report = world.run()
    assert report.error == "Logs Ingestion: " + NO_TOKEN + ASSIGNED_IDENTITY
    [(logger, level, line)] = lines_at(caplog, logging.WARNING)
    assert (logger, level) == ("shared.health", "WARNING") and HEALTH_NOT_SENT.fullmatch(line)


def test_without_an_identity_setting_the_line_names_every_way_to_sign_in(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    world.seed()
    world.managed_identity.faults.add(Fault.respond(400, times=None))
    report = world.run(world.connector(MANAGED_IDENTITY_CLIENT_ID=""))
    assert report.error == (
        "Logs Ingestion: " + NO_TOKEN + "set MANAGED_IDENTITY_CLIENT_ID (in Azure), or AZURE_TENANT_ID, "
        "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (an app registration), or run `az login` (on a workstation)"
    )
    # Once for the events, once for the health rows.
    events, health = library_records(caplog, "azure.identity._credentials.chained", "DefaultAzureCredential failed")
    assert events.levelname == health.levelname == "DEBUG" and "ManagedIdentityCredential" in events.getMessage()


def test_a_403_that_outlasts_the_retries_names_the_role(world: World, caplog):
    caplog.set_level(logging.WARNING)
    world.seed()
    world.ingestion.faults.add(Fault.respond(403, times=None, match=lambda request: AUDIT_TABLE.stream in request.path))
    report = world.run()
    assert report.error == (
        "Logs Ingestion refused the identity (403) 9 times over 120 s: grant it 'Monitoring Metrics Publisher' "
        "on the DCR; a new role assignment can take up to 30 minutes"
    )
    assert lines_at(caplog, logging.WARNING) == []


def test_the_timer_logs_a_credential_failure_once(world: World, caplog, monkeypatch):
    caplog.set_level(logging.WARNING)
    world.seed()
    world.managed_identity.faults.add(Fault.respond(400, times=None))
    for name, value in world.deployment.environ.items():
        monkeypatch.setenv(name, value)
    from shared.wiring import CycleFailed, process_connector, run_timer_cycle

    process_connector.cache_clear()
    try:
        with pytest.raises(CycleFailed):
            run_timer_cycle()
    finally:
        process_connector.cache_clear()
    # The health rows are sent as the run ends, before the timer logs its summary.
    [(health_logger, health_level, health_line), (logger, level, line)] = lines_at(caplog, logging.WARNING)
    assert (health_logger, health_level) == ("shared.health", "WARNING") and HEALTH_NOT_SENT.fullmatch(health_line)
    assert (logger, level) == ("shared.run", "ERROR")
    assert re.fullmatch(
        r"org=acme status=failed fetched=25 sent=0 duplicates_skipped=0 dead_lettered=0 lag_seconds=\d+ "
        r"pages=3 truncated=0 error=" + re.escape("Logs Ingestion: " + NO_TOKEN + ASSIGNED_IDENTITY),
        line,
    )


def test_the_cli_prints_a_credential_failure_as_one_line(deployment):
    now = int(time.time())
    deployment.pulumi_api.add_events("acme", simulate_events("acme", now - 3000, now - 120, 3, seed=2))
    deployment.managed_identity.faults.add(Fault.respond(400, times=None))
    result = deployment.run_cli("run")
    assert result.returncode == 1
    health, error = result.stderr.splitlines()
    assert HEALTH_NOT_SENT.fullmatch(health.removeprefix("WARNING shared.health "))
    assert error == f"error: org 'acme': Logs Ingestion: {NO_TOKEN}{ASSIGNED_IDENTITY}"


def test_quieting_twice_adds_one_filter_per_logger():
    quiet_library_logs()
    quiet_library_logs()
    assert len(logging.getLogger("urllib3.connectionpool").filters) == 1
