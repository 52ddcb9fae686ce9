"""Run the shipped KQL on rows, in the tests: duckdb-kql (KQL translated to DuckDB SQL) behind one API.

How to use it
-------------
- `run_kql(query, tables, now)` runs one query and returns its rows as dicts. `tables` maps a table
  name (`PulumiAuditLogs_CL`, `PulumiAuditConnectorHealth_CL`) to rows as the ingestion stand-in
  accepted them; a row may carry its ingestion time under `INGESTED_AT` (else it counts as ingested
  at its TimeGenerated). `now()`/`ago()` resolve against `now`; `ingestion_time()` is the row's
  ingestion time; a row ingested after `now` is not there yet.
- `Workspace(tables, functions)` loads the rows once and runs many queries on them, each at its
  own `now` and, if given, over `time_range` on TimeGenerated (a rule's query period, the portal's
  time picker). `functions` are workspace functions, e.g. `parser_function()` for the ASIM parser.
- tests/detection_rows.py makes the rows: a `Story` (events published to the Pulumi stand-in, timer
  runs, outages, a backfill, optional explicit ingestion times) run through the real connector on a
  virtual clock; the session fixture `story_rows(story)` (tests/conftest.py) produces each story once.
  Typical test: `rows = story_rows(STORY); Workspace(rows.tables, [parser_function()]).run(query, now)`.
- Rewrites apply to the query and to the function bodies. To add one, add an entry to REWRITES.

The engine lacks a few constructs the shipped queries use. `REWRITES` is the one table of what the
harness changes in a query before running it, each with why the result is the same, and beside it
`ADDED_FUNCTIONS` the one table of functions the engine lacks, computed in Python as Kusto documents
them; the shipped files stay as Sentinel needs them (tests/test_kusto.py still checks them). A construct the engine
cannot run and no rewrite covers raises `KqlUnsupportedError` naming it: it is never skipped.
Measured before choosing (every shipped query on empty tables, unmodified): duckdb-kql 1.1.2 ran
31 of 42, adxpandas 0.2.3 and adxlite 0.2.3 ran 7 and 6 of 42 even with comments stripped.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import duckdb_kql
import regex
from duckdb_kql.engine import schema as duckdb_schema
from duckdb_kql.translate.functions import SCALAR_FUNCTIONS, FunctionSpec

from shared.schema import AUDIT_TABLE, HEALTH_TABLE, Table
from tests import content_model as cm
from tests.kusto import STANDARD_COLUMNS

# The Log Analytics workspace the rows are in (its TenantId column).
WORKSPACE_ID = "00000000-0000-4000-8000-000000000001"
# The key of a row's ingestion time (a datetime) in the rows given to the engine.
INGESTED_AT = "_IngestedAt"

TABLES: dict[str, Table] = {table.name: table for table in (AUDIT_TABLE, HEALTH_TABLE)}
_SQL_TYPES = {"datetime": "TIMESTAMP", "string": "VARCHAR", "long": "BIGINT", "boolean": "BOOLEAN", "real": "DOUBLE"}


@dataclass(frozen=True)
class Rewrite:
    name: str
    pattern: re.Pattern[str] | regex.Pattern[str]
    replacement: str | Callable[[re.Match[str]], str]
    why: str


def _take_any_per_column(match: re.Match[str]) -> str:
    columns = [column.strip() for column in match.group("columns").split(",")]
    return ", ".join(f"{column} = take_any({column})" for column in columns)


def top_level_split(text: str) -> list[str]:
    """`text` split at the commas outside brackets and string literals."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote and text[index - 1] != "\\" else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return [part for part in parts if part]


