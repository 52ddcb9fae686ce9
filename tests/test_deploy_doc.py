"""docs/DEPLOY.md is a deploy path that works with this template, the README stays short and points
to it, and every KQL block of the README, DEPLOY.md and OPERATIONS.md passes the Kusto language
service."""

from __future__ import annotations

import re
import subprocess

import pytest

from benchmarks import cost
from shared.schema import TABLES, Column, Table
from shared.token_source import org_secret_name
from tests import infra_model as im
from tests import kusto

README = im.REPO_ROOT / "README.md"
DEPLOY = im.REPO_ROOT / "docs" / "DEPLOY.md"
OPERATIONS = im.REPO_ROOT / "docs" / "OPERATIONS.md"
COST = im.REPO_ROOT / "docs" / "COST.md"
DOCUMENTS_WITH_QUERIES = (README, DEPLOY, OPERATIONS)
FENCED_KQL = re.compile(r"```(?:kusto|kql)\n(.*?)```", re.S)
# Tables outside shared/schema.py that the documents' queries read: the app's telemetry and Sentinel's alerts.
OTHER_TABLES = (
    Table(
        "AppTraces",
        "",
        "Application Insights traces",
        (
            Column("TimeGenerated", "datetime", ""),
            Column("AppRoleName", "string", ""),
            Column("SeverityLevel", "int", ""),
            Column("Message", "string", ""),
        ),
    ),
    Table(
        "SecurityAlert",
        "",
        "Sentinel alerts",
        (Column("TimeGenerated", "datetime", ""), Column("AlertName", "string", "")),
    ),
)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def documented_queries() -> dict[str, str]:
    return {
        f"{path.name}:{index}": query
        for path in DOCUMENTS_WITH_QUERIES
        for index, query in enumerate(FENCED_KQL.findall(path.read_text(encoding="utf-8")), 1)
    }


def test_the_readme_is_under_15_kb_and_points_to_the_guides():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 15_000
    for guide in ("docs/DEPLOY.md", "docs/OPERATIONS.md", "docs/COST.md"):
        assert f"]({guide}" in text, guide


def test_every_documented_query_passes_the_kusto_language_service():
    queries = documented_queries()
    assert len(queries) >= 8, "the verification queries and the sample KQL"
    try:
        analysis = kusto.analyse((*TABLES, *OTHER_TABLES), [], queries)
    except kusto.KustoUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    failing = {key: [error.message for error in analysis[key].errors] for key in queries if analysis[key].errors}
    assert not failing


def test_the_deploy_guide_names_every_parameter_of_the_template():
    text = DEPLOY.read_text(encoding="utf-8")
    missing = [name for name in im.parse(im.MAIN)["parameters"] if f"`{name}`" not in text]
    assert not missing, f"docs/DEPLOY.md does not say what these parameters are for: {missing}"


def test_the_deploy_guide_reads_only_outputs_the_template_has():
    text = DEPLOY.read_text(encoding="utf-8")
    used = set(re.findall(r"properties\.outputs\.(\w+)\.value", text))
    assert used, "the guide reads the deployment's outputs"
    assert used <= set(im.parse(im.MAIN)["outputs"])


def test_the_guides_ask_for_an_azure_cli_that_has_the_flex_commands():
    """`az functionapp` Flex Consumption commands need Azure CLI 2.60 or later."""
    for path in (README, DEPLOY):
        versions = re.findall(r"Azure CLI (\d+)\.(\d+) or later", path.read_text(encoding="utf-8"))
        assert versions and all((int(major), int(minor)) >= (2, 60) for major, minor in versions), path.name


def test_secrets_are_written_with_retries_after_the_role_assignment_that_allows_it():
    """A new role assignment takes minutes to apply: the first secret writes may be refused."""
    blocks = bash_blocks(DEPLOY.read_text(encoding="utf-8"))
    [block] = [block for block in blocks if "az role assignment create" in block]
    after = block.split("az role assignment create", 1)[1]
    loop = re.search(r"for attempt in [^\n]*; do[^\n]*\n(.*?)\n\s*done", after, re.S)
    assert loop, "the secret write is retried in a loop"
    assert "az keyvault secret set" in loop.group(1) and "&& break" in loop.group(1) and "sleep" in loop.group(1)


@pytest.mark.parametrize("org", ["acme", "Acme_Labs.EU", "GLOBEX-2"])
def test_the_guides_secret_names_are_the_names_the_code_reads(org: str):
    [block] = [block for block in bash_blocks(DEPLOY.read_text(encoding="utf-8")) if "az keyvault secret set" in block
               and "tr " in block]
    source, target = re.search(r"tr '([^']+)' '([^']+)'", block).groups()
    written = subprocess.run(["tr", source, target], input=org, capture_output=True, text=True, check=True).stdout
    assert "pulumi-token-" + written == org_secret_name(org)


def test_the_cost_model_and_its_document_use_the_templates_instance_sizes():
    parameter = im.parse(im.MAIN)["parameters"]["instanceMemoryMB"]
    allowed = next(decorator["argument"] for decorator in parameter["decorators"] if decorator["type"] == "allowed")
    assert sorted(cost.INSTANCE_CORES) == allowed
    assert parameter["default"] == cost.CHOSEN_INSTANCE_MB
    text = COST.read_text(encoding="utf-8")
    assert f"## Instance size: {parameter['default']} MB" in text
    assert "azure-rest-api-specs#40898" in text
