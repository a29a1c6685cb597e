#!/usr/bin/env bash
# Causal tracing over random KG facts. All flags go to run_locating_batch.py (see --help).
# Paths you pass are relative to your working directory; the defaults are inside this repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/run_locating_batch.py" "$@"
