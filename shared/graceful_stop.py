"""Stopping on SIGINT and SIGTERM without losing what was acknowledged.

The first signal sets `requested`: every collection stops reading pages, lets the request in
flight finish, saves what was accepted, releases its lease and reports `stopped`. The command
then exits 130 (SIGINT) or 143 (SIGTERM), the shell's codes for those signals. A second SIGINT
exits at once: the leases are then left to expire by themselves.

A Functions worker is stopped with SIGTERM too (scale-in, redeploy). There the signal is
passed on to the handler that was installed before, once the cycle under way has stopped, so
the worker still shuts down as its host asked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class GracefulStop:
    """The first SIGINT or SIGTERM asks the work under way to stop; see the module docstring."""

    def __init__(self, lease_seconds: int):
        self.requested = threading.Event()
        self.signal: signal.Signals | None = None
        self._lease_seconds = lease_seconds
        self._previous: dict[int, Any] = {}
        self._working = 0
        self._lock = threading.RLock()  # the handler may run while its own thread holds it
        self._pass_on = False
        self._forwarding = False

    def install(self, pass_on: bool = False) -> bool:
        """Handle SIGINT and SIGTERM from now on; with `pass_on`, a signal that arrives while no work
        is under way, or the end of the work it stopped, goes on to the handler installed before.
        False when this is not the main thread, where Python lets no handler be installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._pass_on = pass_on
        for number in EXIT_STATUS:
            self._previous[number] = signal.signal(number, self._handle)
        return True

    @property
    def exit_status(self) -> int | None:
        return EXIT_STATUS[self.signal] if self.signal is not None else None

    def resume_line(self, command: str, leases: bool = True) -> str:
        name = self.signal.name if self.signal is not None else "a signal"
        released = " and the leases are released" if leases else ""
        saved = f"what Logs Ingestion accepted is saved{released}"
        return f"stopped by {name}: {saved}; {command} resumes where this run stopped"

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Around one cycle of work: a signal that meets none is passed on at once, one that meets
        some once it is done."""
        with self._lock:
            self._working += 1
        try:
            yield
        finally:
            with self._lock:
                self._working -= 1
                idle = self._working == 0
            if idle and self.requested.is_set() and self._pass_on:
                self._forward()

    def _handle(self, number: int, frame: Any) -> None:
        if self._forwarding:
            self._call_previous(number)
            return
        if self.requested.is_set() and number == signal.SIGINT:
            os.write(
                2,
                f"\nsecond interrupt: exiting at once; the leases of what was under way expire by "
                f"themselves within {self._lease_seconds} s\n".encode(),
            )
            os._exit(EXIT_STATUS[signal.SIGINT])
        self.signal = signal.Signals(number)
        self.requested.set()
        again = " (SIGINT again exits at once)" if number == signal.SIGINT else ""
        os.write(2, f"\n{self.signal.name}: stopping after the request in flight{again}\n".encode())
        with self._lock:
            idle = self._working == 0
        if idle and self._pass_on:
            self._forward()

    def _forward(self) -> None:
        """Deliver the signal again, from any thread; the main thread hands it to the handler
        installed before this one (the Functions worker's own)."""
        assert self.signal is not None
        self._forwarding = True
        signal.raise_signal(self.signal)

    def _call_previous(self, number: int) -> None:
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, None)
        elif previous == signal.SIG_DFL:
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)
