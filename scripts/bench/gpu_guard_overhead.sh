#!/usr/bin/env bash
# The guard-cost bench (crates/gradguard-burn/benches/guard_overhead.rs) on a GPU, in one run,
# through Burn's wgpu backend (Vulkan on Linux): the guard's statistics, rules and telemetry as a
# share of an unguarded step of the bench's MLP, host reads and kernel launches per step, the
# statistics kernel's bandwidth against Burn's own `sum` over the same bytes, and whole training
# steps of a 101M-parameter pre-norm transformer stack under AdamW (d 1024, 8 layers, feed-forward
# 4096, 16 heads, context 512, batch 8): Burn's optimizer alone, GuardedOptimizer::new with the
# default guard, the same without the update bound, and GuardedOptimizer::fused (which on a GPU
# steps Burn's optimizer behind it until the fused step has a CubeCL kernel).
#
# Why wgpu and not Burn's `cuda` backend: building Burn 0.22.1's `cuda` backend downloads an LLVM
# bundle from the internet (cubecl-llvm's build script), which neither CI nor an offline GPU
# machine can do. On an NVIDIA GPU wgpu needs the driver's Vulkan ICD; the script stops if Vulkan
# offers only a software device (llvmpipe), which would time the CPU instead.
#
# Usage: scripts/bench/gpu_guard_overhead.sh [OUTPUT_DIR]   (default target/bench-gpu; the
# output is guard_overhead_gpu.txt there). Copy its lines into a dated record under
# docs/measurements/ and the overhead table of docs/burn.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
if command -v vulkaninfo >/dev/null; then
  devices="$(vulkaninfo --summary 2>/dev/null | grep -i 'deviceName' || true)"
  if [ -n "$devices" ] && ! grep -qiv 'llvmpipe' <<<"$devices"; then
    echo "gpu_guard_overhead.sh: Vulkan offers only a software device ($devices); no GPU to time" >&2
    exit 2
  fi
fi
out="${1:-target/bench-gpu}"
mkdir -p "$out"
report="$out/guard_overhead_gpu.txt"
trap 'rm -f "$report.tmp"' EXIT
{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi
} >"$report.tmp"
GRADGUARD_BENCH_DEVICE=wgpu GRADGUARD_BENCH_STACK=large \
  cargo bench -p gradguard-burn --features wgpu --bench guard_overhead 2>&1 | tee -a "$report.tmp"
mv "$report.tmp" "$report"
echo "written: $report"
