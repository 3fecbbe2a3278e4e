#!/usr/bin/env python3
"""haul's throughput benchmark against the peers a user would pick instead.

Generates the data sets, serves them with a throwaway nginx on 127.0.0.1, then runs haul,
curl --parallel, wget2 and aria2c at the same concurrency, alternating tool order each round,
verifies every downloaded file's sha256, and prints files/s, MB/s, peak RSS and CPU seconds for
each, with haul's ratio to the best peer. wrk on the same URLs gives the server-side ceiling and a
plain `cp -r` of the data set the disk-side ceiling.

    python3 bench/bench.py                      # all sets, 3 rounds (medians)
    python3 bench/bench.py --sets small --rounds 1
    python3 bench/bench.py --tools haul --baseline /path/to/older/haul   # a change against the build before it

Needs: nginx-light curl wget2 aria2 wrk (Debian packages) and a release build of haul.
"""
import argparse, hashlib, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
HAUL = ROOT / "target" / "release" / "haul"
BASELINE = None
SETS = {
    "small": dict(count=30000, sizes=lambda r: r.randint(2048, 8192)),
    "medium": dict(count=5000, sizes=lambda r: max(1024, int(r.lognormvariate(11.9, 0.6)))),  # median ~150 KB
    "large": dict(count=8, sizes=lambda r: 100 * 1024 * 1024),
}


def generate(name):
    spec = SETS[name]
    d = DATA / name
    manifest = DATA / f"{name}.sums.json"
    if manifest.exists():
        return json.loads(manifest.read_text())
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    sums = {}
    for i in range(spec["count"]):
        size = spec["sizes"](rng)
        fname = f"f{i:05d}.bin"
        data = rng.randbytes(size) if size < 1 << 20 else os.urandom(size)
        (d / fname).write_bytes(data)
        sums[fname] = hashlib.sha256(data).hexdigest()
    manifest.write_text(json.dumps(sums))
    return sums


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(work):
    port = free_port()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(f"""worker_processes 1; daemon on; pid {work}/nginx.pid; error_log {work}/logs/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path {work}/tmp/b; proxy_temp_path {work}/tmp/p; fastcgi_temp_path {work}/tmp/f;
  uwsgi_temp_path {work}/tmp/u; scgi_temp_path {work}/tmp/s;
  server {{ listen 127.0.0.1:{port}; root {DATA}; }} }}
""")
    subprocess.run(["nginx", "-c", str(conf), "-p", str(work), "-e", str(work / "logs/error.log")], check=True)
    for _ in range(100):
        if (work / "nginx.pid").exists():
            break
        time.sleep(0.05)
    return port, int((work / "nginx.pid").read_text())


def timed(cmd, cwd=None):
    """Runs cmd under GNU time; returns (wall s, cpu s, peak RSS KiB, exit code)."""
    fmt = "%e %U %S %M"
    tfile = tempfile.NamedTemporaryFile(delete=False)
    tfile.close()
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", fmt, "-o", tfile.name] + cmd, cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    e, u, s, m = open(tfile.name).read().split()[-4:]
    os.unlink(tfile.name)
    return wall, float(u) + float(s), int(m), proc.returncode


def verify(out, sums):
    bad = 0
    for name, want in sums.items():
        p = out / name
        try:
            h = hashlib.sha256(p.read_bytes()).hexdigest()
        except FileNotFoundError:
            h = None
        bad += h != want
    return bad


def tools(port, setname, sums, work, j):
    urls = [f"http://127.0.0.1:{port}/{setname}/{n}" for n in sums]
    (work / "urls.txt").write_text("\n".join(urls) + "\n")
    curl_cfg = work / "curl.cfg"
    with open(curl_cfg, "w") as f:
        for n, u in zip(sums, urls):
            f.write(f'url = "{u}"\noutput = "{n}"\n')
    return {
        "haul": lambda out: [str(HAUL), "get", "-i", str(work / "urls.txt"), "-o", str(out), "-j", str(j), "--per-host", str(j), "--progress", "none"],
        "haul-noarchive": lambda out: [str(HAUL), "get", "-i", str(work / "urls.txt"), "-o", str(out), "-j", str(j), "--per-host", str(j), "--progress", "none", "--no-archive"],
        "baseline": lambda out: [str(BASELINE), "get", "-i", str(work / "urls.txt"), "-o", str(out), "-j", str(j), "--per-host", str(j), "--progress", "none"],
        "curl": lambda out: ["curl", "-s", "--parallel", "--parallel-max", str(j), "--output-dir", str(out), "-K", str(curl_cfg)],
        "wget2": lambda out: ["wget2", "-q", "--max-threads", str(j), "--no-robots", "-i", str(work / "urls.txt"), "-P", str(out)],
        "aria2c": lambda out: ["aria2c", "-q", "-j", str(j), "-x1", "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false", "-i", str(work / "urls.txt"), "-d", str(out)],
        "aria2c-x8": lambda out: ["aria2c", "-q", "-j", str(j), "-x8", "-s8", "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false", "-i", str(work / "urls.txt"), "-d", str(out)],
        "haul-nodigest": lambda out: [str(HAUL), "get", "-i", str(work / "urls.txt"), "-o", str(out), "-j", str(j), "--per-host", str(j), "--progress", "none", "--digest", "none"],
    }


