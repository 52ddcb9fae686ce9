"""The workbook's queries and the Data connectors page's queries, run as deployed on rows the
connector wrote (tests/content_stories.py).

Workbook parameters are substituted as Azure Workbooks does: the time range's start and end as
datetimes, its grain as a timespan, and the organization drop-down as a quoted, comma-separated
list ('*' when "All" is selected). Each query must return what its title says: what it counts
is recounted here from the story's own events, and a query meant to surface trouble (denied
opens, tokens created, dead letters) returns nothing on a story without any.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.catalog import EventCatalog, default_catalog
from tests import content_model as cm
from tests import content_stories as cs
from tests.detection_rows import Story
from tests.kql_engine import Workspace

WORKBOOK = dict(cm.workbook_queries())
CONNECTOR = {query.source.stem: query.text for query in cm.shipped_queries() if query.id.startswith("connector:")}
WEEK = (cs.NOW - timedelta(days=7), cs.NOW)
HOUR = (cs.HEALTH_START, cs.HEALTH_END)
OPENS = ("environment-open", "environment-read-open", "environment-draft-open", "environment-draft-read-open",
         "environment-revision-tag-open")
UNAUTHORIZED = ("environment-unauthorized-open", "auth-failure-environment")


def portal(query: str, time_range: tuple[datetime, datetime], grain: str, orgs: tuple[str, ...] = ("*",)) -> str:
    """`query` with its parameters as Azure Workbooks substitutes them."""
    values = {
        "TimeRange:start": f"datetime({time_range[0]:%Y-%m-%dT%H:%M:%SZ})",
        "TimeRange:end": f"datetime({time_range[1]:%Y-%m-%dT%H:%M:%SZ})",
        "TimeRange:grain": grain,
        "Org": ",".join(f"'{org}'" for org in orgs),
    }
    return cm.WORKBOOK_TOKEN.sub(lambda match: values[match.group(0)[1:-1]], query)


def run_item(workspace: Workspace, name: str, time_range, grain: str = "1d", orgs=("*",)) -> list[dict]:
    return workspace.run(portal(WORKBOOK[name], time_range, grain, orgs), time_range[1], label=f"workbook:{name}")


# ----------------------------------------------------------------------------------------------
# The story's events, recounted
# ----------------------------------------------------------------------------------------------


def story_events(story, time_range) -> list[dict[str, Any]]:
    """The story's events in `time_range` (bounds included), with the fields the queries read."""
    found = []
    for batch in story.batches:
        for event in batch.events:
            moment = datetime.fromtimestamp(event["timestamp"], UTC)
            if time_range[0] <= moment <= time_range[1]:
                found.append({
                    "org": batch.org, "time": moment, "day": moment.replace(hour=0, minute=0, second=0),
                    "event": event["event"], "login": event["user"]["githubLogin"], "ip": event["sourceIP"],
                    "token": event.get("tokenName"), "description": event["description"],
                    "product": "Pulumi ESC" if EventCatalog.product(event["event"]) == "esc" else "Pulumi Cloud",
                    "category": default_catalog().category(event["event"]),
                })
    return found


def counted(rows: list[dict], *keys: str, value: str) -> dict[tuple, Any]:
    return {tuple(row[key] for key in keys): row[value] for row in rows}


def story_workspace(story: Story):
    """A module-scoped fixture: the workspace holding the rows the connector wrote for `story`,
    so each story is loaded once for all the queries run on it."""

    @pytest.fixture(scope="module")
    def workspace(story_rows) -> Workspace:
        return Workspace(story_rows(story).tables)

    return workspace


signals = story_workspace(cs.SIGNALS_STORY)
routine = story_workspace(cs.ROUTINE_STORY)
healthy = story_workspace(cs.HEALTH_STORY)
outage = story_workspace(cs.OUTAGE_STORY)
down = story_workspace(cs.DOWN_STORY)


def test_every_workbook_query_has_a_story():
    covered = {name for name in WORKBOOK if name in globals()["COVERED"]}
    assert covered == set(WORKBOOK)


# ----------------------------------------------------------------------------------------------
# Overview
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "column", "field"),
    [("events-by-product", "Product", "product"), ("events-by-org", "OrgName_s", "org"),
     ("events-by-category", "Category_s", "category")],
)
def test_overview_counts_the_events_of_each_day_by_product_org_and_category(
    signals: Workspace, name: str, column: str, field: str
):
    expected = Counter((event[field], event["day"]) for event in story_events(cs.SIGNALS_STORY, WEEK))
    assert counted(run_item(signals, name, WEEK), column, "EventTime_t", value="Events") == expected


