"""What a Sentinel user gets from infra/: the Data connectors page entry, the workbook, the ASIM
parser and the hunting queries, checked against the tables in shared/schema.py and against the
published ARM types. (The queries themselves go through the Kusto language service in
tests/test_kusto.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared import asim
from shared.schema import AUDIT_TABLE, HEALTH_TABLE, TABLES
from tests import arm_types
from tests import content_model as cm
from tests import infra_model as im
from tests.kql_engine import top_level_split

ASIM_FIELDS = {
    field["name"]: field
    for field in json.loads((Path(__file__).parent / "data" / "asim-auditevent-fields.json").read_text())["fields"]
}
# ASIM Audit Event's filtering parameters (Learn: normalization-schema-audit, "Filtering parameters"),
# then the two every ASIM filtering parser takes.
ASIM_FILTERING_PARAMETERS = [
    ("starttime", "datetime", "datetime(null)"),
    ("endtime", "datetime", "datetime(null)"),
    ("srcipaddr_has_any_prefix", "dynamic", "dynamic([])"),
    ("eventtype_in", "dynamic", "dynamic([])"),
    ("eventresult", "string", "'*'"),
    ("actorusername_has_any", "dynamic", "dynamic([])"),
    ("operation_has_any", "dynamic", "dynamic([])"),
    ("object_has_any", "dynamic", "dynamic([])"),
    ("newvalue_has_any", "dynamic", "dynamic([])"),
    ("disabled", "bool", "false"),
    ("pack", "bool", "false"),
]
# Microsoft Sentinel's tactic names (the MITRE ATT&CK enterprise tactics it accepts).
SENTINEL_TACTICS = {
    "Reconnaissance", "ResourceDevelopment", "InitialAccess", "Execution", "Persistence", "PrivilegeEscalation",
    "DefenseEvasion", "CredentialAccess", "Discovery", "LateralMovement", "Collection", "Exfiltration",
    "CommandAndControl", "Impact",
}
TECHNIQUE = re.compile(r"^T\d{4}(\.\d{3})?$")
WORKBOOK_TABS = ["Overview", "ESC", "Access", "Connector health"]
# Formats the queries may ask of each parameter type: 4 is a time range, 2 a drop-down.
WORKBOOK_FORMATS = {4: {"start", "end", "grain"}, 2: {None}}


def ui_config() -> dict:
    return cm.connector_definition()["properties"]["connectorUiConfig"]


# ----------------------------------------------------------------------------------------------
# Every piece has its switch, and uses published ARM types
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "switch"),
    [("dataConnector", "deployDataConnector"), ("workbook", "deployWorkbook"), ("asimParser", "deployAsimParser")],
)
def test_each_piece_is_switched_by_its_own_parameter(symbol: str, switch: str):
    tree = cm.sentinel_tree()
    assert im.condition(tree["resources"][symbol]) == switch
    main_call = im.only_module_call(im.parse(im.MAIN), im.SENTINEL_MODULE)[1]
    assert main_call["params"][switch] == switch


def test_hunting_queries_are_switched_and_need_the_parser_only_when_they_call_it():
    condition = im.condition(cm.sentinel_tree()["resources"]["hunting"])
    operands = condition["operator"]["operands"]
    assert condition["operator"]["type"] == "and" and operands["operand_1"] == "deployHuntingQueries"
    either = operands["operand_2"]["operator"]
    assert either["type"] == "or" and either["operands"]["operand_1"] == "deployAsimParser"
    assert im.accessor_path(either["operands"]["operand_2"]["operator"]["operands"]["bool_value"]) == "query.usesParser"


def test_the_content_module_is_deployed_after_the_tables():
    _, call = im.only_module_call(im.parse(im.MAIN), im.SENTINEL_MODULE)
    tables_module, _ = im.only_module_call(im.parse(im.MAIN), im.TABLES_MODULE)
    assert tables_module in call["dependsOn"]
    assert im.accessor_path(call["params"]["location"]) == "workspace.location"


def test_the_arm_type_check_catches_unknown_read_only_and_missing_properties():
    tree = cm.sentinel_tree()
    resource = json.loads(json.dumps(tree["resources"]["dataConnector"]))
    ui = im.body(resource)["properties"]["connectorUiConfig"]
    ui["sampleQueries"] = []  # in the CCP docs, but not in the ARM type
    del ui["permissions"]
    im.body(resource)["properties"]["lastModifiedUtc"] = "2026-01-01"  # writable: no complaint
    im.body(resource)["etag"] = "x"
    resource["api_version"] = "2019-01-01-preview"
    assert arm_types.problems(tree, resource) == [
        "Microsoft.SecurityInsights/dataConnectorDefinitions@2019-01-01-preview is not a published resource type "
        "and API version (tests/data/arm-types.json)"
    ]
    resource["api_version"] = "2024-09-01"
    problems = arm_types.problems(tree, resource)
    assert any("unknown property 'sampleQueries'" in problem for problem in problems)
    assert any("required property 'permissions' is missing" in problem for problem in problems)
    assert len(problems) == 2


# ----------------------------------------------------------------------------------------------
# Data connectors page
# ----------------------------------------------------------------------------------------------


def test_the_connector_definition_is_customizable_and_scoped_to_the_workspace():
    body = im.body(cm.resource("Microsoft.SecurityInsights/dataConnectorDefinitions"))
    assert body["kind"] == "Customizable"
    assert body["scope"] == "workspace"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", body["name"])


def test_the_connector_page_has_a_title_a_description_and_the_publisher():
    config = ui_config()
    assert config["title"].startswith("Pulumi Cloud and Pulumi ESC audit logs")
    assert config["publisher"]
    for table in TABLES:
        assert table.name in config["descriptionMarkdown"]


def test_the_connector_page_graphs_rows_of_both_tables():
    graphs = ui_config()["graphQueries"]
    assert [graph["legend"] for graph in graphs] == [table.name for table in TABLES]
    assert [graph["baseQuery"].strip() for graph in graphs] == [table.name for table in TABLES]


def test_the_connector_page_shows_the_last_data_of_both_tables():
    data_types = ui_config()["dataTypes"]
    assert [data_type["name"] for data_type in data_types] == [table.name for table in TABLES]
    for table, data_type in zip(TABLES, data_types, strict=True):
        query = data_type["lastDataReceivedQuery"]
        assert query.startswith(table.name + "\n")
        assert "max(TimeGenerated)" in query and "isnotempty(Time)" in query


def test_the_connected_status_comes_from_the_health_table():
    [criterion] = ui_config()["connectivityCriteria"]
    assert criterion["type"] == "IsConnectedQuery"
    [query] = criterion["value"]
    assert query.startswith(HEALTH_TABLE.name + "\n")
    assert "IsConnected" in query


def test_connector_queries_carry_no_comment_because_sentinel_wraps_them():
    for path in sorted(cm.CONNECTOR_DIR.glob("*.kql")):
        assert "//" not in path.read_text(), path.name


def test_the_instructions_point_to_the_deploy_guide_and_the_tour():
    text = json.dumps(ui_config()["instructionSteps"])
    assert "Deploy to Azure" in text and "README.md" in text and "docs/SENTINEL.md" in text
    readme = (im.REPO_ROOT / "README.md").read_text()
    assert "\n## Deploy to Azure\n" in readme
    assert (im.REPO_ROOT / "docs" / "SENTINEL.md").is_file()


def test_every_connector_query_file_is_used():
    used = {query.source for query in cm.shipped_queries() if query.id.startswith("connector:")}
    assert used == {path.resolve() for path in cm.CONNECTOR_DIR.glob("*.kql")}


# ----------------------------------------------------------------------------------------------
# Workbook
# ----------------------------------------------------------------------------------------------


def test_the_workbook_is_a_sentinel_workbook_on_the_workspace():
    body = im.body(cm.resource("Microsoft.Insights/workbooks"))
    properties = body["properties"]
    assert properties["category"] == "sentinel"
    assert im.accessor_path(properties["sourceId"]) == "workspace.id"
    serialized = properties["serializedData"]["function"]
    assert serialized == {"type": "string", "parameters": {"value_to_convert": "workbookContent"}}
    assert properties["version"] == cm.workbook()["version"] == "Notebook/1.0"
    assert body["kind"] == "shared" and body["location"] == "location"
    assert body["name"]["function"]["type"] == "guid"


def test_the_workbook_has_a_time_range_and_a_multi_select_org_parameter():
    parameters = {parameter["name"]: parameter for parameter in cm.workbook_parameters()}
    assert set(parameters) == {"TimeRange", "Org"}
    assert parameters["TimeRange"]["type"] == 4
    org = parameters["Org"]
    assert org["type"] == 2 and org["multiSelect"] is True
    assert org["quote"] == "'" and org["delimiter"] == ","
    assert org["typeSettings"]["selectAllValue"] == "*"


def test_the_workbook_has_the_four_tabs_each_showing_its_own_group():
    [tabs] = [item for item in cm.workbook_items() if item["type"] == 11]
    links = tabs["content"]["links"]
    assert tabs["content"]["style"] == "tabs"
    assert [link["linkLabel"] for link in links] == WORKBOOK_TABS
    groups = {
        item["conditionalVisibility"]["value"]: item
        for item in cm.workbook_items()
        if item["type"] == 12
    }
    assert [link["subTarget"] for link in links] == list(groups)
    for link in links:
        group = groups[link["subTarget"]]
        assert group["conditionalVisibility"]["parameterName"] == link["cellValue"]
        assert any(item["type"] == 3 for item in group["content"]["items"]), link["linkLabel"]


def test_every_workbook_query_uses_only_parameters_the_workbook_defines():
    defined = cm.workbook_defined_names()
    types = {parameter["name"]: parameter["type"] for parameter in cm.workbook_parameters()}
    for name, query in cm.workbook_queries():
        for parameter, style in cm.WORKBOOK_TOKEN.findall(query):
            assert parameter in defined, f"{name} uses {{{parameter}}}, which the workbook does not define"
            assert (style or None) in WORKBOOK_FORMATS[types[parameter]], f"{name}: {{{parameter}:{style}}}"
    for item in cm.workbook_items():
        if "conditionalVisibility" in item:
            assert item["conditionalVisibility"]["parameterName"] in defined, item["name"]


def test_every_workbook_tab_query_filters_on_the_time_range_and_the_orgs():
    for name, query in cm.workbook_queries():
        if name.startswith("parameter-"):
            continue
        assert "{TimeRange:start} .. {TimeRange:end}" in query, name
        assert 'where "*" in ({Org}) or OrgName_s in ({Org})' in query, name


def test_workbook_queries_on_events_use_the_original_event_time():
    for name, query in cm.workbook_queries():
        if AUDIT_TABLE.name in query and HEALTH_TABLE.name not in query:
            # TimeGenerated is never earlier than EventTime_t, so it bounds the scan without hiding backfills.
            assert "| where TimeGenerated >= {TimeRange:start}\n" in query, name
            assert "EventTime_t between ({TimeRange:start} .. {TimeRange:end})" in query, name


def test_workbook_queries_set_their_own_time_filter_rather_than_a_time_context():
    for item in cm.workbook_items():
        content = item["content"]
        if item["type"] == 3:
            assert content["timeContext"] == {"durationMs": 0} and "timeContextFromParameter" not in content
    for parameter in cm.workbook_parameters():
        if "query" in parameter:
            assert parameter["timeContext"] == {"durationMs": 0}


def test_every_workbook_query_file_is_used_once():
    used = [query.source for query in cm.shipped_queries() if query.id.startswith("workbook:")]
    assert sorted(used) == sorted(path.resolve() for path in cm.WORKBOOK_DIR.glob("*.kql"))


def test_workbook_items_have_unique_names():
    names = [item["name"] for item in cm.workbook_items()]
    assert len(names) == len(set(names))


# ----------------------------------------------------------------------------------------------
# ASIM parser
# ----------------------------------------------------------------------------------------------


def parser_parameters() -> list[tuple[str, str, str]]:
    parameters = []
    for declaration in cm.parser().parameters.split(", "):
        match = re.fullmatch(r"(\w+):(\w+)=(.+)", declaration.strip())
        assert match, declaration
        parameters.append(match.groups())
    return parameters


def test_the_parser_is_a_saved_search_with_its_function_alias():
    parser = cm.parser()
    assert parser.name == parser.function_alias == "vimAuditEventPulumiCloud"
    assert parser.source == cm.PARSER_DIR / "vimAuditEventPulumiCloud.kql"
    properties = im.body(parser.resource)["properties"]
    assert properties["version"] == 2 and properties["category"] == "ASIM"


def test_the_parser_takes_asim_audit_event_filtering_parameters():
    assert parser_parameters() == ASIM_FILTERING_PARAMETERS


def test_the_parameterless_parser_is_what_asims_unifying_parser_calls():
    # ASimAuditEvent calls each source's parser with (disabled, pack) only, a bool first.
    [unfiltered] = [parser for parser in cm.parsers() if parser.function_alias != cm.parser().function_alias]
    assert unfiltered.name == unfiltered.function_alias == "ASimAuditEventPulumiCloud"
    assert unfiltered.parameters == "disabled:bool=false, pack:bool=false"
    assert im.kql_code(unfiltered.body).strip() == "vimAuditEventPulumiCloud(disabled = disabled, pack = pack)"
    body = im.body(unfiltered.resource)
    assert body["properties"]["category"] == "ASIM" and body["etag"] == "*"
    assert "asimParser" in body["dependsOn"]
    assert im.condition(cm.sentinel_tree()["resources"]["asimParserUnfiltered"]) == "deployAsimParser"


def test_the_parser_states_the_schema_version_whose_values_it_uses():
    # Learn's Audit Event schema 0.1.2 lists EventType Start/Stop and ObjectType Service,
    # Scheduled Task and Directory Service Object, which the parser emits.
    assignments = parser_assignments()
    assert assignments["EventSchemaVersion"] == '"0.1.2"'
    assert {"Start", "Stop"} <= possible_values(assignments["EventType"])
    assert {"Service", "Scheduled Task", "Directory Service Object"} <= possible_values(assignments["ObjectType"])


def test_the_reporting_device_is_the_product_and_the_target_alias_is_the_app():
    assignments = parser_assignments()
    assert assignments["Dvc"] == "EventProduct"
    assert assignments["Dst"] == assignments["Application"] == "TargetAppName"


def test_the_parser_drops_the_raw_columns_with_project_away_as_asims_guide_recommends():
    code = im.kql_code(cm.parser().body)
    assert "| project-away" in code and not re.search(r"\|\s*project\s", code)
    dropped = set(top_level_split(code.split("| project-away", 1)[1]))
    assert set(AUDIT_TABLE.column_names) - {"TimeGenerated"} <= dropped


def test_the_parser_uses_every_parameter_it_takes():
    code = im.kql_code(cm.parser().body)
    for name, _, _ in ASIM_FILTERING_PARAMETERS:
        assert re.search(rf"\b{name}\b", code), f"the parser ignores {name}"


def test_the_parser_applies_every_filter_before_it_maps_the_first_field():
    code = im.kql_code(cm.parser().body)
    first_mapping = code.index("| extend")
    for name in ("disabled", "starttime", "endtime", "srcipaddr_has_any_prefix", "operation_has_any",
                 "actorusername_has_any", "object_has_any", "newvalue_has_any"):
        assert code.index(name) < first_mapping, f"{name} is applied only after the mapping"


def parser_assignments() -> dict[str, str]:
    """Field -> expression, for every assignment of an `| extend` or `| project` step."""
    text = re.sub(r"//[^\n]*", "", cm.parser().body)
    steps = re.findall(r"\|\s*(?:extend|project)\s+(.*?)(?=\n\s*\||\Z)", text, re.S)
    assignments = {}
    for arguments in steps:
        for argument in top_level_split(arguments):
            name, _, expression = argument.partition("=")
            if expression:
                assignments[name.strip()] = expression.strip()
    return assignments


def mapping_table_values() -> dict[str, set[str]]:
    """Column -> values of the catalog mapping table the parser carries (shared/asim.py)."""
    rows = [item.cells() for item in asim.catalog_mappings()]
    return {column: {row[index] for row in rows} for index, column in enumerate(asim.TABLE_COLUMNS)}


def possible_values(expression: str) -> set[str] | None:
    """The string values `expression` can take, when it is a literal, a column of the catalog
    mapping table, or a case()/iff() of them."""
    if re.fullmatch(r'"[^"]*"', expression):
        return {expression[1:-1]}
    if expression in mapping_table_values():
        return mapping_table_values()[expression]
    call = re.fullmatch(r"(case|iff)\((.*)\)", expression, re.S)
    if not call:
        return None
    arguments = top_level_split(call.group(2))
    results = [*arguments[1::2], arguments[-1]] if call.group(1) == "case" else arguments[1:]
    values: set[str] = set()
    for result in results:
        found = possible_values(result)
        if found is None:
            return None
        values |= found
    return values


ENUMERATED_FIELDS = sorted(
    name for name, field in ASIM_FIELDS.items() if field.get("closedEnum") and field["class"] != "Alias"
)


def test_the_parser_sets_every_enumerated_field_it_outputs_from_literal_values():
    assignments = parser_assignments()
    set_fields = [field for field in ENUMERATED_FIELDS if field in assignments]
    assert {"EventType", "EventResult", "EventSchema", "ObjectType", "ActorUsernameType"} <= set(set_fields)
    for field in set_fields:
        assert possible_values(assignments[field]) is not None, f"{field} = {assignments[field]}"


@pytest.mark.parametrize("field", ENUMERATED_FIELDS)
def test_the_parser_sets_enumerated_fields_only_to_values_the_schema_allows(field: str):
    expression = parser_assignments().get(field)
    values = possible_values(expression) if expression else set()
    allowed = set(ASIM_FIELDS[field]["allowedValues"])
    if ASIM_FIELDS[field]["class"] != "Mandatory":
        allowed.add("")  # an optional field the event does not support stays empty
    assert values <= allowed, f"{field} may be set to {sorted(values - allowed)}"


# ----------------------------------------------------------------------------------------------
# Hunting queries
# ----------------------------------------------------------------------------------------------


def test_there_are_at_least_eight_hunting_queries_each_from_its_own_file():
    queries = cm.hunting_queries()
    assert len(queries) >= 8
    keys = [query["key"] for query in queries]
    assert len(keys) == len(set(keys))
    for query in queries:
        assert query["source"] == (cm.HUNTING_DIR / f"{query['key']}.kql").resolve()
    assert {query["source"] for query in queries} == {path.resolve() for path in cm.HUNTING_DIR.glob("*.kql")}


@pytest.mark.parametrize("query", cm.hunting_queries(), ids=lambda query: query["key"])
def test_hunting_query_names_its_tactics_and_techniques(query: dict):
    assert query["displayName"].startswith(("Pulumi Cloud - ", "Pulumi ESC - "))
    assert query["description"].endswith(".")
    assert query["tactics"] and set(query["tactics"]) <= SENTINEL_TACTICS
    assert query["techniques"] and all(TECHNIQUE.match(technique) for technique in query["techniques"])


@pytest.mark.parametrize("query", cm.hunting_queries(), ids=lambda query: query["key"])
def test_hunting_query_says_whether_it_calls_the_parser(query: dict):
    calls_parser = cm.parser().function_alias in im.kql_code(query["query"])
    assert query["usesParser"] is calls_parser


def test_hunting_queries_are_saved_searches_in_the_hunting_category_with_mitre_tags():
    body = im.body(cm.sentinel_tree()["resources"]["hunting"])
    properties = body["properties"]
    assert properties["category"] == "Hunting Queries"
    assert [tag["name"] for tag in properties["tags"]] == ["description", "tactics", "techniques"]
    for tag in properties["tags"][1:]:
        assert tag["value"]["function"]["type"] == "join" and tag["value"]["function"]["parameters"]["delimiter"] == ","
    assert "asimParser" in body["dependsOn"]
