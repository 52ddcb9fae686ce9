"""The README documents exactly what the code does: its settings and its table."""

from __future__ import annotations

import re
from pathlib import Path

from shared.schema import COLUMNS
from shared.settings import SETTING_SPECS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def table_rows(heading: str) -> list[list[str]]:
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def test_the_settings_table_lists_every_setting_with_its_default():
    documented = {row[0]: row[1] for row in table_rows("## Settings")}
    assert list(documented) == [spec.name for spec in SETTING_SPECS]
    for spec in SETTING_SPECS:
        expected = "(required)" if spec.default is None else (spec.default or "(empty)")
        assert documented[spec.name] == expected, spec.name


def test_the_schema_table_matches_the_code_schema():
    documented = [(row[0], row[1]) for row in table_rows("## Table schema")]
    assert documented == [(column.name, column.type) for column in COLUMNS]


def test_the_readme_opens_with_the_demo_and_test_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    assert first_block.splitlines()[0].startswith("scripts/demo.sh")
    assert first_block.splitlines()[1].startswith("scripts/test.sh")
