"""Durable storage for rows Logs Ingestion refused, so that none is ever dropped.

Entries hold only row data and the service's reason, keyed by org and event id,
so writing the same refused row twice keeps one entry. `python -m shared
deadletter list|replay` shows them and sends them again after a fix.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.ports import DeadLetter, DeadLetterUnavailable, RefusedRow
from shared.storage import JsonFile, TableOnFirstUse, describe_azure_error

_CHUNK_BYTES = 64_000
_MAX_REASON_CHARS = 2_000


def dead_letter_key(row: dict[str, Any]) -> str:
    return str(row.get("EventId_s") or "unknown")


class TableDeadLetterStore:
    def __init__(self, table: TableClient):
        self._table = TableOnFirstUse(table)

    def put(self, org: str, refused: Sequence[RefusedRow]) -> None:
        failed_at = _now()
        try:
            for item in refused:
                packed = gzip.compress(json.dumps(item.row, ensure_ascii=False).encode("utf-8"))
                entity: dict[str, Any] = {
                    "PartitionKey": org,
                    "RowKey": dead_letter_key(item.row),
                    "Reason": item.reason[:_MAX_REASON_CHARS],
                    "FailedAt": failed_at,
                }
                for index in range(0, len(packed), _CHUNK_BYTES):
                    entity[f"Row{index // _CHUNK_BYTES}"] = packed[index : index + _CHUNK_BYTES]
                self._table().upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as error:
            raise DeadLetterUnavailable(
                f"cannot store refused rows for org {org!r}: {describe_azure_error(error)}"
            ) from None

    def list(self, org: str | None = None) -> Iterator[DeadLetter]:
        try:
            entities = (
                self._table().query_entities("PartitionKey eq @org", parameters={"org": org})
                if org
                else self._table().list_entities()
            )
            for entity in entities:
                chunks = []
                index = 0
                while f"Row{index}" in entity:
                    chunks.append(bytes(entity[f"Row{index}"]))
                    index += 1
                row = json.loads(gzip.decompress(b"".join(chunks)))
                yield DeadLetter(entity["PartitionKey"], entity["RowKey"], row, entity["Reason"], entity["FailedAt"])
        except AzureError as error:
            raise DeadLetterUnavailable(f"cannot read dead letters: {describe_azure_error(error)}") from None

    def remove(self, letter: DeadLetter) -> None:
        try:
            self._table().delete_entity(letter.org, letter.key)
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            raise DeadLetterUnavailable(f"cannot remove dead letter: {describe_azure_error(error)}") from None


class FileDeadLetterStore:
    """Dead letters in a local JSON file, for the demo. A lock keeps the orgs of a run, which
    store at the same time, from overwriting each other's read-modify-write."""

    def __init__(self, path: Path):
        self._file = JsonFile(path)
        self._lock = threading.Lock()

    def put(self, org: str, refused: Sequence[RefusedRow]) -> None:
        with self._lock:
            data = self._file.read()
            for item in refused:
                key = dead_letter_key(item.row)
                data[f"{org}/{key}"] = {
                    "org": org,
                    "key": key,
                    "row": item.row,
                    "reason": item.reason[:_MAX_REASON_CHARS],
                    "failed_at": _now(),
                }
            self._file.write(data)

    def list(self, org: str | None = None) -> Iterator[DeadLetter]:
        for entry in self._file.read().values():
            if org is None or entry["org"] == org:
                yield DeadLetter(entry["org"], entry["key"], entry["row"], entry["reason"], entry["failed_at"])

    def remove(self, letter: DeadLetter) -> None:
        with self._lock:
            data = self._file.read()
            data.pop(f"{letter.org}/{letter.key}", None)
            self._file.write(data)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
