#!/usr/bin/env python3
"""HTTP/2 against HTTP/1.1 over TLS (issue 11): the same files from one nginx on two TLS ports,
one offering h2 by ALPN and one HTTP/1.1 only, fetched by haul and by curl --parallel, alternating
the order each round. Prints files/s, CPU seconds and the TCP connections the server saw (its
access log's $connection).

    python3 bench/h2.py                      # small and medium sets, 3 rounds
    python3 bench/h2.py --sets medium --rounds 1

Needs: nginx-light openssl curl (Debian packages); the data sets of bench/bench.py (made here).
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (generate, timed, verify, free_port)

ROOT = bench.ROOT
HAUL = bench.HAUL


def start_nginx(work):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
                   check=True, capture_output=True)
    h2, h1 = bench.free_port(), bench.free_port()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    tls = f"ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/key.pem; root {bench.DATA};"
    (work / "nginx.conf").write_text(f"""worker_processes 1; daemon on; pid {work}/nginx.pid; error_log {work}/logs/error.log;
events {{ worker_connections 4096; }}
http {{ log_format conn '$server_port $connection'; access_log {work}/logs/access.log conn;
  client_body_temp_path {work}/tmp/b; proxy_temp_path {work}/tmp/p; fastcgi_temp_path {work}/tmp/f;
  uwsgi_temp_path {work}/tmp/u; scgi_temp_path {work}/tmp/s;
  sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 120s;
  http2_max_concurrent_streams 128;
  server {{ listen 127.0.0.1:{h2} ssl http2; {tls} }}
  server {{ listen 127.0.0.1:{h1} ssl; {tls} }}
}}
""")
    subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-e", str(work / "logs/error.log")], check=True)
    for _ in range(200):
        if (work / "nginx.pid").exists():
            break
        time.sleep(0.05)
    return h2, h1, int((work / "nginx.pid").read_text())


def connections(work, port):
    """Distinct connections the server saw on `port` since the log was last emptied."""
    log = work / "logs" / "access.log"
    seen = {line.split()[1] for line in log.read_text().splitlines() if line.startswith(f"{port} ")}
    return len(seen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="small,medium")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-j", type=int, default=16)
    ap.add_argument("--out-root", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    if not HAUL.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "haul-cli"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="haul-h2."))
    h2, h1, pid = start_nginx(work)
    cert = work / "cert.pem"
    j = str(args.j)
    rows = []
    try:
        for setname in args.sets.split(","):
            sums = bench.generate(setname)
            total = sum((bench.DATA / setname / n).stat().st_size for n in sums)
            lists = {}
            for port in (h2, h1):
                urls = [f"https://127.0.0.1:{port}/{setname}/{n}" for n in sums]
                lists[port] = work / f"urls-{port}.txt"
                lists[port].write_text("\n".join(urls) + "\n")
                with open(work / f"curl-{port}.cfg", "w") as f:
                    for n, u in zip(sums, urls):
                        f.write(f'url = "{u}"\noutput = "{n}"\n')
            tools = {
                "haul, h2 (ALPN)": (h2, lambda out: [str(HAUL), "get", "-i", str(lists[h2]), "-o", str(out), "-j", j,
                                                      "--per-host", j, "--ca-cert", str(cert), "--progress", "none"]),
                "haul, HTTP/1.1": (h1, lambda out: [str(HAUL), "get", "-i", str(lists[h1]), "-o", str(out), "-j", j,
                                                     "--per-host", j, "--ca-cert", str(cert), "--progress", "none"]),
                "curl --parallel, h2": (h2, lambda out: ["curl", "-s", "--http2", "--cacert", str(cert), "--parallel",
                                                          "--parallel-max", j, "--output-dir", str(out), "-K",
                                                          str(work / f"curl-{h2}.cfg")]),
                "curl --parallel, HTTP/1.1": (h1, lambda out: ["curl", "-s", "--http1.1", "--cacert", str(cert),
                                                                "--parallel", "--parallel-max", j, "--output-dir",
                                                                str(out), "-K", str(work / f"curl-{h1}.cfg")]),
            }
            names = list(tools)
            results = {t: [] for t in names}
            for r in range(args.rounds):
                for t in names[r % len(names):] + names[:r % len(names)]:
                    port, cmd = tools[t]
                    out = Path(args.out_root or work) / f"haul-h2-out-{os.getpid()}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    (work / "logs" / "access.log").write_text("")
                    os.kill(pid, signal.SIGUSR1)  # reopen the log
                    time.sleep(0.1)
                    wall, cpu, _rss, code = bench.timed(cmd(out))
                    bad = bench.verify(out, sums)
                    results[t].append((wall, cpu, connections(work, port), code, bad))
                    print(f"  {setname} round {r + 1} {t}: {wall:.2f}s exit {code} bad {bad}", file=sys.stderr)
            shutil.rmtree(Path(args.out_root or work) / f"haul-h2-out-{os.getpid()}", ignore_errors=True)
            for t, runs in results.items():
                wall = statistics.median(x[0] for x in runs)
                rows.append((setname, t, len(sums) / wall, total / wall / 1e6, statistics.median(x[1] for x in runs),
                             max(x[2] for x in runs), sum(x[4] for x in runs)))
    finally:
        os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(work, ignore_errors=True)
    print("\n| set | tool | files/s | MB/s | CPU s | connections | bad files |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for setname, t, fps, mbs, cpu, conns, bad in rows:
        print(f"| {setname} | {t} | {fps:,.0f} | {mbs:,.0f} | {cpu:.2f} | {conns} | {bad} |")


if __name__ == "__main__":
    main()
