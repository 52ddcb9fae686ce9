"""Run Microsoft's Kusto language service (tools/kusto/analyze.js) over KQL texts.

One Node process analyses a whole batch: the tables and functions are declared once, as the
workspace would have them, then every query is parsed and semantically analysed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.schema import Table

KUSTO_DIR = Path(__file__).resolve().parents[1] / "tools" / "kusto"
ANALYZER = KUSTO_DIR / "analyze.js"
LANGUAGE_SERVICE = KUSTO_DIR / "node_modules" / "@kusto" / "language-service-next" / "Kusto.Language.Bridge.js"

# Columns Log Analytics adds to every table; queries may use them although the code never sends them.
STANDARD_COLUMNS = (("TenantId", "string"), ("Type", "string"), ("_ResourceId", "string"), ("_ItemId", "string"))


@dataclass(frozen=True)
class StoredFunction:
    """A workspace function: a saved search with a function alias."""

    name: str
    parameters: str  # as in the saved search's functionParameters, without parentheses
    body: str


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    code: str
    message: str
    start: int
    length: int


@dataclass(frozen=True)
class Analysis:
    diagnostics: tuple[Diagnostic, ...]
    columns: tuple[tuple[str, str], ...]  # the result schema of the last statement

    @property
    def errors(self) -> list[Diagnostic]:
        return [diagnostic for diagnostic in self.diagnostics if diagnostic.severity == "Error"]


class KustoUnavailable(RuntimeError):
    pass


def analyse(
    tables: Iterable[Table], functions: Iterable[StoredFunction], queries: Mapping[str, str]
) -> dict[str, Analysis]:
    """Analyse every query against the tables and functions; keyed like `queries`."""
    node = shutil.which("node")
    if node is None or not LANGUAGE_SERVICE.is_file():
        missing = "node is not on PATH" if node is None else f"{LANGUAGE_SERVICE} does not exist"
        raise KustoUnavailable(f"{missing}: run scripts/test.sh (it runs `npm ci` in tools/kusto)")
    request = {
        "tables": [
            {
                "name": table.name,
                "columns": [{"name": c.name, "type": c.type} for c in table.columns]
                + [{"name": name, "type": kind} for name, kind in STANDARD_COLUMNS],
            }
            for table in tables
        ],
        "functions": [
            {"name": f.name, "parameters": f"({f.parameters})", "body": f.body} for f in functions
        ],
        "queries": [{"id": key, "text": text} for key, text in queries.items()],
    }
    completed = subprocess.run(
        [node, str(ANALYZER)], input=json.dumps(request), capture_output=True, text=True, timeout=300, check=False
    )
    if completed.returncode != 0:
        raise KustoUnavailable(f"{ANALYZER.name} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return {
        result["id"]: Analysis(
            diagnostics=tuple(Diagnostic(**diagnostic) for diagnostic in result["diagnostics"]),
            columns=tuple((column["name"], column["type"]) for column in result["columns"]),
        )
        for result in json.loads(completed.stdout)["results"]
    }
