"""One Pulumi audit event becomes one PulumiAuditLogs_CL row."""

from __future__ import annotations

import json

import pytest

from shared.catalog import default_catalog
from shared.schema import COLUMN_NAMES, COLUMNS, MAX_FIELD_BYTES
from shared.transform import InvalidEvent, current_row, encode_row, normalize, to_row

CATALOG = default_catalog()
EVENT = {
    "timestamp": 1756400000,
    "sourceIP": "203.0.113.42",
    "event": "stack-deleted",
    "description": "Stack acme/web/prod was deleted.",
    "user": {"name": "Alex Rivera", "githubLogin": "arivera", "avatarUrl": "https://example.test/a.png"},
    "tokenName": "ci-deploy",
    "reqStackAdmin": True,
}


def row_of(event: dict, org: str = "acme", occurrence: int = 1) -> dict:
    return to_row(org, event, occurrence, CATALOG)


def test_the_row_has_exactly_the_schema_columns_in_order():
    assert list(row_of(EVENT)) == list(COLUMN_NAMES)


def test_the_official_connector_columns_keep_their_meaning():
    row = row_of(EVENT)
    assert row["TimeGenerated"] == "2025-08-28T16:53:20Z"
    assert row["Timestamp_d"] == 1756400000
    assert (row["Event_s"], row["SourceIP_s"], row["UserLogin_s"], row["TokenName_s"]) == (
        "stack-deleted",
        "203.0.113.42",
        "arivera",
        "ci-deploy",
    )
    assert (row["RequireStackAdmin_b"], row["RequireOrgAdmin_b"], row["AuthFailure_b"]) == (True, False, False)


def test_absent_optional_fields_become_empty_strings_and_false():
    row = row_of({"timestamp": 1756400000, "event": "user-login", "description": "", "sourceIP": "", "user": {}})
    assert row["TokenID_s"] == "" and row["ActorUrn_s"] == "" and row["UserName_s"] == ""
    assert row["AuthFailure_b"] is False


def test_each_value_has_the_type_its_column_declares():
    python_types = {"string": str, "long": int, "boolean": bool, "datetime": str}
    row = row_of(EVENT)
    for column in COLUMNS:
        assert type(row[column.name]) is python_types[column.type], column.name


def test_the_original_event_time_is_kept_apart_from_time_generated():
    row = row_of(EVENT)
    assert row["EventTime_t"] == row["TimeGenerated"] == "2025-08-28T16:53:20Z"


def test_extra_fields_keep_fields_this_version_does_not_know():
    row = row_of({**EVENT, "newField": {"nested": [1, 2]}})
    assert json.loads(row["ExtraFields_s"]) == {"newField": {"nested": [1, 2]}}


def test_org_name_is_recorded():
    assert row_of(EVENT, org="acme-labs")["OrgName_s"] == "acme-labs"


@pytest.mark.parametrize(
    ("name", "product", "category"),
    [
        ("environment-open", "esc", "environments"),
        ("Environment Open", "esc", "environments"),
        ("auth-failure-environment", "esc", "authentication"),
        ("stack-provider-open", "esc", "stacks"),
        ("Environment Version Tag Open", "esc", "environments"),
        ("stack-deleted", "cloud", "stacks"),
        ("Stack Deleted", "cloud", "stacks"),
        ("member-added", "cloud", "organization"),
        ("organization-token-created", "cloud", "access-tokens"),
    ],
)
def test_product_and_category_come_from_the_event_catalog(name, product, category):
    row = row_of({**EVENT, "event": name})
    assert (row["Product_s"], row["Category_s"]) == (product, category)


def test_display_names_are_normalised_to_kebab_case_ids():
    assert row_of({**EVENT, "event": "Environment Read Open"})["Event_s"] == "environment-read-open"


def test_the_same_event_always_gets_the_same_id():
    assert row_of(dict(EVENT))["EventId_s"] == row_of(json.loads(json.dumps(EVENT)))["EventId_s"]


def test_different_events_in_the_same_second_get_different_ids():
    other = {**EVENT, "description": "Stack acme/web/dev was deleted."}
    assert row_of(EVENT)["EventId_s"] != row_of(other)["EventId_s"]


def test_event_ids_stay_what_earlier_versions_gave_the_same_events():
    # Rows already in Log Analytics and the ledgers of saved checkpoints carry these ids: a new
    # id for the same event would send the overlap again as new rows after an upgrade.
    assert row_of(EVENT)["EventId_s"] == "dc5e7725b7052abe80a087d2b6bb3e52"
    accented = {**EVENT, "description": "Déploiement 🚀 of Zoë"}
    assert row_of(accented, occurrence=2)["EventId_s"] == "ebb05d275bb72470b9f01089c773b3f5"


def test_an_event_of_the_usual_shape_stores_nothing_beside_the_typed_columns():
    row = row_of({**EVENT, "description": "Déploiement 🚀"})
    assert (row["ExtraFields_s"], row["RawEvent_s"]) == ("", "")


def test_extra_fields_are_compact_json_with_text_as_is():
    row = row_of({**EVENT, "newField": {"b": "Déploiement 🚀", "a": [1, "x"]}})
    assert row["ExtraFields_s"] == '{"newField":{"b":"Déploiement 🚀","a":[1,"x"]}}'


def test_extra_fields_are_written_once_for_all_the_rows_of_an_event():
    normalized = normalize("acme", {**EVENT, "newField": 1}, CATALOG)
    assert normalized.row(1)["ExtraFields_s"] is normalized.row(2)["ExtraFields_s"]


