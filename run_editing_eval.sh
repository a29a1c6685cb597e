#!/usr/bin/env bash
# Evaluate editing methods on counterfactual KG edits. All flags go to run_editing_eval.py (see --help).
# Paths you pass are relative to your working directory; the defaults are inside this repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/run_editing_eval.py" "$@"
