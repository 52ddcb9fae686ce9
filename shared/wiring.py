"""Composition root: settings in, a ready `Collector` out.

The timer function and the CLI both come through here, so they run exactly the
same code with exactly the same adapters.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import requests
from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient
from azure.keyvault.secrets import SecretClient
from azure.monitor.ingestion import LogsIngestionClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.catalog import default_catalog
from shared.dead_letter import TableDeadLetterStore
from shared.identity import ExplainedCredential
from shared.ingestion_sink import LogsIngestionSink, default_retry_policy
from shared.logs import quiet_library_logs
from shared.pipeline import CollectionReport, Collector, run_cycle
from shared.ports import TokenSource
from shared.pulumi_source import KEPT_CONNECTIONS, PulumiAuditSource
from shared.settings import Settings, SinkSettings, load_settings
from shared.state_store import TableStateStore, table_state_store
from shared.token_source import EnvironmentToken, KeyVaultTokens

log = logging.getLogger("shared.run")

INGESTION_CONNECT_TIMEOUT_SECONDS = 10
INGESTION_READ_TIMEOUT_SECONDS = 30
KEY_VAULT_CONNECT_TIMEOUT_SECONDS = 10
KEY_VAULT_READ_TIMEOUT_SECONDS = 30


class CycleFailed(RuntimeError):
    """At least one org failed this run; the message lists them."""


def azure_credential(settings: Settings) -> TokenCredential:
    """Managed identity (user-assigned when MANAGED_IDENTITY_CLIENT_ID is set), or the
    app registration of AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, or a
    developer's Azure CLI login: DefaultAzureCredential tries them in that order."""
    return ExplainedCredential(settings.managed_identity_client_id)


def azure_transport(**timeouts: float) -> RequestsTransport:
    """An Azure SDK client's HTTP transport, for a client that several orgs' threads use at once.

    azure-core's own keeps 10 connections per host and opens its session on first use; this one
    keeps one per thread (up to 32 orgs at once) and is open before any thread uses it. Its
    adapter never retries: azure-core's retry policy does.
    """
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_maxsize=KEPT_CONNECTIONS, max_retries=Retry(total=False, redirect=False, raise_on_status=False)
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, **timeouts)


def ingestion_sink(sink: SinkSettings, credential: TokenCredential) -> LogsIngestionSink:
    client = LogsIngestionClient(
        endpoint=sink.logs_ingestion_endpoint,
        credential=credential,
        retry_policy=default_retry_policy(),
        transport=azure_transport(
            connection_timeout=INGESTION_CONNECT_TIMEOUT_SECONDS, read_timeout=INGESTION_READ_TIMEOUT_SECONDS
        ),
    )
    return LogsIngestionSink(
        client,
        sink.dcr_immutable_id,
        sink.dcr_stream_name,
        enforce_https=urlsplit(sink.logs_ingestion_endpoint).scheme == "https",
    )


def run_holder() -> str:
    """Who holds a lease: this host and process, and a nonce so two runs of one process differ."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
def token_vault_client(settings: Settings, credential: TokenCredential | None = None) -> SecretClient:
    """The PULUMI_TOKEN_VAULT_URL vault, reached with the app's credential."""
    return SecretClient(
        settings.source.token_vault_url,
        credential or azure_credential(settings),
        transport=azure_transport(
            connection_timeout=KEY_VAULT_CONNECT_TIMEOUT_SECONDS, read_timeout=KEY_VAULT_READ_TIMEOUT_SECONDS
        ),
    )


def pulumi_tokens(settings: Settings, credential: TokenCredential | None = None) -> TokenSource:
    """Each org's token from PULUMI_TOKEN_VAULT_URL, else PULUMI_ACCESS_TOKEN for every org."""
    if settings.source.token_vault_url is None:
        return EnvironmentToken(settings.source.pulumi_token)
    return KeyVaultTokens(token_vault_client(settings, credential))


def table_stores(
    settings: Settings, credential: TokenCredential | None = None
) -> tuple[TableStateStore, TableDeadLetterStore]:
    """The delivery state and dead-letter tables, by connection string or by identity."""
    store = settings.store

    def table(name: str) -> TableClient:
        if store.checkpoint_connection_string is not None:
            return TableClient.from_connection_string(
                store.checkpoint_connection_string.reveal(), table_name=name, transport=azure_transport()
            )
        return TableClient(
            endpoint=store.checkpoint_table_endpoint,
            table_name=name,
            credential=credential or azure_credential(settings),
            transport=azure_transport(),
        )

    return (
        table_state_store(table(store.checkpoint_table_name)),
        TableDeadLetterStore(table(store.dead_letter_table_name)),
    )


def collector_from_settings(settings: Settings, credential: TokenCredential | None = None) -> Collector:
    credential = credential or azure_credential(settings)
    source = settings.source
    state, dead_letters = table_stores(settings, credential)
    return Collector(
        source=PulumiAuditSource(source.pulumi_api_url, pulumi_tokens(settings, credential)),
        sink=ingestion_sink(settings.sink, credential),
        state=state,
        dead_letters=dead_letters,
        catalog=default_catalog(),
        holder=run_holder(),
    )


@dataclass(frozen=True)
class Connector:
    settings: Settings
    collector: Collector

    def run_once(self) -> list[CollectionReport]:
        source = self.settings.source
        return run_cycle(
            self.collector,
            source.orgs,
            int(source.initial_lookback.total_seconds()),
            int(source.late_event_overlap.total_seconds()),
            source.run_time_budget.total_seconds(),
            source.max_parallel_orgs,
        )


def connector_from_environment(environ: Mapping[str, str] | None = None) -> Connector:
    quiet_library_logs()
    settings = load_settings(os.environ if environ is None else environ)
    return Connector(settings=settings, collector=collector_from_settings(settings))


@cache
def process_connector() -> Connector:
    """The connector of this Functions worker process: settings are read once, clients reused."""
    return connector_from_environment()


def run_timer_cycle() -> None:
    """What the timer does: one cycle, one summary line per org, and a failed invocation
    (so Functions monitoring shows it) when any org failed."""
    reports = process_connector().run_once()
    for report in reports:
        (log.error if report.failed else log.info)("%s", report.summary())
    failed = [report for report in reports if report.failed]
    if failed:
        raise CycleFailed("; ".join(f"org {report.org!r}: {report.error}" for report in failed))
