#!/usr/bin/env bash
# The rate grids of docs/measurements/2026-12-04-normalized-update-bound.md: plain, global clip and
# the default guard over rates spanning 100-300x, on the lm task (default, N(0,1) embeddings with a
# constant rate, post-norm, width 128) and on deep MLPs and the recurrent tasks under Adam. Each
# grid is one sweep; runs are single-threaded (flex), JOBS at once (default: one per core).
# Usage: scripts/bench/lm_rate_grids.sh [GRADGUARD_BINARY] [OUT_DIR]
set -euo pipefail
bin="${1:-target/release/gradguard}"
out="${2:-lm-rate-grids}"
jobs="${JOBS:-0}"
mkdir -p "$out"
for grid in lm-rate-default lm-rate-embed1-constant lm-rate-post-norm lm-rate-w128 mlp-adam-rate; do
  t0=$SECONDS
  "$bin" sweep --grid "grids/$grid.toml" --out "$out/$grid" --jobs "$jobs" >"$out/$grid.txt"
  echo "== $grid ($((SECONDS - t0)) s)"
  sed -n '/^Final held-out loss/,$p' "$out/$grid.txt"
done
for task in adding order; do
  t0=$SECONDS
  "$bin" sweep --task "$task" --optimizer adam --lr 1e-4,3e-4,1e-3,3e-3,1e-2 --seed 2,3 \
    --remedy 'none;clip-global;guard' --out "$out/$task-adam" --jobs "$jobs" >"$out/$task-adam.txt"
  echo "== $task-adam ($((SECONDS - t0)) s)"
  sed -n '/^Final held-out loss/,$p' "$out/$task-adam.txt"
done
