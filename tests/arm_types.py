"""Check a Bicep resource body against the published ARM type definitions.

tests/data/arm-types.json holds the types of every resource type and API version infra/ uses,
converted from Azure/bicep-types-az by scripts/build_arm_types.py (its `source` says from which
commit and files). `problems()` walks a resource body as pycep parsed it: every property
written as a literal must exist in the type, must not be read-only, must have the type's kind
(and one of its values, for a closed set of strings), and an object literal must set every
required property. Expressions (references, function calls, conditions) are not evaluated.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from tests import infra_model as im

ARM_TYPES = Path(__file__).resolve().parent / "data" / "arm-types.json"
# Keys of a resource declaration that are Bicep's own, not properties of the ARM resource.
BICEP_KEYS = frozenset({"parent", "scope", "dependsOn"})


@cache
def _definitions() -> dict[str, Any]:
    return json.loads(ARM_TYPES.read_text(encoding="utf-8"))


def known_resource_types() -> set[str]:
    return set(_definitions()["resources"])


def problems(tree: dict[str, Any], resource: dict[str, Any]) -> list[str]:
    """What in `resource` (a resource of the parsed Bicep `tree`) the ARM type does not allow."""
    name = f"{resource['type']}@{resource['api_version']}"
    if name not in _definitions()["resources"]:
        return [f"{name} is not a published resource type and API version (tests/data/arm-types.json)"]
    references = set(tree.get("parameters") or {}) | set(tree.get("variables") or {}) | set(tree["resources"])
    checker = _Checker(references | _loop_variables(resource))
    body = {key: value for key, value in im.body(resource).items() if key not in BICEP_KEYS}
    checker.check_object(_definitions()["resources"][name], body, name)
    return checker.found


def _loop_variables(resource: dict[str, Any]) -> set[str]:
    config = resource["config"]
    return {config["loop_type"]["detail"]["item_name"]} if "loop_type" in config else set()


class _Checker:
    def __init__(self, references: set[str]):
        self.references = references
        self.found: list[str] = []

    def type(self, key: str) -> dict[str, Any]:
        return _definitions()["types"][key]

    def check(self, type_key: str, value: Any, where: str) -> None:
        if _is_expression(value) or (isinstance(value, str) and value in self.references):
            return
        node = self.type(type_key)
        kind = node["kind"]
        if kind == "any":
            return
        if kind in ("object", "discriminated"):
            self.check_object(type_key, value, where)
        elif kind == "array":
            if not isinstance(value, list):
                self.found.append(f"{where}: expects an array")
                return
            for index, item in enumerate(value):
                self.check(node["items"], item, f"{where}[{index}]")
        elif kind == "string":
            if not isinstance(value, str):
                self.found.append(f"{where}: expects a string, got {value!r}")
            elif node.get("enum") and not node.get("open") and im.bicep_text(value) not in node["enum"]:
                self.found.append(f"{where}: {value!r} is not one of {node['enum']}")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                self.found.append(f"{where}: expects an integer, got {value!r}")
        elif kind == "bool" and not isinstance(value, bool):
            self.found.append(f"{where}: expects true or false, got {value!r}")

    def check_object(self, type_key: str, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            self.found.append(f"{where}: expects an object")
            return
        node = self.type(type_key)
        properties = dict(node.get("properties") or {})
        if node["kind"] == "discriminated":
            properties = dict(node["base"])
            discriminator = node["discriminator"]
            element = value.get(discriminator)
            if element not in node["elements"]:
                choices = sorted(node["elements"])
                self.found.append(f"{where}: {discriminator} must be one of {choices}, got {element!r}")
                return
            properties.update(self.type(node["elements"][element])["properties"])
        for key, item in value.items():
            key = im.unquote(key)
            if key not in properties:
                if node.get("additional"):
                    self.check(node["additional"], item, f"{where}.{key}")
                else:
                    self.found.append(f"{where}: unknown property {key!r}")
                continue
            if properties[key]["readOnly"]:
                self.found.append(f"{where}: {key!r} is read-only")
            self.check(properties[key]["type"], item, f"{where}.{key}")
        given = {im.unquote(key) for key in value}
        for key, spec in properties.items():
            if spec["required"] and not spec["readOnly"] and key not in given:
                self.found.append(f"{where}: required property {key!r} is missing")


def _is_expression(value: Any) -> bool:
    return isinstance(value, dict) and ("operator" in value or "function" in value)
