#!/usr/bin/env python3
"""How haul's throughput depends on -j (with --per-host equal to -j), against one nginx on
127.0.0.1: the measurement behind the defaults (-j 32, --per-host 8).

    python3 bench/concurrency.py                 # small and medium sets, best of 3 per point
"""
import shutil, signal, os, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

def main():
    work = Path(tempfile.mkdtemp(prefix="haul-sweep."))
    port, pid = bench.start_nginx(work)
    out_root = Path("/dev/shm" if os.path.isdir("/dev/shm") else work)
    try:
        print("| set | -j | files/s | MB/s | peak RSS MB |")
        print("|---|---:|---:|---:|---:|")
        for setname in ("small", "medium"):
            sums = bench.generate(setname)
            total = sum((bench.DATA / setname / n).stat().st_size for n in sums)
            for j in (1, 4, 8, 16, 32, 64):
                cmd = bench.tools(port, setname, sums, work, j)["haul"]
                runs = []
                for _ in range(3):
                    out = out_root / f"haul-sweep-{os.getpid()}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    runs.append(bench.timed(cmd(out)))
                    shutil.rmtree(out, ignore_errors=True)
                wall = min(r[0] for r in runs)
                rss = max(r[2] for r in runs) / 1024
                print(f"| {setname} | {j} | {len(sums) / wall:.0f} | {total / wall / 1e6:.0f} | {rss:.1f} |", flush=True)
    finally:
        os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