def test_identical_events_differ_by_occurrence():
    assert row_of(EVENT, occurrence=1)["EventId_s"] != row_of(EVENT, occurrence=2)["EventId_s"]


def test_the_same_event_in_two_orgs_gets_two_ids():
    assert row_of(EVENT, org="a")["EventId_s"] != row_of(EVENT, org="b")["EventId_s"]


@pytest.mark.parametrize("timestamp", ["1756400000", 1756400000123, 1756400000.9, " 1756400000 "])
def test_timestamps_as_strings_floats_or_milliseconds_are_read_as_seconds(timestamp):
    assert row_of({**EVENT, "timestamp": timestamp})["Timestamp_d"] == 1756400000


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({**EVENT, "timestamp": None}, "'timestamp' is missing"),
        ({**EVENT, "timestamp": "yesterday"}, "'timestamp' is not a number"),
        ({**EVENT, "timestamp": True}, "'timestamp' is missing or not a number"),
        ({**EVENT, "timestamp": 12}, "not a plausible Unix time"),
        ({**EVENT, "event": ""}, "'event' is missing"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
def test_an_event_that_cannot_become_a_row_is_refused_with_the_reason(event, message):
    with pytest.raises(InvalidEvent, match=message):
        to_row("acme", event, 1, CATALOG)


def test_wrong_types_in_text_fields_are_kept_as_text():
    row = row_of({**EVENT, "sourceIP": 12345, "tokenID": ["a"], "user": "bot"})
    assert (row["SourceIP_s"], row["TokenID_s"], row["UserName_s"]) == ("12345", '["a"]', "bot")


def test_an_over_long_value_is_truncated_visibly_under_the_field_limit():
    normalized = normalize("acme", {**EVENT, "description": "x" * 100_000}, CATALOG)
    description = normalized.row(1)["Description_s"]
    assert len(description.encode()) <= MAX_FIELD_BYTES
    assert description.endswith("[truncated by connector: 100000 bytes, limit 64000]")
    assert normalized.truncated_columns == ("Description_s",)


def test_multibyte_text_is_never_cut_inside_a_character():
    description = row_of({**EVENT, "description": "é🙂" * 30_000})["Description_s"]
    assert len(description.encode("utf-8")) <= MAX_FIELD_BYTES
    description.encode("utf-8")  # would raise on a broken surrogate


def test_non_ascii_emoji_and_control_characters_survive():
    text = "Déploiement 🚀 \u0007bell\ttab\nline"
    assert row_of({**EVENT, "description": text})["Description_s"] == text


def test_lone_surrogates_are_replaced_so_the_row_is_valid_utf8():
    row = row_of({**EVENT, "description": "bad \ud800 half"})
    row["Description_s"].encode("utf-8")
    assert row["Description_s"] == "bad ? half"


@pytest.mark.parametrize(
    "presented_differently",
    [
        {**EVENT, "newField": "added by a later API version"},
        {**EVENT, "event": "Stack Deleted"},
        {**EVENT, "user": {**EVENT["user"], "name": "Alex R.", "avatarUrl": "https://example.test/new.png"}},
        {**EVENT, "timestamp": str(EVENT["timestamp"] * 1000)},
    ],
    ids=["a-new-field", "display-name-form", "renamed-user-new-avatar", "milliseconds-as-text"],
)
def test_the_id_survives_the_api_presenting_the_same_event_differently(presented_differently):
    assert row_of(presented_differently)["EventId_s"] == row_of(EVENT)["EventId_s"]


def test_a_rows_body_is_its_compact_utf8_json():
    row = row_of({**EVENT, "description": "Déploiement 🚀 \u0007bell\ttab\nline \"quoted\" \\ \u2028"})
    encoded = encode_row(row)
    assert encoded.row is row
    assert encoded.body == json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@pytest.mark.parametrize("value", ["bad \ud800 half", 10**30], ids=["lone-surrogate", "integer-over-64-bits"])
def test_a_row_from_elsewhere_with_values_orjson_refuses_is_still_encoded(value):
    row = {"OrgName_s": "acme", "Description_s": value}
    assert json.loads(encode_row(row).body) == row


def old_format(row: dict, raw_event: str) -> dict:
    """`row` as the connector wrote it before ExtraFields_s: the whole event in RawEvent_s."""
    old = {**row, "RawEvent_s": raw_event}
    del old["ExtraFields_s"]
    return old


def test_a_row_written_before_extra_fields_existed_is_brought_to_todays_format_under_its_own_id():
    event = {**EVENT, "newField": 1}
    old = {**old_format(row_of(event), json.dumps(event, sort_keys=True)), "EventId_s": "kept-from-the-old-row"}
    assert current_row(old, CATALOG) == {**row_of(event), "EventId_s": "kept-from-the-old-row"}


@pytest.mark.parametrize(
    "raw_event",
    ['{"description": "xxx...[truncated by connector: 90000 bytes, limit 64000]', '{"event": "no time"}'],
    ids=["raw-event-cut-to-the-field-limit", "raw-event-that-is-not-a-valid-event"],
)
def test_an_old_row_whose_raw_event_is_not_a_whole_valid_event_is_kept_as_it_is(raw_event):
    old = old_format(row_of(EVENT), raw_event)
    assert current_row(old, CATALOG) is old


def test_a_row_in_todays_format_is_kept_as_it_is():
    row = row_of({**EVENT, "newField": 1})
    assert current_row(row, CATALOG) is row
