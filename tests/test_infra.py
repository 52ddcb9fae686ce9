"""Checks of the Bicep in infra/ and the analytic-rule queries in infra/rules/.

No Bicep CLI runs here, so the Bicep is read with pycep-parser (see tests/infra_model.py) and
checked against the code's own definitions: shared/schema.py for the table and the DCR stream,
shared/settings.py for the app settings. checkov runs from its own venv (.venv-iac).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from shared.schema import AUDIT_TABLE, HEALTH_TABLE, TABLES, Table
from shared.settings import SETTING_SPECS
from shared.token_source import DEFAULT_SECRET_NAME, ORG_SECRET_PREFIX, org_secret_name
from tests import infra_model as im

SPEC_DEFAULTS = {spec.name: spec.default for spec in SETTING_SPECS}

MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"

# Health rules: about the connector itself, switched by deployHealthRules.
HEALTH_RULES = {
    "connector-silent",
    "health-org-failing",
    "health-lag-high",
    "health-dead-letters",
    "health-connector-down",
}
OFFICIAL_RULES = {
    # key: (query lines that must appear verbatim, frequency, period, severity, tactics, techniques)
    "excessive-auth-failures": (
        [
            "PulumiAuditLogs_CL",
            "| where AuthFailure_b == true",
            "| summarize FailCount = count() by SourceIP_s, bin(TimeGenerated, 15m)",
            "| where FailCount > 5",
            "| extend IPCustomEntity = SourceIP_s",
        ],
        "PT15M",
        "PT15M",
        "Medium",
        ["CredentialAccess", "InitialAccess"],
        ["T1110"],
    ),
    "stack-deleted": (
        [
            "PulumiAuditLogs_CL",
            '| where Event_s == "stack-deleted"',
            "| extend AccountCustomEntity = UserLogin_s",
            "| extend IPCustomEntity = SourceIP_s",
        ],
        "PT5M",
        "PT5M",
        "Medium",
        ["Impact"],
        ["T1485"],
    ),
    "org-membership-change": (
        [
            "PulumiAuditLogs_CL",
            '| where Event_s in ("member-added", "member-removed", "member-role-changed")',
            "| extend AccountCustomEntity = UserLogin_s",
            "| extend IPCustomEntity = SourceIP_s",
        ],
        "PT5M",
        "PT5M",
        "Low",
        ["Persistence"],
        ["T1098"],
    ),
}

# App settings the Functions host itself reads (not the connector code).
HOST_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
LOCAL_ONLY_SETTINGS = {"CHECKPOINT_CONNECTION_STRING", "PULUMI_ACCESS_TOKEN"}
FLEX_FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "AzureWebJobsStorage",
}


def normalise_type(column_type: str) -> str:
    return column_type.lower()


def normalised(columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, normalise_type(column_type)) for name, column_type in columns]


def schema_columns(table: Table) -> list[tuple[str, str]]:
    return [(column.name, column.type) for column in table.columns]


def main_tree() -> dict:
    return im.parse(im.MAIN)


def workspace_tree() -> dict:
    return im.parse(im.WORKSPACE_MODULE)


def interpolate(tree: dict, text: str) -> str:
    """Substitute `${var}` with the value of a plain-string variable."""

    def value(match: re.Match) -> str:
        resolved = im.resolve(tree, match.group(1))
        return resolved if isinstance(resolved, str) and resolved != match.group(1) else match.group(0)

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, text)


def rules_by_key() -> dict[str, dict]:
    return {rule["key"]: rule for rule in im.analytic_rules()}


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", im.bicep_files(), ids=lambda p: str(p.relative_to(im.INFRA)))
def test_every_bicep_file_parses_with_pycep(path: Path):
    tree = im.parse(path)
    assert tree["resources"] or tree.get("modules"), f"{path} declares nothing"


def test_main_uses_only_modules_from_this_repository():
    modules = main_tree()["modules"]
    assert modules, "main.bicep is expected to use the local modules"
    for symbol, module in modules.items():
        assert module["type"] == "local", f"module {symbol} must be a local file, not a registry module"
        assert (im.INFRA / module["detail"]["path"]).is_file(), f"module {symbol} points at a missing file"
    assert "br/public:" not in "".join(path.read_text() for path in im.bicep_files())


# ----------------------------------------------------------------------------------------------
# Table and DCR match shared/schema.py
# ----------------------------------------------------------------------------------------------


def tables_tree() -> dict:
    return im.parse(im.TABLES_MODULE)


def table_resources() -> dict[str, dict]:
    """The tables module's tables by name."""
    tables = im.resources_of_type(tables_tree(), "Microsoft.OperationalInsights/workspaces/tables")
    return {im.body(table)["name"]: im.body(table) for table in tables.values()}


def table_columns(table: Table) -> list[tuple[str, str]]:
    return im.columns(tables_tree(), table_resources()[table.name]["properties"]["schema"]["columns"])


def dcr_tree() -> dict:
    return im.parse(im.DCR_MODULE)


def dcr_resource() -> dict:
    _, dcr = im.only_resource(dcr_tree(), "Microsoft.Insights/dataCollectionRules")
    return im.body(dcr)


def dcr_module_call() -> tuple[str, dict]:
    return im.only_module_call(main_tree(), im.DCR_MODULE)


def dcr_streams() -> dict[str, dict]:
    declarations = dcr_resource()["properties"]["streamDeclarations"]
    return {im.unquote(name): declaration for name, declaration in declarations.items()}


def test_the_workspace_gets_exactly_the_schema_tables():
    assert set(table_resources()) == {table.name for table in TABLES}


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.name)
def test_table_columns_equal_schema_columns_in_order(table: Table):
    assert normalised(table_columns(table)) == schema_columns(table)


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.name)
def test_table_uses_bicep_datetime_spelling(table: Table):
    types = {column_type for _, column_type in table_columns(table)}
    assert "dateTime" in types and "datetime" not in types


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.name)
def test_table_is_the_schema_table_on_the_analytics_plan(table: Table):
    resource = table_resources()[table.name]
    assert resource["properties"]["schema"]["name"] == table.name
    assert resource["properties"]["schema"]["description"] == table.description
    assert resource["properties"]["plan"] == "Analytics"
    assert resource["properties"]["retentionInDays"] == "tableRetentionInDays"


