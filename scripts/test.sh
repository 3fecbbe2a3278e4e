#!/usr/bin/env bash
# The test command: formatting, lints, then every test (unit, doc, integration against a real
# nginx, PostgreSQL, moto's S3 server and haul's fault server). Needs nginx-light and postgresql
# installed (see .ci/run) and PyPI for moto, maturin and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# One virtual environment for the Python side of the tests: moto's S3-compatible server (the
# bucket-output tests start it) and, below, the Python package's build and test tools.
venv=target/py-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.1,<6' maturin pytest pytest-asyncio
export HAUL_MOTO_SERVER="$PWD/$venv/bin/moto_server"
# Bounded: a test that hangs fails the run instead of stalling CI (the suite takes a few minutes).
timeout --kill-after=30 1500 cargo test --workspace 2>&1 | tee "$log"
# The Python package (crates/haul-py): built as a wheel by pip (maturin) in a virtual environment,
# then its pytest suite against haul's test server (built here).
cargo build -q -p haul-test
timeout --kill-after=30 900 "$venv/bin/pip" install -q --disable-pip-version-check ./crates/haul-py
(cd crates/haul-py && timeout --kill-after=30 600 "../../$venv/bin/python" -m pytest -q -p no:cacheprovider tests) 2>&1 | tee -a "$log"
# One closing line for the whole suite (cargo prints one per test binary, the last often empty).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     /^[0-9]+ (passed|failed)/ && / in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed,?$/) p += $(i-1); if ($(i) ~ /^failed,?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
