"""Pulumi's audit event catalog: event ids, display names and categories.

The catalog ships inside the package (`shared/data`), so the app never needs the
network or anything outside its own folder to classify an event.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from importlib import resources

# ESC events that do not carry the `environment-` prefix.
_ESC_EVENTS_WITHOUT_PREFIX = frozenset({"auth-failure-environment", "stack-provider-open"})
_ESC_PREFIX = "environment-"
UNCATEGORIZED = "uncategorized"


class EventCatalog:
    """Maps event names (kebab-case ids or display names) to ids, categories and products."""

    def __init__(self, entries: list[dict]):
        self._category_by_id = {entry["event"]: entry["category"] for entry in entries}
        self._id_by_display_name = {entry["displayName"].casefold(): entry["event"] for entry in entries}

    def normalize(self, event: str) -> str:
        """The kebab-case id for `event`, accepting the display-name form ("Environment Open")."""
        name = event.strip()
        if name in self._category_by_id:
            return name
        known = self._id_by_display_name.get(name.casefold())
        if known:
            return known
        return re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-")

    def category(self, event_id: str) -> str:
        """The catalog category; for an id the catalog lacks, the majority category of the
        catalog ids that share its longest hyphen-separated prefix."""
        if event_id in self._category_by_id:
            return self._category_by_id[event_id]
        segments = event_id.split("-")
        for length in range(len(segments) - 1, 0, -1):
            prefix = "-".join(segments[:length]) + "-"
            matches = Counter(category for known, category in self._category_by_id.items() if known.startswith(prefix))
            if matches:
                return sorted(matches.items(), key=lambda item: (-item[1], item[0]))[0][0]
        return UNCATEGORIZED

    @staticmethod
    def product(event_id: str) -> str:
        """'esc' for Pulumi ESC events, 'cloud' for everything else."""
        if event_id.startswith(_ESC_PREFIX) or event_id in _ESC_EVENTS_WITHOUT_PREFIX:
            return "esc"
        return "cloud"


@lru_cache(maxsize=1)
def catalog_entries() -> tuple[dict, ...]:
    """The catalog's entries as shipped: event, displayName, category, authenticationFailure, ..."""
    text = resources.files("shared.data").joinpath("pulumi-audit-event-types.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["eventTypes"])


@lru_cache(maxsize=1)
def default_catalog() -> EventCatalog:
    return EventCatalog(list(catalog_entries()))