def test_dcr_declares_exactly_the_schema_streams():
    assert list(dcr_streams()) == [table.stream for table in TABLES]


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.stream)
def test_dcr_stream_columns_equal_schema_columns_in_order(table: Table):
    columns = im.columns(dcr_tree(), dcr_streams()[table.stream]["columns"])
    assert normalised(columns) == schema_columns(table)


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.stream)
def test_dcr_stream_columns_equal_table_columns(table: Table):
    dcr_columns = normalised(im.columns(dcr_tree(), dcr_streams()[table.stream]["columns"]))
    assert dcr_columns == normalised(table_columns(table))


def test_dcr_is_direct_and_passes_each_stream_unchanged_into_its_table():
    dcr = dcr_resource()
    assert dcr["kind"] == "Direct"
    (destination,) = dcr["properties"]["destinations"]["logAnalytics"]
    assert destination["workspaceResourceId"] == "workspaceResourceId"
    _, call = dcr_module_call()
    assert im.accessor_path(call["params"]["workspaceResourceId"]) == "workspace.id"
    flows = dcr["properties"]["dataFlows"]
    output_parameters = {AUDIT_TABLE.name: "outputStream", HEALTH_TABLE.name: "healthOutputStream"}
    assert [[im.resolve(dcr_tree(), stream) for stream in flow["streams"]] for flow in flows] == [
        [table.stream] for table in TABLES
    ]
    for table, flow in zip(TABLES, flows, strict=True):
        assert flow["transformKql"] == "source"
        assert flow["destinations"] == [destination["name"]]
        assert flow["outputStream"] == output_parameters[table.name]
        assert interpolate(main_tree(), call["params"][flow["outputStream"]]) == f"Custom-{table.name}"


def test_dcr_is_in_the_workspace_region():
    assert dcr_resource()["location"] == "location"
    _, call = dcr_module_call()
    assert im.accessor_path(call["params"]["location"]) == "workspace.location"


def test_dcr_depends_on_the_tables_module_alone():
    """A rule that fails on a table not yet visible must not stop the DCR (nor the app after it)."""
    tables_module, _ = im.only_module_call(main_tree(), im.TABLES_MODULE)
    _, call = dcr_module_call()
    assert call["dependsOn"] == [tables_module]


def test_the_tables_module_holds_the_tables_and_nothing_else():
    created = {symbol: resource for symbol, resource in tables_tree()["resources"].items() if not resource["existing"]}
    assert {resource["type"] for resource in created.values()} == {"Microsoft.OperationalInsights/workspaces/tables"}
    assert not im.resources_of_type(workspace_tree(), "Microsoft.OperationalInsights/workspaces/tables")


def main_dependencies(symbol: str) -> set[str]:
    """Every resource or module of main.bicep that `symbol` waits for, explicitly or by reference, transitively."""
    tree = main_tree()
    declarations = {**tree["resources"], **tree["modules"]}

    def direct(name: str) -> set[str]:
        found = set()
        for text in im.strings_in(declarations[name]["config"]):
            found |= {text} & set(declarations)
            found |= set(re.findall(r"\$\{(\w+)[.}]", text)) & set(declarations)
        return found - {name}

    seen: set[str] = set()
    pending = direct(symbol)
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending |= direct(name)
    return seen


def test_the_function_app_and_dcr_never_wait_for_the_rules_or_the_sentinel_content():
    tables_module, _ = im.only_module_call(main_tree(), im.TABLES_MODULE)
    rules_module, _ = im.only_module_call(main_tree(), im.WORKSPACE_MODULE)
    content_module, _ = im.only_module_call(main_tree(), im.SENTINEL_MODULE)
    dcr_symbol, _ = dcr_module_call()
    for symbol in ("functionApp", dcr_symbol):
        waits_for = main_dependencies(symbol)
        assert tables_module in waits_for, symbol
        assert not {rules_module, content_module} & waits_for, symbol


def test_the_rules_and_the_sentinel_content_deploy_last():
    tables_module, _ = im.only_module_call(main_tree(), im.TABLES_MODULE)
    rules_module, _ = im.only_module_call(main_tree(), im.WORKSPACE_MODULE)
    content_module, _ = im.only_module_call(main_tree(), im.SENTINEL_MODULE)
    assert {tables_module, "functionApp"} <= main_dependencies(rules_module)
    assert {tables_module, rules_module, "functionApp"} <= main_dependencies(content_module)


def test_dcr_module_outputs_what_the_app_needs():
    outputs = dcr_tree()["outputs"]
    assert im.accessor_path(outputs["logsIngestionEndpoint"]["value"]) == "dcr.properties.endpoints.logsIngestion"
    assert im.accessor_path(outputs["immutableId"]["value"]) == "dcr.properties.immutableId"
    assert im.resolve(dcr_tree(), outputs["streamName"]["value"]) == AUDIT_TABLE.stream
    assert im.resolve(dcr_tree(), outputs["healthStreamName"]["value"]) == HEALTH_TABLE.stream


# ----------------------------------------------------------------------------------------------
# Analytic rules
# ----------------------------------------------------------------------------------------------


def test_every_rule_loads_an_existing_kql_file_and_every_kql_file_is_used():
    rules = im.analytic_rules()
    used = {rule["query_file"] for rule in rules}
    assert all(path.is_file() for path in used), sorted(str(p) for p in used if not p.is_file())
    on_disk = {path.resolve() for path in im.RULES_DIR.glob("*.kql")}
    assert used == on_disk
    assert len(rules) == len(used), "two rules share a query file"


