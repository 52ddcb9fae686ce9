"""Cold start: what importing the Functions entry point costs beyond the SDKs it cannot do without.

    python -m benchmarks.cold_start      # also run by scripts/bench.sh

A Flex Consumption instance that starts from zero imports `function_app` before the first run.
Each import is timed inside a fresh interpreter (so no module is loaded yet and the interpreter's
own start is left out), 7 times each, and the figure is the median for `function_app` ÷ the median
for the SDKs alone. The target is at most 1.3: our own modules and settings add little to the SDKs.
Printed, never asserted; 3 repeats, min / median / max, two ways:

- with bytecode cached for every module (a warm-up run writes it under a temporary
  PYTHONPYCACHEPREFIX), as where the app's folder is writable;
- with the app's own modules compiled on every import, as from a read-only package (where pip
  compiled the SDKs when it installed them, but nothing can write the app's bytecode).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from benchmarks.bench import REPEATS, spread

REPO = Path(__file__).resolve().parent.parent
SDKS = (
    "azure.functions",
    "azure.identity",
    "azure.monitor.ingestion",
    "azure.data.tables",
    "azure.keyvault.secrets",
    "requests",
    "orjson",
)
RUNS = 7


def import_seconds(modules: str, environ: Mapping[str, str]) -> float:
    """Seconds a fresh interpreter takes to import `modules` (comma-separated), its own start left out."""
    code = f"import time; started = time.perf_counter(); import {modules}; print(time.perf_counter() - started)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=dict(environ), capture_output=True, text=True, check=True
    )
    return float(result.stdout)


def figure(how: str, environ: Mapping[str, str]) -> None:
    import_seconds("function_app", environ)  # writes the bytecode, where it may
    ratios, ours, theirs = [], [], []
    for _ in range(REPEATS):
        sdks = statistics.median(import_seconds(", ".join(SDKS), environ) for _ in range(RUNS))
        app = statistics.median(import_seconds("function_app", environ) for _ in range(RUNS))
        theirs.append(sdks)
        ours.append(app)
        ratios.append(app / sdks)
    print(
        f"cold start, {how}: importing function_app ÷ importing the SDKs it needs {spread(ratios)} "
        f"(target at most 1.3; {statistics.median(ours) * 1000:.0f} ms and {statistics.median(theirs) * 1000:.0f} ms)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cached = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        figure("bytecode cached", {**cached, "PYTHONPYCACHEPREFIX": cache})
    figure("the app's modules compiled on import", {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


if __name__ == "__main__":
    main()
