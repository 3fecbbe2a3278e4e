#!/usr/bin/env python3
"""haul from Python (issue 13): `haul.download` against the original system's approach (aiohttp
with a connection limit of 5, aiofiles, tqdm, a record file; bench/original.py) and against the
`haul` CLI on the same list, from haul's test server 100 ms away (2,000 files of about 150 KB),
alternating the order each round.

    python3 bench/py.py                 # 2 rounds
    python3 bench/py.py --files 500 --rounds 1

Needs a release build of haul and haul-testserver (built here) and bench/.venv (made here, with
aiohttp aiofiles tqdm and the haul package built from crates/haul-py).
"""
import argparse, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import polite  # noqa: E402  (start_server, stop_server, count_correct, size_of, venv_python)

ROOT = polite.ROOT
RUN_HAUL = """
import asyncio, sys, haul
urls = open(sys.argv[1]).read().split()
summary = asyncio.run(haul.download(urls, sys.argv[2], concurrency=64, per_host=64))
print(summary.done, summary.elapsed)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "haul-cli", "-p", "haul-test"], cwd=ROOT, check=True)
    python = polite.venv_python()
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT / "crates" / "haul-py")], check=True)
    work = Path(tempfile.mkdtemp(prefix="haul-py."))
    (work / "run_haul.py").write_text(RUN_HAUL)
    proc, base, log = polite.start_server(["--latency-ms", "100"], work)
    urls = [f"{base}/f/p{i}.jpg?size={polite.size_of(i)}" for i in range(args.files)]
    (work / "urls.txt").write_text("\n".join(urls) + "\n")
    tools = {
        "haul.download (Python, concurrency=64, per_host=64)": lambda out: [str(python), str(work / "run_haul.py"), str(work / "urls.txt"), str(out)],
        "haul CLI (-j 64 --per-host 64)": lambda out: [str(polite.HAUL), "get", "-i", str(work / "urls.txt"), "-o", str(out), "-j", "64", "--per-host", "64", "--progress", "none"],
        "original (aiohttp, limit 5)": lambda out: [str(python), str(ROOT / "bench" / "original.py"), str(work / "urls.txt"), str(out), "--limit", "5"],
    }
    names = list(tools)
    results = {t: [] for t in names}
    try:
        for r in range(args.rounds):
            for t in names[r % len(names):] + names[:r % len(names)]:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                started = time.perf_counter()
                subprocess.run(tools[t](out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                ok = polite.count_correct(out, args.files)
                results[t].append((wall, ok))
                print(f"  round {r + 1} {t}: {wall:.2f}s, {ok} correct", file=sys.stderr)
    finally:
        polite.stop_server(proc, log)
        shutil.rmtree(work, ignore_errors=True)
    rate = {t: args.files / statistics.median(x[0] for x in runs) for t, runs in results.items()}
    first = names[0]
    print(f"\n{args.files} files of ~150 KB, 100 ms away, medians of {args.rounds} rounds\n")
    print("| tool | files/s | correct | haul.download ÷ this |")
    print("|---|---:|---:|---:|")
    for t, runs in results.items():
        print(f"| {t} | {rate[t]:.1f} | {min(x[1] for x in runs)}/{args.files} | {rate[first] / rate[t]:.2f}× |")


if __name__ == "__main__":
    main()