def test_rule_keys_are_unique_and_name_their_query_file():
    rules = im.analytic_rules()
    keys = [rule["key"] for rule in rules]
    assert len(keys) == len(set(keys))
    for rule in rules:
        assert rule["query_file"].stem == rule["key"]


def test_there_are_eight_detections_three_of_them_official_and_five_health_rules():
    rules = rules_by_key()
    assert set(OFFICIAL_RULES) <= set(rules)
    assert {key for key, rule in rules.items() if rule["deploy"] == "deployHealthRules"} == HEALTH_RULES
    assert {key for key, rule in rules.items() if rule["deploy"] == "deployAnalyticRules"} == set(rules) - HEALTH_RULES
    assert len(rules) == 13


@pytest.mark.parametrize("kql", sorted(im.RULES_DIR.glob("*.kql")), ids=lambda p: p.stem)
def test_rule_query_reads_one_schema_table_and_only_its_columns(kql: Path):
    text = kql.read_text()
    [table] = [table for table in TABLES if table.name in im.kql_code(text)]
    unknown = im.kql_suffixed_identifiers(text) - set(table.column_names) - im.kql_aliases(text)
    assert not unknown, f"{kql.name} uses columns that are not in {table.name} (shared/schema.py): {sorted(unknown)}"


@pytest.mark.parametrize("key", sorted(set(rules_by_key()) - HEALTH_RULES))
def test_rule_query_windows_on_original_event_time(key: str):
    code = im.kql_code(rules_by_key()[key]["query_file"].read_text())
    assert re.search(r"\bwhere\s+EventTime_t\s*>\s*ago\(", code), f"{key} must filter on EventTime_t > ago(...)"


@pytest.mark.parametrize("key", sorted(HEALTH_RULES - {"connector-silent"}))
def test_health_table_rules_read_the_health_table_and_group_incidents_by_org(key: str):
    rule = rules_by_key()[key]
    assert HEALTH_TABLE.name in im.kql_code(rule["query_file"].read_text())
    assert rule["customDetails"] == {"PulumiOrg": "OrgName_s"}
    assert rule["alertPerResult"] is True and rule["groupIncidentsByOrg"] is True


@pytest.mark.parametrize(
    ("key", "setting", "stated"),
    [
        ("health-org-failing", r"let failedRunsInARow = (\d+);", "The last {} live runs"),
        ("health-lag-high", r"let maxLagMinutes = (\d+);", "more than {} minutes behind"),
        ("health-connector-down", r"let silentFor = (\d+)m;", "No health row for {} minutes"),
    ],
)
def test_health_rule_description_states_its_threshold(key: str, setting: str, stated: str):
    rule = rules_by_key()[key]
    threshold = re.search(setting, rule["query_file"].read_text())
    assert threshold, f"{key} keeps its threshold in a let statement matching {setting}"
    assert stated.format(threshold.group(1)) in rule["description"]


def test_connector_down_rule_gets_the_deployed_org_list():
    rule = rules_by_key()["health-connector-down"]
    placeholder, replacement = rule["substitution"]
    assert rule["query_file"].read_text().count(placeholder) == 1
    assert placeholder == "let ConfiguredOrgs = dynamic([]);"
    assert replacement == "let ConfiguredOrgs = dynamic(${string(pulumiOrgs)});"
    assert "pulumiOrgs" in workspace_tree()["parameters"]
    workspace_call = main_tree()["modules"]["workspaceContent"]["config"]["params"]
    assert workspace_call["pulumiOrgs"] == "pulumiOrgs"


def test_only_the_connector_down_rule_has_its_query_rewritten():
    assert {key for key, rule in rules_by_key().items() if rule["substitution"]} == {"health-connector-down"}


def test_health_rule_windows_on_ingestion_time():
    code = im.kql_code(rules_by_key()["connector-silent"]["query_file"].read_text())
    assert "ingestion_time()" in code
    assert "OrgName_s" in code
    assert re.search(r"max\(ingestion_time\(\)\)", code)


@pytest.mark.parametrize("key", sorted(OFFICIAL_RULES))
def test_official_rule_quotes_the_official_query_and_keeps_frequency_severity_and_mitre(key: str):
    """Our version of an official rule sees late rows (docs/SENTINEL.md); the official query stays
    in its comments, line after line, so a reader can compare the two."""
    lines, frequency, _official_period, severity, tactics, techniques = OFFICIAL_RULES[key]
    rule = rules_by_key()[key]
    comments = " ".join(
        line.strip().removeprefix("//").strip()
        for line in rule["query_file"].read_text().splitlines()
        if line.strip().startswith("//")
    )
    position = 0
    for line in lines:
        found = comments.find(line, position)
        assert found >= 0, f"{key}: the official query line {line!r} is not quoted (in order) in the comments"
        position = found + len(line)
    assert rule["queryFrequency"] == frequency
    assert rule["severity"] == severity
    assert (rule["tactics"], rule["techniques"]) == (tactics, techniques)


def test_official_rules_keep_their_entity_mappings():
    rules = rules_by_key()

    def mappings(key: str) -> set[tuple[str, str, str]]:
        return {
            (mapping["entityType"], field["identifier"], field["columnName"])
            for mapping in rules[key]["entityMappings"]
            for field in mapping["fieldMappings"]
        }

    assert ("IP", "Address", "SourceIP_s") in mappings("excessive-auth-failures")
    for key in ("stack-deleted", "org-membership-change"):
        assert mappings(key) == {("IP", "Address", "SourceIP_s"), ("Account", "Name", "UserLogin_s")}


@pytest.mark.parametrize("key", sorted(rules_by_key()))
def test_rule_entity_and_detail_columns_exist_in_the_query(key: str):
    rule = rules_by_key()[key]
    text = rule["query_file"].read_text()
    available = set(AUDIT_TABLE.column_names) | set(HEALTH_TABLE.column_names) | im.kql_aliases(text)
    used = [field["columnName"] for mapping in rule["entityMappings"] for field in mapping["fieldMappings"]]
    used += list((rule["customDetails"] or {}).values())
    missing = [column for column in used if column not in available]
    assert not missing, f"{key} maps columns its query does not produce: {missing}"


