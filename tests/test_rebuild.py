"""A row stores each fact of an event once, and the event comes back whole from its row.

`rebuild(row) == event` for every event the transform accepts; the one exception is a value cut
to the 64 KB field limit, which comes back as stored.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings

from shared.catalog import default_catalog
from shared.rebuild import ABSENT, EVENT_KEY_OF_COLUMN, FLAG_KEY_OF_COLUMN, rebuild
from shared.schema import MAX_FIELD_BYTES
from shared.standins.simulated_events import event_catalog, simulate_events
from shared.transform import normalize, to_row
from tests import content_model as cm
from tests.event_strategies import EVENTS

CATALOG = default_catalog()
USER = {"name": "Alex Rivera", "githubLogin": "arivera", "avatarUrl": "https://example.test/a.png"}
EVENT = {
    "timestamp": 1756400000,
    "sourceIP": "203.0.113.42",
    "event": "stack-deleted",
    "description": "Stack acme/web/prod was deleted.",
    "user": USER,
    "tokenID": "7b2f6c1e-0d7a-4c55-9d1e-3f0b9a4c2e10",
    "tokenName": "ci-deploy",
    "reqStackAdmin": True,
}


def row_of(event: object) -> dict:
    return to_row("acme", event, 1, CATALOG)


def catalog_event(entry: dict) -> dict:
    """An event of the catalog's type, shaped as the API sends it: flags only when true."""
    event = {**EVENT, "event": entry["event"], "description": entry["description"]}
    del event["reqStackAdmin"]
    for flag, key in (
        ("requiresOrgAdmin", "reqOrgAdmin"),
        ("requiresStackAdmin", "reqStackAdmin"),
        ("authenticationFailure", "authFailure"),
    ):
        if entry[flag]:
            event[key] = True
    return event


@pytest.mark.parametrize("entry", event_catalog().values(), ids=lambda entry: entry["event"])
def test_every_catalog_event_comes_back_from_its_row_with_nothing_left_over(entry):
    event = catalog_event(entry)
    row = row_of(event)
    assert rebuild(row) == event
    assert (row["ExtraFields_s"], row["RawEvent_s"]) == ("", "")


@pytest.mark.parametrize("entry", event_catalog().values(), ids=lambda entry: entry["event"])
def test_the_display_name_form_of_every_catalog_event_comes_back_as_sent(entry):
    event = {**catalog_event(entry), "event": entry["displayName"]}
    row = row_of(event)
    assert row["Event_s"] == entry["event"]
    assert rebuild(row) == event
    assert json.loads(row["ExtraFields_s"]) == {"event": entry["displayName"]}


def test_every_simulated_event_comes_back_from_its_row():
    events = simulate_events("acme", 1_756_400_000, 1_756_486_400, 2_000, seed=17)
    assert all(rebuild(row_of(event)) == event for event in events)


def test_a_field_this_version_does_not_know_is_the_only_thing_kept_beside_the_columns():
    event = {**EVENT, "riskScore": 7, "resource": {"kind": "stack", "tags": ["prod", None]}}
    row = row_of(event)
    assert json.loads(row["ExtraFields_s"]) == {"riskScore": 7, "resource": {"kind": "stack", "tags": ["prod", None]}}
    assert rebuild(row) == event


def test_a_new_key_inside_user_costs_that_key_alone():
    event = {**EVENT, "user": {**USER, "email": "alex@example.test"}}
    row = row_of(event)
    assert row["ExtraFields_s"] == '{"user":{"email":"alex@example.test"}}'
    assert rebuild(row) == event


@pytest.mark.parametrize(
    "event",
    [
        {**EVENT, "tokenID": "", "tokenName": ""},
        {**EVENT, "reqOrgAdmin": False, "authFailure": False},
        {**EVENT, "actorName": None},
        {key: value for key, value in EVENT.items() if key not in ("sourceIP", "description")},
        {key: value for key, value in EVENT.items() if key != "user"},
        {**EVENT, "user": {}},
        {**EVENT, "user": {"name": "Alex Rivera"}},
        {**EVENT, "user": None},
        {**EVENT, "user": ""},
        {**EVENT, "user": {**USER, "avatarUrl": ""}},
        {**EVENT, "sourceIP": "", "description": ""},
    ],
    ids=[
        "empty-token-fields",
        "false-flags-sent",
        "null-optional-field",
        "no-source-ip-or-description",
        "no-user",
        "empty-user",
        "user-with-a-name-only",
        "null-user",
        "empty-string-user",
        "empty-avatar",
        "empty-required-fields",
    ],
)
def test_empty_and_absent_fields_come_back_as_sent(event):
    assert rebuild(row_of(event)) == event


