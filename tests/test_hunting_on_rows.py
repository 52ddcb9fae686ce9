"""Each hunting query, run as deployed on 32 days of rows the connector wrote
(tests/content_stories.py): on the routine alone it returns nothing, and on the routine with the
last day's signals it returns exactly the signal its title promises.

The queries run as the Hunting page and Logs run them: at `NOW`, and cut to the time picker's
range (24 hours by default) on TimeGenerated unless the query filters TimeGenerated itself, in
which case the portal shows "Set in query" and applies no range of its own.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests import content_model as cm
from tests import content_stories as cs
from tests import infra_model as im
from tests.kql_engine import Workspace

PICKER_DEFAULT = timedelta(hours=24)
HUNTING = {query["key"]: query["query"] for query in cm.hunting_queries()}

# Per query: the columns that say what it found, and what it must find on the signals story.
EXPECTED: dict[str, tuple[tuple[str, ...], set[tuple]]] = {
    "esc-secret-read-new-ip": (
        ("OrgName_s", "Identity", "SourceIP_s"),
        {(cs.ORG, "alice", cs.ALICE_NEW_IP), (cs.ORG, "carol", cs.CAROL_IP)},
    ),
    "token-used-from-many-ips": (("OrgName_s", "TokenName_s", "Addresses"), {(cs.ORG, cs.CI_TOKEN, 5)}),
    "stack-deleted-off-hours": (
        ("OrgName_s", "Identity", "SourceIP_s", "Hour"),
        {(cs.ORG, "mallory", cs.MALLORY_IP, 2)},
    ),
    # carol's first read of the root environment; trudy was denied it, which is no access.
    "identity-first-environment-access": (
        ("Organization", "ActorUsername", "Environment"),
        {(cs.ORG, "carol", cs.ROOT_ENV)},
    ),
    "policy-team-change-burst": (("OrgName_s", "Identity", "Changes"), {(cs.ORG, "dave", len(cs.BURST_CHANGES))}),
    "auth-failures-then-success": (("OrgName_s", "SourceIP_s", "Failures", "Successes"), {(cs.ORG, cs.SPRAY_IP, 4, 1)}),
    "admin-actions-with-token": (("OrgName_s", "TokenName_s", "Actions"), {(cs.ORG, cs.ROGUE_TOKEN, 1)}),
    "rare-event-types": (
        ("OrgName_s", "Event_s"),
        {
            (cs.ORG, event)
            for event in ("environment-unauthorized-open", "organization-token-created", "policy-pack-enabled",
                          "team-updated", "custom-role-updated", "policy-pack-disabled",
                          "organization-settings-changed")
        },
    ),
    "bulk-secret-decryption": (("OrgName_s", "Identity", "Decryptions"), {(cs.ORG, "bob", 32)}),
}


def portal_time_range(query: str):
    """What the Hunting page and Logs bound TimeGenerated to: nothing when the query does."""
    if "TimeGenerated" in im.kql_code(query):
        return None
    return (cs.NOW - PICKER_DEFAULT, cs.NOW)


@pytest.fixture(scope="module")
def routine(story_rows) -> Workspace:
    return Workspace(story_rows(cs.ROUTINE_STORY).tables, cs.parser_functions())


@pytest.fixture(scope="module")
def signals(story_rows) -> Workspace:
    return Workspace(story_rows(cs.SIGNALS_STORY).tables, cs.parser_functions())


def hunt(workspace: Workspace, key: str) -> list[dict]:
    query = HUNTING[key]
    return workspace.run(query, cs.NOW, time_range=portal_time_range(query), label=f"hunting:{key}")


def findings(rows: list[dict], columns: tuple[str, ...]) -> set[tuple]:
    return {tuple(row[column] for column in columns) for row in rows}


def test_every_hunting_query_has_a_story():
    assert set(EXPECTED) == set(HUNTING)


@pytest.mark.parametrize("key", sorted(HUNTING))
def test_a_hunting_query_finds_nothing_in_the_routine(routine: Workspace, key: str):
    assert hunt(routine, key) == []


@pytest.mark.parametrize("key", sorted(HUNTING))
def test_a_hunting_query_finds_its_signal_and_nothing_else(signals: Workspace, key: str):
    columns, expected = EXPECTED[key]
    assert findings(hunt(signals, key), columns) == expected


@pytest.mark.parametrize("key", sorted(HUNTING))
def test_a_hunting_query_sets_its_own_time_range_so_the_picker_cannot_cut_its_baseline(key: str):
    assert portal_time_range(HUNTING[key]) is None


def test_cut_to_the_pickers_24_hours_the_routine_would_look_new(routine: Workspace):
    # Why the queries bound TimeGenerated themselves: with the picker's range on TimeGenerated,
    # the 14-day baseline is empty and every routine read counts as one from a new address.
    query = HUNTING["esc-secret-read-new-ip"]
    rows = routine.run(query, cs.NOW, time_range=(cs.NOW - PICKER_DEFAULT, cs.NOW), label="hunting:cut-to-24h")
    assert findings(rows, ("Identity", "SourceIP_s")) == {("alice", cs.ALICE_IP), ("bob", cs.BOB_IP)}


def test_the_first_access_query_counts_only_successful_reads(signals: Workspace):
    rows = hunt(signals, "identity-first-environment-access")
    assert "trudy" not in {row["ActorUsername"] for row in rows}
    [carol] = rows
    assert (carol["Reads"], carol["Operations"], carol["SourceIPs"]) == (1, ["environment-open"], [cs.CAROL_IP])
