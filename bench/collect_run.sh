#!/usr/bin/env bash
# Copy a finished run's small artefacts (report, metrics, resolved recipe, versions) into bench/results/NAME.
# usage: bench/collect_run.sh RUN_DIR NAME
set -euo pipefail
run=$1; dest=bench/results/$2
mkdir -p "$dest"
for f in report.md report.json metrics.jsonl recipe.toml versions.json; do
  [ -f "$run/$f" ] && cp "$run/$f" "$dest/"
done
echo "$dest"
