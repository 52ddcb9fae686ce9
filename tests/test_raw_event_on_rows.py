"""The original event, rebuilt in KQL on rows: the saved function PulumiAuditRawEvent and the ASIM
parser with pack=true give back each event as Pulumi sent it.

Run on rows the connector wrote (every catalog event, and events of every unusual shape), on the
same rows as the connector wrote them before ExtraFields_s existed (the whole event in
RawEvent_s), and on rows of any event, where the KQL rebuild must agree with shared/rebuild.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.row_cost import old_format
from shared.catalog import default_catalog
from shared.rebuild import rebuild
from shared.schema import AUDIT_TABLE
from shared.standins.simulated_events import event_catalog
from shared.transform import to_row
from tests import content_model as cm
from tests import content_stories as cs
from tests.detection_rows import Batch, Story, at
from tests.event_strategies import EVENTS
from tests.kql_engine import Workspace

FUNCTION = cm.raw_event_function().function_alias
ODD_START = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
USER = {"name": "Zoë Okafor", "githubLogin": "zokafor", "avatarUrl": "https://example.test/z.png"}
_ABSENT = object()


def _odd(minute: int, **fields: Any) -> dict[str, Any]:
    base = {
        "timestamp": at(ODD_START + timedelta(minutes=minute)),
        "sourceIP": "198.51.100.7",
        "event": "stack-updated",
        "description": f"Update of stack 'acme/web/{minute}'.",
        "user": USER,
    }
    return {key: value for key, value in {**base, **fields}.items() if value is not _ABSENT}

# One event of each shape the columns alone do not describe, a minute apart.
ODD_EVENTS = (
    _odd(0, newField={"nested": [1, "two", None]}, user={**USER, "email": "zoe@example.test"}),
    _odd(1, event=event_catalog()["stack-deleted"]["displayName"]),
    _odd(2, sourceIP=_ABSENT, description=_ABSENT, user=_ABSENT),
    _odd(3, sourceIP="", description="", user={"name": "", "githubLogin": "", "avatarUrl": ""}),
    _odd(4, description="Déploiement 🚀 de « zürich » → 東京", user={**USER, "name": "Zoë 🚀"}),
    _odd(5, tokenID="7b2f6c1e", tokenName="ci-deploy", actorName="deployer", actorUrn="urn:pulumi:actor:deployer",
         reqOrgAdmin=True, reqStackAdmin=True, authFailure=True),
    _odd(6, user=None, reqOrgAdmin=False),
    _odd(7, user={"name": "Alex"}),
)
ODD_STORY = Story("odd-event-shapes", (Batch(cs.ORG, ODD_EVENTS),), (ODD_START + timedelta(minutes=12),))
ODD_END = ODD_START + timedelta(minutes=12)


@pytest.fixture(scope="module")
def catalog_rows(story_rows) -> tuple[dict, ...]:
    return story_rows(cs.CATALOG_STORY).audit


@pytest.fixture(scope="module")
def odd_rows(story_rows) -> tuple[dict, ...]:
    return story_rows(ODD_STORY).audit


def raw_events(rows, now: datetime, query: str = f"{FUNCTION}()") -> list[dict]:
    """What the query's RawEvent holds for each row, rows loaded with the saved functions."""
    functions = [*cs.parser_functions(), cs.workspace_function(cm.raw_event_function())]
    # Labelled with the shipped query it runs (tests/kql_engine.py counts them).
    label = ("parser:" if query.startswith("vim") else "function:") + query.split("(", 1)[0]
    found = Workspace({AUDIT_TABLE.name: rows}, functions).run(query, now, label=label)
    return [row["RawEvent"] if "RawEvent" in row else row["AdditionalFields"]["RawEvent"] for row in found]


def by_time(events) -> dict[int, dict]:
    """Events keyed by their timestamp, one event per second in these stories."""
    keyed = {int(event["timestamp"]): event for event in events}
    assert len(keyed) == len(events), "two events share a timestamp"
    return keyed


def as_written_before_extra_fields(rows) -> list[dict]:
    """The odd-shape rows as the connector wrote them before ExtraFields_s (benchmarks/row_cost.py)."""
    sent = by_time(ODD_EVENTS)
    return [old_format(row, sent[int(row["Timestamp_d"])]) for row in rows]


def test_the_saved_function_gives_back_every_catalog_event_as_pulumi_sent_it(catalog_rows):
    sent = cs.CATALOG_STORY.batches[0].events
    assert by_time(raw_events(catalog_rows, cs.CATALOG_END)) == by_time(sent)


def test_the_saved_function_gives_back_events_of_every_unusual_shape_as_sent(odd_rows):
    assert any(row["ExtraFields_s"] for row in odd_rows) and not any(row["RawEvent_s"] for row in odd_rows)
    assert by_time(raw_events(odd_rows, ODD_END)) == by_time(ODD_EVENTS)


def test_rows_written_before_extra_fields_existed_give_back_their_raw_event(odd_rows):
    assert by_time(raw_events(as_written_before_extra_fields(odd_rows), ODD_END)) == by_time(ODD_EVENTS)


def test_an_old_row_whose_raw_event_was_cut_comes_back_from_its_columns_as_in_python(odd_rows):
    row = next(row for row in odd_rows if row["TokenName_s"])
    cut = {**row, "RawEvent_s": '{"description": "xxx...[truncated by connector: 90000 bytes, limit 64000]'}
    assert raw_events([cut], ODD_END) == [rebuild(cut)] == [ODD_EVENTS[5]]


@pytest.mark.parametrize("written", ["today", "before-extra-fields"])
def test_the_parser_with_pack_adds_the_original_event_to_every_row(odd_rows, written):
    rows = odd_rows if written == "today" else as_written_before_extra_fields(odd_rows)
    assert by_time(raw_events(rows, ODD_END, "vimAuditEventPulumiCloud(pack = true)")) == by_time(ODD_EVENTS)


@settings(max_examples=8, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(EVENTS, min_size=1, max_size=30))
def test_the_kql_rebuild_agrees_with_the_python_rebuild_on_any_event(events):
    catalog = default_catalog()
    # Generated a second apart, in the order of the events, for the query to keep that order.
    rows = [
        {**to_row(cs.ORG, event, 1, catalog), "TimeGenerated": ODD_START + timedelta(seconds=index)}
        for index, event in enumerate(events)
    ]
    in_order = f"{FUNCTION}() | sort by TimeGenerated asc"
    assert raw_events(rows, ODD_END, in_order) == [rebuild(row) for row in rows]
