"""Read the Bicep in infra/ through pycep-parser, for tests/test_infra.py.

pycep (0.7.1) gives a JSON-like tree per file. Its quirks, handled here:
- a quoted object key keeps its quotes (`"'Custom-X'"`);
- a variable or parameter reference and a string literal are both plain `str`, so a string that
  names a variable is resolved through `tree["variables"]`;
- expressions are nested dicts: `{"operator": {"type": "property_accessor", ...}}`,
  `{"function": {"type": ..., "parameters": {...}}}`;
- a conditional or looped resource wraps its body: `config = {"condition": ..., "config": body}`;
- string literals keep their Bicep escapes (`\\'`, `\\n`): `bicep_text` undoes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA = REPO_ROOT / "infra"
MAIN = INFRA / "main.bicep"
TABLES_MODULE = INFRA / "modules" / "tables.bicep"
WORKSPACE_MODULE = INFRA / "modules" / "workspace.bicep"
ROLES_MODULE = INFRA / "modules" / "roles.bicep"
DCR_MODULE = INFRA / "modules" / "dcr.bicep"
SENTINEL_MODULE = INFRA / "modules" / "sentinel-content.bicep"
RULES_DIR = INFRA / "rules"


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def unquote(key: str) -> str:
    return key.strip("'")


def resolve(tree: dict[str, Any], value: Any) -> Any:
    """Follow a plain-string variable reference to the variable's value (recursively for lists/dicts)."""
    variables = tree.get("variables") or {}
    seen: set[str] = set()
    while isinstance(value, str) and value in variables and value not in seen:
        seen.add(value)
        value = variables[value]["value"]
    if isinstance(value, list):
        return [resolve(tree, item) for item in value]
    if isinstance(value, dict) and "operator" not in value and "function" not in value:
        return {key: resolve(tree, item) for key, item in value.items()}
    return value


def accessor_path(expr: Any) -> str | None:
    """`a.b.c` for a property-accessor chain, the plain name for a str, else None."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, dict) and "operator" in expr and expr["operator"]["type"] == "property_accessor":
        operands = expr["operator"]["operands"]
        head, tail = accessor_path(operands["operand_1"]), accessor_path(operands["operand_2"])
        if head is not None and tail is not None:
            return f"{head}.{tail}"
    return None


def walk(value: Any) -> Iterator[Any]:
    """Every node of a parsed value, depth first."""
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def strings_in(value: Any) -> list[str]:
    return [node for node in walk(value) if isinstance(node, str)]


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource's own properties, unwrapped from condition/loop wrappers."""
    config = resource["config"]
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = config["config"]
    return config


def condition(resource: dict[str, Any]) -> Any:
    return resource["config"].get("condition")


def resources_of_type(tree: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        symbol: resource
        for symbol, resource in tree["resources"].items()
        if resource["type"].lower() == resource_type.lower()
    }


