"""The fault matrix: each scenario injects one fault into the HTTPS stand-ins or Table Storage
(Azurite), runs poll cycles through the real connector, asserts what is specific to the
fault, and then the four invariants of tests/invariants.py.

Each scenario's docstring is its specification. Figures: test-results/fault-matrix-latest.md.
"""

from __future__ import annotations

import itertools
import json
import threading
from unittest import mock

import pytest
from azure.data.tables import TableClient

import shared.wiring
from shared.dead_letter import TableDeadLetterStore
from shared.pipeline import CollectionReport
from shared.pulumi_source import MAX_RETRY_AFTER_SECONDS, PulumiAuditSource
from shared.rebuild import rebuild
from shared.schema import AUDIT_TABLE, MAX_FIELD_BYTES
from shared.settings import Secret
from shared.standins import Fault, LogsIngestionStandIn, event_catalog
from shared.state_store import table_state_store
from shared.token_source import EnvironmentToken
from tests.invariants import CANARY_PULUMI_TOKEN, ORG, Scenario, World, play_and_check, row_id

DISPLAY_NAMES = {event: entry["displayName"] for event, entry in event_catalog().items()}
SHORT_READ_TIMEOUT = 0.5


def closed_port_url(tls_context=None) -> str:
    """The URL of a server that was just closed: nothing listens on its port any more."""
    with LogsIngestionStandIn("dcr-" + "0" * 32, "Custom-X", ssl_context=tls_context) as standin:
        url = standin.url
    return url


def unreachable_tables(world: World) -> str:
    port = closed_port_url().rsplit(":", 1)[1]
    return world.deployment.azurite_connection_string.replace(
        world.deployment.azurite_connection_string.split("TableEndpoint=")[1],
        f"http://127.0.0.1:{port}/devstoreaccount1;",
    )


def statuses_of(world: World, *numbers: int) -> list[int | None]:
    return [request.status for request in world.api.requests if request.number in numbers]


# == Pulumi API: throttling and server errors ======================================================


def pulumi_429_with_retry_after(w: World) -> None:
    """A 429 with Retry-After mid-window: the source waits as told, retries, and the run completes."""
    w.seed()
    w.api.faults.add(Fault.respond(429, headers={"Retry-After": "7"}, match=2))
    assert w.run().status == "ok"
    assert 7 in w.sleeps
    assert w.api.requests[2].query == w.api.requests[1].query


def pulumi_429_without_retry_after(w: World) -> None:
    """A 429 without Retry-After is retried with backoff and the run completes."""
    w.seed()
    w.api.faults.add(Fault.respond(429, match=range(2, 4), times=2))
    assert w.run().status == "ok"
    assert statuses_of(w, 2, 3, 4) == [429, 429, 200]


def pulumi_429_with_a_hostile_retry_after(w: World) -> None:
    """A Retry-After of a day cannot stall a run: the wait is capped."""
    w.seed()
    w.api.faults.add(Fault.respond(429, headers={"Retry-After": "86400"}, match=2))
    assert w.run().status == "ok"
    assert max(w.sleeps) == MAX_RETRY_AFTER_SECONDS


def pulumi_server_error(status: int):
    def play(w: World) -> None:
        w.seed()
        w.api.faults.add(Fault.respond(status, match=range(2, 4), times=2))
        assert w.run().status == "ok"
        assert statuses_of(w, 2, 3, 4) == [status, status, 200]

    play.__doc__ = f"Two {status}s in a row mid-window are retried and the run completes."
    return play


def pulumi_503_outlasts_the_retries(w: World) -> None:
    """A 503 that outlasts the retries fails the run clearly, saves nothing, and the next run gets all."""
    w.seed()
    w.api.faults.add(Fault.respond(503, times=None))
    report = w.run()
    assert report.status == "failed" and "answered 503 for org 'acme'" in report.error
    assert w.api.request_count == 6 and w.deployment.checkpoint() is None
    w.api.faults.clear()
    assert w.run().status == "ok"


def pulumi_connection_reset(w: World) -> None:
    """A connection reset mid-window is retried within the run."""
    w.seed()
    w.api.faults.add(Fault.reset(match=2))
    assert w.run().status == "ok"
    assert statuses_of(w, 2, 3) == [None, 200]


def pulumi_read_timeout(w: World) -> None:
    """A page that does not come within the read timeout is asked for again within the run."""
    w.seed()
    w.api.faults.add(Fault.delay(30, match=2))
    connector = w.connector()
    connector.collector.source = PulumiAuditSource(
        w.api.url, EnvironmentToken(Secret(CANARY_PULUMI_TOKEN)), timeout=(5, SHORT_READ_TIMEOUT)
    )
    assert w.run(connector).status == "ok"
    assert statuses_of(w, 2, 3) == [None, 200] and w.api.requests[2].query == w.api.requests[1].query


