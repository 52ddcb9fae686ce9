"""The local stand-ins behave like the services they replace, seen through the real clients."""

from __future__ import annotations

import gzip
import json
import os
import random
import time
from collections import Counter

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.monitor.ingestion import LogsIngestionClient

from shared.schema import COLUMN_NAMES, DEFAULT_STREAM_NAME, HEALTH_TABLE
from shared.standins import (
    Fault,
    LogsIngestionStandIn,
    PulumiAuditApiStandIn,
    event_catalog,
    simulate_events,
)

ORG = "acme"
T0 = 1_750_000_000
DAY = 86_400
TOKEN_HEADER = {"Authorization": "token pul-test-token"}
ONE_MIB = 1_048_576


# -- helpers -------------------------------------------------------------------------------------


def audit_url(api: PulumiAuditApiStandIn, org: str = ORG) -> str:
    return f"{api.url}/api/orgs/{org}/auditlogs/v2"


def get_page(api, start, end, token=None, headers=TOKEN_HEADER, org=ORG) -> requests.Response:
    params = {"startTime": start, "endTime": end}
    if token:
        params["continuationToken"] = token
    return requests.get(audit_url(api, org), params=params, headers=headers, timeout=10)


def drain(api, start, end, org=ORG, max_pages=1000) -> tuple[list[dict], int]:
    events, token, pages = [], None, 0
    while True:
        response = get_page(api, start, end, token, org=org)
        response.raise_for_status()
        body = response.json()
        events.extend(body["auditLogEvents"])
        pages += 1
        token = body.get("continuationToken")
        if not token or pages >= max_pages:
            return events, pages


def canonical(event: dict) -> str:
    return json.dumps(event, sort_keys=True)


