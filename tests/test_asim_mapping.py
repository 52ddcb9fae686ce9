"""The catalog's events mapped to ASIM Audit Event fields (shared/asim.py), and the table of that
mapping the parser carries. The parser running on connector rows is tests/test_parser_on_rows.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import asim
from shared.catalog import catalog_entries
from tests import content_model as cm

ASIM_FIELDS = {
    field["name"]: field
    for field in json.loads((Path(__file__).parent / "data" / "asim-auditevent-fields.json").read_text())["fields"]
}
MAPPINGS = {item.event: item for item in asim.catalog_mappings()}


def test_the_parser_carries_the_table_the_catalog_makes():
    text = cm.parser().body
    assert asim.with_table(text, asim.catalog_mappings()) == text, (
        "the parser's table is stale: run `python -m shared.asim infra/parser/vimAuditEventPulumiCloud.kql`"
    )


def test_the_table_has_one_row_per_catalog_event():
    assert list(MAPPINGS) == [entry["event"] for entry in catalog_entries()]
    assert len(MAPPINGS) == 169


@pytest.mark.parametrize(
    ("field", "attribute"),
    [("EventType", "event_type"), ("EventResult", "event_result"), ("ObjectType", "object_type")],
)
def test_every_mapped_value_is_one_the_schema_allows(field: str, attribute: str):
    allowed = set(ASIM_FIELDS[field]["allowedValues"])
    assert {getattr(item, attribute) for item in MAPPINGS.values()} <= allowed


def test_the_action_is_the_last_action_word_of_the_id_not_the_first():
    assert MAPPINGS["stack-update-started"].event_type == "Start"
    assert MAPPINGS["stack-update-completed"].event_type == "Stop"
    assert MAPPINGS["stack-update-canceled"].event_type == "Stop"
    assert MAPPINGS["team-token-created-for-oidc-issuer"].event_type == "Create"
    assert MAPPINGS["environment-draft-read-open"].event_type == "Read"


def test_a_failed_sign_in_is_a_failure_although_the_catalog_does_not_flag_it():
    entry = next(entry for entry in catalog_entries() if entry["event"] == "user-login-failed")
    assert entry["authenticationFailure"] is False
    assert (MAPPINGS["user-login-failed"].event_result, MAPPINGS["user-login-failed"].event_result_details) == (
        "Failure",
        "Failed",
    )
    assert MAPPINGS["user-login"].event_result == "Success"


def test_a_denied_environment_open_is_an_unauthorized_read():
    denied = MAPPINGS["environment-unauthorized-open"]
    assert (denied.event_type, denied.event_result, denied.event_result_details) == ("Read", "Failure", "Unauthorized")


def test_only_sign_ins_and_authentication_failures_have_no_action():
    others = sorted(event for event, item in MAPPINGS.items() if item.event_type == "Other")
    assert others == [
        "auth-failure-change-request", "auth-failure-cloud-account", "auth-failure-environment",
        "auth-failure-insights-account", "auth-failure-organization-role", "auth-failure-scim-access-token",
        "auth-failure-stack-permission", "oidc-issuer-validation-failed", "user-login", "user-login-failed",
    ]


def test_an_id_the_catalog_does_not_know_is_other_and_fails_only_if_flagged():
    unknown = asim.mapping({"event": "stack-frobnicated", "category": "stacks", "authenticationFailure": False})
    assert (unknown.event_type, unknown.event_result, unknown.object_type) == ("Other", "Success", "Cloud Resource")


def test_the_table_keeps_what_surrounds_it():
    text = "// header\n" + asim.BEGIN_MARKER + "\nold\n" + asim.END_MARKER + "\nPulumiAuditLogs_CL\n"
    rewritten = asim.with_table(text, [MAPPINGS["stack-deleted"]])
    assert rewritten.startswith("// header\n" + asim.BEGIN_MARKER + "\nlet EventMapping = datatable(")
    assert '    "stack-deleted", "Delete", "Success", "", "Cloud Resource"\n];\n' in rewritten
    assert rewritten.endswith(asim.END_MARKER + "\nPulumiAuditLogs_CL\n")


def test_a_parser_without_the_markers_is_refused_with_what_to_add():
    with pytest.raises(ValueError, match="BEGIN generated"):
        asim.with_table("PulumiAuditLogs_CL\n", asim.catalog_mappings())


def test_the_generator_rewrites_the_file_it_is_given(tmp_path: Path):
    parser = tmp_path / "parser.kql"
    parser.write_text(asim.BEGIN_MARKER + "\n" + asim.END_MARKER + "\nPulumiAuditLogs_CL\n", encoding="utf-8")
    assert asim.main([str(parser)]) == 0
    assert parser.read_text(encoding="utf-8") == asim.with_table(parser.read_text(encoding="utf-8"), MAPPINGS.values())
    assert '"user-login-failed", "Other", "Failure", "Failed"' in parser.read_text(encoding="utf-8")