# == Pulumi API: bodies that are not a page ========================================================


def fails_then_resumes(w: World, fault: Fault, message: str) -> None:
    w.seed()
    w.api.faults.add(fault)
    first = w.run()
    assert first.status == "failed" and message in first.error, first.error
    assert w.deployment.checkpoint().continuation_token, "page 1 is kept; the next run resumes after it"
    second = w.run()
    assert second.status == "ok" and second.sent == 15


def pulumi_truncated_json(w: World) -> None:
    """A 200 whose JSON is cut off fails the run, naming the problem; the next run resumes mid-window."""
    fails_then_resumes(w, Fault.truncated_json(match=2), "body that is not valid JSON (application/json")


def pulumi_body_short_of_its_content_length(w: World) -> None:
    """A connection that closes before the announced body ends fails the run; the next resumes."""
    fails_then_resumes(w, Fault.truncated_json(short_read=True, match=2), "unreachable for org 'acme'")


def pulumi_malformed_json(w: World) -> None:
    """A 200 with malformed JSON fails the run clearly; the next run resumes."""
    fault = Fault.respond(200, body='{"auditLogEvents": [{"timestamp": 1,}', content_type="application/json", match=2)
    fails_then_resumes(w, fault, "not valid JSON")


def pulumi_html_error_page_with_200(w: World) -> None:
    """A maintenance page in HTML sent with 200 is not taken for an empty page."""
    fails_then_resumes(w, Fault.html_page(match=2), "not valid JSON (text/html")


def pulumi_json_without_the_events_list(w: World) -> None:
    """A 200 with JSON of another shape is not taken for an empty page."""
    fails_then_resumes(w, Fault.respond(200, body={"events": []}, match=2), "without an 'auditLogEvents' list")


def pulumi_deeply_nested_json(w: World) -> None:
    """A 200 whose JSON nests deeper than the parser can go fails the run like any bad body."""
    body = "[" * 100_000 + "]" * 100_000
    fails_then_resumes(w, Fault.respond(200, body=body, content_type="application/json", match=2), "JSON")


# == Pulumi API: paging ============================================================================


def pulumi_empty_first_page_with_a_token(w: World) -> None:
    """An empty page that still carries a continuation token is followed, not taken for the end."""
    w.seed()
    w.api.faults.add(Fault.empty_page_with_token(match=1))
    assert w.run().status == "ok"
    assert w.api.request_count == 4


def loops_then_rereads_the_window(w: World, fault: Fault) -> None:
    """A paging loop stops the run (no endless paging) and discards the token chain: the next run
    reads the window from its first page, and the ledger drops what was already sent."""
    w.seed()
    w.api.faults.add(fault)
    first = w.run()
    assert first.status == "failed" and "continuation token came back twice" in first.error, first.error
    cursor = w.deployment.checkpoint()
    assert cursor.window is not None and cursor.continuation_token is None
    second = w.run()
    assert second.status == "ok" and second.sent == 15 and second.duplicates >= 10  # page 1 again, dropped


def pulumi_empty_page_mid_window_repeating_its_token(w: World) -> None:
    """An empty page mid-window that hands back the request's own token is a loop."""
    loops_then_rereads_the_window(w, Fault.empty_page_with_token(match=2))


def pulumi_continuation_token_repeats(w: World) -> None:
    """A page whose continuation token is the one just sent is a loop."""
    loops_then_rereads_the_window(w, Fault.repeated_token(match=2))


def pulumi_continuation_token_loops_back_to_the_first_page(w: World) -> None:
    """The first page's token leads back to the first page, every time: every run stops after one
    repeat (bounded), and once the API is fixed the next run sends nothing twice."""
    w.seed()
    w.api.faults.add(Fault.repeated_token(times=None))
    for _ in range(2):
        before = w.api.request_count
        report = w.run()
        assert report.status == "failed" and "continuation token came back twice" in report.error
        assert w.api.request_count - before <= 2
    w.api.faults.clear()
    assert w.run().status == "ok"


def pulumi_401_mid_window(w: World) -> None:
    """A 401 in the middle of a window fails the run naming the token; the pages before it are kept."""
    fails_then_resumes(w, Fault.respond(401, match=2), "rejected the access token for org 'acme' (401)")


def pulumi_continuation_token_expired(w: World) -> None:
    """A saved continuation token the API no longer accepts (400) restarts the window from its first
    page; the ledger drops what was already sent."""
    w.seed()
    w.api.faults.add(Fault.respond(401, match=2))
    assert w.run().status == "failed"
    resumed = w.api.request_count + 1
    w.api.faults.add(Fault.respond(400, match=lambda request: "continuationToken" in request.query))
    report = w.run()
    assert report.status == "ok" and report.sent == 15
    assert statuses_of(w, resumed) == [400] and "continuationToken" not in w.api.requests[resumed].query


