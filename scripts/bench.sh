#!/usr/bin/env bash
# Print throughput and memory figures (benchmarks/bench.py), then what the delivery state costs
# as the backlog grows (benchmarks/delivery_state.py, which starts its own Azurite).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv requirements.txt
if [ ! -x tools/azurite/node_modules/.bin/azurite-table ] || \
   [ tools/azurite/package-lock.json -nt tools/azurite/node_modules/.package-lock.json ]; then
  (cd tools/azurite && npm ci --silent --no-audit --no-fund)
fi
.venv/bin/python -m benchmarks.bench "$@"
[ $# -gt 0 ] || exec .venv/bin/python -m benchmarks.delivery_state
