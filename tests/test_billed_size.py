"""The billing rule the cost figures use: a row costs the size of its stored values."""

from __future__ import annotations

from benchmarks.billed_size import billed_bytes
from shared.schema import AUDIT_TABLE, HEALTH_TABLE, Column, Table

TABLE = Table(
    "T_CL",
    "Custom-T",
    "one column of each type",
    (Column("When_t", "datetime", ""), Column("Count_d", "long", ""), Column("Text_s", "string", ""),
     Column("Flag_b", "boolean", "")),
)


def test_a_string_costs_its_utf8_bytes_and_the_other_types_a_fixed_size():
    row = {"When_t": "2026-01-01T00:00:00Z", "Count_d": 3, "Text_s": "Zoë 🚀", "Flag_b": False}
    assert billed_bytes(row, TABLE) == 8 + 8 + len("Zoë 🚀".encode()) + 1


def test_empty_strings_nulls_and_missing_columns_cost_nothing():
    assert billed_bytes({"When_t": None, "Text_s": ""}, TABLE) == 0


def test_values_outside_the_tables_columns_are_not_billed():
    assert billed_bytes({"Text_s": "abc", "Other_s": "not a column"}, TABLE) == 3


def test_every_column_type_of_the_connectors_tables_has_a_size():
    value_and_size = {
        "datetime": ("2026-01-01T00:00:00Z", 8),
        "long": (1, 8),
        "string": ("xy", 2),
        "boolean": (True, 1),
    }
    for table in (AUDIT_TABLE, HEALTH_TABLE):
        row = {column.name: value_and_size[column.type][0] for column in table.columns}
        assert billed_bytes(row, table) == sum(value_and_size[column.type][1] for column in table.columns)