# == Pulumi API: timing of events ==================================================================


def late_event_inside_a_polled_window(w: World) -> None:
    """An event that shows up after its window was polled is caught by the next run's overlap."""
    w.seed()
    assert w.run().status == "ok"
    late = w.add([w.event(w.now - 420)])[0]
    assert w.run().status == "ok"
    assert row_id(ORG, late) in w.landed()


def identical_twin_appears_late(w: World) -> None:
    """A second, identical event that shows up late lands as occurrence 2 of the same content."""
    twin = w.event(w.now - 150)
    w.add([twin])
    assert w.run().status == "ok"
    w.add([dict(twin)])
    assert w.run().status == "ok"
    assert set(w.landed()) == {row_id(ORG, twin, 1), row_id(ORG, twin, 2)}


def same_second_burst_across_pages(w: World) -> None:
    """Ten events in the same second, served three a page, all land; the next poll re-reads them
    in its overlap and sends none again."""
    w.seed(5, page_size=3)
    second = w.now - 150
    w.add([w.event(second) for _ in range(10)])
    assert w.run().status == "ok"
    again = w.run()
    assert again.status == "ok" and again.sent == 0 and again.duplicates >= 10


def identical_events_across_pages(w: World) -> None:
    """Identical events in one second (4 and 3 copies) across pages land as that many rows, with
    occurrence-numbered ids, and are not sent again by the overlap re-read."""
    w.seed(5, page_size=3)
    first, second = w.event(w.now - 300), w.event(w.now - 300, event="environment-open")
    w.add([first] * 4 + [second] * 3)
    assert w.run().status == "ok"
    assert w.run().sent == 0
    landed = w.landed()
    for event, copies in ((first, 4), (second, 3)):
        assert [landed[row_id(ORG, event, k)] for k in range(1, copies + 2)] == [1] * copies + [0]


def identical_events_split_by_a_failure_mid_window(w: World) -> None:
    """Six identical events split across pages by a failed run: the resumed run sends exactly the
    three the first one did not."""
    w.api.page_size = 3
    w.add([w.event(w.now - 500, description="Read the outputs of stack 'acme/web/prod'.")] * 6)
    w.api.faults.add(Fault.respond(401, match=2))
    assert w.run().sent == 3
    assert w.run().sent == 3
    assert len(w.landed()) == 6


def time_budget_runs_out_mid_window(w: World) -> None:
    """A run whose time budget runs out mid-window stops cleanly and the next one resumes there."""
    w.seed()
    connector = w.connector()
    clock = itertools.count(0, 200)
    connector.collector.monotonic = lambda: next(clock)
    stopped = w.run(connector)
    assert stopped.status == "stopped" and stopped.pages == 2
    assert w.run().status == "ok"


# == Pulumi API: hostile and unexpected events =====================================================


def kebab_and_display_name_events(w: World) -> None:
    """Events named in kebab-case and in display-name form all land with the kebab-case id."""
    w.seed(30)
    w.present(lambda event: {**event, "event": DISPLAY_NAMES[event["event"]]} if event["timestamp"] % 2 else event)
    assert w.run().status == "ok"
    raw_names = {rebuild(row)["event"] for row in w.rows()}
    assert raw_names & set(DISPLAY_NAMES.values()) and raw_names & set(DISPLAY_NAMES)
    assert {row["Event_s"] for row in w.rows()} <= set(DISPLAY_NAMES)


def unknown_new_fields(w: World) -> None:
    """Fields this version does not know are kept in ExtraFields_s and never become columns."""
    w.seed()
    extra = {"riskScore": 7, "session": {"mfa": True, "client": "pulumi-cli/3.140"}}
    w.present(lambda event: {**event, **extra})
    assert w.run().status == "ok"
    assert all(json.loads(row["ExtraFields_s"]) == extra for row in w.rows())


def missing_optional_fields(w: World) -> None:
    """Events with only a timestamp and an event name land with empty optional columns."""
    w.seed()
    w.present(lambda event: {"timestamp": event["timestamp"], "event": event["event"]})
    assert w.run().status == "ok"
    assert {(row["UserLogin_s"], row["SourceIP_s"], row["RequireOrgAdmin_b"]) for row in w.rows()} == {("", "", False)}


def wrong_field_types(w: World) -> None:
    """A user given as a string, an IP as a number, flags as strings and a description as an object
    are coerced, not refused."""
    w.seed()
    w.present(
        lambda event: {
            **event,
            "user": "pnatarajan",
            "sourceIP": 3405803776,
            "reqOrgAdmin": "true",
            "description": {"text": event["description"]},
        }
    )
    assert w.run().status == "ok"
    row = w.rows()[0]
    assert (row["UserName_s"], row["SourceIP_s"], row["RequireOrgAdmin_b"]) == ("pnatarajan", "3405803776", True)
    assert json.loads(row["Description_s"])["text"]


