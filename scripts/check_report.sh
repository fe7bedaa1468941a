#!/usr/bin/env bash
# Renders a gradguard HTML report in headless Chromium and saves a screenshot:
#   scripts/check_report.sh gradguard-demo/report.html [report.png]
# Needs Debian's chromium (apt-get install chromium). The flags keep it off the network.
set -euo pipefail
report="$(realpath "$1")"
shot="${2:-${1%.html}.png}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --window-size=1280,4000 \
  --screenshot="$shot" "file://$report" 2>/dev/null
echo "$shot"
