"""Write tests/data/arm-types.json: the ARM types of every resource type and API version in infra/.

tests/arm_types.py checks each Bicep resource body against these types, so a misspelt, read-only
or missing property, or a value outside a closed set, fails a test instead of a first deployment.
The types come from Azure/bicep-types-az, whose generated/<provider>/<namespace>/<api-version>/
types.json files hold what Bicep itself type-checks against.

Rerun after adding a resource type or changing an API version in infra/:

    git clone --bare --filter=blob:none https://github.com/Azure/bicep-types-az /tmp/bicep-types-az
    .venv/bin/python scripts/build_arm_types.py /tmp/bicep-types-az [--commit <sha>]

The first argument is any git directory of that repository (bare or not); the commit defaults to
its HEAD and is recorded in the file's `source`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA = REPO_ROOT / "infra"
OUTPUT = REPO_ROOT / "tests" / "data" / "arm-types.json"
REPOSITORY = "https://github.com/Azure/bicep-types-az"
HOW = (
    "Each resource type's body type, with every type it reaches, converted from types.json: "
    "string/int/bool/any/array/object/discriminated; properties keep the Required (flag 1) and "
    "ReadOnly (flag 2) flags; a union of string literals becomes an enum ('open' when the union "
    "also admits any string)."
)
REQUIRED, READ_ONLY = 1, 2
RESOURCE_DECLARATION = re.compile(r"^\s*resource\s+\w+\s+'(?P<type>[^'@]+)@(?P<version>[^']+)'", re.MULTILINE)


def infra_resource_types() -> set[str]:
    """Every `Type@api-version` a resource declaration in infra/ names, `existing` ones included."""
    found = set()
    for path in INFRA.rglob("*.bicep"):
        for match in RESOURCE_DECLARATION.finditer(path.read_text(encoding="utf-8")):
            found.add(f"{match['type']}@{match['version']}")
    return found


class Repository:
    """Reads the types.json files of one commit of a bicep-types-az git directory."""

    def __init__(self, git_dir: str, commit: str):
        self.git_dir = git_dir
        self.commit = self._git("rev-parse", f"{commit}^{{commit}}").strip()
        self.paths = self._git("ls-tree", "-r", "--name-only", self.commit, "generated/").splitlines()

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", self.git_dir, *args], check=True, capture_output=True, text=True).stdout

    def candidates(self, resource_type: str) -> list[str]:
        """The types.json files that may declare `resource_type` (a namespace can span providers)."""
        namespace = resource_type.split("/", 1)[0].lower()
        version = resource_type.rsplit("@", 1)[1]
        suffix = f"/{namespace}/{version}/types.json"
        return sorted(path for path in self.paths if path.endswith(suffix))

    def types(self, path: str) -> list[dict[str, Any]]:
        return json.loads(self._git("show", f"{self.commit}:{path}"))


class Converter:
    """Converts the types a resource body reaches into tests/arm_types.py's flat form.

    A type's key is `<provider>/<api-version>#<index in its types.json>`.
    """

    def __init__(self) -> None:
        self.converted: dict[str, dict[str, Any]] = {}

    def convert_resource(self, path: str, types: list[dict[str, Any]], body_index: int) -> str:
        provider, _, version, _ = path.removeprefix("generated/").split("/")
        return self._convert(f"{provider}/{version}", types, body_index)

    def _convert(self, prefix: str, types: list[dict[str, Any]], index: int) -> str:
        key = f"{prefix}#{index}"
        if key in self.converted:
            return key
        self.converted[key] = {}  # claimed first: a type may reach itself

        def ref(reference: dict[str, str]) -> str:
            return self._convert(prefix, types, _index(reference))

        def properties(declared: dict[str, Any]) -> dict[str, Any]:
            return {
                name: {
                    "readOnly": bool(spec["flags"] & READ_ONLY),
                    "required": bool(spec["flags"] & REQUIRED),
                    "type": ref(spec["type"]),
                }
                for name, spec in declared.items()
            }

        source = types[index]
        kind = source["$type"]
        if kind == "StringType":
            node: dict[str, Any] = {"kind": "string"}
        elif kind == "StringLiteralType":
            node = {"kind": "string", "enum": [source["value"]]}
        elif kind == "UnionType":
            node = _string_union(key, [types[_index(element)] for element in source["elements"]])
        elif kind == "IntegerType":
            node = {"kind": "int"}
        elif kind == "BooleanType":
            node = {"kind": "bool"}
        elif kind == "AnyType":
            node = {"kind": "any"}
        elif kind == "ArrayType":
            node = {"kind": "array", "items": ref(source["itemType"])}
        elif kind == "ObjectType":
            additional = source.get("additionalProperties")
            node = {
                "kind": "object",
                "name": source["name"],
                "properties": properties(source.get("properties") or {}),
                "additional": ref(additional) if additional else None,
            }
        elif kind == "DiscriminatedObjectType":
            node = {
                "kind": "discriminated",
                "name": source["name"],
                "discriminator": source["discriminator"],
                "base": properties(source.get("baseProperties") or {}),
                "elements": {value: ref(element) for value, element in source["elements"].items()},
            }
        else:
            raise ValueError(f"{key}: no conversion for a {kind}")
        self.converted[key] = node
        return key


def _index(reference: dict[str, str]) -> int:
    """The position a `{"$ref": "#/<n>"}` points at in its types.json."""
    return int(reference["$ref"].removeprefix("#/"))


def _string_union(key: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = {element["$type"] for element in elements}
    if not kinds <= {"StringLiteralType", "StringType"}:
        raise ValueError(f"{key}: a union of {sorted(kinds)} is not a string enum")
    literals = [element["value"] for element in elements if element["$type"] == "StringLiteralType"]
    return {"kind": "string", "enum": literals, "open": "StringType" in kinds}


def build(repository: Repository, resource_types: set[str]) -> dict[str, Any]:
    converter = Converter()
    resources: dict[str, str] = {}
    files: set[str] = set()
    for resource_type in sorted(resource_types):
        for path in repository.candidates(resource_type):
            types = repository.types(path)
            bodies = [
                _index(item["body"])
                for item in types
                if item["$type"] == "ResourceType" and item["name"].lower() == resource_type.lower()
            ]
            if bodies:
                resources[resource_type] = converter.convert_resource(path, types, bodies[0])
                files.add(path)
                break
        else:
            raise SystemExit(f"{resource_type} is in no types.json of {REPOSITORY} at {repository.commit}")
    return {
        "resources": resources,
        "source": {"repository": REPOSITORY, "commit": repository.commit, "files": sorted(files), "how": HOW},
        "types": converter.converted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("git_dir", help="a git directory (bare or not) of Azure/bicep-types-az")
    parser.add_argument("--commit", default="HEAD", help="the commit to read (default: HEAD)")
    arguments = parser.parse_args()
    definitions = build(Repository(arguments.git_dir, arguments.commit), infra_resource_types())
    OUTPUT.write_text(json.dumps(definitions, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
