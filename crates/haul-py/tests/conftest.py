"""Fixtures: haul's fault-injecting test server (the `haul-testserver` binary, built by cargo),
started on 127.0.0.1 for the session and stopped by its PID."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _server_binary() -> Path:
    given = os.environ.get("HAUL_TESTSERVER")
    candidates = [Path(given)] if given else []
    candidates += [ROOT / "target" / "debug" / "haul-testserver", ROOT / "target" / "release" / "haul-testserver"]
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail("haul-testserver is not built: cargo build -p haul-test (or set HAUL_TESTSERVER)")


@pytest.fixture(scope="session")
def server():
    proc = subprocess.Popen([str(_server_binary()), "--seconds", "600"], stdout=subprocess.PIPE, text=True)
    base = proc.stdout.readline().strip()
    assert base.startswith("http://127.0.0.1:"), base
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"
