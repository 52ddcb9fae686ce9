"""The Sentinel content that infra/ deploys, read from the Bicep, and every query it ships.

`shipped_queries()` is the one list the query checks run over: the analytic and health rules,
the data connector definition's queries, the workbook's items and parameters, the ASIM parser,
the PulumiAuditRawEvent function and the hunting queries. Each query's text is what gets
deployed, with the values that only exist at deployment or in the workbook (the org list, the
workbook parameters) filled in with sample values, so that it can be analysed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tests import infra_model as im

SAMPLE_ORGS = ("acme", "acme-labs")
# What Azure Workbooks puts in place of each parameter token the queries use.
WORKBOOK_SAMPLE_VALUES = {
    "TimeRange:start": "datetime(2026-01-01T00:00:00Z)",
    "TimeRange:end": "datetime(2026-01-02T00:00:00Z)",
    "TimeRange:grain": "1h",
    "Org": ", ".join(f"'{org}'" for org in SAMPLE_ORGS),
}
# `{Name}` or `{Name:format}`, the workbook's parameter syntax.
WORKBOOK_TOKEN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\}")

PARSER_DIR = im.INFRA / "parser"
FUNCTIONS_DIR = im.INFRA / "functions"
HUNTING_DIR = im.INFRA / "hunting"
WORKBOOK_DIR = im.INFRA / "workbook"
CONNECTOR_DIR = im.INFRA / "connector"


@dataclass(frozen=True)
class ShippedQuery:
    id: str  # kind:name, e.g. "rule:stack-deleted", "workbook:events-by-org"
    source: Path  # the .kql file under infra/
    text: str  # as deployed, deployment and workbook values filled in


@dataclass(frozen=True)
class Parser:
    name: str
    function_alias: str
    parameters: str
    body: str
    source: Path
    resource: dict[str, Any]


def sentinel_tree() -> dict[str, Any]:
    return im.parse(im.SENTINEL_MODULE)


def resource(resource_type: str) -> dict[str, Any]:
    _, found = im.only_resource(sentinel_tree(), resource_type)
    return found


@cache
def connector_definition() -> dict[str, Any]:
    """The data connector definition's body, with its query files loaded."""
    body = im.body(resource("Microsoft.SecurityInsights/dataConnectorDefinitions"))
    return im.evaluate(sentinel_tree(), body, im.SENTINEL_MODULE)


@cache
def workbook() -> dict[str, Any]:
    """The workbook's content (what serializedData serializes), with its query files loaded."""
    return im.evaluate(sentinel_tree(), "workbookContent", im.SENTINEL_MODULE)


def saved_functions() -> list[Parser]:
    """The saved searches that declare a workspace function: the ASIM parser and PulumiAuditRawEvent."""
    tree = sentinel_tree()
    searches = im.resources_of_type(tree, "Microsoft.OperationalInsights/workspaces/savedSearches")
    functions = []
    for search in searches.values():
        properties = im.body(search)["properties"]
        if "functionAlias" not in properties:
            continue
        source = im.loaded_file(properties["query"], im.SENTINEL_MODULE)
        functions.append(
            Parser(
                name=im.resolve(tree, im.body(search)["name"]),
                function_alias=im.resolve(tree, properties["functionAlias"]),
                parameters=im.bicep_text(properties.get("functionParameters", "")),
                body=source.read_text(encoding="utf-8"),
                source=source,
                resource=search,
            )
        )
    return functions


def parsers() -> list[Parser]:
    """The ASIM parsers under infra/parser, the filtering one (vim...) first."""
    found = [function for function in saved_functions() if function.source.parent == PARSER_DIR]
    return sorted(found, key=lambda parser: not parser.function_alias.startswith("vim"))


def parser() -> Parser:
    """The ASIM filtering parser, vimAuditEventPulumiCloud: the one that maps the table."""
    [found] = [parser for parser in parsers() if parser.function_alias.startswith("vim")]
    return found


def raw_event_function() -> Parser:
    """PulumiAuditRawEvent: the saved function under infra/functions."""
    [found] = [function for function in saved_functions() if function.source.parent == FUNCTIONS_DIR]
    return found


