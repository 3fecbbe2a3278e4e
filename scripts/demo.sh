#!/usr/bin/env bash
# The main job on a local demo: serve 2,000 generated files (plus a few that fail or need a
# retry) from haul's own test server on 127.0.0.1, download them with haul, show the archive,
# then run again to show that a rerun fetches nothing. Everything stays under $DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-$(mktemp -d /tmp/haul-demo.XXXXXX)}
cargo build --release --quiet -p haul-cli -p haul-test
./target/release/haul-testserver --seconds 600 > "$DEMO_DIR/server.txt" &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do [ -s "$DEMO_DIR/server.txt" ] && break; sleep 0.1; done
BASE=$(head -1 "$DEMO_DIR/server.txt")
{
  echo "# haul demo manifest: photos and videos of many sizes"
  for i in $(seq 1 2000); do echo "$BASE/f/photo$i.jpg?size=$(( (i * 7919) % 400000 + 2000 ))&rate=$(( i % 50 == 0 ? 2000000 : 0 ))"; done
  for i in 1 2 3; do echo "$BASE/f/video$i.mp4?size=$(( 40000000 * i ))&rate=20000000"; done
  echo "$BASE/f/flaky.bin?size=500000&reset=100000&times=2"
  echo "$BASE/f/busy.bin?size=1000&status=503&retry_after=1&times=1"
  echo "$BASE/f/gone.bin?status=404"
} | sed 's/&rate=0$//' > "$DEMO_DIR/urls.txt"
echo "manifest: $DEMO_DIR/urls.txt ($(grep -vc '^#' "$DEMO_DIR/urls.txt") URLs); output: $DEMO_DIR/out"
set +e
./target/release/haul get -i "$DEMO_DIR/urls.txt" -o "$DEMO_DIR/out" -j 32 --per-host 32 --report "$DEMO_DIR/report.jsonl" "$@"
echo "exit code: $? (1 = some jobs failed: the demo includes one 404 on purpose)"
./target/release/haul status "$DEMO_DIR/out"
echo "--- a rerun skips everything already done (no request for those files):"
./target/release/haul get -i "$DEMO_DIR/urls.txt" -o "$DEMO_DIR/out" --progress plain
echo "exit code: $?"
