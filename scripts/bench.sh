#!/usr/bin/env bash
# Print throughput and memory figures (benchmarks/bench.py), then, without arguments, the
# parallelism figures: orgs and backfill lanes at once, and the steady-state cost per org
# (benchmarks/parallel.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv requirements.txt
.venv/bin/python -m benchmarks.bench "$@"
if [ "$#" -eq 0 ]; then
  .venv/bin/python -m benchmarks.parallel
fi