def _parser_call_by_position(match: regex.Match[str]) -> str:
    parser = cm.parser()
    declared = [parameter.split(":", 1)[0].strip() for parameter in top_level_split(parser.parameters)]
    defaults = [parameter.split("=", 1)[1].strip() for parameter in top_level_split(parser.parameters)]
    given = top_level_split(match.group("arguments")[1:-1])
    named = dict(argument.split("=", 1) for argument in given if _NAMED_ARGUMENT.match(argument))
    named = {name.strip(): value.strip() for name, value in named.items()}
    unknown = set(named) - set(declared)
    if unknown:
        raise ValueError(f"{parser.function_alias} has no parameters {sorted(unknown)}; it declares {declared}")
    positional = [argument for argument in given if not _NAMED_ARGUMENT.match(argument)]
    values = (
        positional
        + [named.get(name, default) for name, default in zip(declared, defaults, strict=True)][len(positional) :]
    )
    return f"{parser.function_alias}({', '.join(values)})"


def _ipv4_prefix_test(match: re.Match[str]) -> str:
    address, prefixes = match.group("address"), match.group("prefixes")
    candidates = [f'extract(@"^({octets})", 1, {address})' for octets in (r"\d+\.", r"\d+\.\d+\.", r"\d+\.\d+\.\d+\.")]
    tests = " or ".join(f"set_has_element({prefixes}, {candidate})" for candidate in [*candidates, address])
    return rf'(isnotempty(extract(@"^(\d+\.\d+\.\d+\.\d+)$", 1, {address})) and ({tests}))'


_NAMED_ARGUMENT = re.compile(r"^\s*[A-Za-z_]\w*\s*=(?!=)")

REWRITES: tuple[Rewrite, ...] = (
    Rewrite(
        "ingestion_time()",
        re.compile(r"\bingestion_time\(\)"),
        INGESTED_AT,
        "ingestion_time() is the row's hidden ingestion timestamp; the harness keeps it as a column "
        f"{INGESTED_AT} of every row, set to when the ingestion stand-in accepted the row.",
    ),
    Rewrite(
        "maxif(datetime, predicate)",
        re.compile(r"\bmaxif\((?P<value>TimeGenerated|\w+_t),\s*(?P<predicate>[^()]*(?:\([^()]*\)[^()]*)*)\)"),
        r"max(iff(\g<predicate>, \g<value>, datetime(null)))",
        "maxif(x, p) is the max of x over the rows where p holds; max ignores nulls, so the max of "
        "iff(p, x, null) over all rows is the same value (null when p holds nowhere, as maxif).",
    ),
    Rewrite(
        "take_any(a, b, ...)",
        re.compile(r"\btake_any\((?P<columns>\w+(?:\s*,\s*\w+)+)\)"),
        _take_any_per_column,
        "take_any(a, b) takes a and b from one row and names them a, b; a = take_any(a), b = take_any(b) "
        "may take them from different rows, the same result wherever they are constant within each "
        "group, as in the one use: the per-(org, IP) failure columns joined on the group keys.",
    ),
    Rewrite(
        "parser call with named arguments",
        regex.compile(
            r"(?<!function )\b" + cm.parser().function_alias + r"(?P<arguments>\((?:[^()]++|(?&arguments))*\))"
        ),
        _parser_call_by_position,
        "Kusto binds f(name = value) to the parameter of that name; the engine takes arguments by "
        "position only, so each is put at its parameter's place and the others get their declared defaults.",
    ),
    Rewrite(
        "has_any_ipv4_prefix(column, list)",
        re.compile(r"\bhas_any_ipv4_prefix\((?P<address>\w+),\s*(?P<prefixes>\w+)\)"),
        _ipv4_prefix_test,
        "an IPv4 prefix is a whole address or its first 1 to 3 octets ending in a dot, so an IPv4 "
        "address has a prefix in the list exactly when one of those four strings is in it.",
    ),
)


def _bag(text: str | None) -> dict[str, Any] | None:
    value = None if text is None else json.loads(text)
    return value if isinstance(value, dict) else None


def _plain_keys(keys: Sequence[str]) -> Sequence[str]:
    paths = [key for key in keys if key.startswith("$")]
    if paths:
        raise ValueError(f"keys {paths} are JSONPaths to Kusto, which the harness does not emulate")
    return keys


