#!/usr/bin/env bash
# Record a finished (or stopped) run in bench/results/runs.csv: add or update its row (one per stage
# of a curriculum) and copy its accuracy_by_segment*.md breakdowns to bench/results/accuracy_by_segment/.
# The run directory itself stays under runs/ (out of git); COMMAND is what regenerates it.
# usage: bench/collect_run.sh runs/NAME "ttt run RECIPE --out runs/NAME --set ..." ["NOTES"]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 runs/NAME \"ttt run RECIPE --out runs/NAME [--set KEY=VALUE ...]\" [\"NOTES\"]" >&2
  exit 2
fi
args=("$1" --command "$2")
[ $# -ge 3 ] && args+=(--notes "$3")
exec python "$(dirname "$0")/summarize_runs.py" "${args[@]}"
