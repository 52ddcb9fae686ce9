"""The connector's health rules, run as Sentinel schedules them on the health and audit rows the
connector wrote while it failed, lagged, dead-lettered, stopped, or ran a healthy day."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests import detection_stories as ds
from tests.detection_rows import Batch, Outage, Story, audit_event
from tests.kql_engine import Workspace
from tests.sentinel_schedule import Alert, alerts_between, scheduled_rules

HEALTH_RULES = (
    "health-org-failing",
    "health-lag-high",
    "health-dead-letters",
    "health-connector-down",
    "connector-silent",
)


def health_alerts(story_rows, key: str, story, start, end) -> list[Alert]:
    rule = scheduled_rules(story.orgs)[key]
    return alerts_between(rule, Workspace(story_rows(story).tables), start, end)


def alerted_orgs(raised: list[Alert]) -> set[str]:
    return {org for alert in raised for org in alert.custom_details["PulumiOrg"]}


def test_an_org_the_api_does_not_know_fails_run_after_run_and_alerts(story_rows):
    raised = health_alerts(
        story_rows, "health-org-failing", ds.FAILING_ORG_STORY, ds.HEALTH_START, ds.HEALTH_START + timedelta(hours=1)
    )
    assert raised and alerted_orgs(raised) == {"globex"}
    assert "404" in raised[0].results[0]["LastError"]


def test_an_org_whose_api_is_down_for_50_minutes_alerts_as_lagging(story_rows):
    raised = health_alerts(
        story_rows, "health-lag-high", ds.LAGGING_ORG_STORY, ds.HEALTH_START, ds.HEALTH_START + timedelta(hours=1)
    )
    assert raised and alerted_orgs(raised) == {"globex"}
    # Not before the lag passed 30 minutes: the outage started at 09:10.
    assert min(alert.raised_at for alert in raised) >= ds.HEALTH_START + timedelta(minutes=40)


def test_rows_that_logs_ingestion_refuses_alert_as_dead_letters(story_rows):
    raised = health_alerts(
        story_rows, "health-dead-letters", ds.DEAD_LETTER_STORY, ds.HEALTH_START, ds.HEALTH_START + timedelta(hours=1)
    )
    assert [(alert.custom_details["PulumiOrg"], alert.results[0]["DeadLettered"]) for alert in raised] == [
        (("acme",), 1)
    ]


def test_a_connector_that_stops_running_alerts_as_down_within_20_minutes(story_rows):
    raised = health_alerts(
        story_rows,
        "health-connector-down",
        ds.SILENT_CONNECTOR_STORY,
        ds.HEALTH_START,
        ds.SILENT_FROM + timedelta(hours=1),
    )
    assert raised and min(alert.raised_at for alert in raised) <= ds.SILENT_FROM + timedelta(minutes=20)
    assert all(alert.raised_at > ds.SILENT_FROM + timedelta(minutes=15) for alert in raised)


def test_an_org_without_audit_rows_for_6_hours_alerts_as_silent(story_rows):
    raised = health_alerts(
        story_rows, "connector-silent", ds.SILENT_CONNECTOR_STORY, ds.HEALTH_START, ds.SILENT_FROM + timedelta(hours=8)
    )
    assert raised and alerted_orgs(raised) == {"acme"}
    assert min(alert.raised_at for alert in raised) >= ds.SILENT_FROM + timedelta(hours=6)


@pytest.mark.parametrize("key", HEALTH_RULES)
def test_a_healthy_day_raises_no_health_alert(story_rows, key):
    rule = scheduled_rules()[key]
    workspace = healthy_day(story_rows)
    # From one query period in: before it, the story's start looks like a connector just deployed.
    start = ds.HEALTHY_DAY_START + min(rule.period, timedelta(hours=6))
    raised = alerts_between(rule, workspace, start, ds.HEALTHY_DAY_END)
    assert [(alert.raised_at, alert.results) for alert in raised] == []


_HEALTHY: dict[str, Workspace] = {}


def healthy_day(story_rows) -> Workspace:
    if not _HEALTHY:
        _HEALTHY["day"] = Workspace(story_rows(ds.HEALTHY_DAY_STORY).tables)
    return _HEALTHY["day"]


def test_a_story_is_produced_without_real_sleeps_though_the_connector_backs_off_in_an_outage(
    story_rows, no_real_sleep
):
    # A module-scoped fixture asks for its story before `no_real_sleep` is in place, so the story
    # cache keeps time.sleep from sleeping itself: none of the retries' back-offs reach the fixture.
    moment = ds.HEALTH_START + timedelta(minutes=10)
    down = Story(
        "one-run-while-the-api-is-down",
        (Batch(ds.ORG, (audit_event(moment, "user-login", login="mokafor", ip="198.51.100.77"),)),),
        (moment,),
        outages=(Outage(ds.ORG, ds.HEALTH_START, moment + timedelta(minutes=1)),),
    )
    [run] = story_rows(down).health
    assert run["Status_s"] == "failed" and no_real_sleep == []
