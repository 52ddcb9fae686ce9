"""Typed, immutable settings, read once from the environment.

`load_settings` checks every setting and raises one `SettingsError` that lists every
problem, so a misconfigured deployment is fixed in one pass. Secrets are wrapped in
`Secret`, whose repr and str never show the value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from shared.schema import DEFAULT_HEALTH_STREAM_NAME, DEFAULT_STREAM_NAME


class SettingsError(ValueError):
    """One or more settings are missing or malformed; `problems` lists each."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__("invalid settings:\n" + "\n".join(f"  - {problem}" for problem in problems))


class Secret:
    """A secret value that never shows itself in logs, errors or reprs."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SettingSpec:
    name: str
    default: str | None
    example: str
    description: str
    secret: bool = False
    bounds: tuple[int, int] | None = None  # a whole number from the first to the second, both included


SETTING_SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("PULUMI_ORGS", None, "acme,acme-labs", "Pulumi organizations to collect, comma-separated"),
    SettingSpec(
        "PULUMI_ACCESS_TOKEN",
        "",
        "pul-0123456789abcdef0123456789abcdef01234567",
        "One Pulumi access token for every org, for local runs (use this or PULUMI_TOKEN_VAULT_URL)",
        secret=True,
    ),
    SettingSpec(
        "PULUMI_TOKEN_VAULT_URL",
        "",
        "https://kv-name.vault.azure.net",
        "Key Vault holding each org's token as secret pulumi-token-<org> (else pulumi-access-token), "
        "read at run time and cached at most 5 minutes (use this or PULUMI_ACCESS_TOKEN)",
    ),
    SettingSpec("PULUMI_API_URL", "https://api.pulumi.com", "https://api.pulumi.com", "Pulumi Cloud API base URL"),
    SettingSpec(
        "LOGS_INGESTION_ENDPOINT",
        None,
        "https://pulumi-audit-dcr-ab12.eastus-1.ingest.monitor.azure.com",
        "The DCR's logsIngestion endpoint, or a DCE's",
    ),
    SettingSpec("DCR_IMMUTABLE_ID", None, "dcr-00000000000000000000000000000000", "The DCR's immutable id"),
    SettingSpec("DCR_STREAM_NAME", DEFAULT_STREAM_NAME, DEFAULT_STREAM_NAME, "The DCR stream the rows are sent to"),
    SettingSpec(
        "DCR_HEALTH_STREAM_NAME",
        DEFAULT_HEALTH_STREAM_NAME,
        DEFAULT_HEALTH_STREAM_NAME,
        "The DCR stream the per-org health row of each run is sent to",
    ),
    SettingSpec(
        "MANAGED_IDENTITY_CLIENT_ID",
        "",
        "00000000-0000-0000-0000-000000000000",
        "Client id of the user-assigned managed identity; empty uses the default credential chain",
    ),
    SettingSpec(
        "CHECKPOINT_TABLE_ENDPOINT",
        "",
        "https://acct.table.core.windows.net",
        "Table Storage endpoint, reached with the managed identity (use this or the connection string)",
    ),
    SettingSpec(
        "CHECKPOINT_CONNECTION_STRING",
        "",
        "UseDevelopmentStorage=true",
        "Table Storage connection string, for Azurite or local runs",
        secret=True,
    ),
    SettingSpec(
        "CHECKPOINT_TABLE_NAME", "PulumiAuditCheckpoints", "PulumiAuditCheckpoints", "Table of per-org checkpoints"
    ),
    SettingSpec(
        "DEAD_LETTER_TABLE_NAME",
        "PulumiAuditDeadLetters",
        "PulumiAuditDeadLetters",
        "Table that keeps rows Logs Ingestion refused, for inspection and replay",
    ),
    SettingSpec("TIMER_SCHEDULE", "0 * * * * *", "0 */5 * * * *", "NCRONTAB schedule of the timer function"),
    SettingSpec("INITIAL_LOOKBACK", "1d", "7d", "How far back the first run of an org starts (s, m, h, d)"),
    SettingSpec(
        "LATE_EVENT_OVERLAP",
        "10m",
        "30m",
        (
            "How late an event may show up in the API and still be delivered: the last 4 minutes are re-read "
            "every run, the rest once, when it is this old; repeats are dropped by event id"
        ),
    ),
    SettingSpec(
        "RUN_TIME_BUDGET",
        "8m",
        "8m",
        "A run stops cleanly after this long and resumes next run; keep it under host.json functionTimeout",
    ),
    SettingSpec(
        "MAX_PARALLEL_ORGS",
        "4",
        "8",
        "How many orgs a run collects at once (1-32), each on its own lease and cursor",
        bounds=(1, 32),
    ),
    SettingSpec(
        "BACKFILL_PARALLELISM",
        "4",
        "8",
        "How many lanes (parts of the range, each with its own lease and progress) a backfill of an org "
        "reads at once (1-16)",
        bounds=(1, 16),
    ),
)

_SPECS_BY_NAME = {spec.name: spec for spec in SETTING_SPECS}

# Pulumi org names: letters, digits, '-', '_' and '.', never a path segment like '..'.
_ORG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_DCR_ID = re.compile(r"^dcr-[0-9a-f]{32}$")
_STREAM = re.compile(r"^Custom-[A-Za-z0-9_]{1,}$")
_EXCLUSIVE_CREDENTIAL_VARS = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")


@dataclass(frozen=True)
class SourceSettings:
    """What reading the Pulumi audit API needs."""

    orgs: tuple[str, ...]
    pulumi_token: Secret | None  # one token for every org, or None when tokens come from the vault
    token_vault_url: str | None
    pulumi_api_url: str
    initial_lookback: timedelta
    late_event_overlap: timedelta
    run_time_budget: timedelta
    max_parallel_orgs: int
    backfill_parallelism: int


@dataclass(frozen=True)
class SinkSettings:
    """What sending rows to Logs Ingestion needs."""

    logs_ingestion_endpoint: str
    dcr_immutable_id: str
    dcr_stream_name: str
    dcr_health_stream_name: str


@dataclass(frozen=True)
class StoreSettings:
    """What the checkpoint and dead-letter tables need."""

    checkpoint_table_endpoint: str | None
    checkpoint_connection_string: Secret | None
    checkpoint_table_name: str
    dead_letter_table_name: str


@dataclass(frozen=True)
class Settings:
    """The settings a command needs; a part the command does not use is None."""

    source: SourceSettings | None
    sink: SinkSettings | None
    store: StoreSettings | None
    managed_identity_client_id: str | None
    orgs: tuple[str, ...] = ()  # PULUMI_ORGS, read with the "source" or "orgs" part


ALL_PARTS = frozenset({"source", "sink", "store"})
# "orgs" alone reads PULUMI_ORGS without the Pulumi credentials, for the operator commands.


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '6h' or '1d'; raise ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 6h or 1d")
    amount, unit = match.groups()
    return timedelta(**{_DURATION_UNITS[unit]: int(amount)})


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def org_name_problem(org: str) -> str | None:
    """Why `org` cannot be a Pulumi org name (it would change the request path), or None."""
    if not _ORG_NAME.fullmatch(org) or ".." in org:
        return (
            f"{org!r} is not a Pulumi organization name "
            "(letters, digits, '-', '_' and '.' only; no '/', '%', '..', spaces or control characters)"
        )
    return None


def _url_problem(name: str, url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{name} must be an https:// URL, got {url!r}"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return f"{name} must use https:// (plain http is allowed only for loopback), got {url!r}"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"{name} must be a plain base URL without credentials, query or fragment"
    return None


def _vault_url_problem(url: str) -> str | None:
    """The URL check, stricter: the Key Vault client sends its bearer token over https only, even on
    loopback, and takes the vault's root URL."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        return f"PULUMI_TOKEN_VAULT_URL must use https:// (the Key Vault client refuses plain http), got {url!r}"
    if problem := _url_problem("PULUMI_TOKEN_VAULT_URL", url):
        return problem
    if parts.path.strip("/"):
        return "PULUMI_TOKEN_VAULT_URL must be the vault's URL without a path, like https://kv-name.vault.azure.net"
    return None


