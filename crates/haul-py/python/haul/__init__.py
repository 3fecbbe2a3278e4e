"""haul for Python: hand a list of URLs to haul's engine from asyncio (or a script) and get every
file on disk, concurrently, politely, resumably and verified.

    import asyncio, haul
    summary = asyncio.run(haul.download(["https://example.com/a.jpg"], "photos"))

    async for event in haul.stream(urls, "photos"):
        if isinstance(event, haul.Done):
            record(event.id)              # the original system's "done" record, as files land

    haul.download_sync(urls, "photos")    # for scripts: Ctrl-C stops it, .part files kept

The engine runs on a thread of its own: the event loop is never blocked, and the files/s you see
are haul's. A job's failure is a result (`Failed`), never an exception; bad arguments raise
ValueError or TypeError; a run that cannot start or must stop raises `haul.FatalError`.
"""
from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from . import _haul

__all__ = [
    "download", "download_sync", "stream", "Summary", "Done", "Failed", "Skipped", "Pending",
    "Progress", "BadLine", "Event", "FatalError", "__version__",
]
__version__ = _haul.__version__


class FatalError(RuntimeError):
    """The run could not start (output directory, archive in use) or had to stop (disk full,
    archive failure). Finished files are kept and recorded."""


@dataclass(frozen=True)
class _JobEvent:
    id: str
    url: str
    path: Optional[str]
    bytes: int
    attempts: int
    line: int
    http_status: Optional[int] = None
    reason: Optional[str] = None
    error: Optional[str] = None
    verified: bool = False
    sha256: Optional[str] = None
    blake3: Optional[str] = None
    elapsed: Optional[float] = None


@dataclass(frozen=True)
class Done(_JobEvent):
    """A file is complete, verified and in place (and recorded in the archive)."""


@dataclass(frozen=True)
class Failed(_JobEvent):
    """A job failed for good; `reason` and `error` say why."""


@dataclass(frozen=True)
class Skipped(_JobEvent):
    """A job not fetched: already done (archived), already on disk, or a duplicate."""


@dataclass(frozen=True)
class Pending(_JobEvent):
    """A job not finished because the run was cancelled (a later run resumes it)."""


@dataclass(frozen=True)
class Progress:
    """Counters, every half second."""
    done: int
    failed: int
    skipped: int
    active: int
    bytes: int
    total: Optional[int]
    elapsed: float


@dataclass(frozen=True)
class BadLine:
    """A job that could not be read (no URL, a bad URL, a bad checksum)."""
    line: int
    error: str


Event = Union[Done, Failed, Skipped, Pending, Progress, BadLine]


@dataclass
class Summary:
    """How a run ended. `results` holds every job's end event, in the order they ended."""
    done: int = 0
    skipped: int = 0
    failed: int = 0
    pending: int = 0
    bad_lines: int = 0
    bytes: int = 0
    retries: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    results: List[Union[Done, Failed, Skipped, Pending]] = field(default_factory=list)


_JOB_TYPES = {"done": Done, "failed": Failed, "skipped": Skipped, "pending": Pending}
_JOB_FIELDS = ("id", "url", "path", "bytes", "attempts", "line", "http_status", "reason", "error",
               "verified", "sha256", "blake3", "elapsed")
_JOB_KEYS = {"url", "path", "id", "size", "sha256", "md5", "headers"}
# Manifest lines handed to the engine at once.
_BATCH = 1000

Jobs = Union[str, "os.PathLike[str]", Iterable[Union[str, Mapping[str, Any]]], Any]


