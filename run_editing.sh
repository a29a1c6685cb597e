#!/usr/bin/env bash
# Edit one fact with ROME. All flags go to run_editing_single.py (see --help).
# Paths you pass are relative to your working directory; the defaults are inside this repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/run_editing_single.py" "$@"