def schema_row(index: int, payload_bytes: int = 0) -> dict:
    """A row shaped like the PulumiAuditLogs_CL stream, about 500 bytes plus `payload_bytes`."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + index))
    return {
        "TimeGenerated": when,
        "Timestamp_d": T0 + index,
        "SourceIP_s": "203.0.113.24",
        "Event_s": "environment-open",
        "Description_s": f"Opened environment '{ORG}/aws/prod-credentials' (#{index}).",
        "UserName_s": "Priya Natarajan",
        "UserLogin_s": "pnatarajan",
        "UserAvatarUrl_s": "https://www.gravatar.com/avatar/0123456789abcdef?s=80",
        "TokenID_s": None,
        "RequireOrgAdmin_b": False,
        "RequireStackAdmin_b": False,
        "AuthFailure_b": False,
        "OrgName_s": ORG,
        "EventId_s": f"{index:032x}",
        "Product_s": "esc",
        "Category_s": "environments",
        "EventTime_t": when,
        "RawEvent_s": json.dumps({"timestamp": T0 + index, "event": "environment-open", "pad": "x" * payload_bytes}),
    }


def batches_under(rows: list[dict], limit: int) -> list[list[dict]]:
    """Split rows so each batch serializes (as the SDK does) to at most `limit` bytes."""
    batches, current, size = [], [], 2
    for row in rows:
        row_size = len(json.dumps(row).encode()) + 2
        if current and size + row_size > limit:
            batches.append(current)
            current, size = [], 2
        current.append(row)
        size += row_size
    if current:
        batches.append(current)
    return batches


@pytest.fixture
def ingestion_client(ingestion, tls_ca, static_token_credential):
    client = LogsIngestionClient(
        endpoint=ingestion.url,
        credential=static_token_credential,
        connection_verify=tls_ca.ca_path,
        retry_total=3,
        retry_backoff_factor=0.01,
    )
    with client:
        yield client


def post_rows(ingestion: LogsIngestionStandIn, body: bytes, *, gzipped=True, url=None, token="test-bearer"):
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    return requests.post(url or ingestion.ingest_url, data=body, headers=headers, timeout=10)


# -- simulated events ------------------------------------------------------------------------------


def test_simulated_events_are_deterministic_for_a_seed_and_differ_across_seeds():
    first = simulate_events(ORG, T0, T0 + DAY, 300, seed=1)
    assert first == simulate_events(ORG, T0, T0 + DAY, 300, seed=1)
    assert first != simulate_events(ORG, T0, T0 + DAY, 300, seed=2)


def test_simulated_events_have_the_api_shape_and_only_true_flags():
    catalog = event_catalog()
    events = simulate_events(ORG, T0, T0 + DAY, 1000, seed=3)
    assert len(events) == 1000
    assert len({canonical(event) for event in events}) == 1000, "no two events may be identical"
    for event in events:
        assert T0 <= event["timestamp"] <= T0 + DAY and isinstance(event["timestamp"], int)
        assert {"timestamp", "sourceIP", "event", "description", "user"} <= event.keys()
        assert set(event["user"]) == {"name", "githubLogin", "avatarUrl"}
        assert event["event"] in catalog
        for flag in ("reqOrgAdmin", "reqStackAdmin", "authFailure"):
            assert event.get(flag, True) is True, "false flags must be omitted"
        entry = catalog[event["event"]]
        assert ("authFailure" in event) == entry["authenticationFailure"]
        assert ("reqOrgAdmin" in event) == entry["requiresOrgAdmin"]


def test_simulated_events_mix_cloud_and_esc_users_ips_and_bursts():
    events = simulate_events(ORG, T0, T0 + DAY, 2000, seed=4)
    esc = sum(e["event"].startswith("environment-") or e["event"] == "auth-failure-environment" for e in events)
    assert 0.4 < esc / len(events) < 0.6
    assert len({e["user"]["githubLogin"] for e in events}) >= 5
    assert len({e["sourceIP"] for e in events}) >= 8
    assert max(Counter(e["timestamp"] for e in events).values()) >= 3, "same-second bursts expected"
    kinds = {e["event"] for e in events}
    assert {"environment-rotated", "environment-unauthorized-open", "stack-deleted", "member-added",
            "organization-token-created", "user-login-failed"} <= kinds
    rotations = [e["description"] for e in events if e["event"] == "environment-rotated"]
    assert any("failed" in text for text in rotations) and any("succeeded" in text for text in rotations)
    assert any("tokenName" in e and "actorUrn" in e for e in events)


# -- Pulumi audit API ------------------------------------------------------------------------------


def test_pulumi_paging_returns_every_event_in_range_exactly_once(pulumi_api):
    events = simulate_events(ORG, T0, T0 + DAY, 1234, seed=5)
    pulumi_api.add_events(ORG, events)
    received, pages = drain(pulumi_api, T0, T0 + DAY)
    assert pages == 13  # page_size 100
    assert sorted(map(canonical, received)) == sorted(map(canonical, events))


def test_pulumi_pages_are_shuffled_deterministically(pulumi_api):
    pulumi_api.add_events(ORG, simulate_events(ORG, T0, T0 + DAY, 300, seed=6))
    first, _ = drain(pulumi_api, T0, T0 + DAY)
    again, _ = drain(pulumi_api, T0, T0 + DAY)
    timestamps = [event["timestamp"] for event in first]
    assert timestamps != sorted(timestamps) and timestamps != sorted(timestamps, reverse=True)
    assert first == again


def test_pulumi_last_page_has_no_continuation_token_and_pages_hold_page_size(pulumi_api):
    pulumi_api.add_events(ORG, simulate_events(ORG, T0, T0 + DAY, 150, seed=7))
    first = get_page(pulumi_api, T0, T0 + DAY).json()
    assert len(first["auditLogEvents"]) == 100 and first["continuationToken"]
    last = get_page(pulumi_api, T0, T0 + DAY, first["continuationToken"]).json()
    assert len(last["auditLogEvents"]) == 50
    assert "continuationToken" not in last


def test_pulumi_time_bounds_are_inclusive_and_outside_events_are_not_returned(pulumi_api):
    base = {"sourceIP": "203.0.113.1", "event": "user-login", "description": "signed in",
            "user": {"name": "A", "githubLogin": "a", "avatarUrl": "https://example.com/a"}}
    pulumi_api.add_events(ORG, [{**base, "timestamp": ts} for ts in (99, 100, 150, 200, 201)])
    received, _ = drain(pulumi_api, 100, 200)
    assert sorted(event["timestamp"] for event in received) == [100, 150, 200]


def test_pulumi_request_without_or_with_wrong_token_gets_401(pulumi_api):
    pulumi_api.add_org(ORG)
    for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "Bearer pul-test-token"}):
        response = get_page(pulumi_api, T0, T0 + DAY, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"code": 401, "message": "Unauthorized: No credentials provided or are invalid."}


def test_pulumi_unknown_org_gets_404(pulumi_api):
    pulumi_api.add_org(ORG)
    response = get_page(pulumi_api, T0, T0 + DAY, org="nobody")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "message": "Organization 'nobody' not found"}


def test_pulumi_missing_start_time_gets_400(pulumi_api):
    pulumi_api.add_org(ORG)
    response = requests.get(audit_url(pulumi_api), params={"endTime": T0}, headers=TOKEN_HEADER, timeout=10)
    assert response.status_code == 400
    assert response.json() == {"code": 400, "message": "invalid query params"}


def test_pulumi_continuation_token_not_issued_by_the_server_or_for_another_query_gets_400(pulumi_api):
    pulumi_api.add_events(ORG, simulate_events(ORG, T0, T0 + DAY, 150, seed=8))
    token = get_page(pulumi_api, T0, T0 + DAY).json()["continuationToken"]
    assert get_page(pulumi_api, T0, T0 + DAY, "eyJ0aW1lc3RhbXAiOjE3NTYzOTk5MDB9").status_code == 400
    assert get_page(pulumi_api, T0, T0 + DAY, token[:-2] + "xx").status_code == 400
    assert get_page(pulumi_api, T0 + 1, T0 + DAY, token).status_code == 400
    assert get_page(pulumi_api, T0, T0 + DAY, token).status_code == 200


def test_pulumi_late_events_show_up_in_the_next_query_not_in_a_running_pagination(pulumi_api):
    early = simulate_events(ORG, T0, T0 + 3600, 150, seed=9)
    pulumi_api.add_events(ORG, early)
    first = get_page(pulumi_api, T0, T0 + 3600).json()
    late = simulate_events(ORG, T0, T0 + 3600, 20, seed=10)
    pulumi_api.add_events(ORG, late)
    rest = get_page(pulumi_api, T0, T0 + 3600, first["continuationToken"]).json()
    assert len(first["auditLogEvents"]) + len(rest["auditLogEvents"]) == 150
    received, _ = drain(pulumi_api, T0, T0 + 3600)
    assert sorted(map(canonical, received)) == sorted(map(canonical, early + late))


def test_pulumi_records_every_request_with_query_and_headers(pulumi_api):
    pulumi_api.add_org(ORG)
    get_page(pulumi_api, T0, T0 + 60)
    [request] = pulumi_api.requests
    assert (request.number, request.method, request.path) == (1, "GET", f"/api/orgs/{ORG}/auditlogs/v2")
    assert request.query == {"startTime": str(T0), "endTime": str(T0 + 60)}
    assert request.headers["authorization"] == "token pul-test-token"
    assert request.status == 200


def test_fault_fires_exactly_times_times_then_normal_answers_resume(pulumi_api):
    pulumi_api.add_org(ORG)
    fault = pulumi_api.faults.add(Fault.respond(429, headers={"Retry-After": "7"}, times=2))
    statuses = [get_page(pulumi_api, T0, T0 + 60) for _ in range(4)]
    assert [r.status_code for r in statuses] == [429, 429, 200, 200]
    assert statuses[0].headers["Retry-After"] == "7"
    assert statuses[0].json() == {"code": 429, "message": "Too Many Requests"}
    assert fault.fired == 2 and len(pulumi_api.faults) == 0
    assert pulumi_api.faults.history == [(1, "respond"), (2, "respond")]


def test_fault_can_match_a_request_number_or_a_predicate(pulumi_api):
    pulumi_api.add_events(ORG, simulate_events(ORG, T0, T0 + DAY, 250, seed=11))
    pulumi_api.faults.add(Fault.respond(503, match=2))
    pulumi_api.faults.add(Fault.respond(500, match=lambda r: r.query.get("startTime") == "1", times=None))
    assert get_page(pulumi_api, T0, T0 + DAY).status_code == 200
    assert get_page(pulumi_api, T0, T0 + DAY).status_code == 503
    assert [get_page(pulumi_api, 1, 2).status_code for _ in range(3)] == [500, 500, 500]
    assert get_page(pulumi_api, T0, T0 + DAY).status_code == 200


def test_fault_reset_drops_the_connection_without_a_response(pulumi_api):
    pulumi_api.add_org(ORG)
    pulumi_api.faults.add(Fault.reset())
    with pytest.raises(requests.ConnectionError):
        get_page(pulumi_api, T0, T0 + 60)
    assert pulumi_api.requests[0].status is None
    assert get_page(pulumi_api, T0, T0 + 60).status_code == 200


def test_fault_delay_holds_the_answer_back(pulumi_api):
    pulumi_api.add_org(ORG)
    pulumi_api.faults.add(Fault.delay(5))
    with pytest.raises(requests.Timeout):
        requests.get(audit_url(pulumi_api), params={"startTime": T0}, headers=TOKEN_HEADER, timeout=(5, 0.2))


def test_fault_truncated_json_is_not_parseable(pulumi_api):
    pulumi_api.add_events(ORG, simulate_events(ORG, T0, T0 + DAY, 10, seed=12))
    pulumi_api.faults.add(Fault.truncated_json())
    pulumi_api.faults.add(Fault.truncated_json(short_read=True))
    response = get_page(pulumi_api, T0, T0 + DAY)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get_page(pulumi_api, T0, T0 + DAY)


def test_fault_html_page_comes_with_status_200(pulumi_api):
    pulumi_api.add_org(ORG)
    pulumi_api.faults.add(Fault.html_page())
    response = get_page(pulumi_api, T0, T0 + 60)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


def test_fault_large_body_announces_and_streams_the_full_size(pulumi_api):
    pulumi_api.add_org(ORG)
    pulumi_api.faults.add(Fault.large_body(100_000_000))
    with get_page_stream(pulumi_api) as response:
        assert response.headers["Content-Length"] == "100000000"
        received = 0
        for chunk in response.iter_content(64 * 1024):
            received += len(chunk)
            if received >= 2_000_000:
                break
    assert received >= 2_000_000
    assert get_page(pulumi_api, T0, T0 + 60).status_code == 200, "the server survives an abandoned download"


def get_page_stream(api) -> requests.Response:
    return requests.get(audit_url(api), params={"startTime": T0, "endTime": T0 + 60}, headers=TOKEN_HEADER,
                        timeout=10, stream=True)


def test_fault_empty_page_with_token_loses_no_events(pulumi_api):
    events = simulate_events(ORG, T0, T0 + DAY, 250, seed=13)
    pulumi_api.add_events(ORG, events)
    pulumi_api.faults.add(Fault.empty_page_with_token(match=2))
    received, pages = drain(pulumi_api, T0, T0 + DAY)
    assert pages == 4
    assert sorted(map(canonical, received)) == sorted(map(canonical, events))


def test_fault_repeated_token_makes_the_pagination_loop(pulumi_api):
    pulumi_api.add_events(ORG, simulate_events(ORG, T0, T0 + DAY, 250, seed=14))
    first = get_page(pulumi_api, T0, T0 + DAY).json()
    pulumi_api.faults.add(Fault.repeated_token(times=None))
    token = first["continuationToken"]
    for _ in range(3):
        page = get_page(pulumi_api, T0, T0 + DAY, token).json()
        assert page["continuationToken"] == token
    assert len(page["auditLogEvents"]) == 100


# -- Logs Ingestion API ----------------------------------------------------------------------------


def test_ingestion_accepts_10000_rows_sent_in_batches_under_the_limit(ingestion, ingestion_client,
                                                                     static_token_credential):
    rows = [schema_row(i) for i in range(10_000)]
    batches = batches_under(rows, 900_000)
    for batch in batches:
        ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=batch)
    assert ingestion.rows == rows
    requests_seen = ingestion.requests
    assert len(requests_seen) == len(batches) > 1
    assert all(r.status == 204 and r.uncompressed_size and r.uncompressed_size <= 900_000 for r in requests_seen)
    assert sum(r.row_count for r in requests_seen) == 10_000
    assert all(r.body_size < r.uncompressed_size for r in requests_seen), "the SDK gzips every chunk"
    assert static_token_credential.scopes[0] == ("https://monitor.azure.com/.default",)


def test_sdk_auto_chunks_can_exceed_one_mib_uncompressed_and_are_refused(ingestion, ingestion_client):
    # The SDK packs rows while the sum of row sizes is <= 1 MiB, ignoring the ", " separators,
    # so its bodies end up a few KB over the limit. The stand-in enforces the documented limit.
    rows = [schema_row(i) for i in range(4_000)]
    failures = []
    ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=rows,
                            on_error=failures.append)
    assert failures and failures[0].error.status_code == 413
    assert failures[0].error.error.code == "ContentLengthLimitExceeded"
    assert all(r.uncompressed_size > ONE_MIB for r in ingestion.requests if r.status == 413)


def test_body_over_one_mib_uncompressed_gets_413(ingestion):
    rows = [schema_row(i) for i in range(2_200)]
    body = json.dumps(rows).encode()
    assert len(body) > ONE_MIB and len(gzip.compress(body)) < ONE_MIB
    response = post_rows(ingestion, body)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "ContentLengthLimitExceeded"
    assert error["message"] == (f"Maximum allowed content length: 1048576 bytes (1 MB). "
                                f"Provided content length: {len(body)} bytes.")
    assert ingestion.rows == []


def test_body_over_one_mib_compressed_gets_413(ingestion):
    noise = random.Random(1).randbytes(1_200_000).hex()
    body = json.dumps([{"RawEvent_s": noise}]).encode()
    compressed = gzip.compress(body)
    assert len(compressed) > ONE_MIB
    response = requests.post(ingestion.ingest_url, data=compressed, timeout=10, headers={
        "Content-Encoding": "gzip", "Content-Type": "application/json", "Authorization": "Bearer x"})
    assert response.status_code == 413
    assert f"Provided content length: {len(compressed)} bytes." in response.json()["error"]["message"]


def test_body_of_exactly_one_mib_is_accepted(ingestion):
    row = schema_row(0)
    row["RawEvent_s"] = ""
    overhead = len(json.dumps([row]).encode())
    row["RawEvent_s"] = "y" * (ONE_MIB - overhead)
    body = json.dumps([row]).encode()
    assert len(body) == ONE_MIB
    assert post_rows(ingestion, body).status_code == 204
    assert ingestion.oversized_fields[0].column == "RawEvent_s"


def test_429_with_retry_after_is_retried_by_the_client_and_all_rows_land(ingestion, ingestion_client, no_real_sleep):
    ingestion.faults.add(Fault.respond(429, headers={"Retry-After": "1"}))
    rows = [schema_row(i) for i in range(50)]
    ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=rows)
    assert [r.status for r in ingestion.requests] == [429, 204]
    assert ingestion.rows == rows
    assert 1 in no_real_sleep or 1.0 in no_real_sleep


def test_429_without_retry_after_is_not_retried_by_the_client(ingestion, ingestion_client):
    ingestion.faults.add(Fault.respond(429))
    with pytest.raises(HttpResponseError) as raised:
        ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)])
    assert raised.value.status_code == 429 and raised.value.error.code == "TooManyRequests"
    assert len(ingestion.requests) == 1


def test_503_is_retried_and_500_exhausts_the_retries(ingestion, ingestion_client):
    ingestion.faults.add(Fault.respond(503))
    ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)])
    assert [r.status for r in ingestion.requests] == [503, 204]
    ingestion.faults.add(Fault.respond(500, times=None))
    with pytest.raises(HttpResponseError) as raised:
        ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(2)])
    assert raised.value.status_code == 500
    assert [r.status for r in ingestion.requests][2:] == [500, 500, 500, 500]  # retry_total=3


def test_403_forbidden_is_not_retried(ingestion, ingestion_client):
    ingestion.faults.add(Fault.respond(403))
    with pytest.raises(HttpResponseError) as raised:
        ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)])
    assert raised.value.status_code == 403 and raised.value.error.code == "Forbidden"
    assert "does not have permission" in raised.value.error.message


def test_reject_rows_refuses_only_the_batch_holding_the_row(ingestion, ingestion_client):
    ingestion.reject_rows(lambda row: row["EventId_s"] == f"{150:032x}")
    rows = [schema_row(i) for i in range(300)]
    failures = []
    for batch in (rows[:100], rows[100:200], rows[200:]):
        ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=batch,
                                on_error=failures.append)
    assert [r.status for r in ingestion.requests] == [204, 400, 204]
    assert ingestion.rows == rows[:100] + rows[200:]
    [failure] = failures
    assert failure.error.error.code == "InvalidPayload" and failure.failed_logs == rows[100:200]


def test_wrong_stream_or_dcr_raises_resource_not_found(ingestion, ingestion_client):
    with pytest.raises(ResourceNotFoundError):
        ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name="Custom-Other", logs=[schema_row(1)])
    with pytest.raises(ResourceNotFoundError):
        ingestion_client.upload(rule_id="dcr-" + "0" * 32, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)])
    assert ingestion.rows == []


def health_row(org: str, status: str = "ok") -> dict:
    """A row shaped like the PulumiAuditConnectorHealth_CL stream."""
    return {
        "TimeGenerated": "2025-06-15T12:00:00Z",
        "RunId_s": "run-1",
        "OrgName_s": org,
        "RunKind_s": "live",
        "Status_s": status,
        "EventsFetched_d": 12,
        "EventsSent_d": 11,
        "DuplicatesSkipped_d": 1,
        "DeadLettered_d": 0,
        "Truncated_d": 0,
        "LagSeconds_d": 42,
        "WatermarkTime_t": "2025-06-15T11:59:18Z",
        "Error_s": "",
        "ConnectorVersion_s": "1.0.0",
        "Host_s": "worker-1",
    }


def test_one_dcr_serves_the_audit_and_the_health_stream_and_keeps_their_rows_apart(ingestion, ingestion_client):
    ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)])
    ingestion_client.upload(rule_id=ingestion.dcr_id, stream_name=HEALTH_TABLE.stream,
                            logs=[health_row("acme"), health_row("acme-labs", "failed")])
    assert ingestion.rows == ingestion.rows_of(DEFAULT_STREAM_NAME) == [schema_row(1)]
    assert ingestion.rows_of(HEALTH_TABLE.stream) == [health_row("acme"), health_row("acme-labs", "failed")]


def test_each_stream_is_validated_against_its_own_columns(ingestion):
    health_url = ingestion.ingest_url.replace(DEFAULT_STREAM_NAME, HEALTH_TABLE.stream)
    audit_row_on_health = post_rows(ingestion, json.dumps([schema_row(1)]).encode(), url=health_url)
    assert audit_row_on_health.status_code == 400
    assert "column 'Timestamp_d' is not declared in stream 'Custom-PulumiAuditConnectorHealth'" in (
        audit_row_on_health.json()["error"]["message"])
    wrong_type = post_rows(ingestion, json.dumps([{**health_row("acme"), "LagSeconds_d": "42"}]).encode(),
                           url=health_url)
    assert wrong_type.status_code == 400 and "'LagSeconds_d' expects long" in wrong_type.json()["error"]["message"]
    assert ingestion.rows_of(HEALTH_TABLE.stream) == []


def test_rows_of_an_undeclared_stream_is_an_error_naming_the_declared_ones(ingestion):
    with pytest.raises(KeyError, match="Custom-PulumiAuditLogs, Custom-PulumiAuditConnectorHealth"):
        ingestion.rows_of("Custom-Other")


def test_a_stream_cannot_be_declared_twice():
    with pytest.raises(ValueError, match="declared twice"):
        LogsIngestionStandIn("dcr-" + "a" * 32, DEFAULT_STREAM_NAME, streams={DEFAULT_STREAM_NAME: {}})


def test_missing_or_wrong_bearer_token_gets_401(ingestion, tls_ca):
    ingestion.expected_token = "right"
    assert requests.post(ingestion.ingest_url, data=b"[]", timeout=10).status_code == 401
    assert post_rows(ingestion, b"[]", token="wrong").status_code == 401
    assert post_rows(ingestion, b"[]", token="right").status_code == 204
    client = LogsIngestionClient(ingestion.url, credential=_Cred("wrong"), connection_verify=tls_ca.ca_path)
    with client, pytest.raises(ClientAuthenticationError):
        client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)])


class _Cred:
    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


def test_missing_api_version_gets_400(ingestion):
    url = ingestion.ingest_url.split("?")[0]
    response = post_rows(ingestion, b"[]", url=url)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MissingApiVersionParameter"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("Timestamp_d", "1750000000"),
        ("Timestamp_d", True),
        ("RequireOrgAdmin_b", "false"),
        ("TimeGenerated", "yesterday"),
        ("TimeGenerated", 1750000000),
        ("SourceIP_s", 42),
        ("Unknown_s", "x"),
    ],
)
def test_row_that_does_not_fit_the_stream_gets_400_naming_row_and_column(ingestion, column, value):
    rows = [schema_row(0), {**schema_row(1), column: value}]
    response = post_rows(ingestion, json.dumps(rows).encode())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "InvalidPayload"
    assert "Row 1" in error["message"] and column in error["message"]
    assert ingestion.rows == []


def test_malformed_json_or_non_array_gets_400(ingestion):
    for body in (b'[{"SourceIP_s": "1.2', b'{"SourceIP_s": "x"}', b"[1, 2]"):
        response = post_rows(ingestion, body)
        assert response.status_code == 400 and response.json()["error"]["code"] == "InvalidPayload"


def test_every_declared_column_and_null_values_are_accepted(ingestion):
    row = {name: None for name in COLUMN_NAMES}
    row.update(schema_row(3))
    row["TimeGenerated"] = "2025-06-15T12:00:00.123456+00:00"
    assert post_rows(ingestion, json.dumps([row]).encode(), gzipped=False).status_code == 204
    assert ingestion.rows == [row]
    assert ingestion.requests[0].uncompressed_size == ingestion.requests[0].body_size


def test_ingestion_works_over_plain_http_for_the_demo(static_token_credential):
    with LogsIngestionStandIn("dcr-" + "a" * 32, DEFAULT_STREAM_NAME) as plain:
        assert plain.url.startswith("http://127.0.0.1:")
        client = LogsIngestionClient(plain.url, credential=static_token_credential)
        with client:
            client.upload(rule_id=plain.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)],
                          enforce_https=False)
        assert plain.rows == [schema_row(1)]


# -- managed identity ----------------------------------------------------------------------------


def test_default_azure_credential_gets_a_monitor_token_from_the_identity_endpoint(managed_identity):
    from azure.identity import DefaultAzureCredential

    client_id = "11111111-2222-3333-4444-555555555555"
    credential = DefaultAzureCredential(managed_identity_client_id=client_id)
    token = credential.get_token("https://monitor.azure.com/.default")
    assert token.token == "msi-test-token"
    assert token.expires_on > time.time() + 3000
    assert managed_identity.resources == ["https://monitor.azure.com"]
    assert managed_identity.client_ids == [client_id]


def test_logs_ingestion_client_with_managed_identity_end_to_end(managed_identity, ingestion, tls_ca):
    from azure.identity import ManagedIdentityCredential

    ingestion.expected_token = "msi-test-token"
    client = LogsIngestionClient(ingestion.url, credential=ManagedIdentityCredential(),
                                 connection_verify=tls_ca.ca_path)
    with client:
        client.upload(rule_id=ingestion.dcr_id, stream_name=DEFAULT_STREAM_NAME, logs=[schema_row(1)])
    assert len(ingestion.rows) == 1
    assert managed_identity.client_ids == [None]


def test_identity_endpoint_refuses_a_wrong_or_missing_secret(managed_identity):
    params = {"api-version": "2019-08-01", "resource": "https://monitor.azure.com"}
    assert requests.get(managed_identity.endpoint, params=params, timeout=5).status_code == 401
    wrong = requests.get(managed_identity.endpoint, params=params, headers={"X-IDENTITY-HEADER": "nope"}, timeout=5)
    assert wrong.status_code == 401
    right = requests.get(managed_identity.endpoint, params=params,
                         headers={"X-IDENTITY-HEADER": managed_identity.secret}, timeout=5)
    assert right.status_code == 200 and right.json()["token_type"] == "Bearer"
    assert os.environ["IDENTITY_HEADER"] == managed_identity.secret


# -- Azurite ---------------------------------------------------------------------------------------


def test_azurite_table_rejects_a_stale_etag_with_412(azurite, table_name):
    from azure.core import MatchConditions
    from azure.data.tables import TableServiceClient, UpdateMode

    service = TableServiceClient.from_connection_string(azurite.connection_string)
    table = service.create_table(table_name)
    table.upsert_entity({"PartitionKey": "org", "RowKey": ORG, "cursor": "1"})
    entity = table.get_entity("org", ORG)
    stale = entity.metadata["etag"]
    table.update_entity({**entity, "cursor": "2"}, mode=UpdateMode.REPLACE, etag=stale,
                        match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError) as raised:
        table.update_entity({**entity, "cursor": "3"}, mode=UpdateMode.REPLACE, etag=stale,
                            match_condition=MatchConditions.IfNotModified)
    assert raised.value.status_code == 412
    assert table.get_entity("org", ORG)["cursor"] == "2"
    assert table_name in [t.name for t in service.list_tables()]


# -- fixtures ---------------------------------------------------------------------------------------


def test_requests_trusts_the_test_ca_through_the_environment(tls_ca, pulumi_api):
    assert os.environ["REQUESTS_CA_BUNDLE"] == tls_ca.ca_path
    assert "127.0.0.1" in os.environ["NO_PROXY"]
    pulumi_api.add_org(ORG)
    assert get_page(pulumi_api, T0, T0 + 1).status_code == 200


def test_no_real_sleep_records_instead_of_sleeping(no_real_sleep):
    started = time.monotonic()
    time.sleep(30)
    assert time.monotonic() - started < 1
    assert no_real_sleep == [30]


def test_stand_ins_close_idempotently_and_stop_listening(tls_ca):
    api = PulumiAuditApiStandIn("t", ssl_context=tls_ca.server_context())
    url = api.url
    api.close()
    api.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/api/orgs/x/auditlogs/v2", timeout=2)
