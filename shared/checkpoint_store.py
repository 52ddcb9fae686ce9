"""Checkpoint stores: Azure Table Storage in Azure and under Azurite, a JSON file for the demo.

One entity per collection (PartitionKey "live" with the org as RowKey, or
"backfill" with a range-named RowKey). Every write is conditional on the ETag that
was read, so two overlapping runs cannot both advance the same cursor.
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import EdmType, EntityProperty, TableClient, UpdateMode

from shared.cursor import DIGEST_KEY_BYTES, Cursor, LedgerEntry, Window
from shared.storage import JsonFile, TableOnFirstUse, describe_azure_error

# A ledger record: timestamp (u32), digest key (8 bytes), sent (u16), seen in window (u16).
_RECORD = struct.Struct(f">I{DIGEST_KEY_BYTES}sHH")
# Table Storage allows 64 KiB per binary property and 1 MiB per entity.
_CHUNK_BYTES = 64_000
MAX_LEDGER_ENTRIES = 50_000


class CheckpointConflict(RuntimeError):
    """The checkpoint changed since this run read it: another run is working on it."""


class CheckpointUnavailable(RuntimeError):
    """The checkpoint store could not be reached or refused the request."""


@dataclass(frozen=True)
class CursorKey:
    kind: str  # "live" or "backfill"
    name: str

    @classmethod
    def live(cls, org: str) -> CursorKey:
        return cls("live", org)

    @classmethod
    def backfill(cls, org: str, since: int, until: int) -> CursorKey:
        return cls("backfill", f"{org}_{since}_{until}")


class CheckpointStore(Protocol):
    def load(self, key: CursorKey) -> tuple[Cursor | None, str | None]: ...

    def save(self, key: CursorKey, cursor: Cursor, etag: str | None) -> str: ...

    def delete(self, key: CursorKey) -> None: ...

    def keys(self) -> Iterator[CursorKey]: ...


def cursor_to_properties(cursor: Cursor) -> dict[str, Any]:
    """The cursor as flat, Table-Storage-friendly properties."""
    packed = b"".join(
        _RECORD.pack(entry.timestamp, key, min(entry.sent, 0xFFFF), min(entry.seen_in_window, 0xFFFF))
        for key, entry in cursor.ledger.items()
    )
    properties: dict[str, Any] = {
        "Watermark": cursor.watermark,
        "WatermarkTime": _iso(cursor.watermark),
        "Origin": cursor.origin,
        "WindowStart": cursor.window.start if cursor.window else None,
        "WindowEnd": cursor.window.end if cursor.window else None,
        "ContinuationToken": cursor.continuation_token,
        "LedgerEntries": len(cursor.ledger),
        "WindowTokens": b"".join(sorted(cursor.window_tokens)) or None,
    }
    for index in range(0, len(packed), _CHUNK_BYTES):
        properties[f"Ledger{index // _CHUNK_BYTES}"] = packed[index : index + _CHUNK_BYTES]
    return properties


def cursor_from_properties(properties: dict[str, Any]) -> Cursor:
    try:
        chunks = []
        index = 0
        while f"Ledger{index}" in properties:
            chunks.append(bytes(_value(properties[f"Ledger{index}"])))
            index += 1
        packed = b"".join(chunks)
        ledger = {}
        for offset in range(0, len(packed), _RECORD.size):
            timestamp, key, sent, seen = _RECORD.unpack_from(packed, offset)
            ledger[key] = LedgerEntry(timestamp=timestamp, sent=sent, seen_in_window=seen)
        tokens = bytes(_value(properties.get("WindowTokens")) or b"")
        window = None
        if _value(properties.get("WindowStart")) is not None:
            window = Window(int(_value(properties["WindowStart"])), int(_value(properties["WindowEnd"])))
        return Cursor(
            watermark=int(_value(properties["Watermark"])),
            origin=int(_value(properties["Origin"])),
            window=window,
            continuation_token=_value(properties.get("ContinuationToken")) or None,
            ledger=ledger,
            window_tokens={
                tokens[offset : offset + DIGEST_KEY_BYTES] for offset in range(0, len(tokens), DIGEST_KEY_BYTES)
            },
        )
    except (KeyError, TypeError, ValueError, struct.error) as error:
        raise CheckpointUnavailable(
            f"checkpoint entity is malformed ({error}); reset it with 'checkpoint reset'"
        ) from None


class TableCheckpointStore:
    """Checkpoints in an Azure Table, with ETag optimistic concurrency."""

    def __init__(self, table: TableClient):
        self._table = TableOnFirstUse(table)

    def load(self, key: CursorKey) -> tuple[Cursor | None, str | None]:
        try:
            entity = self._table().get_entity(key.kind, key.name)
        except ResourceNotFoundError:
            return None, None
        except AzureError as error:
            raise CheckpointUnavailable(
                f"cannot read checkpoint {key.kind}/{key.name}: {describe_azure_error(error)}"
            ) from None
        return cursor_from_properties(dict(entity)), entity.metadata["etag"]

    def save(self, key: CursorKey, cursor: Cursor, etag: str | None) -> str:
        entity = {"PartitionKey": key.kind, "RowKey": key.name}
        for name, value in cursor_to_properties(cursor).items():
            if value is None:
                continue
            entity[name] = EntityProperty(value, EdmType.INT64) if isinstance(value, int) else value
        try:
            if etag is None:
                result = self._table().create_entity(entity)
            else:
                result = self._table().update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError):
            raise CheckpointConflict(
                f"checkpoint {key.kind}/{key.name} was changed by another run; this run stops here"
            ) from None
        except ResourceNotFoundError:
            raise CheckpointConflict(f"checkpoint {key.kind}/{key.name} was deleted while this run used it") from None
        except AzureError as error:
            raise CheckpointUnavailable(
                f"cannot write checkpoint {key.kind}/{key.name}: {describe_azure_error(error)}"
            ) from None
        return result["etag"]

    def delete(self, key: CursorKey) -> None:
        try:
            self._table().delete_entity(key.kind, key.name)
        except AzureError as error:
            raise CheckpointUnavailable(
                f"cannot delete checkpoint {key.kind}/{key.name}: {describe_azure_error(error)}"
            ) from None

    def keys(self) -> Iterator[CursorKey]:
        try:
            for entity in self._table().list_entities(select=["PartitionKey", "RowKey"]):
                yield CursorKey(entity["PartitionKey"], entity["RowKey"])
        except AzureError as error:
            raise CheckpointUnavailable(f"cannot list checkpoints: {describe_azure_error(error)}") from None


class FileCheckpointStore:
    """Checkpoints in a local JSON file, for the demo and runs without Table Storage."""

    def __init__(self, path: Path):
        self._file = JsonFile(path)

    def load(self, key: CursorKey) -> tuple[Cursor | None, str | None]:
        record = self._file.read().get(f"{key.kind}/{key.name}")
        if record is None:
            return None, None
        properties = {
            name: base64.b64decode(value["base64"]) if isinstance(value, dict) else value
            for name, value in record["properties"].items()
        }
        return cursor_from_properties(properties), record["etag"]

    def save(self, key: CursorKey, cursor: Cursor, etag: str | None) -> str:
        data = self._file.read()
        current = data.get(f"{key.kind}/{key.name}")
        if (current["etag"] if current else None) != etag:
            raise CheckpointConflict(
                f"checkpoint {key.kind}/{key.name} was changed by another run; this run stops here"
            )
        properties = {
            name: {"base64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value
            for name, value in cursor_to_properties(cursor).items()
        }
        new_etag = uuid.uuid4().hex
        data[f"{key.kind}/{key.name}"] = {"etag": new_etag, "properties": properties}
        self._file.write(data)
        return new_etag

    def delete(self, key: CursorKey) -> None:
        data = self._file.read()
        data.pop(f"{key.kind}/{key.name}", None)
        self._file.write(data)

    def keys(self) -> Iterator[CursorKey]:
        for name in self._file.read():
            kind, _, rest = name.partition("/")
            yield CursorKey(kind, rest)


def _value(value: Any) -> Any:
    """Table Storage returns Int64 properties as EntityProperty; unwrap them."""
    return value.value if isinstance(value, EntityProperty) else value


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
