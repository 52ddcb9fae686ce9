"""The fault matrix of the delivery state: backfills rerun, killed and run beside the live timer,
resets back and forward, and `--resend`. Each scenario runs the real connector (World connectors
through the real clients, or `python -m shared` processes) against the HTTPS stand-ins and Azurite;
crash scenarios SIGKILL a real process. Then the invariants of tests/invariants.py are checked:
0 lost, and 0 duplicates unless a crash, a reset back or `--resend` says why, and then only under
their twin's EventId_s.

Each scenario's docstring is its specification. Figures: test-results/fault-matrix-latest.md.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from azure.data.tables import TableClient

from shared.delivery import LIVE
from shared.standins import Fault, simulate_events
from tests.harness import expected_ids, write_v1_live_checkpoint
from tests.invariants import ORG, Scenario, World, kill_cli_when, play_and_check, row_id

DAY = 86400
HOLD = 30  # seconds a held request waits; far longer than any test, never actually waited out
PAGE = 10


def history(w: World, count: int, start_ago: int, end_ago: int, seed: int = 5) -> list[dict]:
    """`count` events between `start_ago` and `end_ago` seconds before the real clock, `PAGE` a page:
    history that live collection, which starts INITIAL_LOOKBACK (1h) back, never reads."""
    now = int(time.time())
    events = simulate_events(ORG, now - start_ago, now - end_ago, count, seed=seed)
    w.api.page_size = PAGE
    return w.add(events)


def kill_when(w: World, reached: Callable[[], bool], *args: str) -> None:
    """Start `python -m shared ARGS` and SIGKILL it once `reached()`; the kill joins the statuses."""
    output = kill_cli_when(w.deployment, reached, *args, what=f"{args[0]} to reach the kill")
    w.statuses.append("SIGKILL")
    w.texts.append(output)


def lanes(w: World) -> dict:
    return w.deployment.state().load_org(ORG).lanes


def show(w: World) -> dict:
    result = w.deployment.run_cli("checkpoint", "show", "--org", ORG, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# == backfill reruns ===============================================================================


def backfill_rerun_with_relative_times(w: World) -> None:
    """`backfill --since 3d` finishes; the same command a few seconds later, and again a minute later
    on the world's clock, sends 0 rows: what a rerun skips is the delivered coverage, whatever
    absolute start `3d` means this time. Live collection then finds nothing twice either."""
    events = history(w, 60, 3 * DAY - 600, 2 * DAY + 600)
    first = w.cli("backfill", "--since", "3d")
    assert first.returncode == 0 and "backfill acme: sent 60, skipped 0" in first.stderr, first.stderr
    again = w.cli("backfill", "--since", "3d")
    assert again.returncode == 0 and "nothing to send for acme" in again.stderr, again.stderr
    w.now = int(time.time()) + 60
    fetched = w.api.request_count
    assert w.backfill("3d") == [] and w.api.request_count == fetched
    assert set(w.landed()) == expected_ids(ORG, events) and len(w.rows()) == 60
    assert lanes(w) == {} and show(w)["backfills"] == []
    assert w.run().status == "ok"


# A description and a field no column holds this long make a row of about 120 KB: a request
# carries 8 of them.
BIG = 60_000


def big_history(w: World, count: int, start_ago: int, end_ago: int) -> list[dict]:
    """Like `history`, with rows of about 120 KB in pages of 5, so requests fill and pages are
    saved while the backfill still reads."""
    now = int(time.time())
    events = simulate_events(ORG, now - start_ago, now - end_ago, count, seed=5)
    for event in events:
        event["description"] += " " + "p" * BIG
        event["diff"] = "d" * BIG
    w.api.page_size = 5
    return w.add(events)


def backfill_killed_then_resumed(hold: Callable[[World], Callable[[], bool]], duplicates: bool):
    def play(w: World) -> None:
        w.deployment.extra["BACKFILL_PARALLELISM"] = "1"  # one lane, so the kill lands in it
        big_history(w, 50, 3 * DAY - 600, 3 * DAY - 3000)  # all in the lane's first window, an hour long
        reached = hold(w)
        kill_when(w, reached, "backfill", "--since", "3d")
        for faults in (w.api.faults, w.ingestion.faults):
            faults.clear()

        # The killed process is gone from this host: a rerun right away takes the lane's lease over
        # and resumes where the lane was saved.
        fetched = w.api.request_count
        rerun = w.cli("backfill", "--since", "3d")
        assert rerun.returncode == 0 and "status=ok" in rerun.stdout, rerun.stdout + rerun.stderr
        assert "took_over_lease_of=" in rerun.stdout and int(re.search(r"fetched=(\d+)", rerun.stdout)[1]) < 50
        assert "continuationToken" in w.api.requests[fetched].query
        w.now = int(time.time())
        assert lanes(w) == {} and w.run().status == "ok"
        copies = w.accounting().same_id_duplicates
        assert copies <= 8 and (copies > 0 or not duplicates), copies

    return play


def hold_the_fifth_page(w: World) -> Callable[[], bool]:
    w.api.faults.add(Fault.delay(HOLD, match=5))

    def reached() -> bool:
        lane = next(iter(lanes(w).values()), None)
        return w.api.request_count >= 5 and lane is not None and bool(lane.continuation_token)

    return reached


def accept_the_second_upload_but_hold_the_answer(w: World) -> Callable[[], bool]:
    w.ingestion.faults.add(Fault.hold_response(HOLD, match=2))
    return lambda: len(w.ingestion.requests) >= 2 and w.ingestion.requests[1].handled


backfill_killed_mid_window = backfill_killed_then_resumed(hold_the_fifth_page, duplicates=False)
backfill_killed_mid_window.__doc__ = """A `backfill --since 3d` is killed (SIGKILL) while it fetches page 5,
after the first pages were saved mid-window and a request delivered part of page 4. A rerun right
away takes over the lease of the killed process (gone from this host) and resumes at the
saved page, fetches nothing of the finished part, and skips what a request delivered of page 4: 0
lost; only a request in flight at the kill (at most 8 rows) may land twice, with the same EventId_s."""

backfill_killed_between_upload_and_save = backfill_killed_then_resumed(
    accept_the_second_upload_but_hold_the_answer, duplicates=True
)
backfill_killed_between_upload_and_save.__doc__ = """A `backfill --since 3d` is killed after Logs Ingestion
took the second request's rows and before the lane saved them. The rerun right away takes the
lease over and resumes at the last saved page and sends those rows again, with the same EventId_s: they (at most one
request, 8 rows) are the only duplicates."""


def backfill_resend_over_a_delivered_range(w: World) -> None:
    """`backfill --resend` over a range delivered before says first how much delivered time it
    re-sends, then sends every event of it again under the same EventId_s."""
    events = history(w, 30, 3 * DAY - 600, 2 * DAY + 600)
    assert w.cli("backfill", "--since", "3d").returncode == 0
    resend = w.cli("backfill", "--since", "3d", "--resend")
    assert resend.returncode == 0, resend.stderr
    said, summary = resend.stderr.find("--resend: re-sends "), resend.stderr.find("backfill acme: sent 30")
    assert 0 <= said < summary, resend.stderr
    assert Counter(w.landed().values()) == Counter({2: 30}) and set(w.landed()) == expected_ids(ORG, events)
    assert w.run().status == "ok"


# == backfill beside the live timer ================================================================


def at_once(*runs: Callable[[], object]) -> None:
    start = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def go(run: Callable[[], object]) -> None:
        start.wait()
        try:
            run()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=go, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def backfill_and_live_timer_at_once(w: World) -> None:
    """The timer's live run and `backfill --since 3h` start at the same moment, while new events
    wait for live collection. The backfill asks for time live collection covers too: it takes only
    what lies before where live collection began, and no event is sent twice."""
    old = history(w, 100, 3 * 3600 - 900, 3600 + 60)
    w.seed(30, page_size=PAGE)
    assert w.run().status == "ok"
    w.add([w.event(w.now - 100 + index) for index in range(50)])
    live, backfill = w.connector(), w.connector()
    reports: list = []
    at_once(lambda: reports.append(w.run(live)), lambda: reports.extend(w.backfill("3h", connector=backfill)))
    assert {report.status for report in reports} == {"ok"}
    assert expected_ids(ORG, old) <= set(w.landed())
    assert w.run().status == "ok"


def backfill_and_first_live_run_at_once(w: World) -> None:
    """A backfill starts while the very first live run of an org is between its first page and its
    first save. The live cursor, where the backfill ends, is the live run's to create: the backfill
    skips the org (exit 0, naming the holder) instead of creating it behind the live run's back, and
    run again afterwards it sends the history. Nothing fails, and no page is sent twice."""
    old = history(w, 40, 3 * 3600 - 900, 3600 + 60)
    w.seed(30, page_size=PAGE)
    live = w.connector()
    save = live.collector.state.save_cursor
    skipped: list = []

    def backfill_then_save(*args):
        if not skipped:
            skipped.extend(w.backfill("3h"))
        return save(*args)

    live.collector.state.save_cursor = backfill_then_save
    assert w.run(live).status == "ok"
    [report] = skipped
    assert report.status == "skipped" and live.collector.holder in report.error
    assert not expected_ids(ORG, old) & set(w.landed())
    assert sum(report.sent for report in w.backfill("3h")) == 40
    assert w.run().status == "ok"


# == resets ========================================================================================


def reset_back_recovers_a_late_event(w: World) -> None:
    """An event the API shows after its time was polled, further back than any overlap re-reads, is
    recovered by `checkpoint reset --to` an earlier time: the command says how much delivered time
    it re-reads, and the next run re-sends what the ledger no longer remembers under the same
    EventId_s."""
    start = w.now
    w.seed(30)
    assert w.run().status == "ok"
    w.tick(1800)
    assert w.run().status == "ok"  # half an hour later: the ledger has forgotten the first window
    [late] = w.add([w.event(start - 2500)])
    result = w.reset(ORG, start - 3000)
    assert result.returncode == 0 and "moving back re-reads " in result.stdout, result.stdout + result.stderr
    assert w.run().status == "ok"
    assert w.landed()[row_id(ORG, late)] == 1 and Counter(w.landed().values()) == Counter({2: 30, 1: 1})


def reset_forward_then_backfill(w: World) -> None:
    """`checkpoint reset --to` a later time skips events: it prints the gap it leaves and the backfill
    that fills it; `checkpoint show` lists the gap; that backfill sends exactly the skipped events."""
    w.seed(20)
    assert w.run().status == "ok"
    delivered_to = w.deployment.checkpoint().watermark
    w.tick(1200)
    skipped = w.add([w.event(w.now - 1000 + 20 * index) for index in range(10)])
    w.add([w.event(w.now - 400 + 20 * index) for index in range(5)])
    target = w.now - 600
    result = w.reset(ORG, target)
    assert result.returncode == 0 and "undelivered" in result.stdout, result.stdout + result.stderr
    assert "fill it with: backfill --org acme" in result.stdout
    assert w.run().status == "ok" and not expected_ids(ORG, skipped) & set(w.landed())
    assert show(w)["gaps"] == [[delivered_to, target]]
    assert sum(report.sent for report in w.backfill("2h")) == 10
    assert show(w)["gaps"] == []
    assert w.run().status == "ok"


# == upgrade ======================================================================================


def upgrade_from_a_v1_checkpoint_mid_window(w: World) -> None:
    """The table holds the live checkpoint connector 1.0.0 left when it stopped mid-window (one entity
    in partition "live", its whole ledger inside). The upgraded connector carries it over on its
    first run and reads that window again from its start: the pages 1.0.0 sent are dropped by the
    carried-over ledger, the rest is sent. Nothing is sent twice, nothing is lost."""
    w.seed(30)
    connector = w.connector()
    clock = itertools.count(0, 200)
    connector.collector.monotonic = lambda: next(clock)
    assert w.run(connector).status == "stopped" and len(w.rows()) == 20
    # What 1.0.0 would have stored at this point, in place of this version's entities.
    stored = w.deployment.checkpoint()
    ledger = [
        (entry.timestamp, entry.key, entry.sent, entry.seen)
        for segment in w.deployment.state().load_segments(ORG, LIVE)
        for entry in segment.entries
    ]
    table = TableClient.from_connection_string(w.deployment.azurite_connection_string, w.deployment.table_name)
    for entity in list(table.query_entities("PartitionKey eq @org", parameters={"org": ORG})):
        table.delete_entity(ORG, entity["RowKey"])
    window = (stored.window.start, stored.window.end)
    write_v1_live_checkpoint(
        table, ORG, stored.watermark, stored.origin, ledger, window=window, token=stored.continuation_token
    )
    resumed = w.run()
    assert resumed.status == "ok" and resumed.sent == 10 and resumed.duplicates >= 20
    assert w.deployment.checkpoint().window is None


# == the matrix ====================================================================================


SCENARIOS: list[Scenario] = [
    Scenario("backfill-rerun-with-relative-times", backfill_rerun_with_relative_times),
    Scenario(
        "backfill-killed-mid-window-then-resumed",
        backfill_killed_mid_window,
        duplicates_allowed="a request may be in flight when the process is killed",
    ),
    Scenario(
        "backfill-killed-between-upload-and-save-then-resumed",
        backfill_killed_between_upload_and_save,
        duplicates_allowed="killed after rows were accepted, before the lane's save",
    ),
    Scenario("backfill-and-live-timer-at-once", backfill_and_live_timer_at_once),
    Scenario("backfill-and-first-live-run-at-once", backfill_and_first_live_run_at_once),
    Scenario(
        "backfill-resend-over-a-delivered-range",
        backfill_resend_over_a_delivered_range,
        duplicates_allowed="--resend re-delivers on purpose",
    ),
    Scenario(
        "reset-back-recovers-a-late-event",
        reset_back_recovers_a_late_event,
        duplicates_allowed="a reset back re-reads delivered time on purpose",
    ),
    Scenario("reset-forward-then-backfill", reset_forward_then_backfill),
    Scenario("upgrade-from-a-v1-checkpoint-mid-window", upgrade_from_a_v1_checkpoint_mid_window),
]


@pytest.mark.faults
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
def test_delivery_state_keeps_every_event_once_under(scenario: Scenario, world: World):
    play_and_check(world, scenario)
