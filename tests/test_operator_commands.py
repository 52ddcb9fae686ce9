"""The operator commands tell the truth: `checkpoint show|reset`, `backfill` (rerun, `--resend`),
`deadletter list`, help texts and settings, each through a real `python -m shared` process
against Azurite and the HTTPS stand-ins."""

from __future__ import annotations

import json
import time
from collections import Counter

from shared.coverage import Coverage
from shared.cursor import Cursor
from shared.pipeline import SETTLE_DELAY_SECONDS, collect_at_once, plan_backfill_lanes
from shared.standins import simulate_events
from tests.harness import expected_ids

NOW = int(time.time())
DAY = 86400
# Events of three to two days ago that `--since 3d` covers however long after import a test runs.
HISTORY = (NOW - 3 * DAY + 3600, NOW - 2 * DAY)


def seed(deployment, start: int, end: int, count: int, seed_value: int = 1, org: str = "acme") -> list[dict]:
    events = simulate_events(org, start, end, count, seed=seed_value)
    deployment.pulumi_api.add_events(org, events)
    return events


def show(deployment, org: str = "acme") -> dict:
    result = deployment.run_cli("checkpoint", "show", "--org", org, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_checkpoint_show_reports_watermark_lag_delivered_ranges_and_the_lease(deployment, now):
    seed(deployment, now - 3000, now - 120, 20)
    assert deployment.run_cli("run").returncode == 0
    view = show(deployment)
    assert view["org"] == "acme" and view["lag_seconds"] >= 60 and view["gaps"] == []
    assert view["delivered"] == [[now - 3600 + (view["delivered"][0][0] - (now - 3600)), view["watermark"]]]
    assert view["live_lease"] is None and view["backfills"] == []


def test_checkpoint_show_prints_a_readable_table_by_default(deployment, now):
    seed(deployment, now - 3000, now - 120, 5)
    deployment.run_cli("run")
    result = deployment.run_cli("checkpoint", "show")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("acme: watermark ") and ", lag " in lines[0]
    assert lines[1] == "  live lease   free" and lines[2].startswith("  delivered    ")


def test_a_backfill_rerun_with_relative_times_sends_nothing(deployment):
    events = seed(deployment, *HISTORY, 80)
    first = deployment.run_cli("backfill", "--since", "3d")
    assert first.returncode == 0, first.stderr
    assert set(deployment.landed()) == expected_ids("acme", events)
    again = deployment.run_cli("backfill", "--since", "3d")
    assert again.returncode == 0 and len(deployment.ingestion.rows) == 80
    assert "sent 0, skipped 0 already delivered, dead-lettered 0" in again.stderr or "nothing to send" in again.stderr


def test_a_backfill_ends_with_a_summary_of_sent_skipped_and_dead_lettered(deployment):
    seed(deployment, *HISTORY, 40)
    result = deployment.run_cli("backfill", "--since", "3d")
    assert "backfill acme: sent 40, skipped 0 already delivered, dead-lettered 0" in result.stderr
    assert " events" in result.stderr and "reached " in result.stderr  # the progress bar counts events


def test_resend_says_how_much_it_re_sends_and_keeps_every_event_id(deployment):
    events = seed(deployment, *HISTORY, 30)
    deployment.run_cli("backfill", "--since", "3d")
    result = deployment.run_cli("backfill", "--since", "3d", "--resend")
    assert result.returncode == 0 and "--resend: re-sends " in result.stderr
    assert Counter(deployment.landed().values()) == Counter({2: 30})
    assert set(deployment.landed()) == expected_ids("acme", events)


def test_a_reset_back_says_what_it_re_reads_and_recovers_an_event_the_api_showed_late(deployment, now):
    events = seed(deployment, now - 3000, now - 120, 40)
    deployment.run_cli("run")
    late = seed(deployment, now - 3000, now - 2000, 1, seed_value=7)  # shown now, long past the overlap
    result = deployment.run_cli("checkpoint", "reset", "--org", "acme", "--to", "1h")
    assert result.returncode == 0
    assert "moving back re-reads " in result.stdout and "same EventId_s" in result.stdout
    assert "live collection moved from " in result.stdout
    deployment.run_cli("run")
    landed = deployment.landed()
    assert set(landed) == expected_ids("acme", events) | expected_ids("acme", late)
    assert max(landed.values()) <= 2  # a re-sent row keeps its EventId_s


def test_a_reset_forward_leaves_a_visible_gap_that_backfill_fills(deployment, now):
    # Live collection has delivered [3d, 2d) ago and stands at 2d ago.
    delivered = Cursor(watermark=now - 2 * DAY, origin=now - 3 * DAY)
    deployment.state().replace_live("acme", delivered, None, Coverage(), None)
    skipped = seed(deployment, now - 2 * DAY + 10, now - DAY - 10, 12)
    result = deployment.run_cli("checkpoint", "reset", "--org", "acme", "--to", str(now - DAY))
    assert result.returncode == 0
    assert "leaves 1d 0h 0m undelivered" in result.stdout and "fill it with: backfill --org acme" in result.stdout
    assert deployment.run_cli("run").returncode == 0
    assert deployment.ingestion.rows == []
    assert show(deployment)["gaps"] == [[now - 2 * DAY, now - DAY]]
    filled = deployment.run_cli("backfill", "--since", "3d")
    assert filled.returncode == 0, filled.stderr
    assert Counter(deployment.landed().values()) == Counter({1: 12})
    assert set(deployment.landed()) == expected_ids("acme", skipped)
    assert show(deployment)["gaps"] == [] and show(deployment)["backfills"] == []


def test_a_gap_up_to_a_reset_forward_to_now_stays_listed_until_a_backfill_delivered_all_of_it(deployment):
    now = int(time.time())
    deployment.state().replace_live("acme", Cursor(watermark=now - 3600, origin=now - 7200), None, Coverage(), None)
    settled = seed(deployment, now - 3500, now - 600, 10)
    recent = seed(deployment, now - 30, now - 5, 5, seed_value=2)  # inside the settle delay of a backfill run now
    assert deployment.run_cli("checkpoint", "reset", "--org", "acme", "--to", str(now)).returncode == 0
    assert show(deployment)["gaps"] == [[now - 3600, now]], "listed before live collection delivered anything"
    assert "  gap          " in deployment.run_cli("checkpoint", "show").stdout

    at_once = deployment.run_cli("backfill", "--since", "2h")
    assert at_once.returncode == 0, at_once.stderr
    assert set(deployment.landed()) == expected_ids("acme", settled)
    assert "s are too recent (the API shows events up to 60 s late); run again after " in at_once.stderr
    [[tail_start, tail_end]] = show(deployment)["gaps"]
    assert now - 60 <= tail_start <= now - 30 and tail_end == now

    # A minute later (the connector's clock moved, not the test's) the same backfill delivers the tail.
    later = deployment.connector()
    later.collector.wall_clock = lambda: now + 2 * SETTLE_DELAY_SECONDS
    _, lanes = plan_backfill_lanes(later.collector.state, "acme", now - 7200, now + 60, now + 120, 3600, False)
    assert [report.status for report in collect_at_once(later.collector, lanes, 1)] == ["ok"]
    assert show(deployment)["gaps"] == []
    assert Counter(deployment.landed().values()) == Counter({1: 15})
    assert set(deployment.landed()) == expected_ids("acme", settled) | expected_ids("acme", recent)


def test_a_backfill_skips_an_org_whose_first_live_run_is_under_way(deployment, now):
    seed(deployment, now - 3 * DAY, now - 2 * DAY, 10)
    deployment.state().acquire_lease("acme", "live", "timer-host:42:abcd", int(time.time()), 120)
    result = deployment.run_cli("backfill", "--since", "3d")
    assert result.returncode == 0 and "status=skipped" in result.stdout, result.stdout + result.stderr
    assert "creating the org's live cursor" in result.stdout and "timer-host:42:abcd" in result.stdout
    assert deployment.ingestion.rows == [] and deployment.checkpoint() is None


def test_an_org_not_in_pulumi_orgs_is_refused_by_every_operator_command(deployment):
    for command in (
        ["checkpoint", "show", "--org", "nosuch"],
        ["checkpoint", "reset", "--org", "nosuch", "--to", "1h"],
        ["backfill", "--since", "1d", "--org", "nosuch"],
        ["deadletter", "list", "--org", "nosuch"],
    ):
        result = deployment.run_cli(*command)
        assert result.returncode == 2 and "not in PULUMI_ORGS (acme)" in result.stderr, command


def test_deadletter_list_says_so_when_there_is_nothing(deployment):
    result = deployment.run_cli("deadletter", "list")
    assert result.returncode == 0 and result.stdout == "" and "no dead-lettered rows" in result.stderr


def test_run_help_names_the_exit_codes(deployment):
    result = deployment.run_cli("run", "--help")
    text = " ".join(result.stdout.split())
    assert "exit status: 0 every org ok or skipped" in text and "1 an org failed" in text and "2 bad settings" in text


def test_every_option_has_help_text():
    from shared.cli import build_parser

    def walk(parser):
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                yield parser.prog, action
            for sub in getattr(action, "choices", None) or {}:
                if hasattr(action.choices[sub], "_actions"):
                    yield from walk(action.choices[sub])

    missing = [f"{prog} {action.option_strings[0]}" for prog, action in walk(build_parser()) if not action.help]
    assert missing == []


def test_a_settings_error_lists_one_problem_per_line(deployment):
    environ = {**deployment.environ, "INITIAL_LOOKBACK": "soon", "DCR_IMMUTABLE_ID": "nope"}
    result = deployment.run_cli("run", environ=environ)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: invalid settings:"
    assert any(line.startswith("  - INITIAL_LOOKBACK") for line in lines)
    assert any(line.startswith("  - DCR_IMMUTABLE_ID") for line in lines)


def test_the_cli_reads_local_settings_json_and_the_environment_wins(deployment, tmp_path):
    settings = {**deployment.environ, "PULUMI_ORGS": "fromfile"}
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": settings}))
    from_file = deployment.run_cli("checkpoint", "show", "--json", cwd=tmp_path, environ={})
    assert from_file.returncode == 0 and json.loads(from_file.stdout)["org"] == "fromfile"
    overridden = deployment.run_cli("checkpoint", "show", "--json", cwd=tmp_path, environ={"PULUMI_ORGS": "acme"})
    assert json.loads(overridden.stdout)["org"] == "acme"
