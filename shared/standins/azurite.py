"""Azurite's table service on a free loopback port, in memory, started and stopped by PID.

Azurite is Microsoft's own emulator (installed with `npm ci` in tools/azurite), not a stand-in written
here; this module only launches it, for the tests (`tests/conftest.py`) and the benchmarks
(`benchmarks/delivery_state.py`), so both start it the same way. Nothing in the product path or the
demo imports it, which is why `shared.standins` does not export it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE_SCRIPT = REPO_ROOT / "tools" / "azurite" / "node_modules" / "azurite" / "dist" / "src" / "table" / "main.js"
ACCOUNT = "devstoreaccount1"
# The well-known, public development key of Azurite's default account (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Taken at import: the tests replace time.sleep with a recorder, and waiting for the port must really wait.
_real_sleep = time.sleep


class AzuriteUnavailable(RuntimeError):
    """Azurite did not start; the message says why."""


class AzuriteNotInstalled(AzuriteUnavailable):
    """node or Azurite's script is missing: the fix is an install, not a retry."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"Azurite cannot start: {missing}; install it with `cd tools/azurite && npm ci`")
        self.missing = missing


@dataclass
class Azurite:
    """A running Azurite table service, and what a client needs to reach it."""

    port: int
    process: subprocess.Popen
    account_name: str = ACCOUNT
    account_key: str = KEY
    connection_string: str = field(init=False)

    def __post_init__(self) -> None:
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"TableEndpoint={self.table_endpoint};"
        )

    @property
    def table_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account_name}"


@contextlib.contextmanager
def running_azurite(workdir: Path | None = None, start_timeout: float = START_TIMEOUT) -> Iterator[Azurite]:
    """Azurite, listening, until the block ends; then stopped (terminated, killed after 10 s).

    Runs in workdir (a temporary folder if none is given), which also keeps its stderr. The node
    process itself is started (no npx, no shell), so the PID stopped is the one serving.
    Raises AzuriteUnavailable, naming the cause (with Azurite's stderr if it exited early).
    """
    node = shutil.which("node")
    if node is None:
        raise AzuriteNotInstalled("node is not on PATH")
    if not TABLE_SCRIPT.is_file():
        raise AzuriteNotInstalled(f"{TABLE_SCRIPT} does not exist")
    with contextlib.ExitStack() as cleanup:
        if workdir is None:
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        stderr_file = cleanup.enter_context(tempfile.TemporaryFile(dir=workdir))
        port = _free_port()
        process = subprocess.Popen(
            [
                node,
                str(TABLE_SCRIPT),
                *("--tableHost", "127.0.0.1", "--tablePort", str(port)),
                *("--inMemoryPersistence", "--silent", "--disableTelemetry"),
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
        try:
            _wait_until_listening(process, port, stderr_file, start_timeout)
            yield Azurite(port, process)
        finally:
            _stop(process)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.25):
            return True
    except OSError:
        return False


def _wait_until_listening(process: subprocess.Popen, port: int, stderr_file, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _port_accepts(port):
        if process.poll() is not None:
            stderr_file.seek(0)
            output = stderr_file.read().decode("utf-8", "replace").strip()
            raise AzuriteUnavailable(
                f"Azurite exited with code {process.returncode} before listening on "
                f"127.0.0.1:{port}:\n{output or '(no stderr output)'}"
            )
        if time.monotonic() > deadline:
            raise AzuriteUnavailable(f"Azurite did not listen on 127.0.0.1:{port} within {timeout:.0f}s")
        _real_sleep(0.05)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)