def hunting_queries() -> list[dict[str, Any]]:
    """The hunting query catalogue, plus each query's file as `source`."""
    tree = sentinel_tree()
    out = []
    for query in im.resolve(tree, "huntingQueries"):
        source = im.loaded_file(query["query"], im.SENTINEL_MODULE)
        assert source is not None, f"hunting query {query['key']} must load its query from a .kql file"
        out.append({**im.evaluate(tree, query, im.SENTINEL_MODULE), "source": source})
    return out


def workbook_items(items: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """Every item of the workbook, groups' items included, depth first."""
    for item in workbook()["items"] if items is None else items:
        yield item
        if item["type"] == 12:
            yield from workbook_items(item["content"]["items"])


def workbook_parameters() -> list[dict[str, Any]]:
    return [parameter for item in workbook_items() if item["type"] == 9 for parameter in item["content"]["parameters"]]


def workbook_defined_names() -> set[str]:
    """Parameters the workbook defines: its parameter items and its tab links' cell values."""
    names = {parameter["name"] for parameter in workbook_parameters()}
    for item in workbook_items():
        if item["type"] == 11:
            names |= {link["cellValue"] for link in item["content"]["links"] if link["linkTarget"] == "parameter"}
    return names


def workbook_queries() -> list[tuple[str, str]]:
    """(name, query) of every query the workbook runs: its query items and its parameters' queries."""
    queries = [(item["name"], item["content"]["query"]) for item in workbook_items() if item["type"] == 3]
    queries += [(f"parameter-{p['name']}", p["query"]) for p in workbook_parameters() if "query" in p]
    return queries


def fill_workbook_tokens(query: str) -> str:
    def value(match: re.Match) -> str:
        key = match.group(1) + (f":{match.group(2)}" if match.group(2) else "")
        return WORKBOOK_SAMPLE_VALUES.get(key, match.group(0))

    return WORKBOOK_TOKEN.sub(value, query)


def _source_of(text: str, directory: Path) -> Path:
    matches = [path for path in directory.glob("*.kql") if path.read_text(encoding="utf-8") == text]
    assert len(matches) == 1, f"expected one file in {directory} with this query, found {matches}"
    return matches[0]


def rule_text(rule: dict[str, Any]) -> str:
    """A rule's query as deployed; the org list is the sample one."""
    text = rule["query_file"].read_text(encoding="utf-8")
    if rule["substitution"]:
        placeholder, replacement = rule["substitution"]
        text = text.replace(placeholder, replacement.replace("${string(pulumiOrgs)}", json.dumps(list(SAMPLE_ORGS))))
    return text


def shipped_queries() -> list[ShippedQuery]:
    queries = [ShippedQuery(f"rule:{rule['key']}", rule["query_file"], rule_text(rule)) for rule in im.analytic_rules()]
    config = connector_definition()["properties"]["connectorUiConfig"]
    connector_texts = (
        [(f"graph:{graph['legend']}", graph["baseQuery"]) for graph in config["graphQueries"]]
        + [(f"last-data:{data_type['name']}", data_type["lastDataReceivedQuery"]) for data_type in config["dataTypes"]]
        + [
            (f"connected:{index}", text)
            for index, criterion in enumerate(config["connectivityCriteria"])
            for text in criterion["value"]
        ]
    )
    queries += [
        ShippedQuery(f"connector:{name}", _source_of(text, CONNECTOR_DIR), text) for name, text in connector_texts
    ]
    queries += [
        ShippedQuery(f"workbook:{name}", _source_of(text, WORKBOOK_DIR), fill_workbook_tokens(text))
        for name, text in workbook_queries()
    ]
    queries += [ShippedQuery(f"hunting:{query['key']}", query["source"], query["query"]) for query in hunting_queries()]
    queries += [
        ShippedQuery(
            f"{kind}:{found.function_alias}",
            found.source,
            # The function's body, analysed as the function it is deployed as.
            f"let {found.function_alias} = ({found.parameters}) {{\n{found.body}\n}};\n{found.function_alias}()",
        )
        for kind, found in [*(("parser", found) for found in parsers()), ("function", raw_event_function())]
    ]
    return queries