def only_resource(tree: dict[str, Any], resource_type: str) -> tuple[str, dict[str, Any]]:
    found = resources_of_type(tree, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return next(iter(found.items()))


def module_calls(tree: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """The `module` declarations of `tree` that deploy the local file `path`: symbol -> config."""
    return {
        symbol: module["config"]
        for symbol, module in (tree.get("modules") or {}).items()
        if module["type"] == "local" and (INFRA / module["detail"]["path"]).resolve() == path.resolve()
    }


def only_module_call(tree: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    found = module_calls(tree, path)
    assert len(found) == 1, f"expected one module deploying {path.name}, found {sorted(found)}"
    return next(iter(found.items()))


def columns(tree: dict[str, Any], value: Any) -> list[tuple[str, str]]:
    return [(column["name"], column["type"]) for column in resolve(tree, value)]


def app_settings() -> dict[str, Any]:
    """The Function App's app settings as name -> parsed value."""
    tree = parse(MAIN)
    _, site = only_resource(tree, "Microsoft.Web/sites")
    settings = body(site)["properties"]["siteConfig"]["appSettings"]
    names = [item["name"] for item in settings]
    assert len(names) == len(set(names)), f"duplicate app settings: {names}"
    return {item["name"]: item["value"] for item in settings}


def analytic_rules() -> list[dict[str, Any]]:
    """The rule catalogue of the workspace module, variables resolved, plus the query file path and,
    for a query deployed as `replace(loadTextContent(file), old, new)`, the `substitution` (old, new)."""
    tree = parse(WORKSPACE_MODULE)
    rules = resolve(tree, "analyticRules")
    out = []
    for rule in rules:
        call = rule["query"]["function"]
        substitution = None
        if call["type"] == "replace":
            parameters = call["parameters"]
            substitution = (bicep_text(resolve(tree, parameters["old_string"])), bicep_text(parameters["new_string"]))
            call = parameters["original_string"]["function"]
        assert call["type"] == "load_text_content", f"rule {rule['key']} must load its query from a .kql file"
        query_file = (WORKSPACE_MODULE.parent / call["parameters"]["file_path"]).resolve()
        out.append({**rule, "query_file": query_file, "substitution": substitution})
    return out


_BICEP_ESCAPES = {"\\\\": "\\", "\\'": "'", "\\n": "\n", "\\r": "\r", "\\t": "\t", "\\$": "$"}


def bicep_text(literal: str) -> str:
    """The value of a Bicep string literal as pycep returns it (escapes still in)."""
    return re.sub(r"\\[\\'nrt$]", lambda match: _BICEP_ESCAPES[match.group(0)], literal)


def evaluate(tree: dict[str, Any], value: Any, module: Path) -> Any:
    """`value` as ARM would see it, for the constructs the Sentinel content uses: variables,
    string literals, `loadTextContent(file)` (relative to `module`) and `union(object, ...)`.
    Anything else (a reference to a deployed resource, say) is returned as parsed."""
    value = resolve(tree, value)
    if isinstance(value, str):
        return bicep_text(value)
    if isinstance(value, list):
        return [evaluate(tree, item, module) for item in value]
    if isinstance(value, dict) and "function" in value:
        call = value["function"]
        if call["type"] == "load_text_content":
            return (module.parent / call["parameters"]["file_path"]).read_text(encoding="utf-8")
        if call["type"] == "union":
            merged: dict[str, Any] = {}
            for argument in call["parameters"].values():
                merged.update(evaluate(tree, argument, module))
            return merged
        return value
    if isinstance(value, dict) and "operator" not in value:
        return {unquote(key): evaluate(tree, item, module) for key, item in value.items()}
    return value


def loaded_file(value: Any, module: Path) -> Path | None:
    """The file of a `loadTextContent(file)` call, else None."""
    if isinstance(value, dict) and value.get("function", {}).get("type") == "load_text_content":
        return (module.parent / value["function"]["parameters"]["file_path"]).resolve()
    return None


# A string literal (verbatim @"..." first, no escapes in it) or a comment, whichever starts first.
_KQL_STRING = r"""@"[^"\n]*"|@'[^'\n]*'|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""
_KQL_STRING_OR_COMMENT = re.compile(rf"(?P<string>{_KQL_STRING})|(?P<comment>//[^\n]*)")


def kql_code(text: str) -> str:
    """KQL without comments and with every string literal emptied to \"\"."""
    return _KQL_STRING_OR_COMMENT.sub(lambda match: '""' if match.group("string") else "", text)


def kql_without_comments(text: str) -> str:
    """KQL without comments, string literals kept."""
    return _KQL_STRING_OR_COMMENT.sub(lambda match: match.group("string") or "", text)


# A column-looking identifier: the table's type suffixes (_s, _b, _d, _t).
_SUFFIXED = re.compile(r"\b([A-Za-z][A-Za-z0-9]*_[sbdt])\b")
# `Name = expr` (an alias or a let binding), not `==`, `!=`, `<=`, `>=`, `=~`.
_ALIAS = re.compile(r"(?<![=!<>])\b([A-Za-z_][A-Za-z0-9_]*)\s*=(?![=~])")


def kql_suffixed_identifiers(text: str) -> set[str]:
    return set(_SUFFIXED.findall(kql_code(text)))


def kql_aliases(text: str) -> set[str]:
    return set(_ALIAS.findall(kql_code(text)))