def _bag_merge(bags: list[str | None]) -> str | None:
    merged: dict[str, Any] = {}
    for bag in map(_bag, reversed(bags)):
        if bag is None:
            return None
        merged.update(bag)
    return json.dumps(merged)


def _bag_remove_keys(bag_text: str | None, keys_text: str | None) -> str | None:
    bag, keys = _bag(bag_text), _plain_keys(json.loads(keys_text or "[]"))
    return None if bag is None else json.dumps({key: value for key, value in bag.items() if key not in keys})


def _bag_has_key(bag_text: str | None, key: str) -> bool:
    _plain_keys([key])
    bag = _bag(bag_text)
    return bag is not None and key in bag


@dataclass(frozen=True)
class AddedFunction:
    """A KQL function the engine lacks, computed in Python as Kusto documents it."""

    name: str
    arguments: tuple[str, ...]  # DuckDB types; () for a variadic function of dynamic arguments
    returns: str
    implementation: Callable[..., Any]
    why: str

    @property
    def sql_name(self) -> str:
        return f"kql_{self.name}"


ADDED_FUNCTIONS: tuple[AddedFunction, ...] = (
    AddedFunction(
        "bag_merge", (), "JSON", _bag_merge,
        "the members of every bag, a key's value taken from the leftmost bag that has it (Kusto's "
        "bag_merge; learn.microsoft.com/kusto/query/bag-merge-function).",
    ),
    AddedFunction(
        "bag_remove_keys", ("JSON", "JSON"), "JSON", _bag_remove_keys,
        "the bag without the listed top-level keys; a key starting with $ (a JSONPath to Kusto) is "
        "refused, which is why the rebuild's absent-key marker is _absent.",
    ),
    AddedFunction(
        "bag_has_key", ("JSON", "VARCHAR"), "BOOLEAN", _bag_has_key,
        "whether the bag has that top-level key (a $ JSONPath is refused, as above).",
    ),
)


def _add_functions_to_the_translator() -> None:
    """Map each added function to its Python implementation, registered per connection."""
    for added in ADDED_FUNCTIONS:
        template = f"{added.sql_name}([{{}}])" if not added.arguments else (
            f"{added.sql_name}({', '.join(f'{{{index}}}' for index in range(len(added.arguments)))})"
        )
        arities = (len(added.arguments),) if added.arguments else ()
        SCALAR_FUNCTIONS[added.name] = FunctionSpec(added.name, "udf", template, arities)


def _register_functions(connection: duckdb.DuckDBPyConnection) -> None:
    for added in ADDED_FUNCTIONS:
        arguments = (
            [duckdb.sqltype(kind) for kind in added.arguments]
            if added.arguments
            else [duckdb.list_type(duckdb.sqltype("JSON"))]
        )
        connection.create_function(
            added.sql_name, added.implementation, arguments, duckdb.sqltype(added.returns), null_handling="special"
        )


_add_functions_to_the_translator()


@dataclass
class Executions:
    """What the harness ran in this session, for the summary at the end of the test run."""

    queries: Counter[str]
    rewrites: Counter[str]
    texts: set[str]

    def record(self, label: str, query: str, applied: list[str]) -> None:
        self.queries[label or query] += 1
        self.texts.add(query)
        for name in applied:
            self.rewrites[name] += 1


EXECUTIONS = Executions(Counter(), Counter(), set())


def rewrite(query: str) -> tuple[str, list[str]]:
    """`query` as the engine can run it, and the names of the rewrites and added functions it needs."""
    applied = []
    for entry in REWRITES:
        query, count = entry.pattern.subn(entry.replacement, query)
        if count:
            applied.append(entry.name)
    applied += [added.name for added in ADDED_FUNCTIONS if re.search(rf"\b{added.name}\s*\(", query)]
    return query, applied


_FUNCTION_NAME = re.compile(r"^\s*function\s+(?:with\s*\([^)]*\)\s*)?(\w+)\s*\(")


