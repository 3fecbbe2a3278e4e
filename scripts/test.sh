#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, doc, integration against a real
# nginx and haul's fault server). Needs nginx-light installed (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Bounded: a test that hangs fails the run instead of stalling CI (the suite takes a few minutes).
timeout --kill-after=30 1500 cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary, the last often empty).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
