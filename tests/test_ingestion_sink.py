"""The sink cuts rows into request bodies under 1 MB, as the SDK serialises them."""

from __future__ import annotations

import json

from shared.ingestion_sink import MAX_BODY_BYTES, batches


def body_size(batch: list[dict]) -> int:
    return len(json.dumps(batch).encode("utf-8"))


def test_every_batch_body_stays_under_the_limit_even_with_escaped_non_ascii():
    rows = [{"Description_s": "é🙂" * 2000, "n": index} for index in range(400)]
    cut = list(batches(rows))
    assert len(cut) > 1
    assert all(body_size(batch) <= MAX_BODY_BYTES for batch in cut)


def test_batches_keep_every_row_in_order():
    rows = [{"n": index, "pad": "x" * 5000} for index in range(1000)]
    assert [row for batch in batches(rows) for row in batch] == rows


def test_a_small_set_of_rows_is_one_request():
    assert len(list(batches([{"n": index} for index in range(100)]))) == 1


def test_no_rows_means_no_request():
    assert list(batches([])) == []