def parser_function() -> str:
    """The ASIM parser as the workspace function it is deployed as."""
    found = cm.parser()
    return f"function {found.function_alias}({found.parameters}) {{\n{found.body}\n}}"


def _utc_naive(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"datetime {value!r} has no time zone; give rows UTC datetimes or ISO 8601 with Z")
    return value.astimezone(UTC).replace(tzinfo=None)


def _cell(value: Any, column_type: str) -> Any:
    return _utc_naive(value) if column_type == "datetime" else value


def _result_value(value: Any, sql_type: str) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC)
    if sql_type == "JSON" and isinstance(value, str):
        return json.loads(value)
    return value


def _standard_values(table: str, index: int) -> dict[str, str]:
    """What Log Analytics stores in the standard columns of a table's `index`-th row."""
    return {
        "TenantId": WORKSPACE_ID,
        "Type": table,
        "_ResourceId": "",
        "_ItemId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{table}/{index}")),
    }


# The time range of a query run without one.
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class Workspace:
    """Rows of the connector's tables loaded once; queries run on them at a point in time."""

    def __init__(self, tables: Mapping[str, Sequence[Mapping[str, Any]]], functions: Sequence[str] = ()):
        unknown = set(tables) - set(TABLES)
        if unknown:
            raise ValueError(f"no schema for tables {sorted(unknown)}; known: {sorted(TABLES)}")
        rewritten = {definition: rewrite(definition) for definition in functions}
        self.functions = [text for text, _ in rewritten.values()]
        self._function_rewrites = {definition: applied for definition, (_, applied) in rewritten.items()}
        self._function_sources = {_FUNCTION_NAME.match(definition).group(1): definition for definition in functions}
        self.connection = duckdb_kql.connect()
        _register_functions(self.connection)
        self.connection.execute("SET TimeZone='UTC'")
        self._translations: dict[str, tuple[str, bool, list[str], list[str]]] = {}
        for name, table in TABLES.items():
            # The table's columns, then the ones Log Analytics adds to every row (tests/kusto.py).
            columns = [(column.name, column.type) for column in table.columns] + list(STANDARD_COLUMNS)
            sql_columns = ", ".join(f'"{column}" {_SQL_TYPES[kind]}' for column, kind in columns)
            self.connection.execute(f'CREATE TABLE "all_{name}" ({sql_columns}, "{INGESTED_AT}" TIMESTAMP)')
            rows = [
                [_cell({**_standard_values(name, index), **row}.get(column), kind) for column, kind in columns]
                + [_utc_naive(row.get(INGESTED_AT, row.get("TimeGenerated")))]
                for index, row in enumerate(tables.get(name, ()))
            ]
            if rows:
                placeholders = ", ".join("?" for _ in range(len(columns) + 1))
                self.connection.executemany(f'INSERT INTO "all_{name}" VALUES ({placeholders})', rows)
            # Empty, under the table's own name: the translation reads its schema (for joins and lets).
            self.connection.execute(f'CREATE TABLE "{name}" AS SELECT * FROM "all_{name}" LIMIT 0')

    def _called_functions(self, query: str) -> list[str]:
        """The definitions of the functions `query` calls, directly or through another function."""
        called: dict[str, str] = {}
        texts = [query]
        while texts:
            text = texts.pop()
            for name, definition in self._function_sources.items():
                if name not in called and re.search(rf"\b{name}\s*\(", text):
                    called[name] = definition
                    texts.append(definition.split("{", 1)[1])
        return list(called.values())

    def _translated(self, query: str) -> tuple[str, bool, list[str], list[str]]:
        """The query rewritten and translated to SQL once; `now` is a parameter of the SQL."""
        if query not in self._translations:
            runnable, applied = rewrite(query)
            called = self._called_functions(query)
            # Counted per execution, with what the functions it calls needed.
            applied += [name for definition in called for name in self._function_rewrites[definition]]
            # Any instant: the translation reads `now()` from the $kqlnow parameter, bound per run.
            translated = duckdb_kql.to_sql(
                runnable,
                schema=duckdb_schema(self.connection),
                query_now=datetime(2000, 1, 1, tzinfo=UTC),
                functions=self.functions or None,
            )
            assert set(translated.parameters) <= {"kqlnow"}, f"unexpected parameters {translated.parameters}"
            sql = str(translated)
            for name in TABLES:
                # What the query may see at the time of a run: the rows ingested by then, with their
                # TimeGenerated in the time range. Bound per run, so one translation serves all runs.
                sql = sql.replace(
                    f'"{name}"',
                    f'(SELECT * FROM "all_{name}" WHERE "{INGESTED_AT}" <= $visible_at '
                    f'AND "TimeGenerated" BETWEEN $range_start AND $range_end)',
                )
            self._translations[query] = (sql, "kqlnow" in translated.parameters, applied, called)
        return self._translations[query]

    def run(
        self,
        query: str,
        now: datetime,
        *,
        time_range: tuple[datetime, datetime] | None = None,
        label: str = "",
    ) -> list[dict[str, Any]]:
        """The rows `query` returns at `now`: only rows ingested by then exist, and with `time_range`
        only those whose TimeGenerated lies in it (bounds included), as Sentinel and the portal apply it."""
        sql, reads_now, applied, called = self._translated(query)
        low, high = time_range if time_range is not None else (_EARLIEST, _LATEST)
        parameters = {"visible_at": _utc_naive(now), "range_start": _utc_naive(low), "range_end": _utc_naive(high)}
        if reads_now:
            parameters["kqlnow"] = _utc_naive(now)
        cursor = self.connection.execute(sql, {name: value for name, value in parameters.items() if f"${name}" in sql})
        columns = [(column[0], str(column[1])) for column in cursor.description]
        found = cursor.fetchall()
        EXECUTIONS.record(label, query, applied)
        EXECUTIONS.texts.update(called)
        return [
            {name: _result_value(value, kind) for (name, kind), value in zip(columns, row, strict=True)}
            for row in found
        ]


