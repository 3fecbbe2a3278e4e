import os
from dataclasses import dataclass
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, List, Mapping, Optional, Union

__version__: str

class FatalError(RuntimeError): ...

@dataclass(frozen=True)
class _JobEvent:
    id: str
    url: str
    path: Optional[str]
    bytes: int
    attempts: int
    line: int
    http_status: Optional[int] = ...
    reason: Optional[str] = ...
    error: Optional[str] = ...
    verified: bool = ...
    sha256: Optional[str] = ...
    blake3: Optional[str] = ...
    elapsed: Optional[float] = ...

@dataclass(frozen=True)
class Done(_JobEvent): ...
@dataclass(frozen=True)
class Failed(_JobEvent): ...
@dataclass(frozen=True)
class Skipped(_JobEvent): ...
@dataclass(frozen=True)
class Pending(_JobEvent): ...

@dataclass(frozen=True)
class Progress:
    done: int
    failed: int
    skipped: int
    active: int
    bytes: int
    total: Optional[int]
    elapsed: float

@dataclass(frozen=True)
class BadLine:
    line: int
    error: str

Event = Union[Done, Failed, Skipped, Pending, Progress, BadLine]
JobSpec = Union[str, Mapping[str, Any]]
Jobs = Union[str, os.PathLike[str], Iterable[JobSpec], AsyncIterable[JobSpec]]

@dataclass
class Summary:
    done: int
    skipped: int
    failed: int
    pending: int
    bad_lines: int
    bytes: int
    retries: int
    elapsed: float
    interrupted: bool
    results: List[Union[Done, Failed, Skipped, Pending]]

async def download(
    jobs: Jobs,
    output_dir: Union[str, os.PathLike[str]],
    *,
    concurrency: int = 32,
    per_host: Optional[int] = None,
    rate: Optional[str] = None,
    retries: int = 5,
    archive: bool = True,
    headers: Optional[Mapping[str, str]] = None,
    split: Optional[int] = None,
    digest: Optional[str] = None,
    user_agent: Optional[str] = None,
    progress: Union[None, bool, Callable[[Progress], Any]] = None,
) -> Summary: ...

def stream(
    jobs: Jobs,
    output_dir: Union[str, os.PathLike[str]],
    *,
    concurrency: int = 32,
    per_host: Optional[int] = None,
    rate: Optional[str] = None,
    retries: int = 5,
    archive: bool = True,
    headers: Optional[Mapping[str, str]] = None,
    split: Optional[int] = None,
    digest: Optional[str] = None,
    user_agent: Optional[str] = None,
) -> AsyncIterator[Event]: ...

def download_sync(
    jobs: Union[str, os.PathLike[str], Iterable[JobSpec]],
    output_dir: Union[str, os.PathLike[str]],
    *,
    concurrency: int = 32,
    per_host: Optional[int] = None,
    rate: Optional[str] = None,
    retries: int = 5,
    archive: bool = True,
    headers: Optional[Mapping[str, str]] = None,
    split: Optional[int] = None,
    digest: Optional[str] = None,
    user_agent: Optional[str] = None,
    progress: Union[None, bool, Callable[[Progress], Any]] = None,
) -> Summary: ...
