"""Scripted stories for the analytic rules: what happens in Pulumi, and what each rule must raise.

One attack story holds an attack for every detection rule, each by its own identity and address,
so that each rule's alerts can be checked against its own attack and no other rule's. The same
events are told three more ways: published late, inside a 30-day-old backfill, and (for contrast)
not at all in a benign week of ordinary activity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.standins import simulate_events
from tests.detection_rows import LATE_EVENT_OVERLAP, Batch, Outage, Story, at, audit_event, every

ORG = "acme"
ATTACK = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # a Monday morning
STORY_START = ATTACK - timedelta(minutes=30)
STORY_END = ATTACK + timedelta(hours=3)  # the last rule run looked at
# The last timer run of the live stories: everything has been delivered by then.
LAST_RUN = ATTACK + timedelta(minutes=30)


def _seconds(offset: float) -> datetime:
    return ATTACK + timedelta(seconds=offset)


@dataclass(frozen=True)
class Expected:
    """What a rule's alert must carry for its attack."""

    accounts: frozenset[str]
    addresses: frozenset[str]
    details: Mapping[str, Any]


def _attack_events() -> dict[str, list[dict[str, Any]]]:
    """Each rule's attack, by rule key."""
    return {
        # 8 failed sign-ins from one address within 4 minutes.
        "excessive-auth-failures": [
            audit_event(_seconds(30 * index), "user-login-failed", login="pnatarajan", ip="192.0.2.66")
            for index in range(8)
        ],
        "stack-deleted": [
            audit_event(
                _seconds(60),
                "stack-deleted",
                login="mallory",
                ip="192.0.2.70",
                description="Deleted stack 'acme/payments-api/prod' and its update history.",
            )
        ],
        "org-membership-change": [
            audit_event(
                _seconds(120),
                "member-added",
                login="mallory",
                ip="192.0.2.70",
                description="Added 'eve' to organization 'acme' as admin.",
            )
        ],
        "esc-unauthorized-environment-open": [
            audit_event(_seconds(60 + 40 * index), "environment-unauthorized-open", login="trudy", ip="192.0.2.80")
            for index in range(3)
        ],
        # 60 opens by one identity within 5 minutes, and 60 reads of resolved values by another.
        "esc-environment-open-burst": [
            audit_event(_seconds(5 * index), "environment-open", login="oscar", ip="192.0.2.90") for index in range(60)
        ]
        + [
            audit_event(
                _seconds(5 * index),
                "environment-read-open" if index % 2 else "environment-draft-read-open",
                login="peggy",
                ip="192.0.2.91",
            )
            for index in range(60)
        ],
        "esc-secret-rotation-failed": [
            audit_event(
                _seconds(180),
                "environment-rotated",
                login="platform-bot",
                ip="198.51.100.201",
                description="Rotation of environment 'acme/aws/prod-credentials' using rotator 'aws-iam-user' "
                "failed: AccessDenied from the cloud provider.",
            )
        ],
        "esc-environment-deletion": [
            audit_event(_seconds(240), "environment-deleted", login="mallory", ip="192.0.2.71")
        ],
        "access-token-created-unusual-actor": [
            audit_event(_seconds(300), "organization-token-created", login="mallory", ip="192.0.2.72")
        ],
    }


EXPECTED: dict[str, list[Expected]] = {
    "excessive-auth-failures": [
        Expected(frozenset({"pnatarajan"}), frozenset({"192.0.2.66"}), {"PulumiOrg": ORG, "FailedAttempts": 8})
    ],
    "stack-deleted": [Expected(frozenset({"mallory"}), frozenset({"192.0.2.70"}), {"PulumiOrg": ORG})],
    "org-membership-change": [Expected(frozenset({"mallory"}), frozenset({"192.0.2.70"}), {"PulumiOrg": ORG})],
    "esc-unauthorized-environment-open": [
        Expected(frozenset({"trudy"}), frozenset({"192.0.2.80"}), {"PulumiOrg": ORG, "Attempts": 3})
    ],
    "esc-environment-open-burst": [
        Expected(frozenset({"oscar"}), frozenset({"192.0.2.90"}), {"PulumiOrg": ORG, "Operations": 60}),
        Expected(frozenset({"peggy"}), frozenset({"192.0.2.91"}), {"PulumiOrg": ORG, "Operations": 60}),
    ],
    "esc-secret-rotation-failed": [
        Expected(frozenset({"platform-bot"}), frozenset({"198.51.100.201"}), {"PulumiOrg": ORG})
    ],
    "esc-environment-deletion": [Expected(frozenset({"mallory"}), frozenset({"192.0.2.71"}), {"PulumiOrg": ORG})],
    "access-token-created-unusual-actor": [
        Expected(frozenset({"mallory"}), frozenset({"192.0.2.72"}), {"PulumiOrg": ORG})
    ],
}
DETECTION_RULES = tuple(EXPECTED)


