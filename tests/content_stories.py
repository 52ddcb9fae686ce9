"""Scripted stories for the parser, the hunting queries, the workbook and the connector page.

- `CATALOG_STORY`: every event of Pulumi's catalog once, for the ASIM parser's mapping and its
  filtering parameters.
- `ROUTINE_STORY`: 32 days of the same working routine (the same people, addresses, environments
  and event types every day): nothing in it is new, rare or bursty, so no hunting query may
  return anything on it.
- `SIGNALS_STORY`: the same routine, and on its last day one signal for each hunting query,
  each by its own identity or address (`Signal` says which query it is for).
- `HEALTH_STORY` and `OUTAGE_STORY`: an hour of timer runs for two organizations, healthy, and
  with one organization failing and refused rows, for the workbook's Connector health tab and the
  connector page's status.

Events are published to the Pulumi stand-in and delivered by the real connector
(tests/detection_rows.py). The 32 days are delivered by one backfill whose rows get the ingestion
time the timer would have given them (2 minutes after the event), so TimeGenerated is the event
time, as for rows the timer sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.catalog import catalog_entries
from tests import content_model as cm
from tests.detection_rows import Batch, Outage, Story, audit_event, every

ORG = "acme"
OTHER_ORG = "acme-labs"
# The moment the hunting and workbook queries run: a Wednesday evening, the last day of the stories.
NOW = datetime(2026, 4, 1, 18, 0, tzinfo=UTC)
FIRST_DAY = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 32  # 2026-03-01 .. 2026-04-01: a 1-day lookback after a 30-day baseline, and a day to spare
TIMER_DELAY = timedelta(minutes=2)  # when the timer (every minute, 60 s settle) delivers an event


def workspace_function(saved: cm.Parser) -> str:
    """A saved search as the workspace function it is deployed as, for tests/kql_engine.py."""
    return f"function {saved.function_alias}({saved.parameters}) {{\n{saved.body}\n}}"


def parser_functions() -> list[str]:
    """The ASIM parsers as the workspace functions they are deployed as."""
    return [workspace_function(parser) for parser in cm.parsers()]


def _timer_ingestion(row: Mapping[str, Any], accepted: datetime) -> datetime:
    return datetime.fromisoformat(row["EventTime_t"].replace("Z", "+00:00")) + TIMER_DELAY


def _days() -> list[datetime]:
    return [FIRST_DAY + timedelta(days=index) for index in range(DAYS)]


# ----------------------------------------------------------------------------------------------
# The routine
# ----------------------------------------------------------------------------------------------

ALICE_IP, BOB_IP = "203.0.113.10", "203.0.113.11"
CI_TOKEN, CI_IPS = "ci-deployer", ("198.51.100.5", "198.51.100.6")
PROD_ENV, STAGING_ENV = "acme/app/prod", "acme/app/staging"


def _routine_day(day: datetime) -> list[dict[str, Any]]:
    def at(hour: int, minute: int = 0) -> datetime:
        return day + timedelta(hours=hour, minutes=minute)

    events = [
        audit_event(at(9), "user-login", login="alice", ip=ALICE_IP, description="'alice' signed in."),
        audit_event(at(9, 5), "environment-open", login="alice", ip=ALICE_IP,
                    description=f"Opened environment '{PROD_ENV}'."),
        audit_event(at(13, 5), "environment-open", login="alice", ip=ALICE_IP,
                    description=f"Opened environment '{PROD_ENV}'."),
        audit_event(at(9, 10), "environment-decrypted", login="alice", ip=ALICE_IP,
                    description=f"Decrypted environment '{PROD_ENV}'."),
        audit_event(at(10), "member-role-changed", login="alice", ip=ALICE_IP,
                    description="'alice' changed the role of 'bob' in organization 'acme' to 'member'."),
        audit_event(at(9, 30), "user-login-failed", login="bob", ip=BOB_IP, description="'bob' failed to sign in."),
        audit_event(at(9, 31), "user-login", login="bob", ip=BOB_IP, description="'bob' signed in."),
        audit_event(at(9, 40), "environment-open", login="bob", ip=BOB_IP,
                    description=f"Opened environment '{STAGING_ENV}'."),
        audit_event(at(10, 15), "secret-decrypted", login="bob", ip=BOB_IP,
                    description="Decrypted a secret of stack 'acme/web/staging'."),
        audit_event(at(15, 15), "secret-decrypted", login="bob", ip=BOB_IP,
                    description="Decrypted a secret of stack 'acme/web/staging'."),
        audit_event(at(11, 30), "policy-group-updated", login="bob", ip=BOB_IP,
                    description="Updated policy group 'default-policies'."),
    ]
    for index, ip in enumerate(CI_IPS):
        events += [
            audit_event(at(12, index), "stack-update-started", login="ci", ip=ip, token=CI_TOKEN,
                        description="Started an update of stack 'acme/web/prod'."),
            audit_event(at(12, 10 + index), "stack-update-completed", login="ci", ip=ip, token=CI_TOKEN,
                        description="Completed an update of stack 'acme/web/prod'."),
        ]
    if day.weekday() < 5:
        events.append(audit_event(at(11), "stack-deleted", login="bob", ip=BOB_IP,
                                  description="Deleted stack 'acme/web/review-app'."))
    return events


def _routine() -> tuple[dict[str, Any], ...]:
    return tuple(event for day in _days() for event in _routine_day(day))


# ----------------------------------------------------------------------------------------------
# The signals of the last day, one per hunting query
# ----------------------------------------------------------------------------------------------

LAST_DAY = _days()[-1]
ALICE_NEW_IP = "192.0.2.50"
CAROL_IP = "192.0.2.51"
ROOT_ENV = "acme/secrets/root"
TOKEN_IPS = ("198.51.100.5", "198.51.100.6", "198.51.100.7", "198.51.100.8", "198.51.100.9")
SPRAY_IP = "192.0.2.66"
ROGUE_TOKEN = "rogue-token"
MALLORY_IP = "192.0.2.70"
TRUDY_IP = "192.0.2.80"
DAVE_IP = "192.0.2.90"
BURST_CHANGES = ("policy-pack-enabled", "policy-group-updated", "team-updated", "custom-role-updated",
                 "policy-pack-disabled", "organization-settings-changed")


def _on_last_day(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return LAST_DAY + timedelta(hours=hour, minutes=minute, seconds=second)


def _signals() -> tuple[dict[str, Any], ...]:
    events = [
        # esc-secret-read-new-ip: alice opens the environment she always opens, from a new address.
        audit_event(_on_last_day(14), "environment-open", login="alice", ip=ALICE_NEW_IP,
                    description=f"Opened environment '{PROD_ENV}'."),
        # identity-first-environment-access: carol reads the root environment for the first time;
        # trudy is denied it, which is no access.
        audit_event(_on_last_day(14, 30), "environment-open", login="carol", ip=CAROL_IP,
                    description=f"Opened environment '{ROOT_ENV}'."),
        audit_event(_on_last_day(14, 40), "environment-unauthorized-open", login="trudy", ip=TRUDY_IP,
                    description=f"'trudy' was denied opening environment '{ROOT_ENV}'."),
        # stack-deleted-off-hours: a deletion at 02:30 UTC.
        audit_event(_on_last_day(2, 30), "stack-deleted", login="mallory", ip=MALLORY_IP,
                    description="Deleted stack 'acme/payments/prod'."),
        # admin-actions-with-token: an organization token created with an access token.
        audit_event(_on_last_day(3), "organization-token-created", login="mallory", ip=MALLORY_IP,
                    token=ROGUE_TOKEN, description="Created organization token 'backdoor'."),
        # auth-failures-then-success: four failed sign-ins, then one that works, from one address.
        *(audit_event(_on_last_day(13, index), "user-login-failed", login="pnatarajan", ip=SPRAY_IP,
                      description="'pnatarajan' failed to sign in.") for index in range(4)),
        audit_event(_on_last_day(13, 5), "user-login", login="pnatarajan", ip=SPRAY_IP,
                    description="'pnatarajan' signed in."),
        # bulk-secret-decryption: bob decrypts 30 secrets in an hour, 15 times his daily 2.
        *(audit_event(_on_last_day(16, index), "secret-decrypted", login="bob", ip=BOB_IP,
                      description="Decrypted a secret of stack 'acme/payments/prod'.") for index in range(30)),
        # policy-team-change-burst: dave makes 6 policy, team and role changes in 30 minutes.
        *(audit_event(_on_last_day(15, 5 * index), event, login="dave", ip=DAVE_IP,
                      description=f"dave: {event}.") for index, event in enumerate(BURST_CHANGES)),
    ]
    # token-used-from-many-ips: the CI token, used from its 2 usual addresses and 3 more.
    events += [
        audit_event(_on_last_day(12, 20 + index), "stack-update-started", login="ci", ip=ip, token=CI_TOKEN,
                    description="Started an update of stack 'acme/web/prod'.")
        for index, ip in enumerate(TOKEN_IPS)
    ]
    return tuple(events)


def _thirty_two_days(name: str, events: tuple[dict[str, Any], ...]) -> Story:
    end = NOW - timedelta(minutes=5)
    return Story(
        name,
        (Batch(ORG, events),),
        (end,),
        backfill=(FIRST_DAY, end, end),
        ingested_at=_timer_ingestion,
    )


ROUTINE_STORY = _thirty_two_days("routine-32-days", _routine())
SIGNALS_STORY = _thirty_two_days("routine-32-days-and-signals", _routine() + _signals())

# ----------------------------------------------------------------------------------------------
# Every catalog event once
# ----------------------------------------------------------------------------------------------

CATALOG_START = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
# A backfilled event 3 days old: Azure restamps its TimeGenerated to the ingestion time.
RESTAMPED_EVENT = "stack-imported"
RESTAMPED_AGE = timedelta(days=3)


def catalog_ip(index: int) -> str:
    return f"10.{1 + index % 2}.0.{index % 250}"


def catalog_actor(index: int) -> dict[str, Any]:
    """Users, a token and a non-human actor take turns."""
    return [{"login": "ana"}, {"login": "ci", "token": "ci-bot"}, {"login": "ben", "actor": "deploy-robot"}][index % 3]


def catalog_object(index: int, category: str) -> str:
    return f"{ORG}/{category}/{'payments' if index % 5 == 0 else 'web'}-{index}"


def catalog_value(index: int) -> str:
    return "admin" if index % 4 == 0 else "member"


def _catalog_events() -> tuple[dict[str, Any], ...]:
    events = []
    for index, entry in enumerate(catalog_entries()):
        event, category = entry["event"], entry["category"]
        moment = CATALOG_START + timedelta(minutes=index)
        if event == RESTAMPED_EVENT:
            moment -= RESTAMPED_AGE
        description = f"{entry['displayName']} on '{catalog_object(index, category)}' to '{catalog_value(index)}'."
        if event == "environment-rotated":
            description = f"Rotated secrets of environment '{catalog_object(index, category)}': succeeded."
        events.append(audit_event(moment, event, ip=catalog_ip(index), description=description,
                                  **catalog_actor(index)))
    return tuple(events)


CATALOG_END = CATALOG_START + timedelta(minutes=len(catalog_entries()) + 5)


def _catalog_ingestion(row: Mapping[str, Any], accepted: datetime) -> datetime:
    if row["Event_s"] == RESTAMPED_EVENT:
        return CATALOG_START + timedelta(minutes=1)
    return _timer_ingestion(row, accepted)


CATALOG_STORY = Story(
    "every-catalog-event",
    (Batch(ORG, _catalog_events()),),
    (CATALOG_END,),
    backfill=(CATALOG_START - RESTAMPED_AGE - timedelta(hours=1), CATALOG_END, CATALOG_END),
    ingested_at=_catalog_ingestion,
)

# ----------------------------------------------------------------------------------------------
# An hour of timer runs, healthy and not
# ----------------------------------------------------------------------------------------------

HEALTH_START = datetime(2026, 6, 3, 9, 0, tzinfo=UTC)
HEALTH_END = HEALTH_START + timedelta(hours=1)
REFUSED_EVENT = "stack-renamed"  # Logs Ingestion refuses these rows in the outage story


def _hour_of_events(org: str, with_refused: bool) -> tuple[dict[str, Any], ...]:
    events = [
        audit_event(HEALTH_START + timedelta(minutes=minute), "environment-open", login="alice", ip=ALICE_IP, org=org,
                    description=f"Opened environment '{PROD_ENV}'.")
        for minute in range(0, 60, 6)
    ]
    if with_refused:
        events += [
            audit_event(HEALTH_START + timedelta(minutes=20, seconds=second), REFUSED_EVENT, login="alice",
                        ip=ALICE_IP, org=org, description="Renamed stack 'acme/web/dev' to 'acme/web/test'.")
            for second in (0, 10)
        ]
    return tuple(events)


HEALTH_STORY = Story(
    "two-orgs-healthy-hour",
    (Batch(ORG, _hour_of_events(ORG, False)), Batch(OTHER_ORG, _hour_of_events(OTHER_ORG, False))),
    every(HEALTH_START, HEALTH_END),
    orgs=(ORG, OTHER_ORG),
)
# acme-labs's audit API fails from the 30th minute; two of acme's rows are refused.
OUTAGE_START = HEALTH_START + timedelta(minutes=30)
OUTAGE_STORY = Story(
    "two-orgs-one-failing-hour",
    (Batch(ORG, _hour_of_events(ORG, True)), Batch(OTHER_ORG, _hour_of_events(OTHER_ORG, False))),
    every(HEALTH_START, HEALTH_END),
    orgs=(ORG, OTHER_ORG),
    outages=(Outage(OTHER_ORG, OUTAGE_START, HEALTH_END + timedelta(minutes=1)),),
    refused_events=frozenset({REFUSED_EVENT}),
)
# Every organization's audit API fails all hour: the connector runs but delivers nothing.
DOWN_STORY = Story(
    "two-orgs-failing-hour",
    (Batch(ORG, _hour_of_events(ORG, False)),),
    every(HEALTH_START, HEALTH_END, timedelta(minutes=5)),
    orgs=(ORG, OTHER_ORG),
    outages=tuple(Outage(org, HEALTH_START, HEALTH_END + timedelta(minutes=1)) for org in (ORG, OTHER_ORG)),
)
