"""Rows into Log Analytics through the Logs Ingestion API (azure-monitor-ingestion).

We cut the batches ourselves, each request body under 1 MB as the SDK measures it,
because the SDK's own chunking can exceed the service limit. Retries are azure-core's
RetryPolicy, extended to POST so that a 429 without Retry-After and a dropped
connection are retried too. A 400 or 413 is bisected down to the rows the service
refuses, which are returned for the dead-letter store: the other rows still land.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import RetryPolicy
from azure.monitor.ingestion import LogsIngestionClient

from shared.ports import RefusedRow, SinkUnavailable

# The service limit is 1 MB per call; stay below it with room for the SDK's framing.
MAX_BODY_BYTES = 1_000_000
RETRIED_METHODS = frozenset({"POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# A fresh role assignment can take up to 30 minutes to reach the DCR; on 403 a run
# retries this many times this far apart (2 minutes) before it gives up until the next run.
FORBIDDEN_RETRIES = 8
FORBIDDEN_RETRY_SECONDS = 15


def default_retry_policy() -> RetryPolicy:
    return RetryPolicy(
        retry_total=6, retry_connect=3, retry_read=2, retry_status=5, retry_backoff_factor=1.0, retry_backoff_max=30
    )


def row_size(row: dict[str, Any]) -> int:
    """Bytes the row takes in the request body, measured as the SDK serialises it."""
    return len(json.dumps(row).encode("utf-8"))


def batches(rows: Sequence[dict[str, Any]], max_body_bytes: int = MAX_BODY_BYTES) -> Iterator[list[dict[str, Any]]]:
    """Consecutive runs of rows whose JSON array body stays within `max_body_bytes`."""
    batch: list[dict[str, Any]] = []
    size = 2  # the brackets
    for row in rows:
        cost = row_size(row) + 2  # the ", " separator
        if batch and size + cost > max_body_bytes:
            yield batch
            batch, size = [], 2
        batch.append(row)
        size += cost
    if batch:
        yield batch


class LogsIngestionSink:
    def __init__(
        self,
        client: LogsIngestionClient,
        rule_id: str,
        stream_name: str,
        *,
        enforce_https: bool = True,
    ):
        self._client = client
        self._rule_id = rule_id
        self._stream_name = stream_name
        self._enforce_https = enforce_https

    def __repr__(self) -> str:
        return f"LogsIngestionSink(rule_id={self._rule_id!r}, stream={self._stream_name!r})"

    def send(self, rows: Sequence[dict[str, Any]]) -> list[RefusedRow]:
        """Send every row; return the rows the service refused (to dead-letter).

        Raises SinkUnavailable when the service cannot take rows right now.
        """
        refused: list[RefusedRow] = []
        for batch in batches(rows, MAX_BODY_BYTES):
            self._send_batch(batch, refused)
        return refused

    def _send_batch(self, batch: list[dict[str, Any]], refused: list[RefusedRow]) -> None:
        if len(batch) == 1 and row_size(batch[0]) + 2 > MAX_BODY_BYTES:
            refused.append(RefusedRow(batch[0], f"row is {row_size(batch[0])} bytes, over the 1 MB request limit"))
            return
        try:
            self._upload(batch)
        except HttpResponseError as error:
            if error.status_code not in (400, 413):
                raise
            if len(batch) == 1:
                refused.append(RefusedRow(batch[0], _describe(error)))
                return
            middle = len(batch) // 2
            self._send_batch(batch[:middle], refused)
            self._send_batch(batch[middle:], refused)

    def _upload(self, batch: list[dict[str, Any]]) -> None:
        forbidden = 0
        while True:
            try:
                self._client.upload(
                    self._rule_id,
                    self._stream_name,
                    batch,
                    retry_on_methods=RETRIED_METHODS,
                    enforce_https=self._enforce_https,
                )
                return
            except ClientAuthenticationError as error:
                raise SinkUnavailable(
                    f"Logs Ingestion authentication failed ({_describe(error)}): check the managed identity "
                    "(MANAGED_IDENTITY_CLIENT_ID) or the app registration"
                ) from None
            except ResourceNotFoundError as error:
                raise SinkUnavailable(
                    f"Logs Ingestion has no such DCR or stream ({_describe(error)}): check LOGS_INGESTION_ENDPOINT, "
                    "DCR_IMMUTABLE_ID and DCR_STREAM_NAME"
                ) from None
            except HttpResponseError as error:
                if error.status_code in (400, 413):
                    raise
                if error.status_code == 403:
                    if forbidden < FORBIDDEN_RETRIES:
                        forbidden += 1
                        time.sleep(FORBIDDEN_RETRY_SECONDS)
                        continue
                    raise SinkUnavailable(
                        f"Logs Ingestion refused the identity (403) {forbidden + 1} times over "
                        f"{forbidden * FORBIDDEN_RETRY_SECONDS} s: grant it "
                        "'Monitoring Metrics Publisher' on the DCR; a new role assignment can take up to 30 minutes"
                    ) from None
                raise SinkUnavailable(
                    f"Logs Ingestion did not accept the rows after retries ({_describe(error)})"
                ) from None
            except AzureError as error:
                raise SinkUnavailable(f"Logs Ingestion unreachable after retries ({type(error).__name__})") from None


def _describe(error: AzureError) -> str:
    status = getattr(error, "status_code", None)
    code = getattr(getattr(error, "error", None), "code", None)
    message = str(getattr(getattr(error, "error", None), "message", "") or "").splitlines()
    parts = [str(part) for part in (status, code) if part]
    if message and message[0]:
        parts.append(message[0][:300])
    return " ".join(parts) or type(error).__name__
