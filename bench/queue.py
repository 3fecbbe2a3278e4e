#!/usr/bin/env python3
"""The shared queue (issue 12): 1, 2 and 4 `haul work` processes on this machine against a local
nginx, 30,000 small files from a PostgreSQL queue, against `haul get` (SQLite archive) on the
same files; and the enqueue rate of a 1,000,000-line manifest against psql's own COPY of the
same lines into the same kind of table (the database's ceiling).

    python3 bench/queue.py                  # 5 rounds, tools alternating
    python3 bench/queue.py --rounds 1 --enqueue-lines 200000

Every worker gets `-j 16` and a per-host share of 16 (the fleet's `--per-host` is 16 × workers),
as `haul get -j 16 --per-host 16` does alone. PostgreSQL runs with synchronous_commit=off (a
crash may lose the last commits, as SQLite's WAL with synchronous=NORMAL may on power loss).

Needs: nginx-light and postgresql (Debian packages) and a release build of haul (built here).
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (generate, start_nginx, verify, HAUL, ROOT)

ROOT = bench.ROOT
HAUL = bench.HAUL


def pg_bin():
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        sys.exit("PostgreSQL is required: apt-get install postgresql")
    return versions[-1].parent


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def start_postgres(work):
    bin_dir = pg_bin()
    data = work / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(work, "postgres", "postgres")
    subprocess.run(as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]), check=True, stdout=subprocess.DEVNULL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data} "
            "-c synchronous_commit=off -c shared_buffers=256MB -c max_connections=100")
    subprocess.run(as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o", opts, "start"]),
                   check=True, stdout=subprocess.DEVNULL)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return f"postgres://postgres@127.0.0.1:{port}/postgres", pid


def stop(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def psql(url, *commands):
    """Runs each command (SQL, or one backslash command) in order in one session."""
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]
    for c in commands:
        args += ["-c", c]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def reset(url):
    psql(url, "DROP TABLE IF EXISTS haul_jobs, haul_results, haul_chunks, haul_hosts, haul_workers CASCADE")


def run_workers(url, n, out, j=16):
    env = dict(os.environ, HAUL_QUEUE=url)
    started = time.perf_counter()
    procs = [subprocess.Popen([str(HAUL), "work", "-o", str(out), "-j", str(j), "--per-host", str(j * n),
                               "--progress", "none"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(n)]
    failed = 0
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            failed += 1
            print(err.decode()[-500:], file=sys.stderr)
    return time.perf_counter() - started, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--enqueue-lines", type=int, default=1_000_000)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "haul-cli"], cwd=ROOT, check=True)
    sums = bench.generate("small")
    work = Path(tempfile.mkdtemp(prefix="haul-queue."))
    os.chmod(work, 0o755)
    # Outputs on a RAM file system when there is one: on this machine's ext4, creating 30,000 files
    # right after deleting the last run's 30,000 spends seconds in the kernel's inode allocator
    # (recently_deleted, seen with perf), whichever tool runs; tmpfs measures the tools instead.
    outs = Path(tempfile.mkdtemp(prefix="haul-queue-out.", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    port, nginx_pid = bench.start_nginx(work / "nginx")
    url, pg_pid = start_postgres(work)
    urls = [f"http://127.0.0.1:{port}/small/{n}" for n in sums]
    (work / "urls.txt").write_text("\n".join(urls) + "\n")
    names = ["haul get (SQLite)", "1 worker", "2 workers", "4 workers"]
    results = {n: [] for n in names}
    enqueue = []
    try:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                out = outs / "out"
                shutil.rmtree(out, ignore_errors=True)
                if name.startswith("haul get"):
                    started = time.perf_counter()
                    p = subprocess.run([str(HAUL), "get", "-i", str(work / "urls.txt"), "-o", str(out), "-j", "16",
                                        "--per-host", "16", "--progress", "none"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                    wall, failed = time.perf_counter() - started, int(p.returncode != 0)
                else:
                    reset(url)
                    e0 = time.perf_counter()
                    subprocess.run([str(HAUL), "enqueue", "-i", str(work / "urls.txt")], env=dict(os.environ, HAUL_QUEUE=url),
                                   check=True, stderr=subprocess.DEVNULL)
                    enqueue.append(len(urls) / (time.perf_counter() - e0))
                    wall, failed = run_workers(url, int(name.split()[0]), out)
                bad = bench.verify(out, sums)
                results[name].append(wall)
                print(f"  round {r + 1} {name}: {wall:.2f}s, {bad} wrong or missing, {failed} failed",
                      file=sys.stderr)
                assert bad == 0 and failed == 0, name
        # Enqueue rate: a manifest of distinct URLs, against psql's COPY of the same lines into the
        # same columns, with the same primary key and the same ON CONFLICT insert.
        big = work / "big.txt"
        with open(big, "w") as f:
            for i in range(args.enqueue_lines):
                f.write(f"http://127.0.0.1:{port}/small/f{i % 30000:05d}.bin?n={i}\n")
        rates = {"haul enqueue": [], "psql COPY + INSERT … ON CONFLICT": []}
        for r in range(args.rounds):
            reset(url)
            # Each timed load starts from a checkpoint: the last round's dirty pages and WAL are
            # not flushed during this one (the same for both).
            psql(url, "CHECKPOINT")
            started = time.perf_counter()
            subprocess.run([str(HAUL), "enqueue", "-i", str(big)], env=dict(os.environ, HAUL_QUEUE=url), check=True,
                           stderr=subprocess.DEVNULL)
            rates["haul enqueue"].append(args.enqueue_lines / (time.perf_counter() - started))
            psql(url, "DROP TABLE IF EXISTS peer_jobs; CREATE TABLE peer_jobs (name TEXT COLLATE \"C\", "
                      "id TEXT COLLATE \"C\", seq BIGSERIAL, host TEXT COLLATE \"C\", spec TEXT, PRIMARY KEY (name, id)); "
                      "CREATE INDEX ON peer_jobs (name, host, seq)")
            psql(url, "CHECKPOINT")
            started = time.perf_counter()
            psql(url, "CREATE TEMP TABLE incoming (id TEXT)", f"\\copy incoming FROM '{big}'",
                 "INSERT INTO peer_jobs (name, id, host, spec) SELECT 'default', id, '127.0.0.1', id FROM incoming "
                 "ON CONFLICT DO NOTHING")
            rates["psql COPY + INSERT … ON CONFLICT"].append(args.enqueue_lines / (time.perf_counter() - started))
            print(f"  round {r + 1} enqueue: haul {rates['haul enqueue'][-1]:,.0f} lines/s, "
                  f"psql {rates['psql COPY + INSERT … ON CONFLICT'][-1]:,.0f} lines/s", file=sys.stderr)
    finally:
        stop(nginx_pid, 3)  # SIGQUIT: graceful
        stop(pg_pid, 2)     # SIGINT: fast shutdown
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(outs, ignore_errors=True)
    n = len(sums)
    base = statistics.median(results[names[0]])
    print(f"\n{n:,} files of 2–8 KB from nginx on 127.0.0.1 into {outs.parent}, medians of {args.rounds} rounds\n")
    print("| run | wall s | files/s | ÷ haul get |")
    print("|---|---:|---:|---:|")
    for name in names:
        wall = statistics.median(results[name])
        print(f"| {name} | {wall:.2f} | {n / wall:,.0f} | {base / wall:.2f}× |")
    # The machine's speed drifts within a run (a shared 2-core VM): each round's ratio, from
    # runs minutes apart at most, shows the spread the medians hide.
    for name in names[1:]:
        ratios = [g / w for g, w in zip(results[names[0]], results[name])]
        per_round = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"\n{name} ÷ haul get, round by round: {per_round} (median {statistics.median(ratios):.2f})", end="")
    print()
    print(f"\nenqueue of the 30,000-line list before each worker run: {statistics.median(enqueue):,.0f} lines/s")
    peer = statistics.median(rates["psql COPY + INSERT … ON CONFLICT"])
    print(f"\n{args.enqueue_lines:,}-line manifest, medians of {args.rounds} rounds\n")
    print("| enqueue | lines/s | ÷ psql |")
    print("|---|---:|---:|")
    for name, runs in rates.items():
        rate = statistics.median(runs)
        print(f"| {name} | {rate:,.0f} | {rate / peer:.2f}× |")


if __name__ == "__main__":
    main()
