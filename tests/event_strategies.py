"""Hypothesis strategies for audit events of any shape: any JSON in any field, any extra field, at
the top and inside `user`; for the rebuild specs in Python (tests/test_rebuild.py) and in KQL
(tests/test_raw_event_on_rows.py)."""

from __future__ import annotations

from hypothesis import strategies as st

from shared.rebuild import ABSENT
from shared.standins.simulated_events import event_catalog

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
SECONDS = st.integers(946_684_800, 4_102_444_800)
TIMESTAMPS = SECONDS | SECONDS.map(lambda seconds: seconds * 1000) | SECONDS.map(str)
EVENT_NAMES = st.sampled_from(sorted(event_catalog())) | st.sampled_from(
    sorted(entry["displayName"] for entry in event_catalog().values())
) | st.text(min_size=1).filter(str.strip)
USER_KEYS = ("name", "githubLogin", "avatarUrl", "email", ABSENT)
USERS = st.dictionaries(st.sampled_from(USER_KEYS) | st.text(max_size=8), st.text() | JSON_VALUES, max_size=5)
EXTRA_KEYS = st.sampled_from([ABSENT, "newField"]) | st.text(max_size=10)
OPTIONAL_KEYS = ("sourceIP", "description", "user", "tokenID", "tokenName", "actorName", "actorUrn")
FLAG_KEYS = ("reqOrgAdmin", "reqStackAdmin", "authFailure")
EVENTS = st.fixed_dictionaries(
    {"timestamp": TIMESTAMPS, "event": EVENT_NAMES},
    optional={
        **{key: st.text() | JSON_VALUES for key in OPTIONAL_KEYS},
        "user": USERS | JSON_VALUES,
        **{key: st.booleans() | JSON_VALUES for key in FLAG_KEYS},
    },
).flatmap(
    lambda event: st.dictionaries(EXTRA_KEYS, JSON_VALUES, max_size=3).map(lambda extra: {**extra, **event})
)