def timestamp_as_a_string(w: World) -> None:
    """A timestamp sent as a numeric string is read as Unix seconds."""
    events = w.seed()
    w.present(lambda event: {**event, "timestamp": f" {event['timestamp']} "})
    assert w.run().status == "ok"
    assert sorted(row["Timestamp_d"] for row in w.rows()) == sorted(event["timestamp"] for event in events)


def timestamp_in_milliseconds(w: World) -> None:
    """A timestamp in milliseconds is read as the same second."""
    events = w.seed()
    w.present(lambda event: {**event, "timestamp": event["timestamp"] * 1000 + 123})
    assert w.run().status == "ok"
    assert sorted(row["Timestamp_d"] for row in w.rows()) == sorted(event["timestamp"] for event in events)


def event_without_a_usable_timestamp(w: World) -> None:
    """An event whose time cannot be read is kept in the dead-letter store; the rest land."""
    w.seed()
    w.add([w.event(w.now - 700, description="odd one")])
    w.present(lambda event: {**event, "timestamp": "yesterday"} if event["description"] == "odd one" else event)
    assert w.run().status == "ok"
    [letter] = w.stored_dead_letters()
    assert "timestamp" in letter.reason and "odd one" in letter.row["RawEvent_s"]
    assert len(w.rows()) == 25 and "odd one" not in {row["Description_s"] for row in w.rows()}


def event_that_is_not_an_object(w: World) -> None:
    """An array entry that is not a JSON object is kept in the dead-letter store; the rest land."""
    w.seed()
    w.add([w.event(w.now - 700, description="odd one")])
    w.present(lambda event: "stack-deleted by pnatarajan" if event["description"] == "odd one" else event)
    assert w.run().status == "ok"
    [letter] = w.stored_dead_letters()
    assert "not a JSON object" in letter.reason and letter.row["RawEvent_s"] == '"stack-deleted by pnatarajan"'


def description_over_64_kb(w: World) -> None:
    """A 200 KB description lands cut visibly to the 64 KB field limit, and is not kept twice."""
    w.seed(5)
    w.add([w.event(w.now - 700, description="Changed policy pack: " + "x" * 200_000)])
    assert w.run().status == "ok"
    [row] = [row for row in w.rows() if row["Description_s"].startswith("Changed policy pack")]
    assert len(row["Description_s"].encode()) <= MAX_FIELD_BYTES
    assert row["Description_s"].endswith("limit 64000]") and rebuild(row)["description"] == row["Description_s"]
    assert w.ingestion.oversized_fields == []


HOSTILE_TEXT = [
    "Zoë Lindqvist opened 'payments/prod' — ✓ 日本語 עברית",
    "deploy 🚀🔥 by 👩🏽‍💻 (ZWJ sequence) and a flag 🇸🇪",
    "control chars: \x00 \x07 \x1b[31mred\x1b[0m \r\n\t end",
    "bidi override \u202egnp.exe and zero-width \u200b\u200d joiners",
    'quotes " \' ` and backslash \\ and a JSON look-alike {"timestamp": 0}',
]


def non_ascii_emoji_and_control_characters(w: World) -> None:
    """Non-ASCII text, emoji, control and bidi characters land exactly as sent."""
    w.seed(5)
    w.add([w.event(w.now - 700 + i, description=text, user={"name": text}) for i, text in enumerate(HOSTILE_TEXT)])
    assert w.run().status == "ok"
    descriptions = {row["Description_s"] for row in w.rows()}
    assert set(HOSTILE_TEXT) <= descriptions
    assert {row["UserName_s"] for row in w.rows()} >= set(HOSTILE_TEXT)


def lone_surrogate_in_a_valid_event(w: World) -> None:
    """Half an emoji (a lone UTF-16 surrogate, legal in JSON) is replaced, not fatal."""
    w.seed(5)
    w.add([w.event(w.now - 700, description="half an emoji: \ud83d")])
    assert w.run().status == "ok"
    assert any(row["Description_s"].startswith("half an emoji: ") for row in w.rows())


def lone_surrogate_in_an_event_without_a_usable_timestamp(w: World) -> None:
    """An event with half an emoji whose time cannot be read still goes to the dead-letter store,
    and the runs after it go on."""
    w.seed(5)
    w.add([w.event(w.now - 700, description="half an emoji: \ud83d")])
    w.present(lambda event: {**event, "timestamp": "n/a"} if event["description"].startswith("half") else event)
    first, second = w.run(), w.run()
    assert (first.status, second.status) == ("ok", "ok"), second.error
    assert first.dead_lettered == 1


