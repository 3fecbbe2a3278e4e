#!/usr/bin/env python3
"""Politeness benchmark (issue 9): haul against curl --parallel, wget2, aria2c and the original
system's approach (aiohttp + aiofiles + tqdm, connection limit 3 and 5) on servers that answer
slowly, refuse beyond a capacity, or fail at random, all served by haul's test server on
127.0.0.1. Prints files/s, files that ended correct (right size), refusals/errors seen by the
server, and the ratios the issue names; draws the controller at work (bench/polite-controller.png).

    python3 bench/polite.py                     # all scenarios (about 10 minutes)
    python3 bench/polite.py --scenarios latency --files 500

Needs: curl wget2 aria2 (Debian packages), a release build of haul and haul-testserver (built
here), and a virtual environment (bench/.venv, made here) with aiohttp aiofiles tqdm matplotlib.
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAUL = ROOT / "target" / "release" / "haul"
SERVER = ROOT / "target" / "release" / "haul-testserver"
VENV = ROOT / "bench" / ".venv"

SCENARIOS = {
    # name: (server flags, files, -j for every tool, what it shows)
    "latency": (["--latency-ms", "100"], 2000, 64, "100 ms away, takes any load"),
    "capacity": (["--latency-ms", "50", "--capacity", "6", "--refuse-retry-after", "1"], 2000, 64,
                 "50 ms, serves 6 at once, 429 + Retry-After: 1 beyond"),
    "flaky": (["--latency-ms", "20", "--unavailable", "10", "--unavailable-retry-after", "1"], 2000, 16,
              "20 ms, 10% of requests 503 + Retry-After: 1"),
    "steady": (["--latency-ms", "20"], 2000, 16, "20 ms, no faults (the flaky server's fault-free twin)"),
}


def venv_python():
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import aiohttp, aiofiles, tqdm, matplotlib"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "aiohttp", "aiofiles", "tqdm", "matplotlib"], check=True)
    return python


def size_of(i):
    """About 150 KB, varied (deterministic)."""
    return 100_000 + (i * 7919) % 100_000


def start_server(flags, work):
    log = work / "server.log"
    proc = subprocess.Popen([str(SERVER), "--log", str(log)] + flags, stdout=subprocess.PIPE, text=True)
    base = proc.stdout.readline().strip()
    return proc, base, log


def stop_server(proc, log):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    statuses = [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []
    return {code: statuses.count(code) for code in set(statuses)}


def count_correct(out, files):
    want = {f"p{i}.jpg": size_of(i) for i in range(files)}
    ok = 0
    for dirpath, _, names in os.walk(out):
        if ".haul" in dirpath:
            continue
        for name in names:
            stem = name.split("?")[0]
            if stem in want and os.path.getsize(os.path.join(dirpath, name)) == want[stem]:
                ok += 1
                del want[stem]
    return ok


def commands(base, files, j, work, out, python):
    urls = [f"{base}/f/p{i}.jpg?size={size_of(i)}" for i in range(files)]
    (work / "urls.txt").write_text("\n".join(urls) + "\n")
    curl_cfg = work / "curl.cfg"
    curl_cfg.write_text("".join(f'url = "{u}"\noutput = "p{i}.jpg"\n' for i, u in enumerate(urls)))
    haul = [str(HAUL), "get", "-i", str(work / "urls.txt"), "-o", str(out), "--progress", "none", "--retries", "20"]
    return {
        "haul (defaults)": haul,
        f"haul -j {j} --per-host {j}": haul + ["-j", str(j), "--per-host", str(j)],
        f"haul -j {j} --per-host {j} --no-adaptive": haul + ["-j", str(j), "--per-host", str(j), "--no-adaptive"],
        f"curl --parallel-max {j}": ["curl", "-s", "--parallel", "--parallel-max", str(j), "--retry", "5",
                                     "--output-dir", str(out), "-K", str(curl_cfg)],
        f"wget2 --max-threads {j}": ["wget2", "-q", "--max-threads", str(j), "--tries", "5",
                                     "--no-robots", "-i", str(work / "urls.txt"), "-P", str(out)],
        f"aria2c -j {j}": ["aria2c", "-q", "-j", str(j), "-x1", "--max-tries", "5", "--retry-wait", "1",
                           "--file-allocation=none", "--allow-overwrite=true", "-i", str(work / "urls.txt"), "-d", str(out)],
        "original (aiohttp, limit 3)": [str(python), str(ROOT / "bench" / "original.py"), str(work / "urls.txt"), str(out), "--limit", "3"],
        "original (aiohttp, limit 5)": [str(python), str(ROOT / "bench" / "original.py"), str(work / "urls.txt"), str(out), "--limit", "5"],
    }


def run_scenario(name, files_override, python, only_haul):
    flags, files, j, what = SCENARIOS[name]
    files = files_override or files
    rows = []
    work = Path(tempfile.mkdtemp(prefix=f"haul-polite-{name}."))
    try:
        proc, base, log = start_server(flags, work)
        tools = commands(base, files, j, work, work / "out", python)
        stop_server(proc, log)
        for tool in tools:
            if only_haul and not tool.startswith("haul"):
                continue
            if tool.startswith("original") and name != "latency":
                continue
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            proc, base, log = start_server(flags, work)
            cmd = commands(base, files, j, work, out, python)[tool]
            started = time.perf_counter()
            result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
            wall = time.perf_counter() - started
            seen = stop_server(proc, log)
            ok = count_correct(out, files)
            rows.append(dict(scenario=name, tool=tool, wall=wall, files_s=ok / wall, ok=ok, files=files,
                             refused=seen.get("429", 0), unavailable=seen.get("503", 0),
                             requests=sum(seen.values()), exit=result.returncode))
            print(f"  {name}: {tool}: {wall:.1f}s, {ok}/{files} correct, exit {result.returncode}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, what


def plot_controller(python, files):
    """haul against the capacity server with JSON status lines; plot limit, in flight, files/s."""
    flags, _, j, _ = SCENARIOS["capacity"]
    work = Path(tempfile.mkdtemp(prefix="haul-polite-plot."))
    try:
        proc, base, log = start_server(flags, work)
        urls = [f"{base}/f/p{i}.jpg?size={size_of(i)}" for i in range(files)]
        (work / "urls.txt").write_text("\n".join(urls) + "\n")
        result = subprocess.run([str(HAUL), "get", "-i", str(work / "urls.txt"), "-o", str(work / "out"), "-j", str(j),
                                 "--per-host", str(j), "--progress", "json", "--retries", "20"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
        stop_server(proc, log)
        points = []
        for line in result.stderr.splitlines():
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if status.get("type") != "progress":
                continue
            host = (status.get("hosts") or [{}])[0]
            points.append((status["elapsed_s"], status["done"], host.get("limit"), host.get("in_flight")))
        data = work / "points.json"
        data.write_text(json.dumps(points))
        script = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
points = json.load(open({str(data)!r}))
t = [p[0] for p in points]; done = [p[1] for p in points]
rate = [0] + [(done[i] - done[i-1]) / max(t[i] - t[i-1], 1e-9) for i in range(1, len(points))]
fig, ax = plt.subplots(figsize=(8, 4))
ax.step(t, [p[2] or 0 for p in points], where="post", label="haul's limit for the host")
ax.plot(t, [p[3] or 0 for p in points], ".", label="requests in flight")
ax.axhline(6, color="grey", linestyle="--", label="server capacity K = 6")
ax.set_xlabel("seconds"); ax.set_ylabel("requests"); ax.set_ylim(0, 20)
ax2 = ax.twinx(); ax2.plot(t, rate, color="tab:green", alpha=0.6, label="files/s")
ax2.set_ylabel("files/s"); ax2.set_ylim(0, 200)
lines = ax.get_legend_handles_labels(); lines2 = ax2.get_legend_handles_labels()
ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
ax.set_title("-j 64 --per-host 64 against a server that serves 6 at once (429 + Retry-After: 1 beyond)")
fig.tight_layout(); fig.savefig({str(ROOT / 'bench' / 'polite-controller.png')!r}, dpi=110)
"""
        subprocess.run([str(python), "-c", script], check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", default="latency,capacity,flaky,steady")
    ap.add_argument("--files", type=int, default=0, help="files per scenario (default: each scenario's)")
    ap.add_argument("--only-haul", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "haul-cli", "-p", "haul-test"], cwd=ROOT, check=True)
    python = venv_python()
    print("| scenario | tool | files/s | correct | 429 seen | 503 seen | requests |")
    print("|---|---|---:|---:|---:|---:|---:|")
    all_rows = []
    for name in args.scenarios.split(","):
        rows, what = run_scenario(name, args.files, python, args.only_haul)
        all_rows += rows
        for r in rows:
            print(f"| {name} ({what}) | {r['tool']} | {r['files_s']:.1f} | {r['ok']}/{r['files']} | {r['refused']} | "
                  f"{r['unavailable']} | {r['requests']} |")
    print()
    for name in args.scenarios.split(","):
        rows = [r for r in all_rows if r["scenario"] == name]
        hauls = [r for r in rows if r["tool"].startswith("haul")]
        peers = [r for r in rows if not r["tool"].startswith("haul") and not r["tool"].startswith("original")]
        best_haul = max(hauls, key=lambda r: r["files_s"], default=None)
        best_peer = max(peers, key=lambda r: r["files_s"], default=None)
        if best_haul and best_peer and best_peer["files_s"] > 0:
            print(f"{name}: best haul ({best_haul['tool']}) / best peer ({best_peer['tool']}) = "
                  f"{best_haul['files_s'] / best_peer['files_s']:.2f}x")
        adaptive = [r for r in hauls if "--per-host" in r["tool"] and "--no-adaptive" not in r["tool"]]
        if adaptive and best_peer and best_peer["files_s"] > 0:
            print(f"{name}: {adaptive[0]['tool']} (adaptive) / best peer = "
                  f"{adaptive[0]['files_s'] / best_peer['files_s']:.2f}x")
        originals = [r for r in rows if r["tool"].startswith("original")]
        if best_haul and originals and max(r["files_s"] for r in originals) > 0:
            best_original = max(originals, key=lambda r: r["files_s"])
            print(f"{name}: best haul / original system ({best_original['tool']}) = "
                  f"{best_haul['files_s'] / best_original['files_s']:.1f}x")
        if name == "capacity":
            for r in hauls:
                print(f"capacity: {r['tool']}: {r['files_s'] / (6 / 0.05):.0%} of K/latency, "
                      f"{r['refused'] / max(r['requests'], 1):.1%} of requests refused")
    flaky = {r["tool"]: r for r in all_rows if r["scenario"] == "flaky"}
    steady = {r["tool"]: r for r in all_rows if r["scenario"] == "steady"}
    for tool in flaky:
        if tool.startswith("haul") and tool in steady and steady[tool]["files_s"] > 0:
            print(f"flaky: {tool}: {flaky[tool]['files_s'] / steady[tool]['files_s']:.0%} of its fault-free rate")
    if not args.no_plot and "capacity" in args.scenarios:
        plot_controller(python, args.files or 2000)
        print(f"plot: {ROOT / 'bench' / 'polite-controller.png'}")


if __name__ == "__main__":
    main()