def test_burst_rule_documents_its_threshold():
    rule = rules_by_key()["esc-environment-open-burst"]
    threshold = re.search(r"let threshold = (\d+);", rule["query_file"].read_text())
    assert threshold, "the burst rule keeps its threshold in `let threshold = N;`"
    assert f"more than {threshold.group(1)} times" in rule["description"]


def test_no_data_rule_description_states_its_silence_threshold():
    rule = rules_by_key()["connector-silent"]
    silent_for = re.search(r"let silentFor = (\d+)m;", rule["query_file"].read_text())
    assert silent_for, "the health rule keeps its threshold in `let silentFor = Nm;`"
    assert f"{silent_for.group(1)} minutes" in rule["description"]


def test_rule_schedules_look_back_at_least_as_far_as_they_run():
    def minutes(duration: str) -> int:
        match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?", duration)
        assert match, duration
        days, hours, mins = (int(group or 0) for group in match.groups())
        return days * 1440 + hours * 60 + mins

    for rule in im.analytic_rules():
        assert minutes(rule["queryPeriod"]) >= minutes(rule["queryFrequency"]), rule["key"]
        assert minutes(rule["queryPeriod"]) <= 14 * 1440, rule["key"]


def test_rules_are_conditional_and_depend_on_onboarding():
    tree = workspace_tree()
    ((_symbol, rules),) = im.resources_of_type(tree, "Microsoft.SecurityInsights/alertRules").items()
    assert im.accessor_path(im.condition(rules)) == "rule.deploy"
    onboarding_symbol, onboarding = im.only_resource(tree, "Microsoft.SecurityInsights/onboardingStates")
    assert im.condition(onboarding) == "onboardSentinel"
    assert onboarding_symbol in im.body(rules)["dependsOn"]
    assert im.body(rules)["kind"] == "Scheduled"


def rule_name_and_display_name() -> tuple[dict, dict]:
    tree = workspace_tree()
    ((_symbol, rules),) = im.resources_of_type(tree, "Microsoft.SecurityInsights/alertRules").items()
    return im.body(rules)["name"], im.body(rules)["properties"]["displayName"]


def per_copy_rule_keys() -> set[str]:
    """The rule keys whose name and display name the rules resource keys by baseName."""
    name, _ = rule_name_and_display_name()
    condition = name["operator"]["operands"]["condition"]["function"]
    assert condition["type"] == "contains" and im.accessor_path(condition["parameters"]["item_to_find"]) == "rule.key"
    return set(im.resolve(workspace_tree(), condition["parameters"]["container"]))


def test_a_second_copy_adds_its_own_connector_down_rule_instead_of_replacing_the_first():
    """Two copies (two baseNames) in one workspace: the rule that carries the copy's org list is keyed by baseName."""
    name, display_name = rule_name_and_display_name()
    keyed, shared = name["operator"]["operands"]["true_value"], name["operator"]["operands"]["false_value"]
    assert "baseName" in im.strings_in(keyed) and "baseName" not in im.strings_in(shared)
    assert display_name["operator"]["operands"]["true_value"] == "${rule.displayName} (${baseName})"
    assert main_tree()["modules"]["workspaceContent"]["config"]["params"]["baseName"] == "baseName"


def test_exactly_the_rules_whose_query_carries_deployment_parameters_are_per_copy():
    rewritten = {key for key, rule in rules_by_key().items() if rule["substitution"]}
    assert per_copy_rule_keys() == rewritten == {"health-connector-down"}


def test_content_switches_default_to_on_and_onboarding_to_off():
    parameters = main_tree()["parameters"]
    for switch in ("deployAnalyticRules", "deployHealthRules", "deployDataConnector", "deployWorkbook",
                   "deployAsimParser", "deployHuntingQueries"):
        assert parameters[switch]["default"] is True, switch
    assert parameters["onboardSentinel"]["default"] is False


# ----------------------------------------------------------------------------------------------
# Redeployment: the same template with the same parameters runs again
# ----------------------------------------------------------------------------------------------


def test_every_saved_search_overwrites_the_one_a_previous_deployment_created():
    """A saved search PUT without etag '*' (or the current etag) is refused with 409 once it exists."""
    saved_searches = {
        (path.name, symbol): im.body(resource)
        for path in im.bicep_files()
        for symbol, resource in im.resources_of_type(
            im.parse(path), "Microsoft.OperationalInsights/workspaces/savedSearches"
        ).items()
        if not resource["existing"]
    }
    assert saved_searches, "the parser and the hunting queries are saved searches"
    for where, body in saved_searches.items():
        assert body.get("etag") == "*", where


def test_the_connector_definition_sets_its_id_to_its_name():
    tree = im.parse(im.SENTINEL_MODULE)
    _, definition = im.only_resource(tree, "Microsoft.SecurityInsights/dataConnectorDefinitions")
    body = im.body(definition)
    assert body["properties"]["connectorUiConfig"]["id"] == body["name"]


# ----------------------------------------------------------------------------------------------
# Identity and role assignments
# ----------------------------------------------------------------------------------------------


