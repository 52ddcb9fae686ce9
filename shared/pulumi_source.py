"""The Pulumi Cloud audit log API, one page at a time.

HTTP retries (429 and 5xx honouring Retry-After, connection resets, read timeouts)
are urllib3's `Retry`, with Retry-After capped so a hostile header cannot stall a
run. A 429 with Retry-After also holds back every other request of the same org until
then (`RetryAfterGate`): the lanes of a backfill slow down together instead of each
spending its own retries. Each org's token comes from a `TokenSource` and goes on each
request, never on the session. Errors name the org, the status and where the token came
from, never the token. One source serves many threads (orgs, lanes) at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from shared import __version__
from shared.ports import AuditPage, ContinuationTokenRejected, OrgToken, SourceError, TokenSource
from shared.settings import org_name_problem

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
MAX_RETRY_AFTER_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
# Connections kept open to the API: one per request in flight, at most MAX_PARALLEL_ORGS (32)
# orgs or BACKFILL_PARALLELISM (16) lanes at once.
KEPT_CONNECTIONS = 32


class RetryAfterGate:
    """Holds back every request of an org while the API has told one of them to retry later.

    Keyed by the org's audit-log path, so it applies to every lane of that org and to no other
    org. `clock` and `sleep` are injectable for tests; `sleep` defaults to `time.sleep` looked
    up at call time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None):
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}

    def hold(self, path: str, seconds: float) -> None:
        """No request to `path` is sent in the next `seconds`."""
        until = self._clock() + seconds
        with self._lock:
            self._until[path] = max(until, self._until.get(path, until))

    def wait(self, path: str) -> None:
        """Return once `path` may be asked again; a hold set while waiting is waited out too."""
        waited_for = None
        while True:
            with self._lock:
                until = self._until.get(path)
            pause = None if until is None or until == waited_for else until - self._clock()
            if pause is None or pause <= 0:
                return
            (self._sleep or time.sleep)(pause)
            waited_for = until


class _BoundedRetry(Retry):
    """urllib3's Retry with the server's Retry-After capped; a 429 with Retry-After holds the
    org's other requests through `gate` as long as this one waits."""

    def __init__(self, *args, gate: RetryAfterGate | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate

    def new(self, **kwargs):
        return super().new(gate=self.gate, **kwargs)

    def get_retry_after(self, response):
        retry_after = super().get_retry_after(response)
        return None if retry_after is None else min(retry_after, MAX_RETRY_AFTER_SECONDS)

    def increment(self, method=None, url=None, response=None, *args, **kwargs):
        if self.gate is not None and url is not None and response is not None and response.status == 429:
            try:
                retry_after = self.get_retry_after(response)
            except InvalidHeader:
                retry_after = None
            if retry_after:
                self.gate.hold(urlsplit(url).path, retry_after)
        return super().increment(method, url, response, *args, **kwargs)


def default_retry(gate: RetryAfterGate | None = None) -> Retry:
    return _BoundedRetry(
        total=6,
        connect=3,
        read=3,
        status=5,
        backoff_factor=0.5,
        backoff_max=30,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
        gate=gate,
    )


class PulumiAuditSource:
    def __init__(
        self,
        api_url: str,
        tokens: TokenSource,
        *,
        gate: RetryAfterGate | None = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self._api_url = api_url.rstrip("/")
        self._tokens = tokens
        self._host = urlsplit(api_url).netloc.rpartition("@")[2]
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._session = requests.Session()
        self._gate = gate or RetryAfterGate()
        retry = default_retry(self._gate)
        self._retried_statuses = frozenset(retry.status_forcelist or ())
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=KEPT_CONNECTIONS)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update(
            {"Accept": "application/vnd.pulumi+8", "User-Agent": f"pulumi-sentinel-connector/{__version__}"}
        )

    def __repr__(self) -> str:
        return f"PulumiAuditSource({self._api_url!r})"

    def close(self) -> None:
        self._session.close()

    def fetch_page(self, org: str, start: int, end: int, continuation_token: str | None) -> AuditPage:
        """One page of the org's events with start <= timestamp <= end."""
        problem = org_name_problem(org)
        if problem:
            raise SourceError(problem)
        url = f"{self._api_url}/api/orgs/{quote(org, safe='')}/auditlogs/v2"
        self._gate.wait(urlsplit(url).path)
        params: dict[str, Any] = {"startTime": start, "endTime": end}
        if continuation_token:
            params["continuationToken"] = continuation_token
        token = self._tokens.token_for(org)
        headers = {"Authorization": f"token {token.secret.reveal()}"}
        try:
            with self._session.get(url, params=params, headers=headers, timeout=self._timeout, stream=True) as response:
                body = self._read_body(org, response)
                status = response.status_code
                content_type = response.headers.get("Content-Type", "")
        except requests.RequestException as error:
            raise SourceError(
                f"Pulumi API unreachable for org {org!r} at {self._host} ({type(error).__name__}): "
                "check PULUMI_API_URL and the network"
            ) from None
        if status == 401:
            self._tokens.forget(org)
        if status in self._retried_statuses:
            raise SourceError(
                f"Pulumi API answered {status} for org {org!r} after retries{_error_message(body)} "
                f"({self._host}, from PULUMI_API_URL)"
            )
        if status != 200:
            raise self._status_error(org, token, status, body, continuation_token)
        return _parse_page(org, body, content_type)

    def _read_body(self, org: str, response: requests.Response) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self._max_response_bytes:
            raise SourceError(
                f"Pulumi API response for org {org!r} is {declared} bytes, over the {self._max_response_bytes} byte cap"
            )
        chunks = []
        received = 0
        for chunk in response.iter_content(chunk_size=65536):
            received += len(chunk)
            if received > self._max_response_bytes:
                raise SourceError(
                    f"Pulumi API response for org {org!r} exceeded the {self._max_response_bytes} byte cap; not read"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _status_error(
        org: str, token: OrgToken, status: int, body: bytes, continuation_token: str | None
    ) -> SourceError:
        if status == 401:
            return SourceError(f"Pulumi API rejected the access token for org {org!r} (401): check {token.origin}")
        if status == 403:
            return SourceError(
                f"the access token may not read the audit logs of org {org!r} (403): it must be that org's token "
                f"or an org admin's; check {token.origin}"
            )
        if status == 404:
            return SourceError(
                f"org {org!r} not found, or its Pulumi plan has no audit logs (404): check PULUMI_ORGS and the edition"
            )
        if status == 400 and continuation_token:
            return ContinuationTokenRejected(f"Pulumi API refused the saved continuation token for org {org!r} (400)")
        return SourceError(f"Pulumi API answered {status} for org {org!r}{_error_message(body)}")


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {str(message)[:200]}" if message else ""


def _parse_page(org: str, body: bytes, content_type: str) -> AuditPage:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        kind = content_type.split(";")[0] or "no content type"
        raise SourceError(
            f"Pulumi API answered 200 for org {org!r} with a body that is not valid JSON ({kind}, {len(body)} bytes)"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("auditLogEvents"), list):
        raise SourceError(f"Pulumi API answered 200 for org {org!r} without an 'auditLogEvents' list")
    token = document.get("continuationToken")
    if token is not None and not isinstance(token, str):
        raise SourceError(f"Pulumi API answered 200 for org {org!r} with a continuationToken that is not a string")
    return AuditPage(events=document["auditLogEvents"], next_token=token or None)
