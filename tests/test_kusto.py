"""Every query the project ships passes Microsoft's Kusto language service.

The rules, the data connector definition's queries, the workbook's items and parameters, the
ASIM parser and the hunting queries (tests/content_model.py) are analysed in one Node process
(tools/kusto/analyze.js, npm @kusto/language-service-next) against the tables of
shared/schema.py, with the parser declared as the workspace function it is deployed as. Any
error diagnostic fails. What the service does not check, this module does: comparisons of
bool, datetime and number columns against literals, and values of enumerated columns. The
parser's result columns are checked against the ASIM Audit Event schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.schema import HEALTH_TABLE, TABLES
from tests import content_model as cm
from tests import infra_model as im
from tests import kusto

SHIPPED = cm.shipped_queries()
ASIM_SCHEMA = json.loads((Path(__file__).parent / "data" / "asim-auditevent-fields.json").read_text())
ASIM_FIELDS = {field["name"]: field for field in ASIM_SCHEMA["fields"]}

# Queries the service must refuse, so a silent harness cannot pass everything.
PROBES = {
    "probe:unknown-column": 'PulumiAuditLogs_CL | where NoSuchColumn_s == "x"',
    "probe:health-column-on-the-audit-table": 'PulumiAuditLogs_CL | where Status_s == "ok"',
    "probe:long-compared-with-datetime": "PulumiAuditConnectorHealth_CL | where LagSeconds_d > ago(1h)",
    "probe:unknown-parser-parameter": "vimAuditEventPulumiCloud(no_such_filter = dynamic([]))",
    "probe:error-inside-a-function-body": "let F = (n:int) { PulumiAuditLogs_CL | where Nope == n }; F(1)",
    "probe:unfilled-workbook-parameter": (
        "PulumiAuditLogs_CL | summarize count() by bin(EventTime_t, {TimeRange:grain})"
    ),
}


@pytest.fixture(scope="session")
def analysis() -> dict[str, kusto.Analysis]:
    functions = [kusto.StoredFunction(parser.function_alias, parser.parameters, parser.body) for parser in cm.parsers()]
    queries = {query.id: query.text for query in SHIPPED} | PROBES
    try:
        return kusto.analyse(TABLES, functions, queries)
    except kusto.KustoUnavailable as error:
        pytest.fail(str(error), pytrace=False)


def located(text: str, diagnostic: kusto.Diagnostic) -> str:
    line = text.count("\n", 0, diagnostic.start) + 1
    column = diagnostic.start - (text.rfind("\n", 0, diagnostic.start) + 1) + 1
    snippet = text[diagnostic.start : diagnostic.start + max(diagnostic.length, 1)]
    return f"line {line}, column {column} ({snippet!r}): {diagnostic.code} {diagnostic.message}"


# ----------------------------------------------------------------------------------------------
# Semantic analysis
# ----------------------------------------------------------------------------------------------


def test_every_kind_of_shipped_content_is_analysed():
    kinds = {query.id.split(":", 1)[0] for query in SHIPPED}
    assert kinds == {"rule", "connector", "workbook", "hunting", "parser"}
    assert len({query.id for query in SHIPPED}) == len(SHIPPED)


@pytest.mark.parametrize("query", SHIPPED, ids=lambda query: query.id)
def test_shipped_query_passes_the_kusto_language_service(analysis: dict, query: cm.ShippedQuery):
    errors = analysis[query.id].errors
    assert not errors, f"{query.source.relative_to(im.REPO_ROOT)}:\n" + "\n".join(
        located(query.text, error) for error in errors
    )


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_the_language_service_refuses_what_the_workspace_would_refuse(analysis: dict, probe: str):
    assert analysis[probe].errors, f"{probe} should have been refused: {PROBES[probe]}"


def test_queries_that_call_the_parser_are_analysed_through_its_declaration(analysis: dict):
    hunting = [query for query in SHIPPED if query.id.startswith("hunting:")]
    callers = [query for query in hunting if "vimAuditEventPulumiCloud(" in query.text]
    assert callers
    for query in callers:
        assert ("ActorUsername", "string") in analysis[query.id].columns


# ----------------------------------------------------------------------------------------------
# The ASIM parser's result columns
# ----------------------------------------------------------------------------------------------


def parser_columns(analysis: dict) -> dict[str, str]:
    return dict(analysis[f"parser:{cm.parser().function_alias}"].columns)


def test_the_parser_returns_every_mandatory_asim_field_with_its_type(analysis: dict):
    columns = parser_columns(analysis)
    mandatory = {name: field["type"] for name, field in ASIM_FIELDS.items() if field["class"] == "Mandatory"}
    assert len(mandatory) == 15
    missing = sorted(set(mandatory) - set(columns))
    assert not missing, f"mandatory ASIM fields missing: {missing}"
    wrong = {name: (columns[name], kind) for name, kind in mandatory.items() if columns[name] != kind}
    assert not wrong, f"(returned, expected) types: {wrong}"


def test_every_column_the_parser_returns_is_an_asim_field_of_the_schema_type(analysis: dict):
    columns = parser_columns(analysis)
    unknown = sorted(set(columns) - set(ASIM_FIELDS))
    assert not unknown, f"not ASIM Audit Event fields: {unknown}"
    wrong = {
        name: (kind, ASIM_FIELDS[name]["type"]) for name, kind in columns.items() if kind != ASIM_FIELDS[name]["type"]
    }
    assert not wrong, f"(returned, schema) types: {wrong}"


def test_the_parser_fills_the_recommended_fields_the_data_supports(analysis: dict):
    columns = parser_columns(analysis)
    # Actor, source IP, operation, object and object type, target app, result.
    for name in ("ActorUsername", "SrcIpAddr", "Operation", "Object", "ObjectType", "TargetAppName",
                 "EventResult", "EventResultDetails", "EventSeverity", "EventUid", "NewValue"):
        assert name in columns, name


def test_the_parser_returns_each_conditional_field_with_the_field_it_depends_on(analysis: dict):
    columns = parser_columns(analysis)
    for name, field in ASIM_FIELDS.items():
        if field["class"] == "Conditional" and field.get("conditionalOn") in columns:
            assert name in columns, f"{field['conditionalOn']} is returned without {name}"


def test_the_parser_returns_each_alias_with_a_field_it_stands_for(analysis: dict):
    columns = parser_columns(analysis)
    for name, field in ASIM_FIELDS.items():
        if field["class"] == "Alias" and name in columns:
            assert set(field["aliasOf"].split("|")) & set(columns), f"alias {name} without {field['aliasOf']}"


def test_the_asim_field_list_names_its_sources():
    assert set(ASIM_SCHEMA["sources"]) == {"learn", "tester"}
    assert all(re.search(r"@ [0-9a-f]{40}", source) for source in ASIM_SCHEMA["sources"].values())


# ----------------------------------------------------------------------------------------------
# What the language service does not check
# ----------------------------------------------------------------------------------------------

_LITERAL = r'"[^"\n]*"|\'[^\'\n]*\'|\btrue\b|\bfalse\b|-?\b\d+(?:\.\d+)?\b(?![a-z])'
_COMPARISON = r"==|!=|=~|!~|<=|>=|<|>"
_COLUMN_FIRST = re.compile(rf"\b([A-Za-z][A-Za-z0-9]*_([bdt]))\s*({_COMPARISON})\s*({_LITERAL})")
_LITERAL_FIRST = re.compile(rf"({_LITERAL})\s*({_COMPARISON})\s*\b([A-Za-z][A-Za-z0-9]*_([bdt]))\b")


def literal_comparisons(text: str) -> list[tuple[str, str, str]]:
    """(column, suffix, literal) of every comparison of a _b, _d or _t column with a literal."""
    code = im.kql_without_comments(text)
    found = [(column, suffix, literal) for column, suffix, _, literal in _COLUMN_FIRST.findall(code)]
    found += [(column, suffix, literal) for literal, _, column, suffix in _LITERAL_FIRST.findall(code)]
    return found


def literal_kind_problem(suffix: str, literal: str) -> str | None:
    is_bool = literal in ("true", "false")
    is_number = bool(re.fullmatch(r"-?\d+(?:\.\d+)?", literal))
    if suffix == "b" and not is_bool:
        return "a bool column compared with a non-bool literal"
    if suffix == "d" and not is_number:
        return "a number column compared with a non-number literal"
    if suffix == "t":
        return "a datetime column compared with a literal that is not a datetime"
    return None


@pytest.mark.parametrize("query", SHIPPED, ids=lambda query: query.id)
def test_bool_number_and_datetime_columns_are_compared_with_literals_of_their_type(query: cm.ShippedQuery):
    problems = [
        f"{column} vs {literal}: {problem}"
        for column, suffix, literal in literal_comparisons(query.text)
        if (problem := literal_kind_problem(suffix, literal))
    ]
    assert not problems, problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('T | where AuthFailure_b == "true"', "bool"),
        ("T | where \"false\" != RequireOrgAdmin_b", "bool"),
        ('T | where LagSeconds_d > "1800"', "number"),
        ('T | where EventTime_t > "2026-01-01"', "datetime"),
        ("T | where WatermarkTime_t == 0", "datetime"),
    ],
)
def test_the_literal_check_catches_what_the_service_lets_through(text: str, problem: str):
    [(_, suffix, literal)] = literal_comparisons(text)
    assert problem in literal_kind_problem(suffix, literal)


def enumerated_literals(text: str, column: str) -> set[str]:
    """Every literal a query compares `column` with (==, !=, in, !in)."""
    code = im.kql_without_comments(text)
    values = set(re.findall(rf'\b{column}\s*(?:==|!=|=~|!~)\s*"([^"]*)"', code))
    for group in re.findall(rf"\b{column}\s*!?in~?\s*\(([^)]*)\)", code):
        values |= set(re.findall(r'"([^"]*)"', group))
    return values


@pytest.mark.parametrize("query", SHIPPED, ids=lambda query: query.id)
def test_enumerated_health_columns_are_compared_only_with_values_the_connector_writes(query: cm.ShippedQuery):
    for column in HEALTH_TABLE.columns:
        if column.values:
            unknown = enumerated_literals(query.text, column.name) - set(column.values)
            assert not unknown, f"{column.name} is never {sorted(unknown)}; the connector writes {column.values}"


def test_the_health_rules_and_workbook_compare_the_status_with_known_values():
    compared = set().union(*(enumerated_literals(query.text, "Status_s") for query in SHIPPED))
    assert compared and compared <= set(HEALTH_TABLE.column("Status_s").values)
