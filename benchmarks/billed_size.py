"""The billed size of a row in a Log Analytics table, by the rule Azure Monitor bills ingestion by.

A string column counts its UTF-8 bytes; a datetime, long or real column 8 bytes; a boolean 1; an
empty or null value nothing. (A minimal version, so that benchmarks/cost.py runs; the schema work
owns the full one.)
"""

from __future__ import annotations

from shared.schema import Table

FIXED_SIZES = {"datetime": 8, "long": 8, "real": 8, "boolean": 1}


def billed_bytes(row: dict, table: Table) -> int:
    total = 0
    for column in table.columns:
        value = row.get(column.name)
        if value is None or value == "":
            continue
        total += len(str(value).encode("utf-8")) if column.type == "string" else FIXED_SIZES[column.type]
    return total
