#!/usr/bin/env python3
"""Segmented transfers (issue 11): one large file from a server that throttles every connection
(haul's test server, `rate=` per response), haul --split 8 against aria2c -x8 -s8 and wget2
--chunk-size, and one stream (haul --split 1), alternating the tool order each round.

    python3 bench/split.py                 # 128 MiB at 8 MB/s per connection, 3 rounds
    python3 bench/split.py --mib 64 --rate 4000000 --rounds 1

Every download is compared with a reference fetched once by curl (sha256). Prints MB/s, CPU
seconds and haul's ratio to each. Needs: curl wget2 aria2 (Debian packages); builds haul and
haul-testserver in release mode.
"""
import argparse, hashlib, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAUL = ROOT / "target" / "release" / "haul"
SERVER = ROOT / "target" / "release" / "haul-testserver"


def timed(cmd):
    """Runs cmd under GNU time: (wall s, cpu s, exit code)."""
    tfile = tempfile.NamedTemporaryFile(delete=False)
    tfile.close()
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", tfile.name] + cmd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    u, s = open(tfile.name).read().split()[-2:]
    os.unlink(tfile.name)
    return wall, float(u) + float(s), proc.returncode


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=128, help="file size in MiB")
    ap.add_argument("--rate", type=int, default=8_000_000, help="bytes/s per connection")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "haul-cli", "-p", "haul-test"], cwd=ROOT, check=True)
    server = subprocess.Popen([str(SERVER)], stdout=subprocess.PIPE, text=True)
    base = server.stdout.readline().strip()
    size = args.mib * 1024 * 1024
    url = f"{base}/f/big.bin?size={size}&rate={args.rate}"
    work = Path(tempfile.mkdtemp(prefix="haul-split.", dir=args.out_root))
    tools = {
        "haul --split 8": lambda out: [str(HAUL), "get", url, "-o", str(out), "--split", "8", "--progress", "none"],
        "aria2c -x8 -s8": lambda out: ["aria2c", "-q", "-x8", "-s8", "--file-allocation=none",
                                        "--allow-overwrite=true", "-d", str(out), "-o", "big.bin", url],
        "haul --split 1": lambda out: [str(HAUL), "get", url, "-o", str(out), "--split", "1", "--progress", "none"],
        "wget2 --chunk-size 16M": lambda out: ["wget2", "-q", "--no-robots", "--max-threads", "8", "--chunk-size", "16M",
                                               "-O", str(out / "big.bin"), url],
    }
    names = list(tools)
    results = {t: [] for t in names}
    try:
        ref_dir = work / "ref"
        ref_dir.mkdir()
        subprocess.run(["curl", "-s", "-o", str(ref_dir / "big.bin"), f"{base}/f/big.bin?size={size}"], check=True)
        want = sha256(ref_dir / "big.bin")
        shutil.rmtree(ref_dir)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for t in order:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                wall, cpu, code = timed(tools[t](out))
                files = [p for p in out.rglob("*") if p.is_file() and ".haul" not in p.parts]
                ok = code == 0 and len(files) == 1 and sha256(files[0]) == want
                results[t].append((wall, cpu, ok))
                print(f"  round {r + 1} {t}: {wall:.2f}s cpu {cpu:.2f}s {'ok' if ok else 'BAD'}", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.mib} MiB, each connection throttled to {args.rate / 1e6:.0f} MB/s, medians of {args.rounds} rounds\n")
    print("| tool | MB/s | CPU s | correct runs | haul --split 8 ÷ this |")
    print("|---|---:|---:|---:|---:|")
    med = {t: statistics.median(x[0] for x in runs) for t, runs in results.items()}
    for t, runs in results.items():
        cpu = statistics.median(x[1] for x in runs)
        good = sum(x[2] for x in runs)
        print(f"| {t} | {size / med[t] / 1e6:.1f} | {cpu:.2f} | {good}/{len(runs)} | {med[t] / med['haul --split 8']:.2f}× |")


if __name__ == "__main__":
    main()