def run_kql(
    query: str,
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    now: datetime,
    *,
    functions: Sequence[str] = (),
    time_range: tuple[datetime, datetime] | None = None,
    label: str = "",
) -> list[dict[str, Any]]:
    """Run one query on `tables` at `now` (see the module docstring)."""
    return Workspace(tables, functions).run(query, now, time_range=time_range, label=label)


def summary_lines() -> list[str]:
    """The summary printed at the end of the test run: what ran and which rewrites it needed."""
    if not EXECUTIONS.queries:
        return []
    shipped = cm.shipped_queries()
    # A shipped query ran if a run was labelled with its id or ran its text, or its file's text
    # (a workbook query with the portal's own parameter values, the parser through its function).
    ran = [
        query
        for query in shipped
        if query.id in EXECUTIONS.queries
        or query.text in EXECUTIONS.texts
        or any(query.source.read_text(encoding="utf-8") in text for text in EXECUTIONS.texts)
    ]
    not_run = sorted(query.id for query in shipped if query not in ran)
    lines = [
        f"{sum(EXECUTIONS.queries.values())} KQL executions of {len(EXECUTIONS.queries)} distinct queries "
        f"on connector-produced rows (duckdb-kql {duckdb_kql.__version__})",
        f"shipped queries executed: {len(ran)} of {len(shipped)}"
        + (f"; not run: {', '.join(not_run)}" if not_run else ""),
        "rewrites (tests/kql_engine.py REWRITES):",
    ]
    for entry in REWRITES:
        lines.append(f"  {entry.name}: applied in {EXECUTIONS.rewrites[entry.name]} executions; {entry.why}")
    lines.append("functions added to the engine (tests/kql_engine.py ADDED_FUNCTIONS):")
    for added in ADDED_FUNCTIONS:
        lines.append(f"  {added.name}: used in {EXECUTIONS.rewrites[added.name]} executions; {added.why}")
    return lines
