#!/usr/bin/env bash
# Does localization inform editing? ROME at every layer against causal tracing. All flags go to run_localization_study.py (see --help).
# Paths you pass are relative to your working directory; the defaults are inside this repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/run_localization_study.py" "$@"
