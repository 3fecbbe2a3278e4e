#!/usr/bin/env bash
# Skip-rate benchmark (issue 3): a 1,000,000-row archive, then a 1,000,000-line manifest whose
# jobs are all done. haul must skip them without a request; prints jobs/s and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
W=$(mktemp -d /tmp/haul-skip.XXXXXX)
trap 'rm -rf "$W"' EXIT
cargo build --release --quiet -p haul-cli
python3 - "$W" "$N" <<'PY'
import sys
w, n = sys.argv[1], int(sys.argv[2])
with open(f"{w}/ids.txt", "w") as ids, open(f"{w}/m.jsonl", "w") as m:
    for i in range(n):
        ids.write(f"post-{i}\n")
        # Port 9 (discard) on loopback: any request would fail, so a skip is visibly request-free.
        m.write(f'{{"id":"post-{i}","url":"http://127.0.0.1:9/p/{i}.jpg"}}\n')
PY
./target/release/haul archive import --archive "$W/out" "$W/ids.txt"
/usr/bin/time -f "%e s wall, %M KiB peak RSS" ./target/release/haul get -i "$W/m.jsonl" -o "$W/out" --progress none 2> "$W/time.txt" || true
cat "$W/time.txt"
secs=$(tail -1 "$W/time.txt" | cut -d' ' -f1)
python3 -c "print(f'skip rate: {$N/$secs:,.0f} jobs/s over $N jobs')"

# The same with files on disk: rows that record a path (as haul writes them), each file present
# in one of 1,000 directories, so every skip costs the existence check (one stat) too.
W2=$(mktemp -d /tmp/haul-skip-files.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$W" "$W2"' EXIT
./target/release/haul archive import --archive "$W2/out" /dev/null > /dev/null
python3 - "$W2" "$N" <<'PY'
import os, sqlite3, sys
w, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(f"{w}/out/.haul/archive.sqlite")
rows = []
for i in range(n):
    d = f"{w}/out/d{i // 1000}"
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    os.close(os.open(f"{d}/{i}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    rows.append((f"post-{i}", f"http://127.0.0.1:9/p/{i}.jpg", f"d{i // 1000}/{i}.jpg"))
db.executemany("INSERT INTO jobs (id, url, path, size, status, attempts, first_seen, updated) "
               "VALUES (?, ?, ?, 0, 'done', 1, 0, 0)", rows)
db.commit()
PY
sync
/usr/bin/time -f "%e s wall, %M KiB peak RSS" ./target/release/haul get -i "$W/m.jsonl" -o "$W2/out" --progress none 2> "$W2/time.txt" || true
grep -v "^note" "$W2/time.txt" | tail -3
secs=$(tail -1 "$W2/time.txt" | cut -d' ' -f1)
python3 -c "print(f'skip rate with files on disk (one stat each): {$N/$secs:,.0f} jobs/s over $N jobs')"
