#!/usr/bin/env bash
# Run every test: unit, stand-in integration (Azurite, HTTPS stand-ins), fault matrix,
# Bicep checks and checkov, the Kusto language service over every shipped query, plus ruff.
# Sets up everything it needs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-venv.sh .venv requirements-dev.txt
scripts/setup-venv.sh .venv-iac requirements-iac.txt

if [ ! -x tools/azurite/node_modules/.bin/azurite-table ] || \
   [ tools/azurite/package-lock.json -nt tools/azurite/node_modules/.package-lock.json ]; then
  (cd tools/azurite && npm ci --silent --no-audit --no-fund)
fi

# Microsoft's Kusto language service, which tests/test_kusto.py runs over every shipped query.
if [ ! -f tools/kusto/node_modules/@kusto/language-service-next/Kusto.Language.Bridge.js ] || \
   [ tools/kusto/package-lock.json -nt tools/kusto/node_modules/.package-lock.json ]; then
  (cd tools/kusto && npm ci --silent --no-audit --no-fund)
fi

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