def _options(output_dir: Any, concurrency: int, per_host: Optional[int], rate: Optional[str],
             retries: int, archive: bool, headers: Optional[Mapping[str, str]], split: Optional[int],
             digest: Optional[str], user_agent: Optional[str]) -> tuple[str, str]:
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir must be a str or a path, not {type(output_dir).__name__}")
    for name, value, least in (("concurrency", concurrency, 1), ("per_host", per_host, 1),
                               ("retries", retries, 0), ("split", split, 1)):
        if value is None and name in ("per_host", "split"):
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if rate is not None and not isinstance(rate, str):
        raise TypeError(f"rate must be a str such as '50/s', not {type(rate).__name__}")
    if digest is not None and digest not in ("none", "blake3", "sha256"):
        raise ValueError(f"digest must be 'none', 'blake3' or 'sha256', got {digest!r}")
    if not isinstance(archive, bool):
        raise TypeError(f"archive must be a bool, not {type(archive).__name__}")
    pairs = []
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise TypeError(f"headers must be a mapping of names to values, not {type(headers).__name__}")
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError("headers must map str to str")
            pairs.append([name, value])
    options: Dict[str, Any] = {"concurrency": concurrency, "retries": retries, "archive": archive,
                               "headers": pairs}
    for name, value in (("per_host", per_host), ("rate", rate), ("split", split), ("digest", digest),
                        ("user_agent", user_agent)):
        if value is not None:
            options[name] = value
    return os.fspath(output_dir), json.dumps(options)


def _line(job: Any, index: int) -> str:
    """One job as a JSONL manifest line."""
    if isinstance(job, str):
        return json.dumps({"url": job})
    if isinstance(job, Mapping):
        unknown = set(job) - _JOB_KEYS
        if unknown:
            raise ValueError(f"job {index}: unknown key(s) {sorted(unknown)} (known: {sorted(_JOB_KEYS)})")
        if not isinstance(job.get("url"), str):
            raise ValueError(f"job {index}: 'url' must be a str")
        return json.dumps(dict(job))
    raise TypeError(f"job {index} must be a URL (str) or a dict with 'url', not {type(job).__name__}")


def _manifest_path(jobs: Any) -> Optional[str]:
    if isinstance(jobs, os.PathLike):
        return os.fspath(jobs)
    if isinstance(jobs, str):
        if os.path.isfile(jobs):
            return jobs
        raise ValueError(f"jobs is a str but not a manifest file: {jobs!r} (pass a list for one URL)")
    return None


def _event(text: str) -> Union[Event, Dict[str, Any]]:
    data = json.loads(text)
    kind = data.pop("type")
    if kind in _JOB_TYPES:
        return _JOB_TYPES[kind](**{k: data.get(k) for k in _JOB_FIELDS})
    if kind == "progress":
        return Progress(**data)
    if kind == "bad_line":
        return BadLine(line=data["line"], error=data["error"])
    data["type"] = kind
    return data


def _start(jobs: Any, output_dir: Any, options: tuple) -> tuple[Any, Optional[Iterable[Any]]]:
    path = _manifest_path(jobs)
    if path is None and not (hasattr(jobs, "__iter__") or hasattr(jobs, "__aiter__")):
        raise TypeError(f"jobs must be an iterable of URLs or dicts, an async iterable, or a manifest path, "
                        f"not {type(jobs).__name__}")
    out, opts = options
    try:
        run = _haul.start(out, opts, path)
    except OSError as e:
        raise FatalError(str(e)) from e
    return run, (None if path else jobs)


def _finish(summary: Dict[str, Any], results: List[Any]) -> Summary:
    if summary.get("start_error"):
        raise FatalError(summary["fatal"])
    out = Summary(**{k: summary[k] for k in ("done", "skipped", "failed", "pending", "bad_lines", "bytes",
                                             "retries", "elapsed", "interrupted")}, results=results)
    if summary.get("fatal"):
        error = FatalError(summary["fatal"])
        error.summary = out  # type: ignore[attr-defined]
        raise error
    return out