def new_field_appears_between_polls(w: World) -> None:
    """The API starts sending a new field between two polls: the events the next poll re-reads in
    its overlap are the same events and must not be sent again under new ids."""
    w.seed(10)
    w.add([w.event(w.now - offset) for offset in (500, 400, 300)])
    assert w.run().status == "ok"
    w.present(lambda event: {**event, "requestId": "r-" + str(event["timestamp"])})
    assert w.run().status == "ok"


def event_name_form_changes_between_polls(w: World) -> None:
    """The API switches event names to display-name form between two polls: the re-read overlap
    events are the same events and must not be sent again under new ids."""
    w.seed(10)
    w.add([w.event(w.now - offset) for offset in (500, 400, 300)])
    assert w.run().status == "ok"
    w.present(lambda event: {**event, "event": DISPLAY_NAMES[event["event"]]})
    assert w.run().status == "ok"


# == Logs Ingestion ================================================================================


def ingestion_429_with_retry_after(w: World) -> None:
    """A 429 with Retry-After from Logs Ingestion: the sink waits as told and the rows land."""
    w.seed()
    w.ingestion.faults.add(Fault.respond(429, headers={"Retry-After": "5"}))
    assert w.run().status == "ok"
    assert 5 in w.sleeps


def ingestion_429_without_retry_after(w: World) -> None:
    """A 429 without Retry-After is retried too (the SDK would not retry a POST on its own)."""
    w.seed()
    w.ingestion.faults.add(Fault.respond(429, times=2))
    assert w.run().status == "ok"
    assert [request.status for request in w.ingestion.requests][:3] == [429, 429, 204]


def ingestion_429_outlasts_the_retries(w: World) -> None:
    """Throttling that outlasts the retries fails the run without a checkpoint; the next run sends all."""
    w.seed()
    w.ingestion.faults.add(Fault.respond(429, times=None))
    report = w.run()
    assert report.status == "failed" and "did not accept the rows after retries (429" in report.error
    assert w.deployment.checkpoint() is None
    w.ingestion.faults.clear()
    assert w.run().status == "ok"


def ingestion_server_error(status: int):
    def play(w: World) -> None:
        w.seed()
        w.ingestion.faults.add(Fault.respond(status, times=2))
        assert w.run().status == "ok"
        assert [request.status for request in w.ingestion.requests][:3] == [status, status, 204]

    play.__doc__ = f"Two {status}s from Logs Ingestion are retried and the rows land."
    return play


def ingestion_413_for_a_batch(w: World) -> None:
    """A 413 for a request that accumulated the rows of three pages is split in halves that land,
    across the page boundaries; nothing is dead-lettered, nothing is sent twice."""
    w.seed()
    w.ingestion.faults.add(Fault.respond(413, match=1))
    assert w.run().status == "ok"
    first, halves = w.ingestion.requests[0], w.ingestion.requests[1:3]
    assert first.status == 413 and [request.row_count for request in halves] == [12, 13]


def ingestion_400_for_a_batch(w: World) -> None:
    """A 400 for a whole batch is narrowed down by halves; rows the service then takes all land."""
    w.seed()
    w.ingestion.faults.add(Fault.respond(400, match=1))
    assert w.run().status == "ok"
    assert w.ingestion.requests[0].status == 400


def ingestion_refuses_one_row(w: World) -> None:
    """One row the service refuses (400) goes to the dead-letter store; the rest of its batch lands."""
    w.seed()
    poison = w.add([w.event(w.now - 700, description="a row the service refuses")])[0]["description"]
    w.ingestion.reject_rows(lambda row: row.get("Description_s") == poison)
    report = w.run()
    assert report.status == "ok" and report.dead_lettered == 1
    [letter] = w.stored_dead_letters()
    assert letter.row["Description_s"] == poison and "400" in letter.reason


def ingestion_403_while_the_role_propagates(w: World) -> None:
    """A 403 right after deploy is retried for a bounded time (8 x 15 s) and then fails naming the
    role to grant; once the role is effective the next run sends everything."""
    w.seed()
    w.ingestion.faults.add(Fault.respond(403, times=None, match=lambda request: AUDIT_TABLE.stream in request.path))
    report = w.run()
    assert report.status == "failed" and "Monitoring Metrics Publisher" in report.error and "403" in report.error
    # Nine refusals of the events; then the run's health row lands on its own stream.
    assert w.sleeps.count(15) == 8 and [request.status for request in w.ingestion.requests] == [403] * 9 + [204]
    w.ingestion.faults.clear()
    assert w.run().status == "ok"


def ingestion_403_clears_after_three_retries(w: World) -> None:
    """A 403 that clears after three retries succeeds in the same run."""
    w.seed()
    w.ingestion.faults.add(Fault.respond(403, times=3))
    assert w.run().status == "ok"
    assert w.sleeps.count(15) == 3