def _all_attack_events() -> tuple[dict[str, Any], ...]:
    return tuple(event for events in _attack_events().values() for event in events)


# The attack, published when it happens; the timer runs every minute.
ATTACK_STORY = Story(
    "attack",
    (Batch(ORG, _all_attack_events()),),
    every(STORY_START, LAST_RUN),
)

# The same attack, but the audit API shows each event only 9 minutes after it happened (within
# LATE_EVENT_OVERLAP, so the connector still collects it): rows land 9-10 minutes late.
LATE_BY = LATE_EVENT_OVERLAP - timedelta(minutes=1)
LATE_STORY = Story(
    "attack-published-late",
    tuple(
        Batch(ORG, (event,), published=datetime.fromtimestamp(event["timestamp"], UTC) + LATE_BY)
        for event in _all_attack_events()
    ),
    every(STORY_START, LAST_RUN),
)

# The attack happened 30 days ago; an operator backfills that day now. Azure restamps the rows'
# TimeGenerated to the ingestion time (older than 2 days), so they fall in every rule's query period.
BACKFILL_AGE = timedelta(days=30)
BACKFILL_STORY = Story(
    "attack-in-a-backfill",
    (
        Batch(
            ORG,
            tuple(
                {**event, "timestamp": event["timestamp"] - int(BACKFILL_AGE.total_seconds())}
                for event in _all_attack_events()
            ),
        ),
    ),
    (ATTACK,),
    backfill=(ATTACK - BACKFILL_AGE - timedelta(hours=1), ATTACK - BACKFILL_AGE + timedelta(hours=1), ATTACK),
)

# A week of ordinary activity after two weeks of the same (the token rule's 14-day baseline).
# Events that every rule alerts on by design (a deletion, a membership change, a denied open, a
# failed rotation) are left out; the rest, failed sign-ins of the simulated users included, stay.
BENIGN_WEEK_START = datetime(2026, 3, 9, 0, 0, tzinfo=UTC)
BENIGN_WEEK_END = BENIGN_WEEK_START + timedelta(days=7)
_BASELINE_START = BENIGN_WEEK_START - timedelta(days=14)
_ALERTING_BY_DESIGN = frozenset(
    {
        "stack-deleted",
        "member-added",
        "member-removed",
        "member-role-changed",
        "environment-deleted",
        "environment-deletion-protection-disabled",
        "environment-unauthorized-open",
        "auth-failure-environment",
    }
)


def _benign_events() -> tuple[dict[str, Any], ...]:
    events = simulate_events(ORG, at(_BASELINE_START), at(BENIGN_WEEK_END) - 3600, 6000, seed=7)
    return tuple(
        event
        for event in events
        if event["event"] not in _ALERTING_BY_DESIGN
        and not (event["event"] == "environment-rotated" and "failed" in event["description"])
    )


# Delivered by one backfill at the end, each row ingested 2 minutes after its event, as the timer
# (every minute, 60 s settle) delivers them.
TIMER_DELAY = timedelta(minutes=2)
BENIGN_WEEK_STORY = Story(
    "benign-three-weeks",
    (Batch(ORG, _benign_events()),),
    (BENIGN_WEEK_END,),
    backfill=(_BASELINE_START, BENIGN_WEEK_END, BENIGN_WEEK_END),
    ingested_at=lambda row, accepted: datetime.fromisoformat(row["EventTime_t"].replace("Z", "+00:00")) + TIMER_DELAY,
)


# -- the "likely" items of issue 13, one story ------------------------------------------------------


def _published_late(event: dict[str, Any]) -> Batch:
    return Batch(ORG, (event,), published=datetime.fromtimestamp(event["timestamp"], UTC) + LATE_BY)


