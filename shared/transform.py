"""Pure mapping of one Pulumi audit event to one `PulumiAuditLogs_CL` row.

No I/O. The transform is lenient with types (a timestamp as a string or in
milliseconds, a number where a string belongs) because losing an event is worse
than coercing it; what it cannot place in time raises `InvalidEvent`, which the
pipeline dead-letters.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.catalog import EventCatalog
from shared.ports import EncodedRow
from shared.rebuild import ABSENT, EVENT_KEY_OF_COLUMN, described_event, extra_fields
from shared.schema import MAX_FIELD_BYTES

# Unix seconds above this are taken to be milliseconds (it is the year 5138 in seconds).
_MILLISECONDS_THRESHOLD = 100_000_000_000
_EARLIEST = 946_684_800  # 2000-01-01: anything before is not a Pulumi event time
_LATEST = 4_102_444_800  # 2100-01-01

# The text columns whose value comes from outside (the event, or the org name): these may be
# too long or hold lone surrogates. The others are built from the catalog or the clock;
# ExtraFields_s is fitted when a row is built.
_FREE_TEXT_COLUMNS = (
    "SourceIP_s",
    "Event_s",
    "Description_s",
    "UserName_s",
    "UserLogin_s",
    "UserAvatarUrl_s",
    "TokenID_s",
    "TokenName_s",
    "ActorName_s",
    "ActorUrn_s",
    "OrgName_s",
)
# One encoder for every ExtraFields_s and fallback RawEvent_s: `json.dumps` with options builds a
# new one per call.
_COMPACT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
# A value of ExtraFields_s cut to fit keeps at least this much room: the marker and a little text.
_SMALLEST_CUT = 120


class InvalidEvent(ValueError):
    """The event cannot become a row; the message names the field and the problem."""


# The fields that make an event what it is. Its identity leaves out what the API may
# present differently between two reads of the same event: a field this version does not
# know, the display-name form of the event type, the user's current name and avatar.
_IDENTITY_COLUMNS = (
    "Timestamp_d",
    "Event_s",
    "Description_s",
    "SourceIP_s",
    "UserLogin_s",
    "TokenID_s",
    "TokenName_s",
    "ActorName_s",
    "ActorUrn_s",
    "RequireOrgAdmin_b",
    "RequireStackAdmin_b",
    "AuthFailure_b",
)


@dataclass
class NormalizedEvent:
    """An event mapped to its identity and its row, which waits for its occurrence number.

    `fields` is the row in column order, its EventId_s, RawEvent_s and ExtraFields_s still empty,
    and `truncated_fields` the columns of `fields` cut to the field limit. ExtraFields_s, what the
    typed columns do not hold (shared/rebuild.py), is written from `event` only when a row is built:
    a window re-reads its overlap, and most events a run reads were sent before. `event` must not
    change until then.
    """

    org: str
    timestamp: int
    identity: bytes
    fields: dict[str, Any]
    event: Mapping[str, Any]
    truncated_fields: tuple[str, ...]
    _leftover: tuple[str, str, bool] | None = field(default=None, init=False, repr=False, compare=False)

    def row(self, occurrence: int) -> dict[str, Any]:
        """The table row of the `occurrence`-th (1-based) event with this identity."""
        extra, raw, _ = self.leftover()
        row = {**self.fields, "EventId_s": event_id(self.identity, occurrence)}
        row["RawEvent_s"], row["ExtraFields_s"] = raw, extra
        return row

    @property
    def truncated_columns(self) -> tuple[str, ...]:
        """The columns cut to the field limit, in column order."""
        _, raw, cut = self.leftover()
        if not cut:
            return self.truncated_fields
        return (*self.truncated_fields, "RawEvent_s" if raw else "ExtraFields_s")

    def leftover(self) -> tuple[str, str, bool]:
        """ExtraFields_s, RawEvent_s, and whether one was cut to the field limit; written once, on first use.

        RawEvent_s stays empty unless the event uses the key ExtraFields_s marks absent keys with:
        then it holds the whole event, as rows written before ExtraFields_s did."""
        if self._leftover is None:
            cut_keys = [EVENT_KEY_OF_COLUMN[name] for name in self.truncated_fields if name in EVENT_KEY_OF_COLUMN]
            extra = extra_fields(self.event, described_event(self.fields), cut_keys)
            if extra is None:
                raw, cut = _fit(_compact(self.event))
                self._leftover = ("", raw, cut)
            else:
                text, cut = _fit_extra_fields(extra)
                self._leftover = (text, "", cut)
        return self._leftover


def raw_digest(org: str, event: Any) -> bytes:
    """A digest of exactly what the API sent, for events that cannot be normalized."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(f"{org}\n{canonical}".encode()).digest()