def ingestion_connection_refused(w: World) -> None:
    """Logs Ingestion refusing connections (a closed endpoint) fails the run without a checkpoint."""
    w.seed()
    report = w.run(w.connector(LOGS_INGESTION_ENDPOINT=closed_port_url()))
    assert report.status == "failed" and "Logs Ingestion unreachable after retries" in report.error
    assert w.deployment.checkpoint() is None
    assert w.run().status == "ok"


def ingestion_connection_reset(w: World) -> None:
    """A connection reset while uploading is retried; the rows land once."""
    w.seed()
    w.ingestion.faults.add(Fault.reset(match=1))
    assert w.run().status == "ok"
    assert w.ingestion.requests[0].status is None


def ingestion_read_timeout(w: World) -> None:
    """An upload answered slower than the read timeout, and never processed, is sent again."""
    w.seed()
    w.ingestion.faults.add(Fault.delay(30, match=1))
    with mock.patch.object(shared.wiring, "INGESTION_READ_TIMEOUT_SECONDS", SHORT_READ_TIMEOUT):
        assert w.run().status == "ok"
    assert not w.ingestion.requests[0].handled


def ingestion_accepts_but_answers_after_the_timeout(w: World) -> None:
    """Logs Ingestion accepts a batch but answers after the read timeout: the batch is sent again and
    lands twice with the same EventId_s (nothing can tell the client it was accepted)."""
    w.seed()
    w.ingestion.faults.add(Fault.hold_response(30, match=1))
    with mock.patch.object(shared.wiring, "INGESTION_READ_TIMEOUT_SECONDS", SHORT_READ_TIMEOUT):
        assert w.run().status == "ok"
    assert w.ingestion.requests[0].handled and sum(w.landed().values()) == 50


# == Table Storage =================================================================================


def interleave(w: World) -> CollectionReport:
    """Two connectors on one org: B runs to completion while A holds the org, between A's lease
    and A's first read of the state."""
    a, b = w.connector(), w.connector()
    load = a.collector.state.load_org
    skipped = []

    def load_then_let_b_run(org):
        skipped.append(w.run(b))
        return load(org)

    a.collector.state.load_org = load_then_let_b_run
    report = w.run(a)
    [other] = skipped
    assert other.status == "skipped" and "another run works on it" in other.error and a.collector.holder in other.error
    return report


def a_concurrent_run_is_skipped(w: World) -> None:
    """Another run starts while this one holds the org: it is skipped, naming the holder and the
    lease's expiry, with no error; this run completes, and no page is sent twice."""
    w.seed()
    assert w.run().status == "ok"
    w.add([w.event(w.now - 100 + i) for i in range(12)])
    assert interleave(w).status == "ok"


def a_concurrent_first_run_is_skipped(w: World) -> None:
    """Two first runs of an org at once: the second is skipped, the first creates the state."""
    w.seed()
    assert interleave(w).status == "ok"


def runs_started_at_once(count: int):
    def play(w: World) -> None:
        """Several runs start at the same moment over three orgs: for each org one works and the
        others skip it (or find nothing left); none fails, and no page is sent twice."""
        w.deployment.orgs = ("acme", "globex", "initech")
        for index, org in enumerate(w.orgs):
            w.seed(30, seed=index + 1, org=org)
        connectors = [w.connector() for _ in range(count)]
        start = threading.Barrier(count)
        results: list[list[CollectionReport]] = [[] for _ in range(count)]

        def run(index: int) -> None:
            start.wait()
            results[index] = connectors[index].run_once()

        threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for reports in results:
            w.statuses.append("/".join(report.status for report in reports))
        statuses = [report.status for reports in results for report in reports]
        assert "failed" not in statuses and statuses.count("ok") >= len(w.orgs), statuses
        assert w.run().status == "ok"

    return play


def one_org_failing_while_three_run(w: World) -> None:
    """Four orgs run at once (MAX_PARALLEL_ORGS) and the API keeps failing for one of them: that
    org fails alone, naming itself, while the three others are caught up in the same run; the
    next run catches the fourth up too."""
    w.deployment.orgs = ("acme", "globex", "initech", "umbrella")
    for index, org in enumerate(w.orgs):
        w.seed(30, seed=index + 1, org=org)
    w.api.faults.add(Fault.respond(503, match=lambda request: "/initech/" in request.path, times=None))
    w.run()
    assert w.statuses[-1] == "ok/ok/failed/ok"
    [failed] = [report for report in w.reports if report.failed]
    assert "answered 503 for org 'initech'" in failed.error and w.deployment.checkpoint("initech") is None
    for org in ("acme", "globex", "umbrella"):
        assert w.deployment.checkpoint(org).window is None, org
    w.api.faults.clear()
    w.run()