def role_assignments() -> set[tuple[str, str]]:
    tree = im.parse(im.ROLES_MODULE)
    pairs = set()
    for symbol, assignment in im.resources_of_type(tree, "Microsoft.Authorization/roleAssignments").items():
        config = im.body(assignment)
        scope = tree["resources"][config["scope"]]
        assert scope["existing"], f"{symbol} must be scoped to a single resource"
        role = config["properties"]["roleDefinitionId"]["function"]
        assert role["type"] == "subscription_resource_id"
        assert role["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        pairs.add((im.resolve(tree, role["parameters"]["resource_name_1"]), scope["type"]))
    return pairs


def test_role_assignments_are_exactly_the_intended_set():
    assert role_assignments() == {
        (MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/dataCollectionRules"),
        (STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts"),
        (STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts"),
        (KEY_VAULT_SECRETS_USER, "Microsoft.KeyVault/vaults"),
        (MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/components"),
    }


def test_no_role_assignment_outside_the_roles_module():
    for path in im.bicep_files():
        if path != im.ROLES_MODULE:
            assert not im.resources_of_type(im.parse(path), "Microsoft.Authorization/roleAssignments"), path


def test_role_assignments_go_to_the_managed_identity_as_service_principal():
    tree = im.parse(im.ROLES_MODULE)
    for assignment in im.resources_of_type(tree, "Microsoft.Authorization/roleAssignments").values():
        properties = im.body(assignment)["properties"]
        assert properties["principalId"] == "principalId"
        assert properties["principalType"] == "ServicePrincipal"
    params = main_tree()["modules"]["roles"]["config"]["params"]
    assert im.accessor_path(params["principalId"]) == "identity.properties.principalId"
    _, identity = im.only_resource(main_tree(), "Microsoft.ManagedIdentity/userAssignedIdentities")
    assert not identity["existing"]


def test_role_scopes_are_the_resources_main_creates():
    params = main_tree()["modules"]["roles"]["config"]["params"]
    assert {name: im.accessor_path(value) for name, value in params.items() if name != "principalId"} == {
        "dcrName": "dcr.outputs.name",
        "storageAccountName": "storage.name",
        "keyVaultName": "keyVault.name",
        "appInsightsName": "appInsights.name",
    }


# ----------------------------------------------------------------------------------------------
# Secrets: nothing key-based, nothing secret in outputs
# ----------------------------------------------------------------------------------------------


def secure_parameters() -> set[str]:
    names = set()
    for path in im.bicep_files():
        for name, parameter in im.parse(path)["parameters"].items():
            if any(decorator["type"] == "secure" for decorator in parameter["decorators"]):
                names.add(name)
    return names


TOKEN_PARAMETERS = {"pulumiAccessToken": ("string", ""), "pulumiOrgTokens": ("object", {})}


@pytest.mark.parametrize("name", TOKEN_PARAMETERS)
def test_token_parameters_are_secure_and_empty_unless_given(name: str):
    parameter = main_tree()["parameters"][name]
    assert {"type": "secure"} in parameter["decorators"]
    assert (parameter["type"], parameter["default"]) == TOKEN_PARAMETERS[name]


def test_the_shared_token_is_written_only_when_given_and_only_as_its_secrets_value():
    tree = main_tree()
    users = [symbol for symbol, resource in tree["resources"].items() if "pulumiAccessToken" in im.strings_in(resource)]
    assert users == ["sharedTokenSecret"]
    secret = tree["resources"]["sharedTokenSecret"]
    written_if = {"function": {"type": "empty", "parameters": {"item_to_test": "pulumiAccessToken"}}}
    assert im.condition(secret) == {"operator": {"type": "not", "operands": {"bool_value": written_if}}}
    assert im.body(secret)["properties"]["value"] == "pulumiAccessToken"
    assert im.body(secret)["properties"]["contentType"] == "text/plain"
    assert im.resolve(tree, im.body(secret)["name"]) == DEFAULT_SECRET_NAME


def test_each_org_token_is_written_only_as_the_value_of_that_orgs_secret():
    tree = main_tree()
    users = [symbol for symbol, resource in tree["resources"].items() if "pulumiOrgTokens" in im.strings_in(resource)]
    assert users == ["orgTokenSecrets"]
    secrets = tree["resources"]["orgTokenSecrets"]
    loop = secrets["config"]["loop_type"]["detail"]
    assert loop["item_name"] == "org" and loop["array_name"]["function"]["type"] == "items"
    assert im.accessor_path(im.body(secrets)["properties"]["value"]) == "org.value"
    assert im.body(secrets)["properties"]["contentType"] == "text/plain"


@pytest.mark.parametrize("org", ["acme", "Acme_Labs.EU", "GLOBEX-2"])
def test_the_org_secret_names_bicep_writes_are_the_names_the_code_reads(org: str):
    tree = main_tree()
    name = im.body(tree["resources"]["orgTokenSecrets"])["name"]
    prefix, expression = re.fullmatch(r"\$\{(\w+)\}\$\{(.*)\}", name).groups()
    assert im.resolve(tree, prefix) == ORG_SECRET_PREFIX
    # replace(replace(toLower(org.key), '_', '-'), '.', '-'): org names hold only letters, digits, '-', '_', '.'
    assert re.fullmatch(r"(replace\()+toLower\(org\.key\)(, '[^']', '-'\))+", expression), expression
    written = org.lower()
    for character in re.findall(r"'([^'])', '-'", expression):
        written = written.replace(character, "-")
    assert ORG_SECRET_PREFIX + written == org_secret_name(org)


def test_no_output_contains_a_secret():
    secure = secure_parameters()
    for path in im.bicep_files():
        for name, output in (im.parse(path).get("outputs") or {}).items():
            text = " ".join(im.strings_in(output["value"]))
            assert not secure & set(im.strings_in(output["value"])), f"output {name} uses a secure parameter"
            assert not any(param in text for param in secure), f"output {name} interpolates a secure parameter"
            assert not re.search(r"listKeys|listSecrets|ConnectionString|AccountKey|\bvalue\b", text, re.I), name
            assert not any(decorator["type"] == "secure" for decorator in output["decorators"]), name


def test_no_key_based_access_anywhere_in_the_bicep():
    for path in im.bicep_files():
        text = path.read_text()
        for needle in ("listKeys", "listAccountSas", "listServiceSas", "AccountKey=", "SharedAccessSignature="):
            assert needle not in text, f"{path.name} uses {needle}"


def test_storage_refuses_shared_keys_public_blobs_and_plain_http():
    _, storage = im.only_resource(main_tree(), "Microsoft.Storage/storageAccounts")
    properties = im.body(storage)["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["supportsHttpsTrafficOnly"] is True
    assert properties["minimumTlsVersion"] == "TLS1_2"


def test_storage_account_name_is_valid_for_azure():
    tree = main_tree()
    name = im.resolve(tree, im.body(tree["resources"]["storage"])["name"])["function"]
    prefix = name["parameters"]["original_value"].replace("${suffix}", "")
    assert im.resolve(tree, "suffix")["function"]["type"] == "unique_string"  # 13 lowercase letters/digits
    assert re.fullmatch(r"[a-z0-9]+", prefix) and 3 <= len(prefix) + 13 <= 24


def test_deployment_container_and_checkpoint_tables_exist_in_the_storage_account():
    tree = main_tree()
    _, container = im.only_resource(tree, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert im.body(container)["properties"]["publicAccess"] == "None"
    tables = im.resources_of_type(tree, "Microsoft.Storage/storageAccounts/tableServices/tables")
    names = {im.resolve(tree, im.body(table)["name"]) for table in tables.values()}
    assert names == {SPEC_DEFAULTS["CHECKPOINT_TABLE_NAME"], SPEC_DEFAULTS["DEAD_LETTER_TABLE_NAME"]}


def test_key_vault_uses_rbac_soft_delete_and_purge_protection():
    _, vault = im.only_resource(main_tree(), "Microsoft.KeyVault/vaults")
    properties = im.body(vault)["properties"]
    assert properties["enableRbacAuthorization"] is True
    assert properties["enableSoftDelete"] is True
    assert properties["enablePurgeProtection"] is True
    assert "accessPolicies" not in properties


# ----------------------------------------------------------------------------------------------
# Function App
# ----------------------------------------------------------------------------------------------


def site() -> dict:
    _, resource = im.only_resource(main_tree(), "Microsoft.Web/sites")
    return im.body(resource)


def test_function_app_runs_python_311_on_flex_consumption():
    _, plan = im.only_resource(main_tree(), "Microsoft.Web/serverfarms")
    assert im.body(plan)["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    config = site()["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert site()["kind"] == "functionapp,linux"
    assert im.accessor_path(site()["properties"]["serverFarmId"]) == "plan.id"


def test_function_app_uses_the_user_assigned_identity_everywhere():
    properties = site()["properties"]
    identity = site()["identity"]
    assert identity["type"] == "UserAssigned"
    assert [im.unquote(key) for key in identity["userAssignedIdentities"]] == ["${identity.id}"]
    assert "keyVaultReferenceIdentity" not in properties  # no Key Vault reference: tokens are read at run time
    authentication = properties["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert authentication["type"] == "UserAssignedIdentity"
    assert im.accessor_path(authentication["userAssignedIdentityResourceId"]) == "identity.id"


def test_function_app_is_https_only():
    properties = site()["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"


def test_function_app_sets_no_ftp_setting_that_flex_consumption_rejects():
    """Flex has no FTP: a site with siteConfig.ftpsState is refused, and so is an ftp publishing policy."""
    assert "ftpsState" not in site()["properties"]["siteConfig"]
    assert not im.resources_of_type(main_tree(), "Microsoft.Web/sites/basicPublishingCredentialsPolicies")


def evaluate_name(tree: dict, value, parameters: dict[str, str]) -> str:
    """A resource name of main.bicep for given parameter values: interpolation, variables and take().
    uniqueString() is 13 characters; stood in by 13 'u's."""
    value = tree["variables"][value]["value"] if isinstance(value, str) and value in tree["variables"] else value
    if isinstance(value, dict):
        call = value["function"]
        if call["type"] == "unique_string":
            return "u" * 13
        assert call["type"] == "take", call
        whole = evaluate_name(tree, call["parameters"]["original_value"], parameters)
        return whole[: call["parameters"]["number_to_take"]]

    def substitute(match: re.Match) -> str:
        return parameters.get(match.group(1)) or evaluate_name(tree, match.group(1), parameters)

    return re.sub(r"\$\{(\w+)\}", substitute, value)


def test_dcr_name_fits_30_characters_for_every_allowed_base_name():
    """A kind Direct DCR gets its own DNS endpoint; its name may have at most 30 characters."""
    tree = main_tree()
    decorators = {d["type"]: d.get("argument") for d in tree["parameters"]["baseName"]["decorators"]}
    _, call = dcr_module_call()
    assert call["params"]["name"] == "dcrName"
    for length in range(decorators["min_length"], decorators["max_length"] + 1):
        base_name = ("pulumi-audit-" * 2)[:length]
        name = evaluate_name(tree, "dcrName", {"baseName": base_name})
        assert len(name) <= 30, (base_name, name)
        assert name.startswith("dcr-") and name.endswith("-" + "u" * 13), name


FLEX_INSTANCE_MEMORY_MB = [512, 2048, 4096]  # Learn, flex-consumption-plan "Instance memory"


def test_instance_memory_is_a_parameter_of_the_sizes_flex_offers_defaulting_to_the_smallest():
    parameter = main_tree()["parameters"]["instanceMemoryMB"]
    decorators = {d["type"]: d.get("argument") for d in parameter["decorators"]}
    assert decorators["allowed"] == FLEX_INSTANCE_MEMORY_MB
    assert parameter["default"] == 512
    assert site()["properties"]["functionAppConfig"]["scaleAndConcurrency"]["instanceMemoryMB"] == "instanceMemoryMB"


def test_every_setting_the_code_reads_is_an_app_setting():
    expected = {spec.name for spec in SETTING_SPECS} - LOCAL_ONLY_SETTINGS
    missing = expected - set(im.app_settings())
    assert not missing, f"app settings missing from the Function App: {sorted(missing)}"
    assert "TIMER_SCHEDULE" in im.app_settings()


def test_no_app_setting_is_unknown_to_the_code_or_the_host():
    known = {spec.name for spec in SETTING_SPECS} | HOST_SETTINGS
    unknown = set(im.app_settings()) - known
    assert not unknown, f"app settings nothing reads: {sorted(unknown)}"
    assert not LOCAL_ONLY_SETTINGS & set(im.app_settings())


def test_no_app_setting_that_flex_consumption_rejects():
    assert not FLEX_FORBIDDEN_SETTINGS & set(im.app_settings())


def test_host_storage_is_identity_based():
    settings = im.app_settings()
    assert im.accessor_path(settings["AzureWebJobsStorage__accountName"]) == "storage.name"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert im.accessor_path(settings["AzureWebJobsStorage__clientId"]) == "identity.properties.clientId"


def test_no_app_setting_is_key_based():
    for name, value in im.app_settings().items():
        text = " ".join(im.strings_in(value))
        assert not re.search(r"AccountKey|SharedAccessSignature|listKeys|UseDevelopmentStorage", text), name
        assert "CONNECTION_STRING" not in name or name == "APPLICATIONINSIGHTS_CONNECTION_STRING", name


def test_the_app_reads_the_tokens_from_the_deployments_vault_at_run_time():
    settings = im.app_settings()
    assert im.accessor_path(settings["PULUMI_TOKEN_VAULT_URL"]) == "keyVault.properties.vaultUri"
    assert "PULUMI_ACCESS_TOKEN" not in settings
    assert not any("@Microsoft.KeyVault" in text for value in settings.values() for text in im.strings_in(value))
    assert (KEY_VAULT_SECRETS_USER, "Microsoft.KeyVault/vaults") in role_assignments()
    params = main_tree()["modules"]["roles"]["config"]["params"]
    assert im.accessor_path(params["keyVaultName"]) == "keyVault.name"


def test_app_settings_point_at_the_deployed_dcr_and_storage():
    settings = im.app_settings()
    dcr_symbol, _ = dcr_module_call()
    assert im.accessor_path(settings["LOGS_INGESTION_ENDPOINT"]) == f"{dcr_symbol}.outputs.logsIngestionEndpoint"
    assert im.accessor_path(settings["DCR_IMMUTABLE_ID"]) == f"{dcr_symbol}.outputs.immutableId"
    assert im.accessor_path(settings["DCR_STREAM_NAME"]) == f"{dcr_symbol}.outputs.streamName"
    assert im.accessor_path(settings["DCR_HEALTH_STREAM_NAME"]) == f"{dcr_symbol}.outputs.healthStreamName"
    assert im.accessor_path(settings["MANAGED_IDENTITY_CLIENT_ID"]) == "identity.properties.clientId"
    assert im.accessor_path(settings["CHECKPOINT_TABLE_ENDPOINT"]) == "storage.properties.primaryEndpoints.table"
    for name, table_symbol in (
        ("CHECKPOINT_TABLE_NAME", "checkpointTable"),
        ("DEAD_LETTER_TABLE_NAME", "deadLetterTable"),
    ):
        assert im.accessor_path(settings[name]) == f"{table_symbol}.name"


def test_app_settings_pass_the_deployment_parameters():
    settings = im.app_settings()
    assert settings["PULUMI_ORGS"] == {
        "function": {"type": "join", "parameters": {"input_array": "pulumiOrgs", "delimiter": ","}}
    }
    parameters = main_tree()["parameters"]
    for name, parameter in (
        ("PULUMI_API_URL", "pulumiApiUrl"),
        ("TIMER_SCHEDULE", "timerSchedule"),
        ("INITIAL_LOOKBACK", "initialLookback"),
        ("LATE_EVENT_OVERLAP", "lateEventOverlap"),
        ("RUN_TIME_BUDGET", "runTimeBudget"),
    ):
        assert settings[name] == parameter
        assert parameter in parameters


def test_the_parallelism_settings_come_from_int_parameters_with_the_codes_bounds_and_defaults():
    settings = im.app_settings()
    parameters = main_tree()["parameters"]
    for name, parameter in (("MAX_PARALLEL_ORGS", "maxParallelOrgs"), ("BACKFILL_PARALLELISM", "backfillParallelism")):
        spec = next(spec for spec in SETTING_SPECS if spec.name == name)
        assert settings[name] == {"function": {"type": "string", "parameters": {"value_to_convert": parameter}}}
        declared = parameters[parameter]
        decorators = {decorator["type"]: decorator.get("argument") for decorator in declared["decorators"]}
        assert declared["type"] == "int" and str(declared["default"]) == spec.default, name
        assert (decorators["min_value"], decorators["max_value"]) == spec.bounds, name


def test_parameter_defaults_are_values_the_code_accepts():
    from shared.settings import parse_duration

    parameters = main_tree()["parameters"]
    assert len(parameters["timerSchedule"]["default"].split()) == 6
    for name in ("initialLookback", "lateEventOverlap", "runTimeBudget"):
        assert parse_duration(parameters[name]["default"]).total_seconds() > 0
    assert parameters["pulumiApiUrl"]["default"] == SPEC_DEFAULTS["PULUMI_API_URL"]


def test_app_insights_accepts_only_entra_id_telemetry():
    _, component = im.only_resource(main_tree(), "Microsoft.Insights/components")
    properties = im.body(component)["properties"]
    assert properties["DisableLocalAuth"] is True
    settings = im.app_settings()
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identity.properties.clientId};Authorization=AAD"
    )
    assert im.accessor_path(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == (
        "appInsights.properties.ConnectionString"
    )


def test_telemetry_goes_to_a_capped_workspace_of_its_own_not_to_sentinel():
    """App Insights data in the Sentinel workspace is billed at Sentinel rates and nothing bounds it."""
    tree = main_tree()
    _, component = im.only_resource(tree, "Microsoft.Insights/components")
    target = im.accessor_path(im.body(component)["properties"]["WorkspaceResourceId"])
    assert target != "workspace.id"
    symbol, telemetry = target.split(".")[0], tree["resources"][target.split(".")[0]]
    assert telemetry["type"] == "Microsoft.OperationalInsights/workspaces" and not telemetry["existing"], symbol
    cap = im.body(telemetry)["properties"]["workspaceCapping"]["dailyQuotaGb"]["function"]
    assert cap == {"type": "json", "parameters": {"arg_1": "telemetryDailyCapGb"}}
    assert 0 < float(tree["parameters"]["telemetryDailyCapGb"]["default"]) <= 1


def test_host_samples_telemetry_and_logs_warnings_by_default():
    host = json.loads((im.REPO_ROOT / "host.json").read_text())
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True and sampling["maxTelemetryItemsPerSecond"] <= 5
    assert host["logging"]["logLevel"]["default"] == "Warning"


# ----------------------------------------------------------------------------------------------
# Outputs and parameters file
# ----------------------------------------------------------------------------------------------


def test_outputs_give_everything_local_settings_and_publish_need():
    outputs = main_tree()["outputs"]
    for name in (
        "functionAppName",
        "LOGS_INGESTION_ENDPOINT",
        "DCR_IMMUTABLE_ID",
        "DCR_STREAM_NAME",
        "DCR_HEALTH_STREAM_NAME",
        "CHECKPOINT_TABLE_ENDPOINT",
        "CHECKPOINT_TABLE_NAME",
        "DEAD_LETTER_TABLE_NAME",
        "MANAGED_IDENTITY_CLIENT_ID",
        "keyVaultName",
        "PULUMI_TOKEN_VAULT_URL",
    ):
        assert name in outputs, f"missing output {name}"
    settings = im.app_settings()
    for name in (
        "PULUMI_TOKEN_VAULT_URL",
        "LOGS_INGESTION_ENDPOINT",
        "DCR_IMMUTABLE_ID",
        "CHECKPOINT_TABLE_ENDPOINT",
        "MANAGED_IDENTITY_CLIENT_ID",
    ):
        assert outputs[name]["value"] == settings[name], f"output {name} differs from the app setting"


def test_parameters_file_reads_tokens_from_the_environment_and_writes_none_unless_given():
    text = (im.INFRA / "main.bicepparam").read_text()
    assert re.search(r"^using '\./main\.bicep'$", text, re.M)
    token_lines = [line for line in text.splitlines() if line.startswith("param pulumiAccessToken")]
    assert token_lines == ["param pulumiAccessToken = readEnvironmentVariable('PULUMI_AUDIT_TOKEN', '')"]
    org_tokens = re.search(r"^param pulumiOrgTokens = \{\n(.*?)^\}", text, re.M | re.S).group(1)
    assert all(line.strip().startswith("//") for line in org_tokens.splitlines()), "no org token by default"
    assert re.findall(r"readEnvironmentVariable\('PULUMI_AUDIT_TOKEN_\w+'\)", org_tokens)
    assert not re.search(r"pul-[0-9a-f]{8,}", text)


def test_parameters_file_sets_every_required_parameter():
    text = (im.INFRA / "main.bicepparam").read_text()
    set_params = set(re.findall(r"^param (\w+) =", text, re.M))
    required = {name for name, parameter in main_tree()["parameters"].items() if parameter["default"] is None}
    assert required <= set_params, f"main.bicepparam misses {sorted(required - set_params)}"
    assert set_params <= set(main_tree()["parameters"])


# ----------------------------------------------------------------------------------------------
# checkov
# ----------------------------------------------------------------------------------------------


def checkov_binary() -> Path:
    override = os.environ.get("CHECKOV_BIN")
    return Path(override) if override else im.REPO_ROOT / ".venv-iac" / "bin" / "checkov"


def checkov_missing_message(binary: Path) -> str:
    return f"{binary} not found: run .ci/run (it creates the .venv-iac checkov environment)"


def test_checkov_is_installed():
    """In CI a missing checkov is a failure, never a silent skip."""
    binary = checkov_binary()
    if not binary.exists():
        if os.environ.get("CI"):
            pytest.fail(checkov_missing_message(binary))
        pytest.skip(checkov_missing_message(binary))
    assert os.access(binary, os.X_OK), f"{binary} is not executable"


@pytest.fixture(scope="module")
def checkov_summary() -> dict:
    binary = checkov_binary()
    if not binary.exists():
        pytest.skip(checkov_missing_message(binary))
    completed = subprocess.run(
        [str(binary), "-d", "infra", "--framework", "bicep", "--skip-download", "-o", "json", "--quiet"],
        cwd=im.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.stdout.strip(), f"checkov printed nothing; stderr:\n{completed.stderr[-2000:]}"
    report = json.loads(completed.stdout)
    reports = report if isinstance(report, list) else [report]
    (bicep,) = [item for item in reports if item.get("check_type") == "bicep"]
    failed = [(check["check_id"], check["resource"]) for check in bicep["results"].get("failed_checks", [])]
    return {**bicep["summary"], "failed_ids": failed, "returncode": completed.returncode}


def test_checkov_finds_no_failed_checks(checkov_summary: dict):
    assert checkov_summary["failed"] == 0, f"checkov failed checks: {checkov_summary['failed_ids']}"
    assert checkov_summary["returncode"] == 0


def test_checkov_parses_every_bicep_file(checkov_summary: dict):
    assert checkov_summary["parsing_errors"] == 0
    assert checkov_summary["passed"] > 0


def test_every_checkov_suppression_has_a_reason_and_applies(checkov_summary: dict):
    skips = []
    for path in im.bicep_files():
        skips += re.findall(r"checkov:skip=(CKV2?_AZURE_\d+)(:[^\n]*)?", path.read_text())
    assert all(reason.strip(": ") for _, reason in skips), "every checkov:skip needs a reason"
    # A suppression of a check that never runs on that resource would hide nothing: count must match.
    assert checkov_summary["skipped"] == len(skips)
