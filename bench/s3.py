#!/usr/bin/env python3
"""Bucket output (issue 12): large files from a local nginx into an S3-compatible bucket (moto's
server), each upload streamed while its file downloads (`--s3-streams 4`, the default) against
the same run uploading each file only after its download (`--s3-streams 0`, haul before this
change): wall time from start until every object is in place, and peak memory.

    python3 bench/s3.py                       # 3 rounds, modes alternating
    python3 bench/s3.py --rounds 1 --files 4 --size-mib 32

Three set-ups: the origin on loopback at full speed; an origin held to `--limit-rate` (one on
a real network, where the download and the upload take comparable time); and that origin with
`--s3-copy-max` below the files' size, so that they go straight to their keys without the
create-only copy from a staging key (moto copies in Python, at about the speed it receives an
upload: a cost S3 itself spends on its side). Every object is read back from the bucket and
its sha256 checked after each run (outside the timing).

Needs: nginx-light (Debian package), moto's server (scripts/test.sh installs it into
target/py-venv) and a release build of haul (built here).
"""
import argparse, hashlib, os, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (start_nginx, timed, free_port, DATA, HAUL, ROOT)

SIGNED = ("AWS4-HMAC-SHA256 Credential=haul-bench/20260101/us-east-1/s3/aws4_request, "
          "SignedHeaders=host, Signature=00")
BUCKET = "haul-bench"


def generate(count, size):
    d = bench.DATA / f"bucket-{count}x{size}"
    sums_file = d / "sums.txt"
    if sums_file.exists():
        return d, dict(line.split() for line in sums_file.read_text().splitlines())
    d.mkdir(parents=True, exist_ok=True)
    sums = {}
    for i in range(count):
        data = os.urandom(size)
        name = f"f{i:02d}.bin"
        (d / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    sums_file.write_text("".join(f"{k} {v}\n" for k, v in sums.items()))
    return d, sums


def s3(port, method, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers={"Authorization": SIGNED})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def start_moto(work):
    binary = bench.ROOT / "target" / "py-venv" / "bin" / "moto_server"
    if not binary.exists():
        sys.exit(f"{binary} is missing: run scripts/test.sh once (it installs moto[server])")
    port = bench.free_port()
    log = open(work / "moto.log", "w")
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    for _ in range(300):
        try:
            s3(port, "GET", "/")
            break
        except OSError:
            time.sleep(0.1)
    s3(port, "PUT", f"/{BUCKET}")
    return port, proc


def check_and_clear(port, prefix, sums):
    bad = 0
    for name, want in sums.items():
        path = f"/{BUCKET}/{prefix}/{name}"
        try:
            got = hashlib.sha256(s3(port, "GET", path)).hexdigest()
        except OSError:
            got = None
        bad += got != want
        try:
            s3(port, "DELETE", path)
        except OSError:
            pass
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--limit-rate", default="100M", help="the slow origin's bytes per second over all transfers")
    ap.add_argument("-j", type=int, default=4)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "haul-cli"], cwd=bench.ROOT, check=True)
    data, sums = generate(args.files, args.size_mib << 20)
    work = Path(tempfile.mkdtemp(prefix="haul-bench-s3-"))
    nginx_port, nginx_pid = bench.start_nginx(work / "nginx")
    moto_port, moto = start_moto(work)
    manifest = work / "list.txt"
    manifest.write_text("".join(f"http://127.0.0.1:{nginx_port}/{data.name}/{n}\n" for n in sums))
    env = dict(os.environ, AWS_ACCESS_KEY_ID="haul-bench", AWS_SECRET_ACCESS_KEY="haul-bench",
               AWS_REGION="us-east-1", HAUL_S3_ENDPOINT=f"http://127.0.0.1:{moto_port}")
    limit = ["--limit-rate", args.limit_rate]
    origins = {
        "loopback, copy": [],
        f"{args.limit_rate}B/s, copy": limit,
        f"{args.limit_rate}B/s, straight": limit + ["--s3-copy-max", f"{args.size_mib // 2}M"],
    }
    modes = {"after download": ["--s3-streams", "0"], "streamed": []}
    results = {(o, m): [] for o in origins for m in modes}
    run = 0
    try:
        for r in range(args.rounds):
            for origin, extra in origins.items():
                order = list(modes) if r % 2 == 0 else list(reversed(modes))
                for mode in order:
                    run += 1
                    prefix = f"run{run}"
                    stage = work / f"stage{run}"
                    cmd = [str(bench.HAUL), "get", "-i", str(manifest), "-o", f"s3://{BUCKET}/{prefix}",
                           "--stage-dir", str(stage), "-j", str(args.j), "--progress", "none",
                           *modes[mode], *extra]
                    start = time.perf_counter()
                    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(work / "rss")] + cmd, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    wall = time.perf_counter() - start
                    rss = int((work / "rss").read_text().split()[-1])
                    bad = check_and_clear(moto_port, prefix, sums)
                    if proc.returncode != 0 or bad:
                        sys.exit(f"{origin}/{mode}: exit {proc.returncode}, {bad} bad objects\n{proc.stderr.decode()}")
                    results[(origin, mode)].append((wall, rss))
                    print(f"round {r + 1} {origin:>22} {mode:>15}: {wall:6.2f} s, peak RSS {rss / 1024:6.1f} MiB",
                          flush=True)
    finally:
        moto.terminate()
        moto.wait()
        subprocess.run(["kill", str(nginx_pid)])
    total = args.files * args.size_mib
    print(f"\n{args.files} files × {args.size_mib} MiB ({total} MiB), -j {args.j}, medians of {args.rounds}:")
    print("| origin, promote | after download s | streamed s | after ÷ streamed | peak RSS after / streamed MiB |")
    print("|---|---:|---:|---:|---:|")
    for origin in origins:
        a = [w for w, _ in results[(origin, "after download")]]
        s = [w for w, _ in results[(origin, "streamed")]]
        ra = max(m for _, m in results[(origin, "after download")]) / 1024
        rs = max(m for _, m in results[(origin, "streamed")]) / 1024
        print(f"| {origin} | {statistics.median(a):.2f} | {statistics.median(s):.2f} | "
              f"{statistics.median(a) / statistics.median(s):.2f}× | {ra:.0f} / {rs:.0f} |")


if __name__ == "__main__":
    main()