def checkpoint_storage_unreachable(w: World) -> None:
    """Table Storage unreachable: the run fails before sending anything, naming the org's state."""
    w.seed()
    report = w.run(w.connector(CHECKPOINT_CONNECTION_STRING=unreachable_tables(w)))
    assert report.status == "failed" and "cannot read the state of org 'acme'" in report.error
    assert [request for request in w.ingestion.requests if AUDIT_TABLE.stream in request.path] == []
    assert w.run().status == "ok"


class SavesGoNowhere:
    """A state store that works against Azurite, except that its cursor saves go to an unreachable endpoint."""

    def __init__(self, store, unreachable):
        self._store, self._unreachable = store, unreachable

    def __getattr__(self, name):
        return getattr(self._store, name)

    def save_cursor(self, *args):
        return self._unreachable.save_cursor(*args)


def checkpoint_storage_lost_after_upload(w: World) -> None:
    """Table Storage goes away between the upload and the checkpoint write: the run fails, and the
    next run sends that page again with the same EventId_s."""
    w.seed()
    connector = w.connector()
    unreachable = TableClient.from_connection_string(unreachable_tables(w), table_name=w.deployment.table_name)
    connector.collector.state = SavesGoNowhere(connector.collector.state, table_state_store(unreachable))
    report = w.run(connector)
    assert report.status == "failed" and "cannot write the state of org 'acme'" in report.error
    assert len(w.rows()) == 25  # the three pages went in one request
    assert w.run().status == "ok"


def state_in_an_unknown_format_version(w: World) -> None:
    """The table holds state written by a newer connector: the org fails with a message naming the
    version and the fix, nothing is sent, and once the operator points at a fresh table it runs."""
    w.seed()
    table = TableClient.from_connection_string(w.deployment.azurite_connection_string, w.deployment.table_name)
    table.create_table()
    table.create_entity({"PartitionKey": ORG, "RowKey": "cursor~live", "FormatVersion": 99, "Watermark": 1})
    report = w.run()
    assert report.status == "failed" and "format version 99" in report.error and "CHECKPOINT_TABLE_NAME" in report.error
    assert [request for request in w.ingestion.requests if AUDIT_TABLE.stream in request.path] == []
    table.delete_entity(ORG, "cursor~live")
    assert w.run().status == "ok"


def dead_letter_storage_unreachable(w: World) -> None:
    """The dead-letter table is unreachable when a row is refused: the run stops before its
    checkpoint, and the next run stores the refused row durably."""
    w.seed()
    poison = w.add([w.event(w.now - 700, description="a row the service refuses")])[0]["description"]
    w.ingestion.reject_rows(lambda row: row.get("Description_s") == poison)
    connector = w.connector()
    unreachable = TableClient.from_connection_string(unreachable_tables(w), table_name=w.deployment.table_name + "dead")
    connector.collector.dead_letters = TableDeadLetterStore(unreachable)
    report = w.run(connector)
    assert report.status == "failed" and "cannot store refused rows for org 'acme'" in report.error
    assert w.run().status == "ok"
    [letter] = w.stored_dead_letters()
    assert letter.row["Description_s"] == poison


# == the matrix ====================================================================================