def load_settings(environ: Mapping[str, str], parts: frozenset[str] = ALL_PARTS) -> Settings:
    """Read and check the settings of `parts`; raise SettingsError listing every problem."""
    problems: list[str] = []

    def raw(name: str) -> str:
        spec = _SPECS_BY_NAME[name]
        value = environ.get(name, "").strip()
        if value:
            return value
        if spec.default is None:
            problems.append(f"{name} is required ({spec.description})")
            return ""
        return spec.default

    def duration(name: str) -> timedelta:
        text = raw(name)
        try:
            value = parse_duration(text)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            return timedelta(0)
        if value <= timedelta(0):
            problems.append(f"{name} must be greater than zero")
        return value

    def whole_number(name: str) -> int:
        low, high = _SPECS_BY_NAME[name].bounds
        text = raw(name)
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
            problems.append(f"{name} must be a whole number from {low} to {high}, got {text!r}")
            return low
        return int(text)

    def url(name: str) -> str:
        value = raw(name).rstrip("/")
        if value and (problem := _url_problem(name, value)):
            problems.append(problem)
        return value

    source = sink = store = None
    orgs: tuple[str, ...] = ()
    if parts & {"source", "orgs"}:
        orgs_text = raw("PULUMI_ORGS")
        orgs = tuple(dict.fromkeys(org.strip() for org in orgs_text.split(",") if org.strip()))
        if orgs_text and not orgs:
            problems.append("PULUMI_ORGS lists no organization")
        for org in orgs:
            if problem := org_name_problem(org):
                problems.append(f"PULUMI_ORGS: {problem}")
    if "source" in parts:
        token = raw("PULUMI_ACCESS_TOKEN")
        if token.startswith("@Microsoft.KeyVault("):
            problems.append(
                "PULUMI_ACCESS_TOKEN is an unresolved Key Vault reference: set PULUMI_TOKEN_VAULT_URL instead "
                "(the app then reads each org's token itself), or grant the app's identity "
                "'Key Vault Secrets User' on the vault and set keyVaultReferenceIdentity"
            )
        vault_url = raw("PULUMI_TOKEN_VAULT_URL").rstrip("/")
        if bool(token) == bool(vault_url):
            problems.append(
                "set exactly one of PULUMI_ACCESS_TOKEN (one token for every org) and PULUMI_TOKEN_VAULT_URL "
                f"(a token per org from Key Vault); {'both are' if token else 'neither is'} set"
            )
        if vault_url and (problem := _vault_url_problem(vault_url)):
            problems.append(problem)
        schedule = raw("TIMER_SCHEDULE")
        if len(schedule.split()) != 6:
            problems.append(f"TIMER_SCHEDULE must be a 6-field NCRONTAB expression, got {schedule!r}")
        source = SourceSettings(
            orgs=orgs,
            pulumi_token=Secret(token) if token else None,
            token_vault_url=vault_url or None,
            pulumi_api_url=url("PULUMI_API_URL"),
            initial_lookback=duration("INITIAL_LOOKBACK"),
            late_event_overlap=duration("LATE_EVENT_OVERLAP"),
            run_time_budget=duration("RUN_TIME_BUDGET"),
            max_parallel_orgs=whole_number("MAX_PARALLEL_ORGS"),
            backfill_parallelism=whole_number("BACKFILL_PARALLELISM"),
        )

    if "sink" in parts:
        dcr_id = raw("DCR_IMMUTABLE_ID")
        if dcr_id and not _DCR_ID.match(dcr_id):
            problems.append(f"DCR_IMMUTABLE_ID must look like dcr-<32 hex digits>, got {dcr_id!r}")
        streams = {name: raw(name) for name in ("DCR_STREAM_NAME", "DCR_HEALTH_STREAM_NAME")}
        for name, stream in streams.items():
            if not _STREAM.match(stream):
                problems.append(f"{name} must look like Custom-<name>, got {stream!r}")
        if streams["DCR_STREAM_NAME"] == streams["DCR_HEALTH_STREAM_NAME"]:
            problems.append("DCR_STREAM_NAME and DCR_HEALTH_STREAM_NAME must differ: health rows have their own table")
        sink = SinkSettings(
            logs_ingestion_endpoint=url("LOGS_INGESTION_ENDPOINT"),
            dcr_immutable_id=dcr_id,
            dcr_stream_name=streams["DCR_STREAM_NAME"],
            dcr_health_stream_name=streams["DCR_HEALTH_STREAM_NAME"],
        )

    if "store" in parts:
        table_endpoint = url("CHECKPOINT_TABLE_ENDPOINT")
        connection_string = raw("CHECKPOINT_CONNECTION_STRING")
        if table_endpoint and connection_string:
            problems.append("set CHECKPOINT_TABLE_ENDPOINT or CHECKPOINT_CONNECTION_STRING, not both")
        elif not table_endpoint and not connection_string:
            problems.append(
                "CHECKPOINT_TABLE_ENDPOINT (in Azure) or CHECKPOINT_CONNECTION_STRING (locally) is required"
            )
        table_names = {}
        for name in ("CHECKPOINT_TABLE_NAME", "DEAD_LETTER_TABLE_NAME"):
            table_names[name] = raw(name)
            if not _TABLE_NAME.match(table_names[name]):
                problems.append(
                    f"{name} must be 3-63 letters and digits starting with a letter, got {table_names[name]!r}"
                )
        if table_names["CHECKPOINT_TABLE_NAME"].lower() == table_names["DEAD_LETTER_TABLE_NAME"].lower():
            problems.append("CHECKPOINT_TABLE_NAME and DEAD_LETTER_TABLE_NAME must differ")
        store = StoreSettings(
            checkpoint_table_endpoint=table_endpoint or None,
            checkpoint_connection_string=Secret(connection_string) if connection_string else None,
            checkpoint_table_name=table_names["CHECKPOINT_TABLE_NAME"],
            dead_letter_table_name=table_names["DEAD_LETTER_TABLE_NAME"],
        )

    present = [name for name in _EXCLUSIVE_CREDENTIAL_VARS if environ.get(name, "").strip()]
    if present and len(present) != len(_EXCLUSIVE_CREDENTIAL_VARS):
        missing = [name for name in _EXCLUSIVE_CREDENTIAL_VARS if name not in present]
        problems.append(
            "an app registration needs AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET together; "
            f"missing {', '.join(missing)}"
        )

    if problems:
        raise SettingsError(problems)
    return Settings(
        source=source,
        sink=sink,
        store=store,
        managed_identity_client_id=raw("MANAGED_IDENTITY_CLIENT_ID") or None,
        orgs=orgs,
    )