async def _feed_async(run: Any, jobs: Any) -> None:
    """Hands the jobs to the engine in batches, off the event loop when the engine is behind."""
    batch: List[str] = []
    index = 0
    try:
        if hasattr(jobs, "__aiter__"):
            async for job in jobs:
                index += 1
                batch.append(_line(job, index))
                if len(batch) >= _BATCH:
                    await asyncio.to_thread(run.feed, ("\n".join(batch) + "\n").encode())
                    batch = []
        else:
            for job in jobs:
                index += 1
                batch.append(_line(job, index))
                if len(batch) >= _BATCH:
                    await asyncio.to_thread(run.feed, ("\n".join(batch) + "\n").encode())
                    batch = []
        if batch:
            await asyncio.to_thread(run.feed, ("\n".join(batch) + "\n").encode())
    finally:
        run.close()


async def stream(jobs: Jobs, output_dir: Union[str, "os.PathLike[str]"], *, concurrency: int = 32,
                 per_host: Optional[int] = None, rate: Optional[str] = None, retries: int = 5,
                 archive: bool = True, headers: Optional[Mapping[str, str]] = None,
                 split: Optional[int] = None, digest: Optional[str] = None,
                 user_agent: Optional[str] = None) -> AsyncIterator[Event]:
    """Runs the jobs and yields every event as it happens (`Done`, `Failed`, `Skipped`,
    `Pending`, `Progress`, `BadLine`); none is dropped. Cancelling the consumer stops the run
    (transfers keep their `.part` files for the next run)."""
    options = _options(output_dir, concurrency, per_host, rate, retries, archive, headers, split, digest,
                       user_agent)
    if isinstance(jobs, bytes):
        raise TypeError("jobs must be URLs or dicts, not bytes")
    run, feed = _start(jobs, output_dir, options)
    feeder = asyncio.ensure_future(_feed_async(run, feed)) if feed is not None else None
    finished = False
    try:
        while True:
            text = await run.next_event()
            if text is None:
                finished = True
                _raise_feed_error(feeder)
                return
            event = _event(text)
            if isinstance(event, dict):
                if event.get("type") == "summary":
                    _finish(event, [])
                continue
            yield event
    finally:
        if not finished:
            run.cancel()
            # Drain to the end so every transfer has stopped and the archive is flushed.
            while await run.next_event() is not None:
                pass
        if feeder is not None:
            if not feeder.done():
                feeder.cancel()
            try:
                await feeder
            except (asyncio.CancelledError, Exception):  # the run's own error is what counts
                pass


async def download(jobs: Jobs, output_dir: Union[str, "os.PathLike[str]"], *, concurrency: int = 32,
                   per_host: Optional[int] = None, rate: Optional[str] = None, retries: int = 5,
                   archive: bool = True, headers: Optional[Mapping[str, str]] = None,
                   split: Optional[int] = None, digest: Optional[str] = None,
                   user_agent: Optional[str] = None,
                   progress: Union[None, bool, Callable[[Progress], Any]] = None) -> Summary:
    """Downloads every job into `output_dir` and returns the `Summary` (with every job's result).

    `jobs`: URLs, dicts (`url`, and optionally `path`, `id`, `size`, `sha256`, `md5`, `headers`),
    an async iterable of those, or the path of a manifest file (plain, JSONL or CSV).
    `progress`: a callable given each `Progress`, or True for a tqdm bar when tqdm is installed.
    """
    options = _options(output_dir, concurrency, per_host, rate, retries, archive, headers, split, digest,
                       user_agent)
    run, feed = _start(jobs, output_dir, options)
    feeder = asyncio.ensure_future(_feed_async(run, feed)) if feed is not None else None
    collect = _Collect(progress)
    try:
        while True:
            text = await run.next_event()
            if text is None:
                break
            collect.take(text)
    except BaseException:
        run.cancel()
        # Drain to the end so every transfer has stopped and the archive is flushed.
        while await asyncio.shield(run.next_event()) is not None:
            pass
        raise
    finally:
        collect.close()
        if feeder is not None and not feeder.done():
            feeder.cancel()
    _raise_feed_error(feeder)
    return collect.finish()


