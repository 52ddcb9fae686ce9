"""The delivery state in Azure Table Storage (and in memory, for the demo and unit tests).

One partition per org, so everything an org's save must change together can go in one
entity-group transaction:

- `coverage`: the folded coverage (finished backfills, live ranges before a reset);
- `cursor~<collection>`: a cursor (`live`, or a backfill lane named by its range);
- `ledger~<collection>~<sequence>`: a ledger segment, what one save added;
- `lease~<collection>`: who works on the collection, and until when.

A page save writes its cursor and its segment in one transaction, conditional on the
cursor's ETag: it costs what the page changed, not what the backlog holds. Every entity
carries `FormatVersion`; a version this code does not know is refused, never guessed at.
The live cursor 1.0.0 left (one entity in partition `live`, without a version) is carried
over once, when an org has no live cursor yet (`migrate_v1_live_cursor`).
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import EdmType, EntityProperty, TableClient, TableTransactionError, UpdateMode

from shared.coverage import Coverage
from shared.cursor import DIGEST_KEY_BYTES, FIRST_WINDOW_SECONDS, Cursor, LedgerSegment, SegmentEntry, Window
from shared.delivery import LIVE, Lease, OrgState, StoredCursor
from shared.ports import LeaseHeld, StateConflict, StateFormatUnknown, StateUnavailable
from shared.storage import TableOnFirstUse, describe_azure_error

FORMAT_VERSION = 2
# A segment entry: timestamp (u32), digest key (8 bytes), seen (u16), sent (u16).
_ENTRY = struct.Struct(f">I{DIGEST_KEY_BYTES}sHH")
# Table Storage allows 64 KiB per binary property and 1 MiB per entity.
_CHUNK_BYTES = 64_000
# An entity-group transaction holds at most 100 operations.
_MAX_BATCH = 100

Entity = dict[str, Any]
# ("create", entity) | ("replace", entity, etag) | ("upsert", entity) | ("delete", row_key, etag or None)
Operation = tuple


def _cursor_key(name: str) -> str:
    return f"cursor~{name}"


def _lease_key(name: str) -> str:
    return f"lease~{name}"


def _segment_prefix(name: str) -> str:
    return f"ledger~{name}~"


_COVERAGE_KEY = "coverage"


# -- entities ----------------------------------------------------------------------------------


def cursor_entity(cursor: Cursor) -> Entity:
    return {
        "FormatVersion": FORMAT_VERSION,
        "Watermark": cursor.watermark,
        "WatermarkTime": _iso(cursor.watermark),
        "Origin": cursor.origin,
        "Until": cursor.until,
        "WindowStart": cursor.window.start if cursor.window else None,
        "WindowEnd": cursor.window.end if cursor.window else None,
        "WindowReread": cursor.window.reread if cursor.window else None,
        "Unsettled": json.dumps([list(r) for r in cursor.unsettled]),
        "ContinuationToken": cursor.continuation_token,
        "Pass": cursor.pass_number,
        "NextSegment": cursor.next_segment,
        "WindowSpan": cursor.span,
    }


def cursor_from_entity(org: str, entity: Entity) -> Cursor:
    _check_version(org, entity)
    try:
        window = None
        if entity.get("WindowStart") is not None:
            window = Window(int(entity["WindowStart"]), int(entity["WindowEnd"]), bool(entity.get("WindowReread")))
        return Cursor(
            watermark=int(entity["Watermark"]),
            origin=int(entity["Origin"]),
            until=None if entity.get("Until") is None else int(entity["Until"]),
            window=window,
            continuation_token=entity.get("ContinuationToken") or None,
            pass_number=int(entity["Pass"]),
            next_segment=int(entity["NextSegment"]),
            unsettled=Coverage.of(tuple(r) for r in json.loads(entity["Unsettled"])),
            span=int(entity.get("WindowSpan") or FIRST_WINDOW_SECONDS),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise StateUnavailable(
            f"the checkpoint of org {org!r} is malformed ({error}); move it with 'checkpoint reset --org {org} --to T'"
        ) from None


def segment_entity(segment: LedgerSegment) -> Entity:
    packed = b"".join(
        _ENTRY.pack(item.timestamp, item.key, min(item.seen, 0xFFFF), min(item.sent, 0xFFFF))
        for item in segment.entries
    )
    info = segment.info
    entity: Entity = {
        "FormatVersion": FORMAT_VERSION,
        "Pass": segment.pass_number,
        "Newest": info.newest,
        "SentAny": info.sent_any,
        "Tokens": b"".join(segment.tokens) or None,
    }
    for index in range(0, len(packed), _CHUNK_BYTES):
        entity[f"Entries{index // _CHUNK_BYTES}"] = packed[index : index + _CHUNK_BYTES]
    return entity


def segment_from_entity(org: str, sequence: int, entity: Entity) -> LedgerSegment:
    _check_version(org, entity)
    chunks = []
    while f"Entries{len(chunks)}" in entity:
        chunks.append(bytes(entity[f"Entries{len(chunks)}"]))
    packed = b"".join(chunks)
    tokens = bytes(entity.get("Tokens") or b"")
    return LedgerSegment(
        sequence=sequence,
        pass_number=int(entity["Pass"]),
        entries=tuple(
            SegmentEntry(key, timestamp, seen, sent)
            for timestamp, key, seen, sent in _ENTRY.iter_unpack(packed[: len(packed) - len(packed) % _ENTRY.size])
        ),
        tokens=tuple(tokens[i : i + DIGEST_KEY_BYTES] for i in range(0, len(tokens), DIGEST_KEY_BYTES)),
    )


def coverage_entity(coverage: Coverage) -> Entity:
    return {"FormatVersion": FORMAT_VERSION, "Ranges": json.dumps([list(r) for r in coverage])}


def _check_version(org: str, entity: Entity) -> None:
    version = entity.get("FormatVersion")
    if version != FORMAT_VERSION:
        raise StateFormatUnknown(
            f"the delivery state of org {org!r} is in format version {version!r}, and this connector reads "
            f"version {FORMAT_VERSION}: run the connector version that wrote it, or point CHECKPOINT_TABLE_NAME "
            "at a new table"
        )


# -- version 1.0.0 ------------------------------------------------------------------------------

# 1.0.0 kept an org's live cursor as one entity in partition "live" under the org's name, its
# whole ledger packed in Ledger0..N: timestamp (u32), digest key (8 bytes), sent (u16), seen (u16).
_V1_PARTITION = "live"
_V1_RECORD = struct.Struct(f">I{DIGEST_KEY_BYTES}sHH")


def migrate_v1_live_cursor(entities: AzureTableEntities | MemoryEntities, org: str) -> bool:
    """Carry over the live cursor 1.0.0 left for `org`, once; False when there is none.

    The v2 cursor starts at the v1 watermark and origin with no open window, so the window it
    stood in is read again from its start; one ledger segment holds what the v1 ledger says was
    sent, so that re-read sends nothing twice. Cursor and segment go in one transaction: a run
    migrating at the same moment makes this one a no-op. The v1 entity is left as it was.
    """
    found = entities.get(_V1_PARTITION, org)
    if found is None:
        return False
    v1 = found[0]
    chunks = []
    while f"Ledger{len(chunks)}" in v1:
        chunks.append(bytes(v1[f"Ledger{len(chunks)}"]))
    packed = b"".join(chunks)
    try:
        cursor = Cursor(watermark=int(v1["Watermark"]), origin=int(v1["Origin"]))
        entries = tuple(
            SegmentEntry(key, timestamp, seen=0, sent=sent)
            for timestamp, key, sent, _ in _V1_RECORD.iter_unpack(packed)
            if sent
        )
    except (KeyError, TypeError, ValueError, struct.error) as error:
        raise StateUnavailable(
            f"the 1.0.0 checkpoint of org {org!r} (partition 'live') is malformed ({error}); "
            f"delete it and set where collection starts with 'checkpoint reset --org {org} --to T'"
        ) from None
    operations: list[Operation] = []
    if entries:
        segment = LedgerSegment(sequence=0, pass_number=0, entries=entries, tokens=())
        operations.append(("create", {"RowKey": f"{_segment_prefix(LIVE)}{0:010d}", **segment_entity(segment)}))
        cursor.next_segment = 1
    operations.insert(0, ("create", {"RowKey": _cursor_key(LIVE), **cursor_entity(cursor)}))
    with contextlib.suppress(StateConflict):
        entities.transact(org, operations)
    return True


# -- the two ways to keep entities --------------------------------------------------------------


class AzureTableEntities:
    """One org partition's entities in an Azure Table; a transaction is an entity-group transaction."""

    def __init__(self, table: TableClient):
        self._table = TableOnFirstUse(table)
        self.name = table.table_name

    def get(self, org: str, row_key: str) -> tuple[Entity, str] | None:
        try:
            entity = self._table().get_entity(org, row_key)
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise StateUnavailable(f"cannot read the state of org {org!r}: {describe_azure_error(error)}") from None
        return _plain(entity), entity.metadata["etag"]

    def prefixed(self, org: str, prefix: str) -> Iterator[tuple[str, Entity, str]]:
        try:
            entities = self._table().query_entities(
                "PartitionKey eq @org and RowKey ge @low and RowKey lt @high",
                parameters={"org": org, "low": prefix, "high": prefix + "\U0010ffff"},
            )
            for entity in entities:
                yield entity["RowKey"], _plain(entity), entity.metadata["etag"]
        except AzureError as error:
            raise StateUnavailable(f"cannot read the state of org {org!r}: {describe_azure_error(error)}") from None

    def transact(self, org: str, operations: Sequence[Operation]) -> list[str | None]:
        try:
            table = self._table()
            if len(operations) == 1:
                return [self._single(table, org, operations[0])]
            batch = [_batch_operation(org, operation) for operation in operations]
            results = table.submit_transaction(batch)
            return [result.get("etag") for result in results]
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise StateConflict(f"the state of org {org!r} was changed by another run") from None
        except TableTransactionError as error:
            if error.status_code in (404, 409, 412):
                raise StateConflict(f"the state of org {org!r} was changed by another run") from None
            raise StateUnavailable(f"cannot write the state of org {org!r}: {describe_azure_error(error)}") from None
        except AzureError as error:
            raise StateUnavailable(f"cannot write the state of org {org!r}: {describe_azure_error(error)}") from None

    @staticmethod
    def _single(table: TableClient, org: str, operation: Operation) -> str | None:
        kind = operation[0]
        if kind == "delete":
            _, row_key, etag = operation
            if etag is None:
                with contextlib.suppress(ResourceNotFoundError):
                    table.delete_entity(org, row_key)
            else:
                table.delete_entity(org, row_key, etag=etag, match_condition=MatchConditions.IfNotModified)
            return None
        entity = _typed({"PartitionKey": org, "RowKey": operation[1]["RowKey"], **operation[1]})
        if kind == "create":
            return table.create_entity(entity)["etag"]
        if kind == "upsert":
            return table.upsert_entity(entity, mode=UpdateMode.REPLACE)["etag"]
        return table.update_entity(
            entity, mode=UpdateMode.REPLACE, etag=operation[2], match_condition=MatchConditions.IfNotModified
        )["etag"]