@pytest.mark.parametrize(
    "event",
    [
        {**EVENT, "timestamp": 1756400000123},
        {**EVENT, "timestamp": "1756400000"},
        {**EVENT, "timestamp": 1756400000.9},
        {**EVENT, "sourceIP": 12345, "tokenID": ["a"], "user": "bot"},
        {**EVENT, "reqOrgAdmin": "true", "reqStackAdmin": 1},
        {**EVENT, "description": {"text": "structured"}},
        {**EVENT, "event": " stack-deleted "},
    ],
    ids=[
        "milliseconds",
        "timestamp-as-text",
        "fractional-seconds",
        "wrong-types-in-text-fields",
        "flags-as-text-and-number",
        "object-description",
        "padded-event-id",
    ],
)
def test_values_a_column_cannot_hold_exactly_come_back_as_sent(event):
    assert rebuild(row_of(event)) == event


@pytest.mark.parametrize(
    "text",
    ["Déploiement 🚀 de Zoë", "日本語の説明", "\u0007bell\ttab\nline \"quoted\" \\ \u2028", "bad \ud800 half"],
    ids=["accents-and-emoji", "cjk", "control-characters", "lone-surrogate"],
)
def test_unicode_comes_back_as_sent(text):
    event = {**EVENT, "description": text, "user": {**USER, "name": text, "note": text}, text: text}
    row = row_of(event)
    assert rebuild(row) == event
    row["ExtraFields_s"].encode("utf-8")  # the column is valid UTF-8, whatever the event held


def test_an_event_with_the_absent_marker_as_a_key_is_kept_whole_in_raw_event():
    event = {**EVENT, "_absent": ["sourceIP"]}
    row = row_of(event)
    assert (row["ExtraFields_s"], json.loads(row["RawEvent_s"])) == ("", event)
    assert rebuild(row) == event


def test_a_column_cut_to_the_field_limit_comes_back_as_stored():
    event = {**EVENT, "description": "x" * 100_000}
    row = row_of(event)
    assert rebuild(row) == {**event, "description": row["Description_s"]}
    assert row["ExtraFields_s"] == ""


def test_an_unknown_field_too_long_for_the_field_limit_is_cut_and_the_rest_comes_back():
    event = {**EVENT, "diff": "é" * 50_000, "riskScore": 7}
    normalized = normalize("acme", event, CATALOG)
    row = normalized.row(1)
    assert len(row["ExtraFields_s"].encode("utf-8")) <= MAX_FIELD_BYTES
    rebuilt = rebuild(row)
    assert re.search(r"\.\.\.\[truncated by connector: 100002 bytes, limit \d+\]$", rebuilt["diff"])
    assert {**rebuilt, "diff": event["diff"]} == event
    assert normalized.truncated_columns == ("ExtraFields_s",)


def test_a_row_written_before_extra_fields_existed_comes_back_from_its_raw_event():
    old_row = {**row_of(EVENT), "RawEvent_s": json.dumps({**EVENT, "newField": 1}, sort_keys=True)}
    del old_row["ExtraFields_s"]
    assert rebuild(old_row) == {**EVENT, "newField": 1}


def test_an_old_row_whose_raw_event_was_cut_comes_back_from_its_columns():
    cut = '{"description": "xxx...[truncated by connector: 90000 bytes, limit 64000]'
    old_row = {**row_of(EVENT), "RawEvent_s": cut}
    del old_row["ExtraFields_s"]
    assert rebuild(old_row) == EVENT


def test_the_kql_rebuild_describes_the_event_with_the_same_keys_and_columns():
    kql = cm.raw_event_function().body
    assert '"timestamp", Timestamp_d' in kql and f'"{ABSENT}"' in kql
    for column, path in EVENT_KEY_OF_COLUMN.items():
        assert f'"{path[-1]}", {column}' in kql, column
    for column, key in FLAG_KEY_OF_COLUMN.items():
        assert f'iff({column}, bag_pack("{key}", true)' in kql, column


# ----------------------------------------------------------------------------------------------
# A property-based sample: any JSON in any field, any extra field, at the top and inside `user`.
# ----------------------------------------------------------------------------------------------


@settings(
    max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(EVENTS)
def test_any_event_comes_back_from_its_row(event):
    assert rebuild(row_of(event)) == event