def event_id(identity: bytes, occurrence: int) -> str:
    """Deterministic id of the `occurrence`-th (1-based) event with this identity.

    The API has no event id. Two events that differ in any identity field differ in
    identity; two identical events in the same second differ in occurrence.
    """
    return hashlib.sha256(identity + occurrence.to_bytes(4, "big")).hexdigest()[:32]


def event_timestamp(event: Mapping[str, Any]) -> int:
    """Unix seconds of the event, accepting an int, a numeric string or milliseconds."""
    value = event.get("timestamp")
    if isinstance(value, bool) or value is None:
        raise InvalidEvent(f"event field 'timestamp' is missing or not a number: {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidEvent(f"event field 'timestamp' is not a number: {value[:40]!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidEvent(f"event field 'timestamp' is not a number: {value!r}")
    seconds = int(value)
    if seconds > _MILLISECONDS_THRESHOLD:
        seconds //= 1000
    if not _EARLIEST <= seconds <= _LATEST:
        raise InvalidEvent(f"event field 'timestamp' is not a plausible Unix time: {value!r}")
    return seconds


def iso_utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def normalize(org: str, event: Any, catalog: EventCatalog) -> NormalizedEvent:
    """Map an event to its row fields and its identity; raise InvalidEvent if it has no time or type."""
    if not isinstance(event, Mapping):
        raise InvalidEvent(f"audit event is a {type(event).__name__}, not a JSON object")
    seconds = event_timestamp(event)
    event_name = _text(event.get("event"))
    if not event_name:
        raise InvalidEvent("event field 'event' is missing or empty")
    event_type = catalog.normalize(event_name)
    user = event.get("user")
    if not isinstance(user, Mapping):
        user = {"name": user} if user not in (None, "") else {}
    time_text = iso_utc(seconds)

    # Built in column order, so that `row` only has to fill in the EventId_s.
    fields: dict[str, Any] = {
        "TimeGenerated": time_text,
        "Timestamp_d": seconds,
        "SourceIP_s": _text(event.get("sourceIP")),
        "Event_s": event_type,
        "Description_s": _text(event.get("description")),
        "UserName_s": _text(user.get("name")),
        "UserLogin_s": _text(user.get("githubLogin")),
        "UserAvatarUrl_s": _text(user.get("avatarUrl")),
        "TokenID_s": _text(event.get("tokenID")),
        "TokenName_s": _text(event.get("tokenName")),
        "ActorName_s": _text(event.get("actorName")),
        "ActorUrn_s": _text(event.get("actorUrn")),
        "RequireOrgAdmin_b": _flag(event.get("reqOrgAdmin")),
        "RequireStackAdmin_b": _flag(event.get("reqStackAdmin")),
        "AuthFailure_b": _flag(event.get("authFailure")),
        "OrgName_s": org,
        "EventId_s": "",
        "Product_s": catalog.product(event_type),
        "Category_s": catalog.category(event_type),
        "EventTime_t": time_text,
        "RawEvent_s": "",
        "ExtraFields_s": "",
    }
    truncated = []
    for column in _FREE_TEXT_COLUMNS:
        fields[column], cut = _fit(fields[column])
        if cut:
            truncated.append(column)
    identity_text = json.dumps([org] + [fields[column] for column in _IDENTITY_COLUMNS], ensure_ascii=True)
    return NormalizedEvent(
        org=org,
        timestamp=seconds,
        identity=hashlib.sha256(identity_text.encode()).digest(),
        fields=fields,
        event=event,
        truncated_fields=tuple(truncated),
    )


def to_row(org: str, event: Any, occurrence: int, catalog: EventCatalog) -> dict[str, Any]:
    """The table row of an event; `occurrence` numbers identical events (1-based)."""
    return normalize(org, event, catalog).row(occurrence)


def current_row(row: dict[str, Any], catalog: EventCatalog) -> dict[str, Any]:
    """A row written before ExtraFields_s existed (a dead letter, say), in today's format with its own
    EventId_s; any other row, or one whose RawEvent_s is not a whole event, as it is."""
    if "ExtraFields_s" in row or not row.get("RawEvent_s"):
        return row
    try:
        normalized = normalize(row["OrgName_s"], json.loads(row["RawEvent_s"]), catalog)
    except (KeyError, ValueError):  # InvalidEvent and a RawEvent_s cut to the field limit included
        return row
    return {**normalized.row(1), "EventId_s": row["EventId_s"]}


def encode_row(row: dict[str, Any]) -> EncodedRow:
    """The row with its request-body JSON: compact UTF-8, which Logs Ingestion accepts.

    orjson writes it about 8x faster than `json.dumps`. It refuses a lone surrogate and an
    integer over 64 bits, which a row from `normalize` never holds; a row from elsewhere (a
    dead letter) that does is written by the standard library, as the SDK would have.
    """
    try:
        body = orjson.dumps(row)
    except orjson.JSONEncodeError:
        body = json.dumps(row).encode()
    return EncodedRow(row, body)


def _fit_extra_fields(extra: Mapping[str, Any]) -> tuple[str, bool]:
    """`extra` as compact JSON within the field limit, and whether a value had to be cut.

    A value that does not fit is replaced by its own JSON, cut visibly, as a string, largest first,
    until the whole fits: the rest of the event still comes back exactly."""
    if not extra:
        return "", False
    text = _compact(extra)
    if len(text) <= MAX_FIELD_BYTES // 4 or len(text.encode("utf-8")) <= MAX_FIELD_BYTES:
        return text, False
    fitted = dict(extra)
    for key in sorted(fitted.keys() - {ABSENT}, key=lambda key: len(_compact(fitted[key])), reverse=True):
        fitted[key] = ""
        room = MAX_FIELD_BYTES - _size(fitted)
        fitted[key] = _cut(_compact(extra[key]), room)
        if _size(fitted) <= MAX_FIELD_BYTES:
            break
    return _compact(fitted), True


def _cut(text: str, room: int) -> str:
    """`text` cut visibly so that, as a JSON string, it takes at most `room` bytes (or the marker's)."""
    budget = room - 2
    while True:
        cut = truncate_visibly(text, max(budget, _SMALLEST_CUT))
        overflow = _size(cut) - room
        if overflow <= 0 or budget <= _SMALLEST_CUT:
            return cut
        budget -= overflow


def _size(value: Any) -> int:
    return len(_compact(value).encode("utf-8"))


def _compact(value: Any) -> str:
    """Compact JSON, text as is; a lone surrogate, which UTF-8 cannot carry, as its JSON escape."""
    text = _COMPACT_ENCODER.encode(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _fit(text: str) -> tuple[str, bool]:
    """`text` as valid UTF-8 within the field limit, and whether it had to be cut."""
    if text.isascii() and len(text) <= MAX_FIELD_BYTES:
        return text, False  # the common case, checked without encoding
    clean = valid_utf8(text)
    cut = truncate_visibly(clean)
    return cut, cut is not clean


def valid_utf8(text: str) -> str:
    """`text` with anything UTF-8 cannot encode (lone surrogates) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def truncate_visibly(text: str, limit: int = MAX_FIELD_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, ending with a marker that says so."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    marker = f"...[truncated by connector: {len(encoded)} bytes, limit {limit}]"
    keep = encoded[: limit - len(marker.encode("utf-8"))].decode("utf-8", "ignore")
    return keep + marker


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if isinstance(value, (bool, int, float)) else False
