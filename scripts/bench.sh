#!/usr/bin/env bash
# Print throughput and memory figures (benchmarks/bench.py); then, without arguments, the
# pipelined path's figures (benchmarks/pipeline.py), the parallelism figures (benchmarks/parallel.py)
# what the delivery state costs as the backlog grows (benchmarks/delivery_state.py, which starts
# its own Azurite), the cold start (benchmarks/cold_start.py), what a row costs in Sentinel
# ingestion (benchmarks/row_cost.py) and the monthly cost computed from measured figures
# (benchmarks/cost.py, the tables of docs/COST.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv requirements.txt
if [ ! -x tools/azurite/node_modules/.bin/azurite-table ] || \
   [ tools/azurite/package-lock.json -nt tools/azurite/node_modules/.package-lock.json ]; then
  (cd tools/azurite && npm ci --silent --no-audit --no-fund)
fi
.venv/bin/python -m benchmarks.bench "$@"
if [ "$#" -eq 0 ]; then
  .venv/bin/python -m benchmarks.pipeline
  .venv/bin/python -m benchmarks.parallel
  .venv/bin/python -m benchmarks.delivery_state
  .venv/bin/python -m benchmarks.cold_start
  .venv/bin/python -m benchmarks.row_cost
  .venv/bin/python -m benchmarks.cost
fi