def _raise_feed_error(feeder: Optional["asyncio.Future[None]"]) -> None:
    """A bad job stops the input (the jobs before it are done and kept): its error is raised
    once the run has ended."""
    if feeder is not None and feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
        raise feeder.exception()  # type: ignore[misc]


def download_sync(jobs: Jobs, output_dir: Union[str, "os.PathLike[str]"], *, concurrency: int = 32,
                  per_host: Optional[int] = None, rate: Optional[str] = None, retries: int = 5,
                  archive: bool = True, headers: Optional[Mapping[str, str]] = None,
                  split: Optional[int] = None, digest: Optional[str] = None,
                  user_agent: Optional[str] = None,
                  progress: Union[None, bool, Callable[[Progress], Any]] = None) -> Summary:
    """`download` for scripts: blocks (without holding the GIL) until the run ends. Ctrl-C stops
    the run, keeps `.part` files, flushes the archive, then raises KeyboardInterrupt."""
    options = _options(output_dir, concurrency, per_host, rate, retries, archive, headers, split, digest,
                       user_agent)
    if hasattr(jobs, "__aiter__"):
        raise TypeError("download_sync takes an iterable, not an async iterable (use download)")
    run, feed = _start(jobs, output_dir, options)
    import threading
    feeder = None
    feed_error: List[BaseException] = []
    if feed is not None:
        def feed_all() -> None:
            batch: List[str] = []
            try:
                for index, job in enumerate(feed, 1):
                    batch.append(_line(job, index))
                    if len(batch) >= _BATCH:
                        run.feed(("\n".join(batch) + "\n").encode())
                        batch = []
                if batch:
                    run.feed(("\n".join(batch) + "\n").encode())
            except RuntimeError:
                pass  # the run ended (cancelled) while jobs were still coming
            except (TypeError, ValueError) as e:
                feed_error.append(e)
            finally:
                run.close()
        feeder = threading.Thread(target=feed_all, name="haul-feed", daemon=True)
        feeder.start()
    collect = _Collect(progress)
    try:
        while True:
            text = run.next_event_blocking(0.1)
            if text is None:
                break
            if text:
                collect.take(text)
    except KeyboardInterrupt:
        run.cancel()
        while run.next_event_blocking(1.0) is not None:
            pass
        raise
    finally:
        collect.close()
    if feed_error:
        raise feed_error[0]
    return collect.finish()


class _Collect:
    """Gathers a run's events into its `Summary`, feeding progress to the caller's callback or
    a tqdm bar."""

    def __init__(self, progress: Union[None, bool, Callable[[Progress], Any]]) -> None:
        self.on_progress, self.bar = _progress(progress)
        self.results: List[Any] = []
        self.summary: Optional[Dict[str, Any]] = None

    def take(self, text: str) -> None:
        event = _event(text)
        if isinstance(event, dict):
            if event.get("type") == "summary":
                self.summary = event
        elif isinstance(event, Progress):
            if self.on_progress:
                self.on_progress(event)
        elif not isinstance(event, BadLine):
            self.results.append(event)
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finish(self) -> Summary:
        assert self.summary is not None, "the run ended without a summary"
        return _finish(self.summary, self.results)


def _progress(progress: Union[None, bool, Callable[[Progress], Any]]) -> tuple[Optional[Callable[[Progress], Any]], Any]:
    if progress is None or progress is False:
        return None, None
    if progress is True:
        try:
            from tqdm import tqdm  # optional
        except ImportError:
            return None, None
        bar = tqdm(unit="file")

        def update(p: Progress) -> None:
            if p.total is not None:
                bar.total = p.total
            bar.set_postfix(MB=f"{p.bytes / 1e6:.1f}", active=p.active, refresh=False)
        return update, bar
    if callable(progress):
        return progress, None
    raise TypeError("progress must be None, True (tqdm) or a callable")