# - a burst of opens that passes the threshold on time, then gets 10 more rows of the same 15-minute
#   bin 9 minutes late; the same for failed sign-ins from one address: each must alert once;
# - a rotation failure worded without "fail";
# - a new CI pipeline exchanging an OIDC token, and a person creating an organization token.
TOPPED_UP_OPENS = [
    audit_event(_seconds(5 * index), "environment-open", login="victor", ip="192.0.2.95") for index in range(60)
]
LATE_OPENS = [
    audit_event(_seconds(480 + 5 * index), "environment-open", login="victor", ip="192.0.2.95") for index in range(10)
]
TOPPED_UP_FAILURES = [
    audit_event(_seconds(60 + 20 * index), "user-login-failed", login="kwatanabe", ip="192.0.2.67")
    for index in range(8)
]
LATE_FAILURES = [
    audit_event(_seconds(420 + 20 * index), "user-login-failed", login="kwatanabe", ip="192.0.2.67")
    for index in range(3)
]
ROTATION_WORDED_WITHOUT_FAIL = audit_event(
    _seconds(120),
    "environment-rotated",
    login="platform-bot",
    ip="198.51.100.202",
    description="Rotation of environment 'acme/payments/prod' using rotator 'postgres-app-password' "
    "could not complete: error 28P01 from the database.",
)
OIDC_EXCHANGE = audit_event(
    _seconds(180),
    "organization-token-created-for-oidc-issuer",
    login="",
    ip="198.51.100.203",
    actor="deploy-pipeline-9",
)
PERSON_TOKEN = audit_event(_seconds(200), "team-token-created", login="sdelgado", ip="198.51.100.12")
JUDGEMENT_STORY = Story(
    "likely-items",
    (
        Batch(ORG, (*TOPPED_UP_OPENS, *TOPPED_UP_FAILURES, ROTATION_WORDED_WITHOUT_FAIL, OIDC_EXCHANGE, PERSON_TOKEN)),
        *(_published_late(event) for event in LATE_OPENS + LATE_FAILURES),
    ),
    every(STORY_START, LAST_RUN),
)


# -- health rules ------------------------------------------------------------------------------------

HEALTH_START = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


def _activity(org: str, start: datetime, end: datetime, count: int, seed: int) -> Batch:
    return Batch(org, tuple(simulate_events(org, at(start), at(end), count, seed=seed)))


# acme is fine; the Pulumi API does not know globex (configured, but its token or name is wrong).
FAILING_ORG_STORY = Story(
    "health-failing-org",
    (_activity(ORG, HEALTH_START - timedelta(minutes=30), HEALTH_START + timedelta(minutes=30), 40, 1),),
    every(HEALTH_START, HEALTH_START + timedelta(minutes=30)),
    orgs=(ORG, "globex"),
    known_orgs=(ORG,),
)
# globex delivered until the Pulumi API started answering 503 for it at 09:10, for 50 minutes.
LAGGING_ORG_STORY = Story(
    "health-lagging-org",
    (
        _activity(ORG, HEALTH_START - timedelta(minutes=30), HEALTH_START + timedelta(hours=1), 60, 2),
        _activity("globex", HEALTH_START - timedelta(minutes=30), HEALTH_START + timedelta(hours=1), 60, 3),
    ),
    every(HEALTH_START, HEALTH_START + timedelta(hours=1)),
    orgs=(ORG, "globex"),
    outages=(Outage("globex", HEALTH_START + timedelta(minutes=10), HEALTH_START + timedelta(hours=1)),),
)
# Logs Ingestion refuses every stack-deleted row; the connector keeps them in its dead-letter table.
DEAD_LETTER_STORY = Story(
    "health-dead-letters",
    (
        Batch(
            ORG,
            (
                audit_event(HEALTH_START + timedelta(minutes=5), "stack-deleted", login="mokafor", ip="198.51.100.77"),
                audit_event(HEALTH_START + timedelta(minutes=6), "user-login", login="mokafor", ip="198.51.100.77"),
            ),
        ),
    ),
    every(HEALTH_START, HEALTH_START + timedelta(minutes=30)),
    refused_events=frozenset({"stack-deleted"}),
)
# The connector ran until 09:30 and then stopped (Function App stopped): no health row, no audit row.
SILENT_CONNECTOR_STORY = Story(
    "health-silent-connector",
    (_activity(ORG, HEALTH_START - timedelta(minutes=30), HEALTH_START + timedelta(minutes=29), 40, 4),),
    every(HEALTH_START, HEALTH_START + timedelta(minutes=30)),
)
SILENT_FROM = HEALTH_START + timedelta(minutes=30)
# A day of ordinary activity, the timer every 5 minutes (the app's default schedule).
HEALTHY_DAY_START = datetime(2026, 3, 4, 0, 0, tzinfo=UTC)
HEALTHY_DAY_END = HEALTHY_DAY_START + timedelta(days=1)
HEALTHY_DAY_STORY = Story(
    "health-healthy-day",
    (_activity(ORG, HEALTHY_DAY_START - timedelta(hours=1), HEALTHY_DAY_END, 600, 5),),
    every(HEALTHY_DAY_START, HEALTHY_DAY_END, timedelta(minutes=5)),
)
