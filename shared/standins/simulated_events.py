"""Deterministic, realistic Pulumi Cloud / Pulumi ESC audit events for demos and tests.

The events have the JSON shape of the audit log API: `timestamp`, `sourceIP`, `event`,
`description` and `user` always; `tokenID`/`tokenName`, `actorName`/`actorUrn` when a token
or a non-human actor did it; `reqOrgAdmin`/`reqStackAdmin`/`authFailure` only when true
(the API omits false flags). Every event id comes from the packaged event catalog, and the
flags follow the catalog. No two generated events are identical.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

_CATALOG_FILE = "pulumi-audit-event-types.json"


@lru_cache(maxsize=1)
def event_catalog() -> dict[str, dict[str, Any]]:
    """The packaged catalog (`shared/data`), keyed by event id."""
    try:
        text = resources.files("shared.data").joinpath(_CATALOG_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        text = (Path(__file__).resolve().parent.parent / "data" / _CATALOG_FILE).read_text(encoding="utf-8")
    return {entry["event"]: entry for entry in json.loads(text)["eventTypes"]}


@dataclass(frozen=True)
class _User:
    name: str
    login: str
    home_ips: tuple[str, ...]

    def as_json(self) -> dict[str, str]:
        digest = hashlib.md5(f"{self.login}@example.com".encode(), usedforsecurity=False).hexdigest()
        return {
            "name": self.name,
            "githubLogin": self.login,
            "avatarUrl": f"https://www.gravatar.com/avatar/{digest}?s=80&d=identicon",
        }


_USERS = (
    _User("Priya Natarajan", "pnatarajan", ("203.0.113.24", "203.0.113.25")),
    _User("Marcus Okafor", "mokafor", ("198.51.100.77",)),
    _User("Zoë Lindqvist", "zlindqvist", ("192.0.2.140", "2001:db8:4f2a::17")),
    _User("Kenji Watanabe", "kwatanabe", ("203.0.113.88",)),
    _User("Sam Delgado", "sdelgado", ("198.51.100.12", "198.51.100.13")),
)
# The user a CI token belongs to, and the addresses CI runners use.
_CI_OWNER = _User("Platform Automation", "platform-bot", ())
_CI_IPS = ("198.51.100.201", "198.51.100.202", "198.51.100.203", "2001:db8:c1::9")
# Addresses of someone who should not be there.
_HOSTILE_IPS = ("192.0.2.66", "192.0.2.67", "2001:db8:bad::1")

_PROJECTS = ("networking", "payments-api", "data-platform", "web-frontend", "identity")
_STACKS = ("dev", "staging", "prod")
_ENVIRONMENTS = (
    "aws/prod-credentials", "aws/dev-credentials", "payments/prod", "payments/staging",
    "shared/datadog", "gcp/analytics", "github/actions-secrets",
)
_ROTATORS = ("aws-iam-user", "postgres-app-password", "datadog-api-key")
_ROLES = ("member", "admin", "billing-manager")
_TEAMS = ("platform", "payments", "security", "data")


@dataclass(frozen=True)
class _Ctx:
    org: str
    user: _User
    rng: random.Random

    def stack(self) -> str:
        return f"{self.org}/{self.rng.choice(_PROJECTS)}/{self.rng.choice(_STACKS)}"

    def env(self) -> str:
        return f"{self.org}/{self.rng.choice(_ENVIRONMENTS)}"

    def other_login(self) -> str:
        return self.rng.choice([user.login for user in _USERS if user != self.user] + ["new-hire-7", "contractor-ana"])


Describe = Callable[[_Ctx], str]

# (event id, relative weight, description builder, who does it: "user", "ci" or "either")
_CLOUD_EVENTS: tuple[tuple[str, int, Describe, str], ...] = (
    ("stack-update-started", 14, lambda c: f"Started an update of stack '{c.stack()}'.", "ci"),
    ("stack-update-completed", 12, lambda c: f"Update of stack '{c.stack()}' succeeded "
     f"({c.rng.randint(1, 40)} resources changed).", "ci"),
    ("stack-update-canceled", 2, lambda c: f"Canceled the running update of stack '{c.stack()}'.", "user"),
    ("stack-created", 3, lambda c: f"Created stack '{c.stack()}'.", "either"),
    ("stack-deleted", 2, lambda c: f"Deleted stack '{c.stack()}' and its update history.", "user"),
    ("stack-outputs-read", 4, lambda c: f"Read the outputs of stack '{c.stack()}'.", "either"),
    ("secret-decrypted", 3, lambda c: f"Decrypted a secret config value of stack '{c.stack()}'.", "user"),
    ("stack-collaborator-added", 1, lambda c: f"Gave '{c.other_login()}' "
     f"{c.rng.choice(['read', 'write', 'admin'])} access to stack '{c.stack()}'.", "user"),
    ("member-added", 2, lambda c: f"Added '{c.other_login()}' to organization '{c.org}' as "
     f"{c.rng.choice(_ROLES)}.", "user"),
    ("member-removed", 1, lambda c: f"Removed '{c.other_login()}' from organization '{c.org}'.", "user"),
    ("member-role-changed", 1, lambda c: f"Changed the role of '{c.other_login()}' in organization '{c.org}' "
     f"from member to admin.", "user"),
    ("organization-token-created", 2, lambda c: f"Created organization access token "
     f"'{c.rng.choice(['ci-deploy', 'drift-check', 'backstage'])}'.", "user"),
    ("organization-token-deleted", 1, lambda c: "Deleted organization access token 'legacy-jenkins'.", "user"),
    ("team-token-created", 1, lambda c: f"Created an access token for team '{c.rng.choice(_TEAMS)}'.", "user"),
    ("team-created", 1, lambda c: f"Created team '{c.rng.choice(_TEAMS)}'.", "user"),
    ("user-login", 6, lambda c: f"'{c.user.login}' signed in to Pulumi Cloud.", "user"),
    ("user-login-failed", 3, lambda c: f"Sign-in for '{c.user.login}' failed: invalid credentials.", "hostile"),
    ("auth-failure-stack-permission", 3, lambda c: f"'{c.user.login}' was denied write access to stack "
     f"'{c.stack()}'.", "hostile"),
    ("auth-failure-organization-role", 1, lambda c: f"'{c.user.login}' lacks the organization role needed "
     f"to change the settings of '{c.org}'.", "hostile"),
    ("organization-settings-changed", 1, lambda c: f"Changed the default stack permission of organization "
     f"'{c.org}' to none.", "user"),
)


def _rotation(c: _Ctx) -> str:
    rotator = c.rng.choice(_ROTATORS)
    if c.rng.random() < 0.7:
        return f"Rotated secrets of environment '{c.env()}' using rotator '{rotator}': succeeded."
    reason = c.rng.choice(["AccessDenied from the cloud provider", "the rotator timed out after 60s",
                           "the target database refused the new password"])
    return f"Rotation of environment '{c.env()}' using rotator '{rotator}' failed: {reason}."


_ESC_EVENTS: tuple[tuple[str, int, Describe, str], ...] = (
    ("environment-open", 16, lambda c: f"Opened environment '{c.env()}'.", "either"),
    ("environment-read", 8, lambda c: f"Read the definition of environment '{c.env()}'.", "either"),
    ("environment-read-open", 5, lambda c: f"Read the resolved values of an open session of environment "
     f"'{c.env()}'.", "either"),
    ("environment-decrypted", 6, lambda c: f"Read environment '{c.env()}' with its secrets decrypted.", "user"),
    ("environment-rotated", 5, _rotation, "ci"),
    ("environment-oidc-token-issued", 5, lambda c: f"Environment '{c.env()}' issued an OIDC token for "
     f"{c.rng.choice(['aws', 'azure', 'gcp'])} login.", "ci"),
    ("environment-unauthorized-open", 4, lambda c: f"'{c.user.login}' tried to open environment "
     f"'{c.env()}' without read permission.", "hostile"),
    ("auth-failure-environment", 2, lambda c: f"'{c.user.login}' was denied an update of environment "
     f"'{c.env()}'.", "hostile"),
    ("environment-updated", 4, lambda c: f"Updated environment '{c.env()}' (revision "
     f"{c.rng.randint(2, 180)}).", "user"),
    ("environment-created", 2, lambda c: f"Created environment '{c.env()}'.", "user"),
    ("environment-deleted", 1, lambda c: f"Deleted environment '{c.env()}'.", "user"),
    ("environment-cloned", 1, lambda c: f"Cloned environment '{c.env()}' to '{c.env()}-copy'.", "user"),
    ("environment-revision-tag-created", 1, lambda c: f"Tagged revision {c.rng.randint(2, 90)} of environment "
     f"'{c.env()}' as 'stable'.", "user"),
)

_CI_TOKENS = ("ci-deploy", "drift-check")


def _validate_catalog() -> dict[str, dict[str, Any]]:
    catalog = event_catalog()
    unknown = [event for event, *_ in _CLOUD_EVENTS + _ESC_EVENTS if event not in catalog]
    if unknown:
        raise RuntimeError(f"simulated event ids missing from the event catalog: {unknown}")
    return catalog


def _token_id(org: str, name: str) -> str:
    return str(uuid.UUID(hashlib.sha256(f"{org}/{name}".encode()).hexdigest()[:32]))


def _make_event(
    org: str, timestamp: int, template: tuple[str, int, Describe, str], rng: random.Random,
    catalog: dict[str, dict[str, Any]], actor: str | None = None,
) -> dict[str, Any]:
    event_id, _, describe, who = template
    if actor is None:
        actor = who if who != "either" else rng.choice(["user", "ci"])
    user = rng.choice(_USERS)
    ip = rng.choice(user.home_ips)
    extra: dict[str, Any] = {}
    if actor == "ci":
        user, ip = _CI_OWNER, rng.choice(_CI_IPS)
        token = rng.choice(_CI_TOKENS)
        extra = {
            "tokenID": _token_id(org, token),
            "tokenName": token,
            "actorName": token,
            "actorUrn": f"urn:pulumi:org:{org}::token:{token}",
        }
    elif actor == "hostile":
        ip = rng.choice(_HOSTILE_IPS)
    elif rng.random() < 0.15:
        extra = {"tokenID": _token_id(org, f"{user.login}-laptop"), "tokenName": f"{user.login}-laptop"}
    description = describe(_Ctx(org, user, rng))
    event: dict[str, Any] = {
        "timestamp": timestamp,
        "sourceIP": ip,
        "event": event_id,
        "description": description,
        "user": user.as_json(),
        **extra,
    }
    entry = catalog[event_id]
    for flag, key in (("requiresOrgAdmin", "reqOrgAdmin"), ("requiresStackAdmin", "reqStackAdmin"),
                      ("authenticationFailure", "authFailure")):
        if entry.get(flag):
            event[key] = True
    return event


def _pick(rng: random.Random, templates: tuple[tuple[str, int, Describe, str], ...]):
    return rng.choices(templates, weights=[weight for _, weight, _, _ in templates])[0]


# What tends to happen in the same second: a CI job opening its environment and starting an
# update, or a person opening and reading an environment.
_BURSTS = (
    (("environment-open", "ci"), ("environment-oidc-token-issued", "ci"), ("stack-update-started", "ci")),
    (("environment-open", "user"), ("environment-read-open", "user"), ("environment-decrypted", "user")),
    (("stack-update-completed", "ci"), ("stack-outputs-read", "ci")),
    (("environment-unauthorized-open", "hostile"), ("auth-failure-environment", "hostile")),
)


def simulate_events(org: str, start: int, end: int, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct events for `org` with timestamps in [start, end], oldest first.
    About half are Pulumi ESC events; some arrive in same-second bursts. Same arguments,
    same events."""
    if end < start:
        raise ValueError("end must not be before start")
    if count < 0:
        raise ValueError("count must be >= 0")
    catalog = _validate_catalog()
    templates = {template[0]: template for template in _CLOUD_EVENTS + _ESC_EVENTS}
    rng = random.Random(f"pulumi-audit-sim:{org}:{start}:{end}:{count}:{seed}")
    events: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0

    def keep(event: dict[str, Any]) -> None:
        key = json.dumps(event, sort_keys=True)
        if key not in seen and len(events) < count:
            seen.add(key)
            events.append(event)

    while len(events) < count:
        attempts += 1
        if attempts > 50 * count + 100:
            raise ValueError(f"cannot make {count} distinct events between {start} and {end}")
        timestamp = rng.randint(start, end)
        if rng.random() < 0.12:
            for event_id, actor in rng.choice(_BURSTS):
                keep(_make_event(org, timestamp, templates[event_id], rng, catalog, actor))
            continue
        group = _ESC_EVENTS if rng.random() < 0.45 else _CLOUD_EVENTS  # bursts lean ESC
        keep(_make_event(org, timestamp, _pick(rng, group), rng, catalog))

    events.sort(key=lambda event: event["timestamp"])
    return events
