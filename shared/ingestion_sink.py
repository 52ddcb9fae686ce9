"""Rows into Log Analytics through the Logs Ingestion API (azure-monitor-ingestion).

Each row comes serialised once (`EncodedRow`). We cut the batches from those bytes,
each request body under 1 MB, join them into the JSON array, gzip it here and hand
the SDK that finished body: the SDK's own chunking would serialise every row twice
more, and can exceed the service limit. Retries are azure-core's RetryPolicy,
extended to POST so that a 429 without Retry-After and a dropped connection are
retried too. A 400 or 413 is bisected down to the rows the service refuses, which
are returned for the dead-letter store: the other rows still land.
"""

from __future__ import annotations

import io
import logging
import time
import zlib
from collections.abc import Iterator, Sequence

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import RetryPolicy
from azure.monitor.ingestion import LogsIngestionClient

from shared.identity import APP_REGISTRATION
from shared.ports import MAX_BODY_BYTES, EncodedRow, RefusedRow, SinkUnavailable

log = logging.getLogger("shared.ingestion_sink")

# zlib's default level, the one the SDK gzips its own bodies with.
GZIP_LEVEL = 6
RETRIED_METHODS = frozenset({"POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# A fresh role assignment can take up to 30 minutes to reach the DCR; on 403 a run
# retries this many times this far apart (2 minutes) before it gives up until the next run.
FORBIDDEN_RETRIES = 8
FORBIDDEN_RETRY_SECONDS = 15


def default_retry_policy() -> RetryPolicy:
    return RetryPolicy(
        retry_total=6, retry_connect=3, retry_read=2, retry_status=5, retry_backoff_factor=1.0, retry_backoff_max=30
    )


def batches(rows: Sequence[EncodedRow], max_body_bytes: int = MAX_BODY_BYTES) -> Iterator[list[EncodedRow]]:
    """Consecutive runs of rows whose JSON array body stays within `max_body_bytes`."""
    batch: list[EncodedRow] = []
    size = 1  # the brackets, less the separator the first row does not need
    for row in rows:
        cost = len(row.body) + 1  # the "," separator
        if batch and size + cost > max_body_bytes:
            yield batch
            batch, size = [], 1
        batch.append(row)
        size += cost
    if batch:
        yield batch


def request_body(batch: Sequence[EncodedRow]) -> bytes:
    """The JSON array of the rows, gzipped as the service accepts it."""
    return zlib.compress(b"[" + b",".join(row.body for row in batch) + b"]", GZIP_LEVEL, wbits=16 + zlib.MAX_WBITS)


class LogsIngestionSink:
    def __init__(
        self,
        client: LogsIngestionClient,
        rule_id: str,
        stream_name: str,
        *,
        enforce_https: bool = True,
        stream_setting: str = "DCR_STREAM_NAME",
    ):
        self._client = client
        self._rule_id = rule_id
        self._stream_name = stream_name
        self._enforce_https = enforce_https
        self._stream_setting = stream_setting  # the setting that names the stream, for errors

    def __repr__(self) -> str:
        return f"LogsIngestionSink(rule_id={self._rule_id!r}, stream={self._stream_name!r})"

    def send(self, rows: Sequence[EncodedRow]) -> list[RefusedRow]:
        """Send every row; return the rows the service refused (to dead-letter).

        Raises SinkUnavailable when the service cannot take rows right now. The gzip runs
        on the calling thread; zlib lets go of the GIL while it compresses.
        """
        refused: list[RefusedRow] = []
        for batch in batches(rows, MAX_BODY_BYTES):
            self._send_batch(batch, refused)
        return refused

    def _send_batch(self, batch: list[EncodedRow], refused: list[RefusedRow]) -> None:
        if len(batch) == 1 and len(batch[0].body) + 2 > MAX_BODY_BYTES:
            refused.append(RefusedRow(batch[0].row, f"row is {len(batch[0].body)} bytes, over the 1 MB request limit"))
            return
        try:
            self._upload(request_body(batch))
        except HttpResponseError as error:
            if error.status_code not in (400, 413):
                raise
            if len(batch) == 1:
                refused.append(RefusedRow(batch[0].row, _describe(error)))
                return
            middle = len(batch) // 2
            self._send_batch(batch[:middle], refused)
            self._send_batch(batch[middle:], refused)

    def _upload(self, gzipped_body: bytes) -> None:
        forbidden = 0
        while True:
            try:
                # A readable stream that starts with the gzip magic is sent as it is, marked gzip.
                self._client.upload(
                    self._rule_id,
                    self._stream_name,
                    io.BytesIO(gzipped_body),
                    retry_on_methods=RETRIED_METHODS,
                    enforce_https=self._enforce_https,
                )
                return
            except ClientAuthenticationError as error:
                if error.response is None:  # no token came: the credential's message says what to fix
                    raise SinkUnavailable(f"Logs Ingestion: {str(error.message).splitlines()[0]}") from None
                raise SinkUnavailable(
                    f"Logs Ingestion refused the token ({_describe(error)}): the identity (MANAGED_IDENTITY_CLIENT_ID, "
                    f"or the app registration's {APP_REGISTRATION}) must be in the DCR's tenant"
                ) from None
            except ResourceNotFoundError as error:
                raise SinkUnavailable(
                    f"Logs Ingestion has no such DCR or stream ({_describe(error)}): check LOGS_INGESTION_ENDPOINT, "
                    f"DCR_IMMUTABLE_ID and {self._stream_setting}"
                ) from None
            except HttpResponseError as error:
                if error.status_code in (400, 413):
                    raise
                if error.status_code == 403:
                    if forbidden < FORBIDDEN_RETRIES:
                        if not forbidden:
                            log.info(
                                "Logs Ingestion refused the identity (403); retrying every %d s for up to %d s "
                                "while a new role assignment reaches the DCR",
                                FORBIDDEN_RETRY_SECONDS,
                                FORBIDDEN_RETRIES * FORBIDDEN_RETRY_SECONDS,
                            )
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
                raise SinkUnavailable(
                    f"Logs Ingestion unreachable after retries ({type(error).__name__}): "
                    "check LOGS_INGESTION_ENDPOINT and the network"
                ) from None


def _describe(error: AzureError) -> str:
    status = getattr(error, "status_code", None)
    code = getattr(getattr(error, "error", None), "code", None)
    message = str(getattr(getattr(error, "error", None), "message", "") or "").splitlines()
    parts = [str(part) for part in (status, code) if part]
    if message and message[0]:
        parts.append(message[0][:300])
    return " ".join(parts) or type(error).__name__