def test_the_org_parameter_lists_the_orgs_of_both_tables_and_narrows_every_item(healthy: Workspace):
    assert {row["OrgName_s"] for row in run_item(healthy, "parameter-Org", HOUR)} == {cs.ORG, cs.OTHER_ORG}
    both = counted(run_item(healthy, "events-by-org", HOUR, "1h"), "OrgName_s", value="Events")
    assert both == {(cs.ORG,): 10, (cs.OTHER_ORG,): 10}
    one = counted(run_item(healthy, "events-by-org", HOUR, "1h", (cs.OTHER_ORG,)), "OrgName_s", value="Events")
    assert one == {(cs.OTHER_ORG,): 10}


# ----------------------------------------------------------------------------------------------
# ESC
# ----------------------------------------------------------------------------------------------


def activity(event: dict) -> str:
    if event["event"] in OPENS:
        return "Open"
    return {"environment-decrypted": "Decrypt", "environment-rotated": "Rotation"}.get(
        event["event"], "Unauthorized attempt" if event["event"] in UNAUTHORIZED else ""
    )


def test_esc_activity_over_time_counts_opens_decrypts_and_denied_attempts_per_day(signals: Workspace):
    events = story_events(cs.SIGNALS_STORY, WEEK)
    expected = Counter((activity(event), event["day"]) for event in events if activity(event))
    assert ("Unauthorized attempt", cs.LAST_DAY) in expected
    assert counted(run_item(signals, "esc-activity-over-time", WEEK), "Activity", "EventTime_t", value="Events") == (
        expected
    )


def test_esc_activity_by_identity_counts_each_identitys_opens_decrypts_and_addresses(signals: Workspace):
    per_identity: dict[str, Counter] = defaultdict(Counter)
    addresses: dict[str, set] = defaultdict(set)
    for event in story_events(cs.SIGNALS_STORY, WEEK):
        if event["product"] == "Pulumi ESC":
            per_identity[event["login"]][activity(event)] += 1
            addresses[event["login"]].add(event["ip"])
    expected = {
        login: (counts["Open"], counts["Decrypt"], counts["Unauthorized attempt"], len(addresses[login]))
        for login, counts in per_identity.items()
    }
    rows = run_item(signals, "esc-activity-by-identity", WEEK)
    found = {row["Identity"]: (row["Opens"], row["Decrypts"], row["UnauthorizedAttempts"], row["SourceIPs"])
             for row in rows}
    assert found == expected and found["alice"][3] == 2 and found["trudy"] == (0, 0, 1, 1)


def test_unauthorized_attempts_lists_the_denied_identity_and_nothing_in_the_routine(
    signals: Workspace, routine: Workspace
):
    rows = run_item(signals, "esc-unauthorized-attempts", WEEK)
    assert counted(rows, "OrgName_s", "Identity", "SourceIP_s", value="Attempts") == {
        (cs.ORG, "trudy", cs.TRUDY_IP): 1
    }
    assert run_item(routine, "esc-unauthorized-attempts", WEEK) == []


# ----------------------------------------------------------------------------------------------
# Access
# ----------------------------------------------------------------------------------------------


def test_auth_failures_by_ip_counts_failed_sign_ins_per_address(signals: Workspace):
    expected = Counter((event["ip"], event["org"]) for event in story_events(cs.SIGNALS_STORY, WEEK)
                       if event["event"] == "user-login-failed")
    assert expected[(cs.SPRAY_IP, cs.ORG)] == 4
    assert counted(run_item(signals, "auth-failures-by-ip", WEEK), "SourceIP_s", "OrgName_s", value="Failures") == (
        expected
    )


def test_membership_and_role_changes_lists_each_change_with_its_actor(signals: Workspace):
    changes = {"member-role-changed", "team-updated", "custom-role-updated"}
    expected = {(event["time"], event["event"], event["login"]) for event in story_events(cs.SIGNALS_STORY, WEEK)
                if event["event"] in changes}
    rows = run_item(signals, "membership-and-role-changes", WEEK)
    assert {(row["EventTime_t"], row["Event_s"], row["Actor"]) for row in rows} == expected
    assert [row["EventTime_t"] for row in rows] == sorted((row["EventTime_t"] for row in rows), reverse=True)


def test_token_creation_lists_the_token_created_and_nothing_in_the_routine(signals: Workspace, routine: Workspace):
    rows = run_item(signals, "token-creation", WEEK)
    assert [(row["Event_s"], row["Creator"], row["SourceIP_s"]) for row in rows] == [
        ("organization-token-created", "mallory", cs.MALLORY_IP)
    ]
    assert run_item(routine, "token-creation", WEEK) == []