SCENARIOS: list[Scenario] = [
    Scenario("pulumi-429-with-retry-after", pulumi_429_with_retry_after),
    Scenario("pulumi-429-without-retry-after", pulumi_429_without_retry_after),
    Scenario("pulumi-429-with-a-hostile-retry-after", pulumi_429_with_a_hostile_retry_after),
    *[Scenario(f"pulumi-{status}", pulumi_server_error(status)) for status in (500, 502, 503, 504)],
    Scenario("pulumi-503-outlasts-the-retries", pulumi_503_outlasts_the_retries),
    Scenario("pulumi-connection-reset", pulumi_connection_reset),
    Scenario("pulumi-read-timeout", pulumi_read_timeout),
    Scenario("pulumi-truncated-json", pulumi_truncated_json),
    Scenario("pulumi-body-short-of-its-content-length", pulumi_body_short_of_its_content_length),
    Scenario("pulumi-malformed-json", pulumi_malformed_json),
    Scenario("pulumi-html-error-page-with-200", pulumi_html_error_page_with_200),
    Scenario("pulumi-json-without-the-events-list", pulumi_json_without_the_events_list),
    Scenario("pulumi-deeply-nested-json", pulumi_deeply_nested_json),
    Scenario("pulumi-empty-first-page-with-a-token", pulumi_empty_first_page_with_a_token),
    Scenario("pulumi-empty-page-mid-window-repeating-its-token", pulumi_empty_page_mid_window_repeating_its_token),
    Scenario("pulumi-continuation-token-repeats", pulumi_continuation_token_repeats),
    Scenario(
        "pulumi-continuation-token-loops-back-to-the-first-page",
        pulumi_continuation_token_loops_back_to_the_first_page,
    ),
    Scenario("pulumi-401-mid-window", pulumi_401_mid_window),
    Scenario("pulumi-continuation-token-expired", pulumi_continuation_token_expired),
    Scenario("late-event-inside-a-polled-window", late_event_inside_a_polled_window),
    Scenario("identical-twin-appears-late", identical_twin_appears_late),
    Scenario("same-second-burst-across-pages", same_second_burst_across_pages),
    Scenario("identical-events-across-pages", identical_events_across_pages),
    Scenario("identical-events-split-by-a-failure-mid-window", identical_events_split_by_a_failure_mid_window),
    Scenario("time-budget-runs-out-mid-window", time_budget_runs_out_mid_window),
    Scenario("kebab-and-display-name-events", kebab_and_display_name_events),
    Scenario("unknown-new-fields", unknown_new_fields),
    Scenario("missing-optional-fields", missing_optional_fields),
    Scenario("wrong-field-types", wrong_field_types),
    Scenario("timestamp-as-a-string", timestamp_as_a_string),
    Scenario("timestamp-in-milliseconds", timestamp_in_milliseconds),
    Scenario("event-without-a-usable-timestamp", event_without_a_usable_timestamp, dead_letters=1),
    Scenario("event-that-is-not-an-object", event_that_is_not_an_object, dead_letters=1),
    Scenario("description-over-64-kb", description_over_64_kb),
    Scenario("non-ascii-emoji-and-control-characters", non_ascii_emoji_and_control_characters),
    Scenario("lone-surrogate-in-a-valid-event", lone_surrogate_in_a_valid_event),
    Scenario(
        "lone-surrogate-in-an-event-without-a-usable-timestamp",
        lone_surrogate_in_an_event_without_a_usable_timestamp,
        dead_letters=1,
    ),
    Scenario("new-field-appears-between-polls", new_field_appears_between_polls),
    Scenario("event-name-form-changes-between-polls", event_name_form_changes_between_polls),
    Scenario("ingestion-429-with-retry-after", ingestion_429_with_retry_after),
    Scenario("ingestion-429-without-retry-after", ingestion_429_without_retry_after),
    Scenario("ingestion-429-outlasts-the-retries", ingestion_429_outlasts_the_retries),
    *[Scenario(f"ingestion-{status}", ingestion_server_error(status)) for status in (500, 503)],
    Scenario("ingestion-413-for-a-batch", ingestion_413_for_a_batch),
    Scenario("ingestion-400-for-a-batch", ingestion_400_for_a_batch),
    Scenario("ingestion-refuses-one-row", ingestion_refuses_one_row, dead_letters=1),
    Scenario("ingestion-403-while-the-role-propagates", ingestion_403_while_the_role_propagates),
    Scenario("ingestion-403-clears-after-three-retries", ingestion_403_clears_after_three_retries),
    Scenario("ingestion-connection-refused", ingestion_connection_refused),
    Scenario("ingestion-connection-reset", ingestion_connection_reset),
    Scenario("ingestion-read-timeout", ingestion_read_timeout),
    Scenario(
        "ingestion-accepts-but-answers-after-the-timeout",
        ingestion_accepts_but_answers_after_the_timeout,
        duplicates_allowed="the service took the batch but its answer was lost",
    ),
    Scenario("a-concurrent-run-is-skipped", a_concurrent_run_is_skipped),
    Scenario("a-concurrent-first-run-is-skipped", a_concurrent_first_run_is_skipped),
    Scenario("two-runs-started-at-once", runs_started_at_once(2)),
    Scenario("three-runs-started-at-once", runs_started_at_once(3)),
    Scenario("one-org-failing-while-three-run-at-once", one_org_failing_while_three_run),
    Scenario("state-in-an-unknown-format-version", state_in_an_unknown_format_version),
    Scenario("checkpoint-storage-unreachable", checkpoint_storage_unreachable),
    Scenario(
        "checkpoint-storage-lost-after-upload",
        checkpoint_storage_lost_after_upload,
        duplicates_allowed="the checkpoint write failed after the upload",
    ),
    Scenario(
        "dead-letter-storage-unreachable",
        dead_letter_storage_unreachable,
        duplicates_allowed="the run stopped after the upload, before its checkpoint",
        dead_letters=1,
    ),
]


def params(scenarios: list[Scenario]) -> list:
    return [
        pytest.param(
            scenario,
            id=scenario.name,
            marks=[pytest.mark.xfail(strict=True, reason=scenario.finding)] if scenario.finding else [],
        )
        for scenario in scenarios
    ]


@pytest.mark.faults
@pytest.mark.parametrize("scenario", params(SCENARIOS))
def test_no_event_is_lost_or_duplicated_under(scenario: Scenario, world: World):
    play_and_check(world, scenario)
