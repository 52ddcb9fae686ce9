"""Plumbing both stores share: a Table created on first use, a local JSON file, safe error text."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.data.tables import TableClient

_SECRET_PARAMETER = re.compile(r"((?:sig|AccountKey|SharedAccessSignature)=)[^&;\s'\"]+", re.IGNORECASE)


class TableOnFirstUse:
    """A TableClient whose table is created (if missing) the first time it is used."""

    def __init__(self, table: TableClient):
        self._table = table
        self._created = False

    def __call__(self) -> TableClient:
        if not self._created:
            with contextlib.suppress(ResourceExistsError):
                self._table.create_table()
            self._created = True
        return self._table


class JsonFile:
    """A JSON document in a local file, replaced atomically on every write."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text(encoding="utf-8"))

    def write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(temporary, self.path)


def describe_azure_error(error: AzureError) -> str:
    """One line naming the error, with any SAS signature or account key masked."""
    status = getattr(error, "status_code", None)
    text = str(getattr(error, "message", None) or error).strip()
    first_line = text.splitlines()[0][:300] if text else ""
    first_line = _SECRET_PARAMETER.sub(lambda match: match.group(1) + "***", first_line)
    return f"{type(error).__name__}{f' {status}' if status else ''}: {first_line}"
