"""The connector's own health: one row per org per run for `PulumiAuditConnectorHealth_CL`.

Built from a run's `CollectionReport`s alone, so the rows say exactly what the run's summary
lines say, and Sentinel's health rules and workbook read the same facts an operator sees in
the logs. Pure: the run id, the end time, the version and the host come from the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.pipeline import CollectionReport
from shared.transform import iso_utc

# Error_s is for reading in a table cell and grouping in rules: one line, this long at most.
MAX_ERROR_CHARS = 1000
_CUT_MARK = "..."


def one_line(text: str | None, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` on one line (runs of whitespace, newlines included, become one space), cut to `limit`."""
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - len(_CUT_MARK)] + _CUT_MARK


def health_rows(
    reports: Sequence[CollectionReport], *, run_id: str, ended_at: int, version: str, host: str
) -> list[dict[str, Any]]:
    """The health rows of one run: one per report (a live run has one report per org, a backfill
    one per lane), in the columns of `shared.schema.HEALTH_TABLE`. Unknown lag and watermark
    (an org that failed before its state was read) are null."""
    ended = iso_utc(ended_at)
    return [
        {
            "TimeGenerated": ended,
            "RunId_s": run_id,
            "OrgName_s": report.org,
            "RunKind_s": report.kind,
            "Status_s": report.status,
            "EventsFetched_d": report.fetched,
            "EventsSent_d": report.sent,
            "DuplicatesSkipped_d": report.duplicates,
            "DeadLettered_d": report.dead_lettered,
            "Truncated_d": report.truncated_rows,
            "LagSeconds_d": report.lag_seconds,
            "WatermarkTime_t": None if report.watermark is None else iso_utc(report.watermark),
            "Error_s": one_line(report.error),
            "ConnectorVersion_s": version,
            "Host_s": host,
        }
        for report in reports
    ]
