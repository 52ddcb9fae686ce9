"""A local stand-in for Pulumi Cloud's audit log API (`GET /api/orgs/{org}/auditlogs/v2`).

It behaves the way a careful client has to assume the real service may behave:

* `Authorization: token <token>` is required (401 otherwise); an unknown org is a 404. The
  token is `expected_token`, or for an org listed in `org_tokens` one of that org's own tokens
  (an org-scoped token reads its org only; during a rotation both old and new are valid).
* `startTime` and `endTime` are both inclusive bounds on the event's `timestamp`.
* Events come back in a deterministic but shuffled order: no ordering is promised.
* Pages hold `page_size` events. While more remain the page carries an opaque
  `continuationToken`; the last page has none. A token this server did not issue for the
  same org and query is a 400.
* A pagination sees the org's events as they were when its first page was served. Events
  added later (late arrivals, via `add_events`) show up in the next query, never halfway
  through a running pagination.
* `present_events(transform)` changes how events look on the wire (a timestamp as a string
  or in milliseconds, a display-name event, a field the API added), while the time filter and
  paging keep using the stored event.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import hashlib
import hmac
import json
import os
import random
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from shared.standins.server import LOOPBACK, Fault, RecordedRequest, Response, StandInServer, json_response

API_PATH = re.compile(r"^/api/orgs/(?P<org>[^/]+)/auditlogs/v2/?$")
UNAUTHORIZED_MESSAGE = "Unauthorized: No credentials provided or are invalid."
INVALID_QUERY_MESSAGE = "invalid query params"
_ORDER_CACHE_SIZE = 32


class PulumiAuditApiStandIn(StandInServer):
    """Serves audit events registered with `add_events`. See the module docstring.

    `seed` fixes the shuffled order. `pulumi_api.faults.add(Fault.empty_page_with_token())`
    and `Fault.repeated_token()` are understood here besides the generic faults.
    """

    def __init__(
        self,
        expected_token: str,
        *,
        page_size: int = 100,
        seed: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        host: str = LOOPBACK,
        port: int = 0,
    ):
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.expected_token = expected_token
        self.org_tokens: dict[str, set[str]] = {}
        self.page_size = page_size
        self.seed = seed
        self._events: dict[str, list[dict[str, Any]]] = {}
        # Per org: the stored events' positions sorted by timestamp, built again after an add.
        self._time_index: dict[str, tuple[list[int], list[int]]] = {}
        self._events_lock = threading.Lock()
        self._order_cache: dict[tuple, list[dict[str, Any]]] = {}
        self._presentation: Callable[[dict[str, Any]], Any] | None = None
        self._token_key = os.urandom(16)
        super().__init__(ssl_context=ssl_context, host=host, port=port)

    # -- data ---------------------------------------------------------------------------------

    def add_org(self, org: str) -> None:
        with self._events_lock:
            self._events.setdefault(org, [])

    def add_events(self, org: str, events: Iterable[Mapping[str, Any]]) -> int:
        """Register `org` (if new) and append copies of `events`. Returns how many were added.
        Safe to call while clients are polling."""
        copies = [copy.deepcopy(dict(event)) for event in events]
        for event in copies:
            if not isinstance(event.get("timestamp"), int) or isinstance(event.get("timestamp"), bool):
                raise ValueError(f"event has no integer 'timestamp': {event!r:.200}")
        with self._events_lock:
            self._events.setdefault(org, []).extend(copies)
        return len(copies)

    def events(self, org: str) -> list[dict[str, Any]]:
        """Copies of every event stored for `org`, in the order they were added."""
        with self._events_lock:
            return copy.deepcopy(self._events.get(org, []))

    def present_events(self, transform: Callable[[dict[str, Any]], Any] | None) -> None:
        """Serve every event as `transform(copy of the stored event)` from now on; the result may
        be any JSON value. Filtering by time and paging still use the stored event. None serves
        events as stored again."""
        with self._events_lock:
            self._presentation = transform

    def presented(self, event: Mapping[str, Any]) -> Any:
        """How `event` is served right now."""
        with self._events_lock:
            transform = self._presentation
        return transform(copy.deepcopy(dict(event))) if transform else copy.deepcopy(dict(event))

    @property
    def orgs(self) -> list[str]:
        with self._events_lock:
            return sorted(self._events)

    # -- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest, body: bytes, fault: Fault | None) -> Response:
        response = self._handle(request, fault)
        response.headers.setdefault("X-Pulumi-Request-ID", f"standin-{request.number:08d}")
        return response

    def _handle(self, request: RecordedRequest, fault: Fault | None) -> Response:
        match = API_PATH.match(request.path)
        if match is None:
            return self.error_response(404, "Not Found")
        if request.method != "GET":
            return self.error_response(405, "Method Not Allowed")
        org = unquote(match["org"])
        accepted = self.org_tokens.get(org, {self.expected_token})
        if request.headers.get("Authorization") not in {f"token {token}" for token in accepted}:
            return self.error_response(401, UNAUTHORIZED_MESSAGE)

        with self._events_lock:
            stored = self._events.get(org)
            total_stored = len(stored) if stored is not None else 0
        if stored is None:
            return self.error_response(404, f"Organization '{org}' not found")

        query = request.query
        try:
            start = int(query["startTime"])
            end = int(query["endTime"]) if query.get("endTime", "") != "" else None
        except (KeyError, ValueError):
            return self.error_response(400, INVALID_QUERY_MESSAGE)
        if end is not None and end < start:
            return self.error_response(400, INVALID_QUERY_MESSAGE)
        filters = (query.get("eventFilter", ""), query.get("userFilter", ""))
        fingerprint = f"{org}\n{start}\n{end}\n{filters[0]}\n{filters[1]}"

        token = query.get("continuationToken")
        if token:
            position = self._read_token(token, fingerprint)
            if position is None or position[1] > total_stored:
                return self.error_response(400, "invalid continuation token")
            offset, snapshot = position
        else:
            offset, snapshot = 0, total_stored

        ordered = self._ordered(org, start, end, filters, snapshot)
        page = ordered[offset : offset + self.page_size]
        next_offset = offset + len(page)
        next_token: str | None
        if fault is not None and fault.kind == "empty_page_with_token":
            page, next_token = [], self._make_token(offset, snapshot, fingerprint)
        elif fault is not None and fault.kind == "repeated_token":
            next_token = token or self._make_token(0, snapshot, fingerprint)
        elif next_offset < len(ordered):
            next_token = self._make_token(next_offset, snapshot, fingerprint)
        else:
            next_token = None

        with self._events_lock:
            transform = self._presentation
        if transform is not None:
            page = [transform(copy.deepcopy(event)) for event in page]
        payload: dict[str, Any] = {"auditLogEvents": page}
        if next_token is not None:
            payload["continuationToken"] = next_token
        return json_response(200, payload)

    def error_response(self, status: int, message: str | None = None) -> Response:
        response = super().error_response(status, message)
        response.content_type = "application/json"
        return response

    # -- paging -------------------------------------------------------------------------------

    def _ordered(
        self, org: str, start: int, end: int | None, filters: tuple[str, str], snapshot: int
    ) -> list[dict[str, Any]]:
        key = (org, start, end, filters, snapshot)
        with self._events_lock:
            cached = self._order_cache.get(key)
            if cached is not None:
                return cached
            stored = self._events.get(org, [])
            candidates = [
                stored[position]
                for position in self._positions_in_time(org, stored, start, end)
                if position < snapshot and _passes_filters(stored[position], filters)
            ]
            random.Random(f"{self.seed}\n{org}\n{start}\n{end}\n{snapshot}").shuffle(candidates)
            if len(self._order_cache) >= _ORDER_CACHE_SIZE:
                self._order_cache.pop(next(iter(self._order_cache)))
            self._order_cache[key] = candidates
            return candidates

    def _positions_in_time(self, org: str, stored: list[dict[str, Any]], start: int, end: int | None) -> list[int]:
        """Positions of the stored events with start <= timestamp <= end, in the order they were
        added: found by bisection, as a scan of a million events per window would cost the
        benchmarks more than the connector does."""
        index = self._time_index.get(org)
        if index is None or len(index[1]) != len(stored):
            order = sorted(range(len(stored)), key=lambda position: stored[position]["timestamp"])
            index = self._time_index[org] = ([stored[position]["timestamp"] for position in order], order)
        timestamps, order = index
        low = bisect.bisect_left(timestamps, start)
        high = len(order) if end is None else bisect.bisect_right(timestamps, end)
        return sorted(order[low:high])

    def _signature(self, offset: int, snapshot: int, fingerprint: str) -> str:
        message = f"{offset}\n{snapshot}\n{fingerprint}".encode()
        return hmac.new(self._token_key, message, hashlib.sha256).hexdigest()[:24]

    def _make_token(self, offset: int, snapshot: int, fingerprint: str) -> str:
        data = {"offset": offset, "snapshot": snapshot, "sig": self._signature(offset, snapshot, fingerprint)}
        return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")

    def _read_token(self, token: str, fingerprint: str) -> tuple[int, int] | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            offset, snapshot, signature = int(data["offset"]), int(data["snapshot"]), str(data["sig"])
        except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
            return None
        if offset < 0 or snapshot < 0:
            return None
        if not hmac.compare_digest(signature, self._signature(offset, snapshot, fingerprint)):
            return None
        return offset, snapshot


def _passes_filters(event: Mapping[str, Any], filters: tuple[str, str]) -> bool:
    event_filter, user_filter = filters
    if event_filter and event.get("event") != event_filter:
        return False
    if user_filter:
        user = event.get("user") or {}
        if user_filter not in (user.get("githubLogin"), user.get("name")):
            return False
    return True
