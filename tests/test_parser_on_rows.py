"""The ASIM parser run on rows the connector wrote: every catalog event once (tests/content_stories.py
CATALOG_STORY), through vimAuditEventPulumiCloud and ASimAuditEventPulumiCloud as deployed.

The expected mapping below is written out by hand, event by event, as the specification the
generated table (shared/asim.py) must meet; tests/test_asim_mapping.py checks that the parser
carries the generated table.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.catalog import catalog_entries
from tests import content_stories as cs
from tests.kql_engine import Workspace

# (EventType, EventResult, ObjectType) -> the catalog events the parser must map to it.
EXPECTED: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("Clear", "Success", "Service"): (
        "neo-member-usage-cap-cleared", "neo-usage-cap-cleared",
    ),
    ("Create", "Success", "Cloud Resource"): (
        "cloud-account-created", "customer-managed-key-added", "deployment-runner-pool-created",
        "insights-account-created", "registry-package-version-initialized", "registry-package-version-published",
        "registry-template-version-initialized", "registry-template-version-published",
        "registry-terraform-module-created", "registry-terraform-module-version-initialized",
        "registry-terraform-module-version-published", "stack-collaborator-added", "stack-created",
        "stack-created-from-template", "stack-imported",
    ),
    ("Create", "Success", "Configuration Atom"): (
        "environment-cloned", "environment-created", "environment-oidc-token-issued",
        "environment-revision-tag-created", "environment-tag-created", "oidc-issuer-registered",
    ),
    ("Create", "Success", "Directory Service Object"): (
        "custom-role-created", "deployment-runner-token-created-for-oidc-issuer", "member-added",
        "organization-invite-sent", "organization-token-created", "organization-token-created-for-oidc-issuer",
        "personal-token-created-for-oidc-issuer", "service-created", "team-created", "team-token-created",
        "team-token-created-for-oidc-issuer", "user-added-new-identity-to-their-account",
    ),
    ("Create", "Success", "Policy Rule"): (
        "change-gate-created", "policy-group-created", "policy-pack-created",
    ),
    ("Create", "Success", "Scheduled Task"): (
        "environment-schedule-created", "scheduled-deployment-created",
    ),
    ("Create", "Success", "Service"): (
        "agent-cli-integration-connected", "agent-model-provider-created", "agent-task-created",
        "neo-slack-identity-connected", "vcs-github-installation-linked",
    ),
    ("Delete", "Success", "Cloud Resource"): (
        "cloud-account-deleted", "deployment-runner-pool-deleted", "insights-account-deleted",
        "registry-package-version-deleted", "registry-template-version-deleted",
        "registry-terraform-module-deleted", "registry-terraform-module-version-deleted",
        "stack-collaborator-removed", "stack-deleted",
    ),
    ("Delete", "Success", "Configuration Atom"): (
        "environment-deleted", "environment-revision-retracted", "environment-revision-tag-delete",
        "environment-tag-deleted", "oidc-issuer-deleted",
    ),
    ("Delete", "Success", "Directory Service Object"): (
        "custom-role-deleted", "member-removed", "organization-invite-canceled", "organization-token-deleted",
        "service-deleted", "team-deleted", "team-token-deleted",
    ),
    ("Delete", "Success", "Policy Rule"): (
        "change-gate-deleted", "policy-group-deleted", "policy-pack-deleted",
    ),
    ("Delete", "Success", "Scheduled Task"): (
        "environment-schedule-deleted", "scheduled-deployment-deleted",
    ),
    ("Delete", "Success", "Service"): (
        "agent-cli-integration-disconnected", "agent-model-provider-deleted", "agent-task-deleted",
        "neo-slack-identity-disconnected",
    ),
    ("Disable", "Success", "Cloud Resource"): (
        "customer-managed-key-disabled", "customer-managed-key-disabled-all", "organization-deployments-paused",
        "stack-deployments-paused",
    ),
    ("Disable", "Success", "Configuration Atom"): (
        "environment-deletion-protection-disabled",
    ),
    ("Disable", "Success", "Policy Rule"): (
        "policy-pack-disabled",
    ),
    ("Disable", "Success", "Scheduled Task"): (
        "cloud-account-scheduled-scans-paused", "insights-account-scheduled-scans-paused",
    ),
    ("Disable", "Success", "Service"): (
        "agent-integration-disabled",
    ),
    ("Enable", "Success", "Cloud Resource"): (
        "organization-deployments-resumed", "stack-deployments-resumed",
    ),
    ("Enable", "Success", "Configuration Atom"): (
        "environment-deletion-protection-enabled",
    ),
    ("Enable", "Success", "Policy Rule"): (
        "policy-pack-enabled",
    ),
    ("Enable", "Success", "Scheduled Task"): (
        "cloud-account-scheduled-scans-resumed", "insights-account-scheduled-scans-resumed",
    ),
    ("Enable", "Success", "Service"): (
        "agent-integration-enabled",
    ),
    ("Execute", "Success", "Configuration Atom"): (
        "environment-rotated",
    ),
    ("Other", "Failure", "Configuration Atom"): (
        "auth-failure-environment", "oidc-issuer-validation-failed",
    ),
    ("Other", "Failure", "Directory Service Object"): (
        "auth-failure-change-request", "auth-failure-cloud-account", "auth-failure-insights-account",
        "auth-failure-organization-role", "auth-failure-scim-access-token", "auth-failure-stack-permission",
        "user-login-failed",
    ),
    ("Other", "Success", "Directory Service Object"): (
        "user-login",
    ),
    ("Read", "Failure", "Configuration Atom"): (
        "environment-unauthorized-open",
    ),
    ("Read", "Success", "Cloud Resource"): (
        "secret-decrypted", "secrets-batch-decrypted", "stack-exported", "stack-outputs-read",
        "stack-provider-open",
    ),
    ("Read", "Success", "Configuration Atom"): (
        "environment-decrypted", "environment-draft-open", "environment-draft-read-open", "environment-open",
        "environment-read", "environment-read-open", "environment-revision-tag-open",
        "environment-revision-tag-read",
    ),
    ("Set", "Success", "Cloud Resource"): (
        "cloud-account-tags-updated", "cloud-account-updated", "customer-managed-key-set-default",
        "deployment-settings-role-updated", "discovery-trial-billing-accepted", "discovery-trial-billing-denied",
        "insights-account-tags-updated", "insights-account-updated", "insights-trial-billing-accepted",
        "insights-trial-billing-denied", "stack-collaborator-permissions-changed", "stack-renamed",
        "stack-transferred-to-organization",
    ),
    ("Set", "Success", "Configuration Atom"): (
        "environment-restored", "environment-revision-tag-update", "environment-tag-updated", "environment-updated",
        "oidc-issuer-updated", "saml-configuration-updated",
    ),
    ("Set", "Success", "Directory Service Object"): (
        "custom-role-updated", "member-role-changed", "org-downgraded-to-free", "org-plan-migrated",
        "org-upgraded-to-pro", "organization-backend-changed", "organization-deployment-default-role-updated",
        "organization-invite-accepted", "organization-settings-changed", "retrial-expiration-updated",
        "service-updated", "team-updated",
    ),
    ("Set", "Success", "Policy Rule"): (
        "authorization-policy-updated", "change-gate-updated", "policy-group-updated",
    ),
    ("Set", "Success", "Scheduled Task"): (
        "environment-schedule-updated", "scheduled-deployment-updated",
    ),
    ("Set", "Success", "Service"): (
        "agent-cli-integration-updated", "agent-model-provider-default-changed", "agent-model-provider-updated",
        "agent-task-shared", "agent-task-unshared", "agent-task-updated", "neo-member-usage-cap-updated",
        "neo-usage-cap-updated",
    ),
    ("Start", "Success", "Cloud Resource"): (
        "cloud-account-scan-started", "insights-account-scan-started", "stack-update-started",
    ),
    ("Start", "Success", "Directory Service Object"): (
        "retrial-started",
    ),
    ("Stop", "Success", "Cloud Resource"): (
        "cloud-account-scan-canceled", "insights-account-scan-canceled", "stack-update-canceled",
        "stack-update-completed",
    ),
    ("Stop", "Success", "Directory Service Object"): (
        "retrial-ended",
    ),
}
EXPECTED_BY_EVENT = {event: fields for fields, events in EXPECTED.items() for event in events}
ENTRIES = {entry["event"]: entry for entry in catalog_entries()}


@pytest.fixture(scope="module")
def workspace(story_rows) -> Workspace:
    return Workspace(story_rows(cs.CATALOG_STORY).tables, cs.parser_functions())


@pytest.fixture(scope="module")
def parsed(workspace: Workspace) -> list[dict]:
    """Every row through the parser with no filter."""
    return run(workspace, "vimAuditEventPulumiCloud()")


def run(workspace: Workspace, call: str) -> list[dict]:
    # Labelled with the shipped query it runs (tests/kql_engine.py counts them).
    return workspace.run(call, cs.CATALOG_END, label=f"parser:{call.split('(', 1)[0]}")


def events_of(rows: list[dict]) -> set[str]:
    return {row["Operation"] for row in rows}


def test_the_expected_table_names_every_catalog_event_once():
    named = [event for events in EXPECTED.values() for event in events]
    assert sorted(named) == sorted(ENTRIES) and len(named) == len(set(named)) == 169


def test_every_catalog_event_maps_to_its_expected_type_result_and_object_type(parsed: list[dict]):
    rows = parsed
    assert len(rows) == len(ENTRIES)
    mapped = {row["Operation"]: (row["EventType"], row["EventResult"], row["ObjectType"]) for row in rows}
    wrong = {event: (mapped.get(event), expected) for event, expected in EXPECTED_BY_EVENT.items()
             if mapped.get(event) != expected}
    assert not wrong, f"(mapped, expected): {wrong}"


def test_the_parameterless_parser_returns_what_the_filtering_one_returns_unfiltered(
    workspace: Workspace, parsed: list[dict]
):
    unfiltered = run(workspace, "ASimAuditEventPulumiCloud()")
    filtering = parsed
    assert sorted(unfiltered, key=lambda row: row["EventUid"]) == sorted(filtering, key=lambda row: row["EventUid"])


def test_the_parameterless_parser_takes_disabled_first_as_asims_unifying_parser_passes_it(workspace: Workspace):
    assert run(workspace, "ASimAuditEventPulumiCloud(true)") == []


def test_every_row_carries_the_fields_an_asim_consumer_joins_on(parsed: list[dict]):
    rows = parsed
    for row in rows:
        assert row["EventSchema"] == "AuditEvent" and row["EventSchemaVersion"] == "0.1.2"
        assert row["EventVendor"] == "Pulumi" and row["Dvc"] == row["EventProduct"] == row["TargetAppName"]
        assert row["Dst"] == row["Application"] == row["TargetAppName"]
        assert row["DvcScope"] == row["ActorScope"] == cs.ORG
        assert row["EventCount"] == 1 and row["EventUid"]
        assert row["SrcIpAddr"] == row["Src"] == row["IpAddr"] and row["User"] == row["ActorUsername"]
    products = {row["Operation"]: row["EventProduct"] for row in rows}
    assert products["environment-open"] == products["auth-failure-environment"] == "Pulumi ESC"
    assert products["stack-deleted"] == "Pulumi Cloud"


def test_the_actor_is_the_users_login_with_the_token_and_non_human_actor_kept_aside(parsed: list[dict]):
    rows = {row["Operation"]: row for row in parsed}
    for index, event in enumerate(ENTRIES):
        actor, row = cs.catalog_actor(index), rows[event]
        assert (row["ActorUsername"], row["ActorUsernameType"], row["ActorUserType"]) == (
            actor["login"], "Simple", "Regular")
        assert (row["AdditionalFields"]["TokenName"] or None) == actor.get("token"), event
        assert (row["AdditionalFields"]["ActorUrn"] or "").endswith(actor.get("actor", "")), event


def test_the_object_is_the_quoted_name_and_a_change_reports_its_new_value(parsed: list[dict]):
    rows = {row["Operation"]: row for row in parsed}
    for index, (event, entry) in enumerate(ENTRIES.items()):
        assert rows[event]["Object"] == cs.catalog_object(index, entry["category"]), event
        expected_value = cs.catalog_value(index) if EXPECTED_BY_EVENT[event][0] == "Set" else ""
        assert rows[event]["NewValue"] == rows[event]["Value"] == expected_value, event


def test_a_failed_sign_in_and_a_denied_open_are_failures_with_their_reason(parsed: list[dict]):
    rows = {row["Operation"]: row for row in parsed}
    assert (rows["user-login-failed"]["EventResultDetails"], rows["user-login-failed"]["EventSeverity"]) == (
        "Failed", "Low")
    assert rows["environment-unauthorized-open"]["EventResultDetails"] == "Unauthorized"
    assert rows["auth-failure-stack-permission"]["EventResultDetails"] == "Unauthorized"
    assert (rows["user-login"]["EventResultDetails"], rows["user-login"]["EventSeverity"]) == ("", "Informational")


# ----------------------------------------------------------------------------------------------
# Filtering parameters: each narrows the result as ASIM specifies
# ----------------------------------------------------------------------------------------------


def events_where(predicate) -> set[str]:
    return {event for index, event in enumerate(ENTRIES) if predicate(index, event)}


def test_starttime_and_endtime_bound_time_generated_not_the_event_time(workspace: Workspace):
    restamped = cs.CATALOG_START + timedelta(minutes=1)  # its ingestion time, its TimeGenerated
    start = f"datetime({restamped:%Y-%m-%dT%H:%M:%SZ})"
    rows = run(workspace, f"vimAuditEventPulumiCloud(starttime = {start}, endtime = {start})")
    # Only the event ingested then, 3 days after it happened, and the one that happened then.
    assert events_of(rows) == {cs.RESTAMPED_EVENT, list(ENTRIES)[1]}
    [old] = [row for row in rows if row["Operation"] == cs.RESTAMPED_EVENT]
    index = list(ENTRIES).index(cs.RESTAMPED_EVENT)
    assert old["EventStartTime"] == old["EventEndTime"] == (
        cs.CATALOG_START + timedelta(minutes=index) - cs.RESTAMPED_AGE)
    assert old["TimeGenerated"] == restamped


def test_starttime_alone_keeps_everything_from_then_on(workspace: Workspace):
    start = cs.CATALOG_START + timedelta(minutes=100)
    rows = run(workspace, f"vimAuditEventPulumiCloud(starttime = datetime({start:%Y-%m-%dT%H:%M:%SZ}))")
    # The restamped event happened 3 days earlier, but it is its TimeGenerated (minute 1) that counts.
    assert events_of(rows) == events_where(lambda index, event: index >= 100 and event != cs.RESTAMPED_EVENT)


def test_srcipaddr_has_any_prefix_keeps_the_addresses_under_the_prefix(workspace: Workspace):
    rows = run(workspace, 'vimAuditEventPulumiCloud(srcipaddr_has_any_prefix = dynamic(["10.1."]))')
    assert events_of(rows) == events_where(lambda index, _: cs.catalog_ip(index).startswith("10.1."))
    assert rows and all(row["SrcIpAddr"].startswith("10.1.") for row in rows)


def test_eventtype_in_keeps_those_event_types(workspace: Workspace):
    rows = run(workspace, 'vimAuditEventPulumiCloud(eventtype_in = dynamic(["Delete", "Start"]))')
    assert events_of(rows) == {e for e, fields in EXPECTED_BY_EVENT.items() if fields[0] in ("Delete", "Start")}


def test_eventresult_keeps_that_result(workspace: Workspace):
    rows = run(workspace, 'vimAuditEventPulumiCloud(eventresult = "Failure")')
    assert events_of(rows) == {e for e, fields in EXPECTED_BY_EVENT.items() if fields[1] == "Failure"}
    assert "user-login-failed" in events_of(rows)


def test_actorusername_has_any_keeps_that_actor(workspace: Workspace):
    rows = run(workspace, 'vimAuditEventPulumiCloud(actorusername_has_any = dynamic(["ana"]))')
    assert events_of(rows) == events_where(lambda index, _: cs.catalog_actor(index)["login"] == "ana")


def test_operation_has_any_keeps_operations_with_that_term(workspace: Workspace):
    rows = run(workspace, 'vimAuditEventPulumiCloud(operation_has_any = dynamic(["stack"]))')
    assert events_of(rows) == events_where(lambda _, event: "stack" in event.split("-"))


def test_object_has_any_keeps_objects_with_that_term(workspace: Workspace):
    rows = run(workspace, 'vimAuditEventPulumiCloud(object_has_any = dynamic(["payments"]))')
    assert events_of(rows) == events_where(lambda index, _: index % 5 == 0)


def test_newvalue_has_any_keeps_changes_to_that_value(workspace: Workspace):
    rows = run(workspace, 'vimAuditEventPulumiCloud(newvalue_has_any = dynamic(["admin"]))')
    assert events_of(rows) == events_where(
        lambda index, event: EXPECTED_BY_EVENT[event][0] == "Set" and cs.catalog_value(index) == "admin"
    )


def test_disabled_returns_nothing(workspace: Workspace):
    assert run(workspace, "vimAuditEventPulumiCloud(disabled = true)") == []


def test_pack_adds_the_original_event_to_the_additional_fields(workspace: Workspace):
    [row] = run(workspace, 'vimAuditEventPulumiCloud(operation_has_any = dynamic(["rotated"]), pack = true)')
    raw = row["AdditionalFields"]["RawEvent"]
    assert raw["event"] == "environment-rotated" and raw["sourceIP"] == row["SrcIpAddr"]
    [unpacked] = run(workspace, 'vimAuditEventPulumiCloud(operation_has_any = dynamic(["rotated"]))')
    assert "RawEvent" not in unpacked["AdditionalFields"]
    assert unpacked["AdditionalFields"]["Category"] == "environments"
