"""Process death: a real `python -m shared run` is killed with SIGKILL at each step boundary of a
page (see shared/pipeline.py), then run again. Nothing may be lost; a copy may land twice only
when the kill came after the upload and before the checkpoint write, and then with the same
EventId_s. The killed run's process is gone from this host, so a run right away takes its lease
over and resumes (a run on another host would wait LEASE_SECONDS for the lease to expire).

The kill is timed with a stand-in that holds one chosen request back (an Event wait, no sleep):
the test kills the child as soon as that request has arrived.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from shared.standins import Fault, simulate_events
from tests.invariants import (
    CANARY_MONITOR_TOKEN,
    CANARY_PULUMI_TOKEN,
    World,
    kill_cli_when,
    record_figures,
)

HOLD = 30  # seconds a held request waits; far longer than any test, never actually waited out


@dataclass(frozen=True)
class KillPoint:
    name: str
    arrange: Callable[[World], None]
    reached: Callable[[World], bool]
    duplicates: bool  # whether copies with the same EventId_s may land
    checks: Callable[[World], None] = lambda world: None  # what must hold at the moment of the kill


def hold_the_identity_token(w: World) -> None:
    # The managed-identity token is fetched lazily, by the first upload: holding it stops the
    # run after the first page was fetched and transformed, before any row was sent.
    w.seed()
    w.managed_identity.faults.add(Fault.delay(HOLD, match=1))


def hold_the_first_upload(w: World) -> None:
    w.seed()
    w.ingestion.faults.add(Fault.delay(HOLD, match=1))


def hold_the_second_batch(w: World) -> None:
    # One page of 25 rows of ~90 KB each (a 45 KB description and a 45 KB field no column holds):
    # three requests under the 1 MB limit.
    w.api.page_size = 25
    w.add(
        w.event(w.now - 2000 + i, description=f"Policy pack {i}: " + "p" * 45_000, diff="d" * 45_000)
        for i in range(25)
    )
    w.ingestion.faults.add(Fault.delay(HOLD, match=2))


def accept_the_first_upload_but_hold_the_answer(w: World) -> None:
    w.seed()
    w.ingestion.faults.add(Fault.hold_response(HOLD, match=1))


def hold_the_third_page(w: World) -> None:
    # Pages of 5 rows of ~120 KB (a 60 KB description and a 60 KB field no column holds): the first
    # request carries page 1 and the start of page 2, so page 1 is saved (mid-window) and page 2
    # keeps what was delivered of it, while page 3 is held.
    w.api.page_size = 5
    w.add(
        w.event(w.now - 2000 + i, description=f"Policy pack {i}: " + "p" * 60_000, diff="d" * 60_000)
        for i in range(15)
    )
    w.api.faults.add(Fault.delay(HOLD, match=3))


def hold_the_second_org(w: World) -> None:
    w.deployment.orgs = ("acme", "globex")
    w.seed(org="acme")
    w.seed(org="globex", seed=2)
    w.api.faults.add(Fault.delay(HOLD, match=lambda request: "/globex/" in request.path))


def nothing_sent_yet(w: World) -> None:
    assert w.api.request_count >= 1 and w.ingestion.request_count == 0
    assert w.deployment.checkpoint() is None


def first_page_checkpointed(w: World) -> None:
    cursor = w.deployment.checkpoint()
    assert cursor is not None and cursor.continuation_token, "killed mid-window, after page 1 was saved"
    assert 5 < len(w.rows()) < 10, "page 2 was delivered in part"


def first_org_caught_up(w: World) -> None:
    cursor = w.deployment.checkpoint("acme")
    assert cursor is not None and cursor.window is None and w.deployment.checkpoint("globex") is None


def first_org_caught_up_while_the_second_is_held(w: World) -> bool:
    # The orgs run at once (MAX_PARALLEL_ORGS): acme finishes while globex's first page is held.
    held = any("/globex/" in request.path for request in w.api.requests)
    acme = w.deployment.checkpoint("acme")
    return held and acme is not None and acme.window is None


KILL_POINTS = [
    KillPoint(
        "after-fetch-before-upload",
        hold_the_identity_token,
        lambda w: w.managed_identity.request_count >= 1,
        duplicates=False,
        checks=nothing_sent_yet,
    ),
    KillPoint(
        "during-upload",
        hold_the_first_upload,
        lambda w: w.ingestion.request_count >= 1,
        duplicates=False,
        checks=lambda w: w.rows() == [] and w.deployment.checkpoint() is None,
    ),
    KillPoint(
        "during-upload-after-the-first-batch-landed",
        hold_the_second_batch,
        lambda w: w.ingestion.request_count >= 2,
        duplicates=False,  # what the first request delivered of the page is kept in its ledger segment
        checks=lambda w: len(w.rows()) > 0 and w.deployment.checkpoint() is None,
    ),
    KillPoint(
        "after-upload-before-the-checkpoint-write",
        accept_the_first_upload_but_hold_the_answer,
        lambda w: bool(w.ingestion.requests) and w.ingestion.requests[0].handled,
        duplicates=True,
        checks=lambda w: len(w.rows()) == 25 and w.deployment.checkpoint() is None,
    ),
    KillPoint(
        "after-a-checkpoint-write-mid-window",
        hold_the_third_page,
        lambda w: w.api.request_count >= 3 and w.deployment.checkpoint() is not None,
        duplicates=False,
        checks=first_page_checkpointed,
    ),
    KillPoint(
        "after-the-first-org-was-checkpointed",
        hold_the_second_org,
        first_org_caught_up_while_the_second_is_held,
        duplicates=False,
        checks=first_org_caught_up,
    ),
]


def kill_mid_run(w: World, point: KillPoint) -> str:
    """Start `python -m shared run`, SIGKILL it when the kill point is reached; its output."""
    return kill_cli_when(w.deployment, lambda: point.reached(w), "run", what=point.name)


@pytest.mark.faults
@pytest.mark.parametrize("point", KILL_POINTS, ids=[point.name for point in KILL_POINTS])
def test_a_run_killed_mid_way_loses_nothing_when_run_again(point: KillPoint, world: World):
    point.arrange(world)
    output = kill_mid_run(world, point)
    point.checks(world)
    killed_at = {org: world.deployment.checkpoint(org) for org in world.orgs}
    for faults in (world.api.faults, world.ingestion.faults, world.managed_identity.faults):
        faults.clear()

    # The killed run's process is gone from this host: a run right away takes its lease over and resumes.
    rerun = world.deployment.run_cli("run")
    output += rerun.stdout + rerun.stderr
    assert rerun.returncode == 0 and "status=skipped" not in rerun.stdout, rerun.stdout + rerun.stderr
    assert "took_over_lease_of=" in rerun.stdout
    resumed = world.run()
    statuses = ["SIGKILL", "run 0 (lease taken over)", *world.statuses]
    accounting = world.accounting()
    record_figures(
        f"crash: killed {point.name.replace('-', ' ')}",
        accounting,
        len(world.stored_dead_letters()),
        statuses,
        "duplicates allowed: killed after rows were accepted, before the checkpoint" if point.duplicates else "",
        "allowed" if point.duplicates else "clean",
    )

    assert resumed.status == "ok" and world.statuses[-1].split("/") == ["ok"] * len(world.orgs)
    assert accounting.lost == 0 and accounting.phantoms == 0
    assert accounting.new_id_duplicates == 0, "a copy landed under another EventId_s than its twin"
    if point.duplicates:
        assert accounting.same_id_duplicates > 0, "the kill point was meant to leave accepted rows unsaved"
    else:
        assert accounting.same_id_duplicates == 0
    for org, before in killed_at.items():
        after = world.deployment.checkpoint(org)
        assert after.window is None and (before is None or after.watermark >= before.watermark)
    assert CANARY_PULUMI_TOKEN not in output and CANARY_MONITOR_TOKEN not in output


# == several collections at once ===================================================================
# Each collection (an org's live feed, a backfill lane) saves what a request delivered before its
# next request goes out, so at most one request per collection is ever unsaved. Collections run
# at once (MAX_PARALLEL_ORGS, BACKFILL_PARALLELISM), so a kill may find one in flight in each: a
# crash re-sends at most one request per collection then under way, never more.

PADDING = 5_000  # rows of about 10 KB: a request carries about 100, and each org sends several


def padded(events: list[dict]) -> list[dict]:
    """Rows of about twice PADDING bytes: a long description and a field no column holds (ExtraFields_s)."""
    for event in events:
        event["description"] += " " + "p" * PADDING
        event["padding"] = "q" * PADDING
    return events


def resent_per_org(w: World) -> Counter:
    """How many extra copies of rows landed, per org."""
    copies = Counter((row["OrgName_s"], row["EventId_s"]) for row in w.rows())
    resent: Counter = Counter()
    for (org, _), count in copies.items():
        resent[org] += count - 1
    return resent


def largest_request(w: World) -> int:
    return max(request.row_count or 0 for request in w.ingestion.requests)


def upload_landed(w: World, number: int) -> Callable[[], bool]:
    return lambda: len(w.ingestion.requests) >= number and w.ingestion.requests[number - 1].handled


@pytest.mark.faults
@pytest.mark.parametrize("landed", [2, 4, 7])
def test_a_run_of_three_orgs_killed_re_sends_at_most_one_request_per_org(landed: int, world: World):
    world.deployment.orgs = ("acme", "globex", "initech")
    world.api.page_size = 25
    for index, org in enumerate(world.orgs):
        world.add(padded(simulate_events(org, world.now - 3000, world.now - 120, 300, seed=index + 1)), org=org)
    output = kill_cli_when(world.deployment, upload_landed(world, landed), "run", what=f"upload {landed} to land")

    rerun = world.deployment.run_cli("run")
    assert rerun.returncode == 0 and "status=skipped" not in rerun.stdout, rerun.stdout + rerun.stderr
    assert world.run().status == "ok"
    accounting = world.accounting()
    resent = resent_per_org(world)
    record_figures(
        f"crash: three orgs at once, killed once upload {landed} landed",
        accounting,
        0,
        ["SIGKILL", "run 0", *world.statuses],
        f"re-sent {sum(resent.values())} rows (per org {dict(sorted(resent.items()))}); "
        f"a request holds up to {largest_request(world)}",
        "allowed",
    )
    assert accounting.lost == 0 and accounting.new_id_duplicates == 0 and accounting.phantoms == 0
    assert all(count <= largest_request(world) for count in resent.values()), resent
    assert CANARY_PULUMI_TOKEN not in output


@pytest.mark.faults
@pytest.mark.parametrize("landed", [2, 4, 7])
def test_a_backfill_of_four_lanes_killed_re_sends_at_most_one_request_per_lane(landed: int, world: World):
    world.deployment.extra["BACKFILL_PARALLELISM"] = "4"
    world.api.page_size = 25
    now = int(time.time())
    world.add(padded(simulate_events("acme", now - 3 * 86400, now - 2 * 86400, 600, seed=3)))
    kill_cli_when(world.deployment, upload_landed(world, landed), "backfill", "--since", "3d", what="upload to land")

    rerun = world.deployment.run_cli("backfill", "--since", "3d")
    assert rerun.returncode == 0 and "status=skipped" not in rerun.stdout, rerun.stdout + rerun.stderr
    accounting = world.accounting()
    resent = sum(resent_per_org(world).values())
    record_figures(
        f"crash: a backfill of four lanes, killed once upload {landed} landed",
        accounting,
        0,
        ["SIGKILL", "backfill 0"],
        f"re-sent {resent} rows; a request holds up to {largest_request(world)}",
        "allowed",
    )
    assert accounting.lost == 0 and accounting.new_id_duplicates == 0 and accounting.phantoms == 0
    assert resent <= 4 * largest_request(world)