def _batch_operation(org: str, operation: Operation) -> tuple:
    kind = operation[0]
    if kind == "delete":
        _, row_key, etag = operation
        options = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        return ("delete", {"PartitionKey": org, "RowKey": row_key}, options)
    entity = _typed({"PartitionKey": org, **operation[1]})
    if kind == "create":
        return ("create", entity)
    if kind == "upsert":
        return ("upsert", entity, {"mode": UpdateMode.REPLACE})
    condition = {"etag": operation[2], "match_condition": MatchConditions.IfNotModified}
    return ("update", entity, {"mode": UpdateMode.REPLACE, **condition})


class MemoryEntities:
    """The same, in a dict: for the demo and the unit tests of the pipeline."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entities: dict[tuple[str, str], tuple[Entity, str]] = {}

    def get(self, org: str, row_key: str) -> tuple[Entity, str] | None:
        with self._lock:
            found = self._entities.get((org, row_key))
        return (dict(found[0]), found[1]) if found else None

    def prefixed(self, org: str, prefix: str) -> Iterator[tuple[str, Entity, str]]:
        with self._lock:
            items = sorted((key, value) for key, value in self._entities.items() if key[0] == org)
        for (_, row_key), (entity, etag) in items:
            if row_key.startswith(prefix):
                yield row_key, dict(entity), etag

    def transact(self, org: str, operations: Sequence[Operation]) -> list[str | None]:
        with self._lock:
            staged = dict(self._entities)
            etags: list[str | None] = []
            for operation in operations:
                kind = operation[0]
                row_key = operation[1] if kind == "delete" else operation[1]["RowKey"]
                current = staged.get((org, row_key))
                conditional = kind == "replace" or (kind == "delete" and operation[2] is not None)
                if (kind == "create" and current) or (conditional and (not current or current[1] != operation[2])):
                    raise StateConflict(f"the state of org {org!r} was changed by another run")
                if kind == "delete":
                    staged.pop((org, row_key), None)
                    etags.append(None)
                    continue
                etag = uuid.uuid4().hex
                staged[(org, row_key)] = ({k: v for k, v in operation[1].items() if v is not None}, etag)
                etags.append(etag)
            self._entities = staged
            return etags


# -- the store ---------------------------------------------------------------------------------


class TableStateStore:
    """The `StateStore` port over either way of keeping entities."""

    def __init__(self, entities: AzureTableEntities | MemoryEntities):
        self._entities = entities

    def __repr__(self) -> str:
        return f"TableStateStore({self._entities.name!r})"

    def load_org(self, org: str) -> OrgState:
        folded, folded_etag = Coverage(), None
        found = self._entities.get(org, _COVERAGE_KEY)
        if found:
            _check_version(org, found[0])
            folded, folded_etag = Coverage.of(tuple(r) for r in json.loads(found[0]["Ranges"])), found[1]
        cursors = {
            row_key.removeprefix("cursor~"): StoredCursor(cursor_from_entity(org, entity), etag)
            for row_key, entity, etag in self._entities.prefixed(org, "cursor~")
        }
        if LIVE not in cursors and migrate_v1_live_cursor(self._entities, org):
            return self.load_org(org)
        leases = {
            row_key.removeprefix("lease~"): Lease(entity["Holder"], int(entity["ExpiresAt"]), etag)
            for row_key, entity, etag in self._entities.prefixed(org, "lease~")
        }
        return OrgState(org, folded, folded_etag, cursors, leases)

    def load_segments(self, org: str, name: str) -> list[LedgerSegment]:
        prefix = _segment_prefix(name)
        return [
            segment_from_entity(org, int(row_key.removeprefix(prefix)), entity)
            for row_key, entity, _ in self._entities.prefixed(org, prefix)
        ]

    def create_cursor(self, org: str, name: str, cursor: Cursor) -> str:
        return self._entities.transact(org, [("create", {"RowKey": _cursor_key(name), **cursor_entity(cursor)})])[0]

    def save_cursor(
        self, org: str, name: str, cursor: Cursor, etag: str | None, segments: Sequence[LedgerSegment] = ()
    ) -> str:
        """The cursor and the ledger segments of the pages it moved past, in one transaction
        (segments beyond what one transaction holds go first: a segment alone only ever
        records rows that were delivered)."""
        row = {"RowKey": _cursor_key(name), **cursor_entity(cursor)}
        writes = [_segment_write(name, segment) for segment in segments]
        early = len(writes) - min(len(writes), _MAX_BATCH - 1)
        for start in range(0, early, _MAX_BATCH):
            self._entities.transact(org, writes[start : min(start + _MAX_BATCH, early)])
        cursor_write = ("create", row) if etag is None else ("replace", row, etag)
        return self._entities.transact(org, [cursor_write, *writes[early:]])[0]

    def save_segments(self, org: str, name: str, segments: Sequence[LedgerSegment]) -> None:
        """Ledger segments alone: what a request delivered of a page that is not complete yet."""
        self._entities.transact(org, [_segment_write(name, segment) for segment in segments])

    def delete_segments(self, org: str, name: str, sequences: Sequence[int]) -> None:
        deletes = [("delete", f"{_segment_prefix(name)}{sequence:010d}", None) for sequence in sequences]
        for start in range(0, len(deletes), _MAX_BATCH):
            self._entities.transact(org, deletes[start : start + _MAX_BATCH])

    def finish_lane(self, org: str, name: str, etag: str | None, folded: Coverage, folded_etag: str | None) -> None:
        """Fold a finished lane's range into the coverage and remove its cursor, together."""
        self._entities.transact(org, [_coverage_write(folded, folded_etag), ("delete", _cursor_key(name), etag)])
        self.delete_segments(org, name, [segment.sequence for segment in self.load_segments(org, name)])

    def claim_lanes(self, org: str, lanes: dict[str, Cursor], folded: Coverage, folded_etag: str | None) -> None:
        """Create new backfill lanes' cursors, if the coverage is still what the plan read."""
        creates = [("create", {"RowKey": _cursor_key(name), **cursor_entity(cursor)}) for name, cursor in lanes.items()]
        self._entities.transact(org, [_coverage_write(folded, folded_etag), *creates])

    def replace_live(
        self, org: str, cursor: Cursor, etag: str | None, folded: Coverage, folded_etag: str | None
    ) -> None:
        row = {"RowKey": _cursor_key(LIVE), **cursor_entity(cursor)}
        cursor_write = ("create", row) if etag is None else ("replace", row, etag)
        self._entities.transact(org, [_coverage_write(folded, folded_etag), cursor_write])

    def acquire_lease(
        self, org: str, name: str, holder: str, now: int, seconds: int, take_over_from: str | None = None
    ) -> Lease:
        found = self._entities.get(org, _lease_key(name))
        row = _lease_entity(name, holder, now + seconds)
        if found and int(found[0]["ExpiresAt"]) > now and found[0]["Holder"] not in (holder, take_over_from):
            raise LeaseHeld(name, found[0]["Holder"], int(found[0]["ExpiresAt"]))
        try:
            operation = ("replace", row, found[1]) if found else ("create", row)
            etag = self._entities.transact(org, [operation])[0]
        except StateConflict:
            current = self._entities.get(org, _lease_key(name))
            holder_now, expires = (current[0]["Holder"], int(current[0]["ExpiresAt"])) if current else ("?", now)
            raise LeaseHeld(name, holder_now, expires) from None
        return Lease(holder, now + seconds, etag)

    def renew_lease(self, org: str, name: str, lease: Lease, now: int, seconds: int) -> Lease:
        row = _lease_entity(name, lease.holder, now + seconds)
        etag = self._entities.transact(org, [("replace", row, lease.etag)])[0]
        return Lease(lease.holder, now + seconds, etag)

    def release_lease(self, org: str, name: str, lease: Lease) -> None:
        with contextlib.suppress(StateConflict):
            self._entities.transact(org, [("delete", _lease_key(name), lease.etag)])


