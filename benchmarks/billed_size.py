"""What Log Analytics bills for a row: the size of its stored values (`_BilledSize`).

The rule, the same as KQL's `estimate_data_size`: a string costs its UTF-8 bytes, a datetime, long
or real 8, a bool 1, and an empty string or a null nothing. Only the table's own columns count.
"""

from __future__ import annotations

from typing import Any

from shared.schema import Table

_FIXED_BYTES = {"datetime": 8, "long": 8, "real": 8, "boolean": 1}


def billed_bytes(row: dict[str, Any], table: Table) -> int:
    """The billed size of `row` in `table`; a column the row lacks is null, and costs nothing."""
    total = 0
    for column in table.columns:
        value = row.get(column.name)
        if value is None or value == "":
            continue
        total += len(value.encode("utf-8")) if column.type == "string" else _FIXED_BYTES[column.type]
    return total
