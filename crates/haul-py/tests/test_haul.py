"""haul from Python (issue 13): downloads checked by sha256, every event exactly once, the event
loop free during a run, cancellation and Ctrl-C keeping .part files, failures as results, clear
errors for bad arguments. Against haul's test server on 127.0.0.1."""
import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

import haul


def sha256_of(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return hashlib.sha256(r.read()).hexdigest()


def parts(out: Path) -> list:
    d = out / ".haul" / "parts"
    return [p for p in d.iterdir() if p.stat().st_size > 0] if d.is_dir() else []


async def test_download_writes_verified_files(server, out):
    jobs = [{"url": f"{server}/f/p{i}.bin?size={1000 + i}", "path": f"sub/p{i}.bin",
             "sha256": sha256_of(f"{server}/f/p{i}.bin?size={1000 + i}")} for i in range(20)]
    jobs.append({"url": f"{server}/f/bad.bin?size=100", "path": "bad.bin", "sha256": "0" * 64})
    summary = await haul.download(jobs, out, concurrency=8)
    assert (summary.done, summary.failed) == (20, 1)
    for job in jobs[:-1]:
        data = (out / job["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == job["sha256"]
    bad = [r for r in summary.results if isinstance(r, haul.Failed)]
    assert len(bad) == 1 and "sha256 mismatch" in bad[0].error
    assert not (out / "bad.bin").exists()
    # A rerun skips what is done, without a request.
    again = await haul.download(jobs[:-1], out)
    assert again.skipped == 20 and again.done == 0


async def test_stream_delivers_every_job_exactly_once(server, out):
    urls = [f"{server}/f/s{i}.bin?size=500" for i in range(300)]

    async def gen():
        for u in urls:
            yield u

    seen = []
    async for event in haul.stream(gen(), out, concurrency=16):
        if isinstance(event, (haul.Done, haul.Failed, haul.Skipped, haul.Pending)):
            seen.append(event.url)
    assert sorted(seen) == sorted(urls)


async def test_event_loop_keeps_running_during_a_download(server, out):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    started = time.monotonic()
    summary = await haul.download([f"{server}/f/slow.bin?size=400000&rate=400000"], out)
    took = time.monotonic() - started
    task.cancel()
    assert summary.done == 1 and took >= 0.8
    assert ticks >= took / 0.01 * 0.5, f"{ticks} ticks in {took:.2f}s: the loop was blocked"


async def test_cancelling_the_task_stops_the_run_and_keeps_part_files(server, out):
    url = f"{server}/f/big.bin?size=4000000&rate=500000"
    task = asyncio.ensure_future(haul.download([url], out))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if parts(out):
            break
    assert parts(out), "data was flowing"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert parts(out), "the .part file is kept for the next run"
    assert not (out / "big.bin").exists()
    # The next run resumes it.
    summary = await haul.download([f"{server}/f/big.bin?size=4000000"], out)
    assert summary.done == 1 and (out / "big.bin").stat().st_size == 4000000


def test_keyboard_interrupt_in_download_sync(server, tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import haul, sys
        try:
            haul.download_sync(["{server}/f/int.bin?size=4000000&rate=500000"], {str(out)!r})
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not parts(out):
        time.sleep(0.05)
    assert parts(out), "data was flowing"
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    assert parts(out), "the .part file is kept"
    assert not (out / "int.bin").exists()


async def test_a_job_failure_is_a_result(server, out):
    summary = await haul.download([f"{server}/f/gone.bin?status=404", f"{server}/f/ok.bin?size=10"], out,
                                  retries=0)
    assert (summary.done, summary.failed) == (1, 1)
    failed = next(r for r in summary.results if isinstance(r, haul.Failed))
    assert failed.http_status == 404 and failed.url.endswith("status=404")


async def test_a_manifest_path(server, tmp_path, out):
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"{server}/f/m{i}.bin?size=100\n" for i in range(5)) + "not a url\n")
    events = [e async for e in haul.stream(manifest, out)]
    assert sum(isinstance(e, haul.Done) for e in events) == 5
    assert [e.line for e in events if isinstance(e, haul.BadLine)] == [6]


def test_bad_arguments_raise_clear_errors(server, out):
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        haul.download_sync([f"{server}/f/a"], out, concurrency=0)
    with pytest.raises(TypeError, match="concurrency must be an int"):
        haul.download_sync([f"{server}/f/a"], out, concurrency="8")
    with pytest.raises(TypeError, match="jobs must be"):
        haul.download_sync(42, out)
    with pytest.raises(TypeError, match="output_dir must be"):
        haul.download_sync([f"{server}/f/a"], 3)
    with pytest.raises(ValueError, match="rate"):
        haul.download_sync([f"{server}/f/a"], out, rate="fast")
    with pytest.raises(ValueError, match="not a manifest file"):
        haul.download_sync("https://example.com/a", out)
    # A bad job is reported by the feeder, not silently dropped.
    with pytest.raises(ValueError, match="job 2: unknown key"):
        asyncio.run(haul.download([f"{server}/f/a", {"url": f"{server}/f/b", "colour": "red"}], out))
