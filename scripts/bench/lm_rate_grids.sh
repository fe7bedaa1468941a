#!/usr/bin/env bash
# The rate grids of docs/measurements/2026-12-04-lm-rate-grid.md on held-out seeds and shapes:
# plain, global clip and the default guard, over rates spanning 100x, on the lm task (two widths,
# pre- and post-norm) and on the MLP and recurrent tasks under Adam. Each grid is one sweep;
# runs are single-threaded (flex), JOBS at once. Usage:
#   scripts/bench/lm_rate_grids.sh [GRADGUARD_BINARY] [OUT_DIR]
set -euo pipefail
bin="${1:-target/release/gradguard}"
out="${2:-lm-rate-grids}"
jobs="${JOBS:-0}"
methods='none;clip-global;guard'
mkdir -p "$out"
sweep() {
  local name="$1"; shift
  local t0=$SECONDS
  "$bin" sweep "$@" --remedy "$methods" --out "$out/$name" --jobs "$jobs" >"$out/$name.txt"
  echo "== $name ($((SECONDS - t0)) s)"
  sed -n '/^Final held-out loss/,$p' "$out/$name.txt"
}
rates=1e-3,3e-3,1e-2,3e-2,1e-1
sweep lm-w64-pre --task lm --lr "$rates" --seed 1,2,3
printf 'task = "lm"\nwidth = 128\nlr = [0.001, 0.003, 0.01, 0.03, 0.1]\nseed = [1, 2]\nremedy = ["none", "clip-global", "guard"]\n' >"$out/w128.toml"
"$bin" sweep --grid "$out/w128.toml" --out "$out/lm-w128-pre" --jobs "$jobs" >"$out/lm-w128-pre.txt"
echo "== lm-w128-pre"; sed -n '/^Final held-out loss/,$p' "$out/lm-w128-pre.txt"
printf 'task = "lm"\npost_norm = true\nlr = [0.001, 0.003, 0.01, 0.03, 0.1]\nseed = [1, 2]\nremedy = ["none", "clip-global", "guard"]\n' >"$out/post.toml"
"$bin" sweep --grid "$out/post.toml" --out "$out/lm-w64-post" --jobs "$jobs" >"$out/lm-w64-post.txt"
echo "== lm-w64-post"; sed -n '/^Final held-out loss/,$p' "$out/lm-w64-post.txt"
sweep mlp-adam --task mlp --optimizer adam --lr 1e-4,3e-4,1e-3,3e-3,1e-2 --seed 1,2
sweep adding-adam --task adding --optimizer adam --lr 1e-4,3e-4,1e-3,3e-3,1e-2 --seed 1,2
sweep order-adam --task order --optimizer adam --lr 1e-4,3e-4,1e-3,3e-3,1e-2 --seed 1,2