# ----------------------------------------------------------------------------------------------
# Connector health
# ----------------------------------------------------------------------------------------------


def test_runs_by_status_shows_the_failed_runs_of_the_failing_org(healthy: Workspace, outage: Workspace):
    healthy_runs = Counter()
    for row in run_item(healthy, "runs-by-status", HOUR, "1h"):
        healthy_runs[row["Status_s"]] += row["Runs"]
    assert healthy_runs == {"ok": 122}  # 61 runs, 2 orgs
    outage_runs = Counter()
    for row in run_item(outage, "runs-by-status", HOUR, "1h"):
        outage_runs[row["Status_s"]] += row["Runs"]
    assert outage_runs == {"ok": 91, "failed": 31}  # acme-labs fails from 09:30 to 10:00


def test_lag_per_org_grows_for_the_failing_org_only(healthy: Workspace, outage: Workspace):
    def worst(workspace: Workspace) -> dict[str, float]:
        lags: dict[str, float] = defaultdict(float)
        for row in run_item(workspace, "lag-per-org", HOUR, "5m"):
            lags[row["OrgName_s"]] = max(lags[row["OrgName_s"]], row["LagMinutes"])
        return dict(lags)

    assert worst(healthy) == {cs.ORG: 1.0, cs.OTHER_ORG: 1.0}
    assert worst(outage)[cs.ORG] == 1.0 and worst(outage)[cs.OTHER_ORG] >= 30


def test_dead_letters_shows_the_refused_rows_of_their_org_and_nothing_when_none(
    healthy: Workspace, outage: Workspace
):
    rows = run_item(outage, "dead-letters", HOUR, "1h")
    assert [(row["OrgName_s"], row["RunKind_s"], row["DeadLettered"], row["Runs"]) for row in rows] == [
        (cs.ORG, "live", 2, 1)
    ]
    assert run_item(outage, "dead-letters", HOUR, "1h", (cs.OTHER_ORG,)) == []
    assert run_item(healthy, "dead-letters", HOUR, "1h") == []


def test_delivered_per_run_lists_every_run_newest_first(outage: Workspace):
    rows = run_item(outage, "delivered-per-run", HOUR, "1h")
    assert len(rows) == 122
    assert rows[0]["TimeGenerated"] == cs.HEALTH_END
    assert sum(row["EventsSent_d"] for row in rows) == 15 and sum(row["DeadLettered_d"] for row in rows) == 2


COVERED = {
    "events-by-product", "events-by-org", "events-by-category", "parameter-Org", "esc-activity-over-time",
    "esc-activity-by-identity", "esc-unauthorized-attempts", "auth-failures-by-ip", "membership-and-role-changes",
    "token-creation", "runs-by-status", "lag-per-org", "dead-letters", "delivered-per-run",
}

# ----------------------------------------------------------------------------------------------
# The Data connectors page
# ----------------------------------------------------------------------------------------------


def page(workspace: Workspace, name: str, now: datetime = cs.HEALTH_END) -> list[dict]:
    return workspace.run(CONNECTOR[name], now, label=f"connector:{name}")


def test_every_connector_query_has_a_story():
    assert set(CONNECTOR) == {"is-connected", "last-audit-event", "last-health-row", "graph-audit-events",
                              "graph-health-rows"}


def test_connected_while_an_org_delivered_in_the_last_hour(healthy: Workspace, outage: Workspace):
    assert page(healthy, "is-connected") == [{"IsConnected": True}]
    assert page(outage, "is-connected") == [{"IsConnected": True}]


def test_not_connected_when_every_run_failed_or_none_ran_for_an_hour(down: Workspace, healthy: Workspace):
    # Sentinel reads any row of an IsConnectedQuery as connected, so a disconnected one returns none.
    assert page(down, "is-connected") == []
    assert page(healthy, "is-connected", cs.HEALTH_END + timedelta(hours=1, minutes=1)) == []


def test_last_data_received_is_the_newest_row_of_each_table(healthy: Workspace):
    assert page(healthy, "last-audit-event") == [{"Time": cs.HEALTH_START + timedelta(minutes=54)}]
    assert page(healthy, "last-health-row") == [{"Time": cs.HEALTH_END}]


def test_last_data_received_is_empty_before_any_row(down: Workspace):
    assert page(down, "last-audit-event") == []
    assert page(Workspace({}), "last-health-row") == []


def test_the_graphs_read_every_row_of_their_table(outage: Workspace):
    assert len(page(outage, "graph-audit-events")) == 15
    assert len(page(outage, "graph-health-rows")) == 122
