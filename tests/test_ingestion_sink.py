"""The sink cuts encoded rows into request bodies under 1 MB and sends each body, gzipped, exactly
as the rows were encoded: through the real LogsIngestionClient, to the Logs Ingestion stand-in."""

from __future__ import annotations

import gzip
import json

import pytest
from azure.monitor.ingestion import LogsIngestionClient

from shared.catalog import default_catalog
from shared.ingestion_sink import MAX_BODY_BYTES, LogsIngestionSink, batches, default_retry_policy, request_body
from shared.schema import MAX_FIELD_BYTES
from shared.standins import simulate_events
from shared.transform import encode_row, to_row


def rows_of(count: int, seed: int = 1) -> list[dict]:
    events = simulate_events("acme", 1_790_000_000, 1_790_086_400, count, seed=seed)
    return [to_row("acme", event, 1, default_catalog()) for event in events]


def array_size(batch) -> int:
    return len(b"[" + b",".join(row.body for row in batch) + b"]")


@pytest.fixture
def sink(ingestion, tls_ca, static_token_credential):
    client = LogsIngestionClient(
        endpoint=ingestion.url,
        credential=static_token_credential,
        connection_verify=tls_ca.ca_path,
        retry_policy=default_retry_policy(),
    )
    with client:
        yield LogsIngestionSink(client, ingestion.dcr_id, ingestion.stream_name)


# -- cutting --------------------------------------------------------------------------------------


def test_every_batch_body_stays_under_the_limit_even_with_non_ascii():
    rows = [encode_row({"Description_s": "é🙂" * 2000, "n": index}) for index in range(400)]
    cut = list(batches(rows))
    assert len(cut) > 1
    assert all(array_size(batch) <= MAX_BODY_BYTES for batch in cut)


def test_a_batch_is_cut_only_when_the_next_row_would_not_fit():
    rows = [encode_row({"pad": "x" * 9_990}) for _ in range(300)]
    cut = list(batches(rows))
    assert all(array_size([*batch, rows[0]]) > MAX_BODY_BYTES for batch in cut[:-1])


def test_batches_keep_every_row_in_order():
    rows = [encode_row({"n": index, "pad": "x" * 5000}) for index in range(1000)]
    assert [row for batch in batches(rows) for row in batch] == rows


def test_a_small_set_of_rows_is_one_request():
    assert len(list(batches([encode_row({"n": index}) for index in range(100)]))) == 1


def test_no_rows_means_no_request():
    assert list(batches([])) == []


def test_the_request_body_is_the_gzipped_json_array_of_the_encoded_rows():
    rows = [encode_row(row) for row in rows_of(3)]
    body = request_body(rows)
    assert body[:2] == b"\x1f\x8b"
    assert gzip.decompress(body) == b"[" + b",".join(row.body for row in rows) + b"]"


# -- sending, through the real client -------------------------------------------------------------


def test_rows_land_as_encoded_in_one_gzipped_request_of_their_own_bytes(sink, ingestion):
    rows = [encode_row(row) for row in rows_of(50)]
    assert sink.send(rows) == []
    [request] = ingestion.requests
    assert request.status == 204 and request.headers["Content-Encoding"] == "gzip"
    assert request.uncompressed_size == array_size(rows) and request.body_size < request.uncompressed_size
    assert ingestion.rows == [row.row for row in rows]


def test_a_large_set_of_rows_lands_in_order_in_requests_under_one_megabyte(sink, ingestion):
    rows = [encode_row(row) for row in rows_of(3000)]
    assert sink.send(rows) == []
    sizes = [request.uncompressed_size for request in ingestion.requests]
    assert len(sizes) > 2 and all(request.status == 204 for request in ingestion.requests)
    assert max(sizes) <= MAX_BODY_BYTES and min(sizes[:-1]) > 0.99 * MAX_BODY_BYTES
    assert ingestion.rows == [row.row for row in rows]


def test_a_row_larger_than_a_request_is_refused_without_sending_it(sink, ingestion):
    # Quotes double in JSON: a value of 60,000 quotes is 120,000 bytes on the wire.
    huge = {f"Column{index}_s": '"' * (MAX_FIELD_BYTES - 4_000) for index in range(10)}
    small = rows_of(2)
    refused = sink.send([encode_row(small[0]), encode_row(huge), encode_row(small[1])])
    assert [item.row for item in refused] == [huge]
    size = len(json.dumps(huge, separators=(",", ":")))
    assert refused[0].reason == f"row is {size} bytes, over the 1 MB request limit"
    assert ingestion.rows == small
