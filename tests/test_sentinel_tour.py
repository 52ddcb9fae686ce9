"""docs/SENTINEL.md and the README's "In Sentinel" section describe exactly what infra/ deploys."""

from __future__ import annotations

import re

import pytest

from shared.schema import HEALTH_TABLE, TABLES
from tests import content_model as cm
from tests import infra_model as im

TOUR = (im.REPO_ROOT / "docs" / "SENTINEL.md").read_text(encoding="utf-8")
README = (im.REPO_ROOT / "README.md").read_text(encoding="utf-8")
HEALTH_RULES = [rule for rule in im.analytic_rules() if rule["deploy"] == "deployHealthRules"]


def section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|--")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_the_readme_says_where_each_piece_appears_in_sentinel():
    text = section(README, "## In Sentinel")
    workbook = im.evaluate(cm.sentinel_tree(), im.body(cm.resource("Microsoft.Insights/workbooks")), im.SENTINEL_MODULE)
    for needle in (
        "Data connectors",
        cm.connector_definition()["properties"]["connectorUiConfig"]["title"],
        "Workbooks",
        workbook["properties"]["displayName"],
        "Analytics",
        "Hunting",
        cm.parser().function_alias,
        "docs/SENTINEL.md",
        *(table.name for table in TABLES),
    ):
        assert needle in text, needle
    assert f"{len(cm.hunting_queries())} hunting queries" in text
    assert f"{len(HEALTH_RULES)} health rules" in text


def test_the_tour_documents_the_health_table_column_by_column():
    rows = table_rows(section(TOUR, f"## The health table: `{HEALTH_TABLE.name}`"))
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (column.name, column.type, column.description) for column in HEALTH_TABLE.columns
    ]


@pytest.mark.parametrize("rule", HEALTH_RULES, ids=lambda rule: rule["key"])
def test_the_tour_gives_each_health_rule_its_threshold(rule: dict):
    rows = {row[0]: row for row in table_rows(section(TOUR, "## Health rules"))}
    assert rule["displayName"] in rows, f"{rule['displayName']} is not in the health rules table"
    threshold_cell = rows[rule["displayName"]][2]
    if threshold_cell.startswith("let "):
        assert threshold_cell in rule["query_file"].read_text(), f"{threshold_cell} is not the query's threshold"
    frequency, period = rows[rule["displayName"]][3].split(" / ")
    assert (f"PT{frequency.upper()}" if frequency[-1] in "mh" else f"P{frequency.upper()}") == rule["queryFrequency"]
    assert (f"PT{period.upper()}" if period[-1] in "mh" else f"P{period.upper()}") == rule["queryPeriod"]


def test_the_tour_answers_one_question_per_workbook_tab():
    [tabs] = [item for item in cm.workbook_items() if item["type"] == 11]
    headings = re.findall(r"^### (.+)$", section(TOUR, "## The workbook"), re.M)
    assert headings == [link["linkLabel"] for link in tabs["content"]["links"]]


def test_the_tour_lists_every_hunting_query():
    rows = table_rows(section(TOUR, "## Hunting queries"))
    assert [row[0] for row in rows] == [query["displayName"] for query in cm.hunting_queries()]


def test_the_tour_adds_the_parser_to_the_unifying_parsers_with_every_parameter():
    text = section(TOUR, f"## The ASIM parser: `{cm.parser().function_alias}`")
    assert "_Im_AuditEvent" in text and "imAuditEvent" in text and "Im_AuditEventCustom" in text
    assert cm.parser().parameters in text
    names = [declaration.split(":")[0] for declaration in cm.parser().parameters.split(", ")]
    [call] = re.findall(rf"{cm.parser().function_alias}\((starttime=.*?)\)\n", text)
    assert call == ", ".join(f"{name}={name}" for name in names)
