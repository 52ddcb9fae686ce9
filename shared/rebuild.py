"""The original audit event, rebuilt from its `PulumiAuditLogs_CL` row; and what a row must keep
beside its typed columns so that the rebuild is exact.

No I/O. A row stores each fact of an event once. The typed columns describe an event of the
API's usual shape: `timestamp`, `sourceIP`, `event`, `description` and a `user` with `name`,
`githubLogin` and `avatarUrl` always; the token and actor fields when not empty; the three flags
when true. `ExtraFields_s` holds, as compact JSON, only where the event differs from that
description, and is empty when it does not:

- every key of the event whose value differs, with the event's exact value: a field this version
  does not know, the display-name form of `event`, a timestamp in milliseconds, a flag sent as
  false, a field of the wrong type. A `user` object is compared key by key, so a new key inside
  `user` costs that key alone;
- under `"_absent"` (at the top, or inside `user`), the described keys the event lacks.

`rebuild(row) == event` for every event the transform accepts, with one documented exception:
a column cut to the 64 KB field limit comes back as stored, cut, and so does a value of
`ExtraFields_s` that alone would not fit. Rows written before `ExtraFields_s` existed carry the
whole event in `RawEvent_s`, and so does a new row of an event that itself has a `"_absent"`
key; `rebuild` reads it first. `infra/functions/PulumiAuditRawEvent.kql` is the same rebuild in KQL.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

# Not "$absent": KQL's bag_remove_keys reads a key that starts with "$" as a JSONPath.
ABSENT = "_absent"

# Event key -> column, for the keys the described event always has.
_REQUIRED_TEXT = (("sourceIP", "SourceIP_s"), ("event", "Event_s"), ("description", "Description_s"))
_USER_TEXT = (("name", "UserName_s"), ("githubLogin", "UserLogin_s"), ("avatarUrl", "UserAvatarUrl_s"))
# Event key -> column, for the keys the API omits when empty or false.
_OPTIONAL_TEXT = (
    ("tokenID", "TokenID_s"),
    ("tokenName", "TokenName_s"),
    ("actorName", "ActorName_s"),
    ("actorUrn", "ActorUrn_s"),
)
_OPTIONAL_FLAGS = (
    ("reqOrgAdmin", "RequireOrgAdmin_b"),
    ("reqStackAdmin", "RequireStackAdmin_b"),
    ("authFailure", "AuthFailure_b"),
)
# The event key each free-text column comes from: ("user", "name") is the key `name` of `user`.
EVENT_KEY_OF_COLUMN: dict[str, tuple[str, ...]] = {
    **{column: (key,) for key, column in _REQUIRED_TEXT + _OPTIONAL_TEXT},
    **{column: ("user", key) for key, column in _USER_TEXT},
}
FLAG_KEY_OF_COLUMN = {column: key for key, column in _OPTIONAL_FLAGS}


def described_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """The event the typed columns of `row` describe, in the API's usual shape."""
    event: dict[str, Any] = {
        "timestamp": row["Timestamp_d"],
        "sourceIP": row["SourceIP_s"],
        "event": row["Event_s"],
        "description": row["Description_s"],
        "user": {"name": row["UserName_s"], "githubLogin": row["UserLogin_s"], "avatarUrl": row["UserAvatarUrl_s"]},
    }
    for key, column in _OPTIONAL_TEXT:
        if row[column]:
            event[key] = row[column]
    for key, column in _OPTIONAL_FLAGS:
        if row[column]:
            event[key] = True
    return event


def extra_fields(
    event: Mapping[str, Any], described: Mapping[str, Any], as_stored: Collection[tuple[str, ...]] = ()
) -> dict[str, Any] | None:
    """What `event` holds beyond `described` (see the module docstring), or None when that cannot
    be said because the event itself uses the key `"_absent"`. The keys in `as_stored` (paths, as in
    EVENT_KEY_OF_COLUMN) are left out: their columns were cut, and come back as stored."""
    extra = _difference(event, described, {path[0] for path in as_stored if len(path) == 1})
    if extra is None:
        return None
    user = event.get("user")
    if "user" in extra and isinstance(user, Mapping):
        user_extra = _difference(user, described["user"], {path[1] for path in as_stored if path[0] == "user"})
        if user_extra is None:
            return None
        if user_extra:
            extra["user"] = user_extra
        else:
            del extra["user"]
    return extra


def rebuild(row: Mapping[str, Any]) -> dict[str, Any]:
    """The original event of a row of PulumiAuditLogs_CL, old rows (whole event in RawEvent_s) included."""
    raw = row.get("RawEvent_s")
    if raw:
        try:
            event = json.loads(raw)
        except ValueError:
            event = None  # cut to the field limit: the typed columns still describe the event
        if isinstance(event, dict):
            return event
    event = described_event(row)
    extra_text = row.get("ExtraFields_s")
    if extra_text:
        _apply(event, json.loads(extra_text))
    return event


def _difference(actual: Mapping[str, Any], described: Mapping[str, Any], skipped: set[str]) -> dict[str, Any] | None:
    if ABSENT in actual:
        return None
    extra = {}
    found = 0
    for key, value in actual.items():
        if key in described:
            found += 1
            if key in skipped or _same(value, described[key]):
                continue
        extra[key] = value
    if found < len(described):
        extra[ABSENT] = [key for key in described if key not in actual]
    return extra


def _apply(event: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if key == "user" and isinstance(value, dict):
            _apply(event["user"], value)
        elif key != ABSENT:
            event[key] = value
    for key in extra.get(ABSENT, ()):
        event.pop(key, None)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values of the same types: `True` is not `1`, and `1` is not `1.0`."""
    kind = a.__class__
    if kind is not b.__class__:
        return False
    if kind is dict:
        return a.keys() == b.keys() and all(_same(value, b[key]) for key, value in a.items())
    if kind is list:
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b
