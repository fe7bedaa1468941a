#!/usr/bin/env bash
# The packages as a user gets them, and the README as a user reads it, in one build:
#
# 1. `cargo package` packs every library crate and the CLI (no build yet).
# 2. The packed crates are unpacked side by side, each built from its packaged sources alone
#    (a file left out of a package, or a path only the checkout has, fails here).
# 3. A new project made of the README's dependency block ("Use it in your project") and its Burn
#    example ("Use it in your Burn training loop") builds against those packages and runs.
#
# All of it is one workspace, so Burn is compiled once (`cargo package`'s own verification
# compiles it once per package, each in a workspace of its own, and the new project once more).
# One workspace resolves the packages' features together: a package that compiles only with a
# feature of a shared dependency that another package turns on would pass here (`cargo package`
# caught that: the price of one Burn build instead of four). The workspace's Cargo.lock pins the
# dependencies; the build directory is the checkout's, so units the tests compiled with the same
# profile and features (proc macros, build scripts) can be reused.
# docs/measurements/2026-12-06-ci-phases.md has the timings.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
readme="$root/README.md"
cd "$root"

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
  echo "packaged check: the README's dependency block or Burn example was not found" >&2
  exit 1
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
crates=()
for manifest in crates/*/Cargo.toml; do
  grep -q '^publish = false' "$manifest" && continue
  crates+=("$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -1)")
done

# Cargo keeps the packed crates of a workspace in a local registry keyed by this checkout's path
# and never re-extracts a name and version it has seen: drop what an earlier run left there.
cargo_home="${CARGO_HOME:-${HOME:-/tmp}/.cargo}"
for crate in "${crates[@]}"; do
  rm -rf "$cargo_home"/registry/src/-*/"$crate"-[0-9]* "$cargo_home"/registry/cache/-*/"$crate"-[0-9]*.crate
done
# The working tree may hold test outputs: this is a check, not a publish.
cargo package --workspace --no-verify --locked --allow-dirty --quiet

dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
members=""
patches=""
for crate in "${crates[@]}"; do
  tar -xzf "target/package/$crate-$version.crate" -C "$dir"
  members+="\"$crate-$version\", "
  patches+="$crate = { path = \"$crate-$version\" }"$'\n'
done
# Cargo names a path package's build units by its path relative to the workspace, the same in
# every run, and judges them fresh by file times: the unpacked files keep their packing times,
# which can be older than the last run's build, whose units would then be reused with the old
# sources. Newly unpacked files are new.
find "$dir" -type f -exec touch {} +
# The README's paths point into a checkout (../gradguard/crates/NAME): here, to the packages.
for crate in "${crates[@]}"; do
  deps="${deps//..\/gradguard\/crates\/$crate\"/$crate-$version\"}"
done
if grep -q '\.\./gradguard/' <<<"$deps"; then
  echo "packaged check: the README depends on a path that is not a packaged crate:" >&2
  grep '\.\./gradguard/' <<<"$deps" >&2
  exit 1
fi
mkdir -p "$dir/src"
{
  printf '[package]\nname = "fresh-gradguard-user"\nversion = "0.0.0"\nedition = "2024"\npublish = false\n\n'
  printf '%s\n\n' "$deps"
  printf '[workspace]\nmembers = [%s]\nresolver = "3"\n\n' "${members%, }"
  printf '[patch.crates-io]\n%s' "$patches"
} > "$dir/Cargo.toml"
printf '%s\n' "$example" > "$dir/src/main.rs"
cp Cargo.lock "$dir/Cargo.lock"

cd "$dir"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
# Unoptimized and without debug info: what is checked is that everything compiles and the example
# runs (20 steps of a 9-parameter model), not how fast; optimized, Burn alone takes minutes more.
# The README block's profile lines are still parsed; --config overrides their values.
unoptimized=(--config 'profile.dev.package."*".opt-level=0' --config 'profile.dev.debug=false')
cargo build --workspace --quiet "${unoptimized[@]}"
echo "packaged check: ${crates[*]} build from their packaged sources"
cargo run --quiet --package fresh-gradguard-user "${unoptimized[@]}"
echo "packaged check: the README's dependency lines build and run the README's Burn example"
