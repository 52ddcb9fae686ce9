"""A lease whose holder is a process of this host that has ended is taken over at once; any other
holder keeps its lease until it expires. The holder names its host, its pid and the second its
process started, so a pid that was reused by another process does not pass for the old holder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from shared.catalog import default_catalog
from shared.delivery import LIVE
from shared.pipeline import LEASE_SECONDS, Collector, live_collection
from shared.state_store import memory_state_store
from shared.wiring import holder_process_ended, run_holder
from tests.fakes import FakeAuditSource, FakeSink, InMemoryDeadLetterStore

NOW = 1_800_000_000
HOST = socket.gethostname()[:40]


def started(pid: int) -> int:
    return int(psutil.Process(pid).create_time())


@pytest.fixture(scope="module")
def ended_pid() -> tuple[int, int]:
    """The pid and start second of a process that ran on this host and has ended."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = started(process.pid)
    process.kill()
    process.wait()
    return process.pid, start


def collector(state) -> Collector:
    return Collector(
        source=FakeAuditSource(),
        sink=FakeSink(),
        state=state,
        dead_letters=InMemoryDeadLetterStore(),
        catalog=default_catalog(),
        holder=run_holder(),
        holder_ended=holder_process_ended,
        wall_clock=lambda: NOW,
        monotonic=lambda: 0.0,
    )


def collect_while_held_by(holder: str):
    state = memory_state_store()
    state.acquire_lease("acme", LIVE, holder, NOW, LEASE_SECONDS)
    return collector(state).collect(live_collection("acme", NOW, 3600, 600))


def test_a_holder_names_this_host_this_process_and_the_second_it_started():
    host, pid, start, nonce = run_holder().split(":")
    assert (host, int(pid), int(start)) == (HOST.replace(":", "-"), os.getpid(), started(os.getpid()))
    assert len(nonce) == 8


def test_a_lease_of_an_ended_process_of_this_host_is_taken_over_at_once_and_the_report_says_so(ended_pid):
    pid, start = ended_pid
    dead = f"{HOST}:{pid}:{start}:deadbeef"
    report = collect_while_held_by(dead)
    assert report.status == "ok" and report.took_over_from == dead
    assert f"took_over_lease_of={dead} (its process ended)" in report.summary()


def test_a_pid_now_used_by_a_process_started_at_another_second_is_not_the_old_holder():
    reused = f"{HOST}:{os.getpid()}:{started(os.getpid()) - 3600}:deadbeef"
    assert holder_process_ended(reused)
    assert collect_while_held_by(reused).status == "ok"


def test_a_live_holder_of_this_host_keeps_its_lease_however_slow_it_is():
    alive = run_holder()  # this very process: a run of it that has not renewed for a while
    report = collect_while_held_by(alive)
    assert report.status == "skipped" and alive in report.error and report.took_over_from is None


@pytest.mark.parametrize(
    "holder",
    [
        "another-host:1:1700000000:deadbeef",  # another host: this one cannot tell whether it runs
        f"{HOST}:999999999:deadbeef",  # the form before the start second was recorded
        "backfill-planner:deadbeef",
    ],
    ids=["another-host", "older-form-without-start-second", "not-a-process"],
)
def test_a_holder_this_host_cannot_prove_ended_keeps_its_lease_until_it_expires(holder):
    assert not holder_process_ended(holder)
    report = collect_while_held_by(holder)
    assert report.status == "skipped" and holder in report.error


def test_checkpoint_reset_takes_over_the_live_lease_of_an_ended_process_of_this_host(deployment, ended_pid):
    pid, start = ended_pid
    dead = f"{HOST}:{pid}:{start}:deadbeef"
    now = int(time.time())
    deployment.state().acquire_lease("acme", LIVE, dead, now, LEASE_SECONDS)
    result = deployment.run_cli("checkpoint", "reset", "--org", "acme", "--to", str(now - 600))
    assert result.returncode == 0, result.stderr
    assert f"took over the live lease of {dead}, whose process ended" in result.stdout
    assert deployment.checkpoint().watermark == now - 600
