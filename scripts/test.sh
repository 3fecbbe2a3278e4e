#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, doc, integration against a real
# nginx and haul's fault server). Needs nginx-light installed (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --workspace