def _segment_write(name: str, segment: LedgerSegment) -> Operation:
    return ("upsert", {"RowKey": f"{_segment_prefix(name)}{segment.sequence:010d}", **segment_entity(segment)})


def _coverage_write(folded: Coverage, etag: str | None) -> Operation:
    row = {"RowKey": _COVERAGE_KEY, **coverage_entity(folded)}
    return ("create", row) if etag is None else ("replace", row, etag)


def _lease_entity(name: str, holder: str, expires_at: int) -> Entity:
    return {"RowKey": _lease_key(name), "Holder": holder, "ExpiresAt": expires_at, "ExpiresTime": _iso(expires_at)}


def _typed(entity: Entity) -> Entity:
    """Ints as Int64 (Table Storage would take them as Int32), and no None properties."""
    return {
        name: EntityProperty(value, EdmType.INT64) if isinstance(value, int) and not isinstance(value, bool) else value
        for name, value in entity.items()
        if value is not None
    }


def _plain(entity: Any) -> Entity:
    return {name: value.value if isinstance(value, EntityProperty) else value for name, value in dict(entity).items()}


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table_state_store(table: TableClient) -> TableStateStore:
    return TableStateStore(AzureTableEntities(table))


def memory_state_store() -> TableStateStore:
    return TableStateStore(MemoryEntities())
