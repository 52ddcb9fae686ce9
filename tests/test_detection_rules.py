"""The analytic rules, run as Sentinel schedules them (tests/sentinel_schedule.py) on rows the
connector itself wrote for scripted stories (tests/detection_stories.py).

Every detection rule gets four stories: the attack fires with its entities and custom details,
the same attack delivered 9-10 minutes late fires exactly once, the attack inside a 30-day-old
backfill does not fire, and a benign week does not fire. The live stories run at three schedule
phases, since where Sentinel's runs fall relative to the rows decides what a window sees.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests import detection_stories as ds
from tests import infra_model as im
from tests.kql_engine import Workspace
from tests.sentinel_schedule import Alert, alerts_between, scheduled_rules

PHASES = (0, 1, 2)  # thirds of the rule's queryFrequency


def phase_offset(key: str, phase: int) -> timedelta:
    return scheduled_rules()[key].frequency * phase / 3


@pytest.fixture(scope="module")
def workspaces(story_rows):
    """One loaded workspace per story."""
    loaded: dict[str, Workspace] = {}

    def workspace(story) -> Workspace:
        if story.name not in loaded:
            loaded[story.name] = Workspace(story_rows(story).tables)
        return loaded[story.name]

    return workspace


def alerts(workspaces, key: str, story, phase: int = 0) -> list[Alert]:
    return alerts_between(
        scheduled_rules()[key], workspaces(story), ds.STORY_START, ds.STORY_END, phase_offset(key, phase)
    )


def assert_matches_attack(key: str, raised: list[Alert]) -> None:
    expected = ds.EXPECTED[key]
    assert len(raised) == len(expected), [sorted(alert.entities) for alert in raised]
    for alert, wanted in zip(
        sorted(raised, key=lambda a: sorted(a.entities)),
        sorted(expected, key=lambda e: sorted(e.accounts)),
        strict=True,
    ):
        assert alert.entity_values("Account") == wanted.accounts
        assert alert.entity_values("IP") == wanted.addresses
        assert {name: values[0] for name, values in alert.custom_details.items()} == wanted.details


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("key", ds.DETECTION_RULES)
def test_the_attack_raises_one_alert_with_its_account_address_and_org(workspaces, key, phase):
    assert_matches_attack(key, alerts(workspaces, key, ds.ATTACK_STORY, phase))


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("key", ds.DETECTION_RULES)
def test_the_attack_delivered_9_to_10_minutes_late_raises_it_exactly_once(workspaces, key, phase):
    assert_matches_attack(key, alerts(workspaces, key, ds.LATE_STORY, phase))


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("key", ds.DETECTION_RULES)
def test_the_attack_inside_a_30_day_old_backfill_raises_nothing(workspaces, key, phase):
    assert alerts(workspaces, key, ds.BACKFILL_STORY, phase) == []


@pytest.mark.parametrize("key", ds.DETECTION_RULES)
def test_a_benign_week_raises_nothing(workspaces, key):
    rule = scheduled_rules()[key]
    raised = alerts_between(rule, workspaces(ds.BENIGN_WEEK_STORY), ds.BENIGN_WEEK_START, ds.BENIGN_WEEK_END)
    assert [(alert.raised_at, sorted(alert.entities)) for alert in raised] == []


def test_the_backfill_rows_are_restamped_into_every_rule_window(story_rows):
    """The backfill story tests something: Azure restamps its 30-day-old rows to the ingestion time."""
    rows = story_rows(ds.BACKFILL_STORY).audit
    assert rows and {row["TimeGenerated"] for row in rows} == {ds.ATTACK.isoformat()}


# -- the likely items of issue 13 -------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_a_burst_bin_topped_up_by_late_rows_alerts_once(workspaces, phase):
    raised = alerts(workspaces, "esc-environment-open-burst", ds.JUDGEMENT_STORY, phase)
    # 70 when the run that passes the threshold already sees the late rows too.
    [alert] = raised
    assert alert.entity_values("Account") == {"victor"} and alert.custom_details["Operations"] in ((60,), (70,))


@pytest.mark.parametrize("phase", PHASES)
def test_failed_sign_ins_topped_up_by_late_rows_alert_once(workspaces, phase):
    raised = alerts(workspaces, "excessive-auth-failures", ds.JUDGEMENT_STORY, phase)
    [alert] = raised
    assert alert.entity_values("IP") == {"192.0.2.67"} and alert.custom_details["FailedAttempts"] in ((8,), (11,))


def test_a_rotation_failure_worded_without_fail_alerts(workspaces):
    raised = alerts(workspaces, "esc-secret-rotation-failed", ds.JUDGEMENT_STORY)
    assert [alert.results[0]["Description_s"] for alert in raised] == [ds.ROTATION_WORDED_WITHOUT_FAIL["description"]]


def test_a_new_pipeline_exchanging_an_oidc_token_does_not_alert_but_a_person_creating_a_token_does(workspaces):
    raised = alerts(workspaces, "access-token-created-unusual-actor", ds.JUDGEMENT_STORY)
    assert [(alert.entity_values("Account"), alert.entity_values("IP")) for alert in raised] == [
        ({"sdelgado"}, {"198.51.100.12"})
    ]


@pytest.mark.parametrize("key", ds.DETECTION_RULES)
def test_no_rule_extends_legacy_entity_columns_beside_its_entity_mappings(key):
    rule = scheduled_rules()[key]
    assert rule.entity_mappings
    assert "CustomEntity" not in im.kql_without_comments(rule.query)


@pytest.mark.parametrize("key", ds.DETECTION_RULES)
def test_the_tour_lists_each_detection_rule_with_its_schedule(key):
    [rule] = [rule for rule in im.analytic_rules() if rule["key"] == key]
    tour = (im.REPO_ROOT / "docs" / "SENTINEL.md").read_text(encoding="utf-8")
    section = tour.split("\n## Analytic rules\n", 1)[1].split("\n## ", 1)[0]
    [row] = [line for line in section.splitlines() if line.startswith(f"| {rule['displayName']} |")]
    frequency = rule["queryFrequency"].removeprefix("PT").lower()
    period = rule["queryPeriod"].removeprefix("PT").removeprefix("P").lower()
    assert f"| {frequency} / {period} |" in row
