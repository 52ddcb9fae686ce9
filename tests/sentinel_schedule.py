"""Sentinel's scheduled analytics rules, simulated on the detection harness (tests/kql_engine.py).

A scheduled rule runs every `queryFrequency`. The run at time t sees the rows whose TimeGenerated
lies in [t - queryPeriod, t] and that were ingested by t; `now()` and `ago()` are relative to t.
When the number of results passes the trigger (`triggerOperator`, `triggerThreshold`), the run
raises one alert per result (AlertPerResult) or one alert for all of them (SingleAlert), with the
entities and custom details the rule maps from result columns. Everything here is read from the
Bicep that deploys the rules (infra/modules/workspace.bicep), so the simulation runs what deploys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from tests import infra_model as im
from tests.kql_engine import Workspace

_DURATION = re.compile(r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?)?$")
_TRIGGERS = {
    "GreaterThan": lambda count, threshold: count > threshold,
    "GreaterThanOrEqual": lambda count, threshold: count >= threshold,
    "Equal": lambda count, threshold: count == threshold,
    "LessThan": lambda count, threshold: count < threshold,
}


def iso_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not an ISO 8601 duration of days, hours and minutes: {text!r}")
    return timedelta(**{unit: int(value) for unit, value in match.groupdict(default="0").items()})


@dataclass(frozen=True)
class ScheduledRule:
    key: str
    query: str  # as deployed
    frequency: timedelta
    period: timedelta
    trigger_operator: str
    trigger_threshold: int
    alert_per_result: bool
    entity_mappings: tuple[tuple[str, str, str], ...]  # (entity type, identifier, column)
    custom_details: tuple[tuple[str, str], ...]  # (detail name, column)


@dataclass(frozen=True)
class Alert:
    rule: str
    raised_at: datetime
    results: tuple[dict[str, Any], ...]
    entities: frozenset[tuple[str, str, str]]  # (entity type, identifier, value)
    custom_details: dict[str, tuple[Any, ...]]

    def entity_values(self, entity_type: str) -> set[str]:
        return {value for kind, _, value in self.entities if kind == entity_type}


def _rule_resource_properties() -> dict[str, Any]:
    tree = im.parse(im.WORKSPACE_MODULE)
    _, resource = im.only_resource(tree, "Microsoft.SecurityInsights/alertRules")
    return im.body(resource)["properties"]


def _deployed_query(rule: dict[str, Any], orgs: tuple[str, ...]) -> str:
    """The rule's query as deployed with `pulumiOrgs` = `orgs`."""
    text = rule["query_file"].read_text(encoding="utf-8")
    if rule["substitution"]:
        placeholder, replacement = rule["substitution"]
        text = text.replace(placeholder, replacement.replace("${string(pulumiOrgs)}", json.dumps(list(orgs))))
    return text


@cache
def scheduled_rules(orgs: tuple[str, ...] = ("acme",)) -> dict[str, ScheduledRule]:
    """Every analytic rule the workspace module deploys for the organizations `orgs` (the
    deployment's pulumiOrgs: the stories' default org), as Sentinel schedules it."""
    properties = _rule_resource_properties()
    operator, threshold = properties["triggerOperator"], int(properties["triggerThreshold"])
    rules = {}
    for rule in im.analytic_rules():
        mappings = tuple(
            (mapping["entityType"], field["identifier"], field["columnName"])
            for mapping in rule["entityMappings"]
            for field in mapping["fieldMappings"]
        )
        rules[rule["key"]] = ScheduledRule(
            key=rule["key"],
            query=_deployed_query(rule, orgs),
            frequency=iso_duration(rule["queryFrequency"]),
            period=iso_duration(rule["queryPeriod"]),
            trigger_operator=operator,
            trigger_threshold=threshold,
            alert_per_result=_is_true(rule["alertPerResult"]),
            entity_mappings=mappings,
            custom_details=tuple(sorted((rule["customDetails"] or {}).items())),
        )
    return rules


def _is_true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    assert value in ("true", "false"), f"expected a boolean, got {value!r}"
    return value == "true"


def _alert(rule: ScheduledRule, moment: datetime, results: list[dict[str, Any]]) -> Alert:
    entities = frozenset(
        (kind, identifier, str(result[column]))
        for kind, identifier, column in rule.entity_mappings
        for result in results
        if result.get(column) not in (None, "")
    )
    details = {name: tuple(result.get(column) for result in results) for name, column in rule.custom_details}
    return Alert(rule.key, moment, tuple(results), entities, details)


def run_rule(rule: ScheduledRule, workspace: Workspace, moment: datetime) -> list[Alert]:
    """The alerts of the rule's run at `moment`."""
    results = workspace.run(rule.query, moment, time_range=(moment - rule.period, moment), label=f"rule:{rule.key}")
    if not _TRIGGERS[rule.trigger_operator](len(results), rule.trigger_threshold):
        return []
    if rule.alert_per_result:
        return [_alert(rule, moment, [result]) for result in results]
    return [_alert(rule, moment, results)]


def schedule(rule: ScheduledRule, start: datetime, end: datetime, phase: timedelta = timedelta(0)) -> list[datetime]:
    """The rule's runs from `start + phase` up to `end`, every queryFrequency."""
    moments, moment = [], start + phase
    while moment <= end:
        moments.append(moment)
        moment += rule.frequency
    return moments


def alerts_between(
    rule: ScheduledRule,
    tables: Mapping[str, Any] | Workspace,
    start: datetime,
    end: datetime,
    phase: timedelta = timedelta(0),
) -> list[Alert]:
    """Every alert the rule raises while Sentinel runs it from `start + phase` to `end`."""
    workspace = tables if isinstance(tables, Workspace) else Workspace(tables)
    return [alert for moment in schedule(rule, start, end, phase) for alert in run_rule(rule, workspace, moment)]