def wrk_ceiling(port, setname, sums, work, j):
    paths = list(sums)[:20000]
    lua = work / "paths.lua"
    lua.write_text("paths = {" + ",".join(f'"/{setname}/{p}"' for p in paths) + "}\ni = 0\n"
                   "request = function() i = i % #paths + 1; return wrk.format('GET', paths[i]) end\n")
    out = subprocess.run(["wrk", "-t2", f"-c{j}", "-d5s", "-s", str(lua), f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True).stdout
    rps = next((float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec")), 0.0)
    return rps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="small,medium,large")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-j", type=int, default=16)
    ap.add_argument("--tools", default="haul,haul-noarchive,curl,wget2,aria2c")
    ap.add_argument("--baseline", help="another haul binary (an earlier build) to run as the tool 'baseline'")
    ap.add_argument("--out-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where downloads go (default tmpfs: on this machine's ext4, creating files right "
                         "after deleting thousands is dominated by the kernel's inode allocation)")
    args = ap.parse_args()
    global BASELINE
    if args.baseline:
        BASELINE = Path(args.baseline).resolve()
        if "baseline" not in args.tools.split(","):
            args.tools += ",baseline"
    if not HAUL.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "haul-cli"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="haul-bench."))
    port, pid = start_nginx(work)
    rows = []
    try:
        for setname in args.sets.split(","):
            sums = generate(setname)
            total_bytes = sum((DATA / setname / n).stat().st_size for n in sums)
            cmds = tools(port, setname, sums, work, args.j)
            names = [t for t in args.tools.split(",") if t in cmds]
            results = {t: [] for t in names + ["cp"]}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for t in order + ["cp"]:
                    out = Path(args.out_root or work) / f"haul-bench-out-{os.getpid()}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    cmd = ["cp", "-r", str(DATA / setname) + "/.", str(out)] if t == "cp" else cmds[t](out)
                    wall, cpu, rss, code = timed(cmd)
                    bad = verify(out, sums)
                    results[t].append((wall, cpu, rss, code, bad))
                    print(f"  {setname} round {r + 1} {t}: {wall:.2f}s exit {code} bad {bad}", file=sys.stderr)
            shutil.rmtree(Path(args.out_root or work) / f"haul-bench-out-{os.getpid()}", ignore_errors=True)
            rps = wrk_ceiling(port, setname, sums, work, args.j)
            for t, runs in results.items():
                wall = statistics.median(x[0] for x in runs)
                rows.append(dict(set=setname, tool=t, files_s=len(sums) / wall, mb_s=total_bytes / wall / 1e6,
                                 rss_mb=max(x[2] for x in runs) / 1024, cpu_s=statistics.median(x[1] for x in runs),
                                 bad=sum(x[4] for x in runs), failed_runs=sum(x[3] != 0 for x in runs)))
            rows.append(dict(set=setname, tool="wrk (server ceiling)", files_s=rps, mb_s=rps * total_bytes / len(sums) / 1e6,
                             rss_mb=0, cpu_s=0, bad=0, failed_runs=0))
    finally:
        os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n| set | tool | files/s | MB/s | peak RSS MB | CPU s | bad files | haul ÷ this |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for setname in args.sets.split(","):
        haul = next(r for r in rows if r["set"] == setname and r["tool"] == "haul")
        for r in (x for x in rows if x["set"] == setname):
            ratio = haul["files_s"] / r["files_s"] if r["files_s"] else 0
            print(f"| {setname} | {r['tool']} | {r['files_s']:.0f} | {r['mb_s']:.0f} | {r['rss_mb']:.1f} | {r['cpu_s']:.2f} | "
                  f"{r['bad']}{' (exit≠0: ' + str(r['failed_runs']) + ')' if r['failed_runs'] else ''} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
