#!/usr/bin/env bash
# Print throughput and memory figures (see benchmarks/bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv requirements.txt
exec .venv/bin/python -m benchmarks.bench "$@"
