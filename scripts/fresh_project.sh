#!/usr/bin/env bash
# A new project that depends on gradguard and gradguard-burn through the README's dependency
# lines ("Use it in your project") builds and runs the README's Burn example ("Use it in your
# Burn training loop"), as a user would do it: nothing from the workspace but those two blocks.
# The workspace's Cargo.lock pins the same dependency versions, and its build directory is shared
# so compiled dependencies are reused where their features match.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
readme="$root/README.md"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

# The first fenced block of a kind after a heading, without its fences.
block() {
  awk -v heading="$1" -v fence="$2" '
    $0 == heading { inside_section = 1; next }
    inside_section && !in_block && $0 == fence { in_block = 1; next }
    in_block && /^```/ { exit }
    in_block { print }
  ' "$readme"
}

deps="$(block '## Use it in your project' '```toml')"
example="$(block '## Use it in your Burn training loop' '```rust')"
if [ -z "$deps" ] || [ -z "$example" ]; then
  echo "fresh project: the README's dependency block or Burn example was not found" >&2
  exit 1
fi
# The README's paths assume a checkout next to the project (../gradguard/crates/…).
deps="${deps//..\/gradguard\//$root/}"

mkdir -p "$dir/src"
{
  printf '[package]\nname = "fresh-gradguard-user"\nversion = "0.0.0"\nedition = "2024"\npublish = false\n\n'
  printf '%s\n' "$deps"
} > "$dir/Cargo.toml"
printf '%s\n' "$example" > "$dir/src/main.rs"
cp "$root/Cargo.lock" "$dir/Cargo.lock"

cd "$dir"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" cargo run --quiet
echo "fresh project: the README's lines build and run the README's Burn example"
