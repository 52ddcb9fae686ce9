#!/usr/bin/env bash
# Run the connector end to end on local stand-ins: no Azure or Pulumi account needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh .venv requirements.txt
exec .venv/bin/python -m shared demo "$@"
