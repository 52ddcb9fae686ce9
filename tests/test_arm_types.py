"""Every resource infra/ creates, checked against its published ARM type (tests/arm_types.py).

A misspelt, read-only or missing property, or a value outside a closed set, fails here rather
than in a first deployment. tests/data/arm-types.json is written by scripts/build_arm_types.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests import arm_types
from tests import infra_model as im

CREATED = [
    (path, symbol)
    for path in im.bicep_files()
    for symbol, resource in im.parse(path)["resources"].items()
    if not resource["existing"]
]


def _function_app() -> tuple[dict, dict]:
    """main.bicep's tree and a copy of its Flex Consumption site, to break."""
    tree = im.parse(im.MAIN)
    return tree, copy.deepcopy(tree["resources"]["functionApp"])


@pytest.mark.parametrize(
    ("path", "symbol"), CREATED, ids=[f"{path.relative_to(im.INFRA)}:{symbol}" for path, symbol in CREATED]
)
def test_every_created_resource_sets_only_what_its_arm_type_allows_and_all_it_requires(path: Path, symbol: str):
    tree = im.parse(path)
    assert arm_types.problems(tree, tree["resources"][symbol]) == []


def test_the_arm_types_are_exactly_those_of_the_resource_types_and_api_versions_infra_declares():
    declared = {
        f"{resource['type']}@{resource['api_version']}"
        for path in im.bicep_files()
        for resource in im.parse(path)["resources"].values()
    }
    assert arm_types.known_resource_types() == declared


def test_the_arm_type_check_catches_a_misspelt_function_app_config_key():
    tree, site = _function_app()
    scale = im.body(site)["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    scale["instanceMemoryMb"] = scale.pop("instanceMemoryMB")
    assert arm_types.problems(tree, site) == [
        "Microsoft.Web/sites@2024-04-01.properties.functionAppConfig.scaleAndConcurrency: "
        "unknown property 'instanceMemoryMb'"
    ]


def test_the_arm_type_check_catches_an_identity_type_outside_its_closed_set():
    tree, site = _function_app()
    im.body(site)["identity"]["type"] = "SystemAssigned,UserAssigned"  # Web spells it with a space
    assert arm_types.problems(tree, site) == [
        "Microsoft.Web/sites@2024-04-01.identity.type: 'SystemAssigned,UserAssigned' is not one of "
        "['SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned', 'None']"
    ]


def test_the_arm_type_check_catches_a_read_only_site_property():
    tree, site = _function_app()
    im.body(site)["properties"]["defaultHostName"] = "connector.azurewebsites.net"
    assert arm_types.problems(tree, site) == [
        "Microsoft.Web/sites@2024-04-01.properties: 'defaultHostName' is read-only"
    ]


def test_the_arm_type_check_catches_a_key_vault_without_its_tenant():
    tree = im.parse(im.MAIN)
    vault = copy.deepcopy(tree["resources"]["keyVault"])
    del im.body(vault)["properties"]["tenantId"]
    assert arm_types.problems(tree, vault) == [
        "Microsoft.KeyVault/vaults@2023-07-01.properties: required property 'tenantId' is missing"
    ]
