"""The one definition of each table the connector writes: `AUDIT_TABLE` and `HEALTH_TABLE`.

The Bicep tables and DCR streams, the analytic rules, the workbook, the ASIM parser, the
hunting queries and the tests are all checked against these definitions. The audit
table's first 15 columns are the official Pulumi connector's, with the same names and
types, so its queries and rules run unchanged on our table.
"""

from __future__ import annotations

from dataclasses import dataclass

# Log Analytics / DCR column types used by these tables.
COLUMN_TYPES = frozenset({"datetime", "long", "string", "boolean"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    # The only values the connector writes, for a column that is an enumeration; empty otherwise.
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """A custom Log Analytics table and the DCR stream the connector sends its rows to."""

    name: str
    stream: str
    description: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")


_AUDIT_COLUMNS: tuple[Column, ...] = (
    Column("TimeGenerated", "datetime", "When the event happened (UTC); Azure may restamp rows older than 2 days"),
    Column("Timestamp_d", "long", "Original event time, Unix epoch seconds"),
    Column("SourceIP_s", "string", "Client IP address"),
    Column("Event_s", "string", "Event type id, kebab-case (e.g. stack-deleted)"),
    Column("Description_s", "string", "Human-readable event description"),
    Column("UserName_s", "string", "User display name"),
    Column("UserLogin_s", "string", "User login (GitHub login)"),
    Column("UserAvatarUrl_s", "string", "User avatar URL"),
    Column("TokenID_s", "string", "Access token id, if a token was used"),
    Column("TokenName_s", "string", "Access token name, if a token was used"),
    Column("ActorName_s", "string", "Non-human actor name"),
    Column("ActorUrn_s", "string", "Non-human actor Pulumi URN"),
    Column("RequireOrgAdmin_b", "boolean", "The action required org admin"),
    Column("RequireStackAdmin_b", "boolean", "The action required stack admin"),
    Column("AuthFailure_b", "boolean", "Failed authentication attempt"),
    Column("OrgName_s", "string", "Pulumi organization the event belongs to"),
    Column("EventId_s", "string", "Deterministic event id: the same event always gets the same id"),
    Column("Product_s", "string", "'esc' for Pulumi ESC events, 'cloud' for the rest"),
    Column("Category_s", "string", "Event category from Pulumi's event catalog"),
    Column("EventTime_t", "datetime", "Original event time; never restamped, use it for backfilled data"),
    Column(
        "RawEvent_s",
        "string",
        "The whole event as JSON, in rows written before ExtraFields_s; empty in newer rows (but see docs/SCHEMA.md)",
    ),
    Column(
        "ExtraFields_s",
        "string",
        "What no other column holds, as compact JSON (unknown fields, display-name event names); "
        "usually empty. PulumiAuditRawEvent rebuilds the whole event",
    ),
)

AUDIT_TABLE = Table(
    name="PulumiAuditLogs_CL",
    stream="Custom-PulumiAuditLogs",
    description="Pulumi Cloud audit log events",
    columns=_AUDIT_COLUMNS,
)

RUN_KINDS = ("live", "backfill")
RUN_STATUSES = ("ok", "stopped", "skipped", "failed")

HEALTH_TABLE = Table(
    name="PulumiAuditConnectorHealth_CL",
    stream="Custom-PulumiAuditConnectorHealth",
    description="One row per Pulumi organization per connector run",
    columns=(
        Column("TimeGenerated", "datetime", "When the run ended (UTC)"),
        Column("RunId_s", "string", "Id of the run; the rows of one run share it"),
        Column("OrgName_s", "string", "Pulumi organization the row is about"),
        Column("RunKind_s", "string", "'live' for the timer and `run`, 'backfill' for `backfill` runs", RUN_KINDS),
        Column(
            "Status_s",
            "string",
            "ok: caught up; stopped: hit the run time budget, resumes next run; "
            "skipped: not collected this run; failed: the org's collection failed",
            RUN_STATUSES,
        ),
        Column("EventsFetched_d", "long", "Events read from the Pulumi API this run"),
        Column("EventsSent_d", "long", "Rows Logs Ingestion accepted this run"),
        Column("DuplicatesSkipped_d", "long", "Events dropped because their EventId_s was already sent"),
        Column("DeadLettered_d", "long", "Rows the service refused, kept in the dead-letter table"),
        Column("Truncated_d", "long", "Rows with a field cut to fit the 64 KB limit"),
        Column("LagSeconds_d", "long", "Seconds between the end of the run and the org's watermark"),
        Column("WatermarkTime_t", "datetime", "Everything before this time has been delivered"),
        Column("Error_s", "string", "Why the run failed or skipped the org (never a secret); empty when ok"),
        Column("ConnectorVersion_s", "string", "Version of the connector that ran"),
        Column("Host_s", "string", "Host that ran the connector (Function App instance or machine name)"),
    ),
)

TABLES: tuple[Table, ...] = (AUDIT_TABLE, HEALTH_TABLE)

# The audit table under the names the rest of the code has always used.
TABLE_NAME = AUDIT_TABLE.name
DEFAULT_STREAM_NAME = AUDIT_TABLE.stream
DEFAULT_HEALTH_STREAM_NAME = HEALTH_TABLE.stream
COLUMNS = AUDIT_TABLE.columns
COLUMN_NAMES = AUDIT_TABLE.column_names

# Log Analytics stores at most 64 KB per field value; longer values are cut by the
# service. We cut them ourselves, visibly, a little below that.
MAX_FIELD_BYTES = 64_000
