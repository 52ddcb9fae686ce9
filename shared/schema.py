"""The one definition of the `PulumiAuditLogs_CL` table.

The Bicep table and DCR stream, the analytic rules and the tests are all checked
against `COLUMNS`. The first 15 columns are the official Pulumi connector's, with the
same names and types, so its queries and rules run unchanged on our table.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE_NAME = "PulumiAuditLogs_CL"
DEFAULT_STREAM_NAME = "Custom-PulumiAuditLogs"

# Log Analytics / DCR column types used by this table.
COLUMN_TYPES = frozenset({"datetime", "long", "string", "boolean"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str


COLUMNS: tuple[Column, ...] = (
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
    Column("RawEvent_s", "string", "The original event as JSON, including fields this version does not know"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)

# Log Analytics stores at most 64 KB per field value; longer values are cut by the
# service. We cut them ourselves, visibly, a little below that.
MAX_FIELD_BYTES = 64_000
