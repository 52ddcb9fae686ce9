"""Checkpoints in Table Storage (Azurite): ETag concurrency, size limits, clear errors."""

from __future__ import annotations

import pytest
from azure.data.tables import TableClient

from shared.checkpoint_store import (
    MAX_LEDGER_ENTRIES,
    CheckpointConflict,
    CheckpointUnavailable,
    CursorKey,
    FileCheckpointStore,
    TableCheckpointStore,
)
from shared.cursor import Cursor, LedgerEntry, Window

KEY = CursorKey.live("acme")


@pytest.fixture
def store(azurite, table_name) -> TableCheckpointStore:
    return TableCheckpointStore(TableClient.from_connection_string(azurite.connection_string, table_name=table_name))


def busy_cursor(entries: int = 3) -> Cursor:
    cursor = Cursor(
        watermark=1_800_000_000,
        origin=1_799_000_000,
        window=Window(1_799_999_400, 1_800_003_600),
        continuation_token="eyJvZmZzZXQiOjEwMH0=",
    )
    for index in range(entries):
        cursor.ledger[index.to_bytes(8, "big")] = LedgerEntry(timestamp=1_800_000_000 + index, sent=2, seen_in_window=1)
    return cursor


def test_a_saved_cursor_reads_back_equal(store):
    etag = store.save(KEY, busy_cursor(), None)
    loaded, loaded_etag = store.load(KEY)
    assert loaded == busy_cursor() and loaded_etag == etag


def test_an_unknown_collection_has_no_checkpoint(store):
    assert store.load(CursorKey.live("nobody")) == (None, None)


def test_a_save_with_a_stale_etag_is_refused_so_two_runs_cannot_both_advance(store):
    first = store.save(KEY, busy_cursor(), None)
    store.save(KEY, busy_cursor(), first)
    with pytest.raises(CheckpointConflict, match="changed by another run"):
        store.save(KEY, busy_cursor(), first)


def test_two_runs_creating_the_same_checkpoint_conflict(store):
    store.save(KEY, busy_cursor(), None)
    with pytest.raises(CheckpointConflict):
        store.save(KEY, busy_cursor(), None)


def test_a_full_dedup_ledger_fits_in_one_entity(store):
    cursor = busy_cursor(MAX_LEDGER_ENTRIES)
    store.save(KEY, cursor, None)
    assert len(store.load(KEY)[0].ledger) == MAX_LEDGER_ENTRIES


def test_an_unreachable_table_service_is_a_clear_error():
    unreachable = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        table_name="checkpoints",
        retry_total=0,
    )
    with pytest.raises(CheckpointUnavailable, match="cannot read checkpoint live/acme") as raised:
        TableCheckpointStore(unreachable).load(KEY)
    assert "a2V5" not in str(raised.value)


def test_a_malformed_entity_says_how_to_recover(store, azurite, table_name):
    table = TableClient.from_connection_string(azurite.connection_string, table_name=table_name)
    table.create_table()
    table.upsert_entity({"PartitionKey": "live", "RowKey": "acme", "Watermark": "not a number"})
    with pytest.raises(CheckpointUnavailable, match="checkpoint reset"):
        store.load(KEY)


def test_the_file_store_keeps_the_same_etag_rules(tmp_path):
    files = FileCheckpointStore(tmp_path / "checkpoints.json")
    etag = files.save(KEY, busy_cursor(), None)
    assert files.load(KEY) == (busy_cursor(), etag)
    with pytest.raises(CheckpointConflict):
        files.save(KEY, busy_cursor(), "stale")
    assert list(files.keys()) == [KEY]
