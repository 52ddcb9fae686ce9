"""Composition root: settings in, a ready `Connector` out (its collector and its health reporter).

The timer function and the CLI both come through here, so they run exactly the
same code with exactly the same adapters.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import psutil
import requests
from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient
from azure.keyvault.secrets import SecretClient
from azure.monitor.ingestion import LogsIngestionClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared import __version__
from shared.catalog import default_catalog
from shared.dead_letter import TableDeadLetterStore
from shared.graceful_stop import GracefulStop
from shared.health import health_rows, one_line
from shared.identity import ExplainedCredential
from shared.ingestion_sink import LogsIngestionSink, default_retry_policy
from shared.logs import quiet_library_logs
from shared.pipeline import LEASE_SECONDS, CollectionReport, Collector, run_cycle
from shared.ports import RowSink, SinkUnavailable, TokenSource
from shared.pulumi_source import KEPT_CONNECTIONS, PulumiAuditSource
from shared.settings import Settings, SinkSettings, load_settings
from shared.state_store import TableStateStore, table_state_store
from shared.token_source import EnvironmentToken, KeyVaultTokens
from shared.transform import encode_row

log = logging.getLogger("shared.run")
health_log = logging.getLogger("shared.health")

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


def ingestion_sinks(sink: SinkSettings, credential: TokenCredential) -> tuple[LogsIngestionSink, LogsIngestionSink]:
    """The sinks of the DCR's audit stream and of its health stream, sharing one client: one
    connection pool, one token."""
    client = LogsIngestionClient(
        endpoint=sink.logs_ingestion_endpoint,
        credential=credential,
        retry_policy=default_retry_policy(),
        transport=azure_transport(
            connection_timeout=INGESTION_CONNECT_TIMEOUT_SECONDS, read_timeout=INGESTION_READ_TIMEOUT_SECONDS
        ),
    )
    enforce_https = urlsplit(sink.logs_ingestion_endpoint).scheme == "https"
    return (
        LogsIngestionSink(client, sink.dcr_immutable_id, sink.dcr_stream_name, enforce_https=enforce_https),
        LogsIngestionSink(
            client,
            sink.dcr_immutable_id,
            sink.dcr_health_stream_name,
            enforce_https=enforce_https,
            stream_setting="DCR_HEALTH_STREAM_NAME",
        ),
    )


def ingestion_sink(sink: SinkSettings, credential: TokenCredential) -> LogsIngestionSink:
    """The audit stream's sink alone."""
    return ingestion_sinks(sink, credential)[0]


def run_holder() -> str:
    """Who holds a lease: this host, process and the second that process started (a pid alone
    may be reused), and a nonce so two runs of one process differ."""
    return f"{_host()}:{os.getpid()}:{_started(psutil.Process())}:{uuid.uuid4().hex[:8]}"


def holder_process_ended(holder: str) -> bool:
    """Whether a lease's holder is a process of this host that no longer runs: one that is gone,
    or whose pid now belongs to a process started at another second. A holder of another host,
    or one written in another form, may be alive for all this host can tell."""
    parts = holder.split(":")
    if len(parts) != 4 or parts[0] != _host() or not (parts[1].isdigit() and parts[2].isdigit()):
        return False
    try:
        return _started(psutil.Process(int(parts[1]))) != int(parts[2])
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # a process this user may not inspect is alive
        return False


def _host() -> str:
    return socket.gethostname()[:40].replace(":", "-")


def _started(process: psutil.Process) -> int:
    return int(process.create_time())


def run_host(environ: Mapping[str, str]) -> str:
    """The host named in health rows: the Function App instance, else this machine."""
    return environ.get("WEBSITE_INSTANCE_ID") or socket.gethostname()


@dataclass(frozen=True)
class HealthReporter:
    """Sends a run's health rows once its collections are done. Health never costs an event nor
    changes a run's outcome: a failure to send is one warning line, and the run carries on."""

    sink: RowSink
    host: str

    def report(self, reports: Sequence[CollectionReport], ended_at: int) -> None:
        if not reports:
            return
        run_id = uuid.uuid4().hex
        rows = health_rows(reports, run_id=run_id, ended_at=ended_at, version=__version__, host=self.host)
        try:
            refused = self.sink.send([encode_row(row) for row in rows])
        except Exception as error:  # whatever went wrong, the run's events are already delivered
            reason = str(error) if isinstance(error, SinkUnavailable) else f"unexpected {type(error).__name__}"
            # An org's summary line already tells how Logs Ingestion failed; say it once.
            same = [report.org for report in reports if report.error == reason]
            reason = f"the same failure as org {same[0]!r}" if same else one_line(reason, 500)
            health_log.warning("health rows of run %s not sent, the run carries on: %s", run_id, reason)
            return
        if refused:
            health_log.warning(
                "health rows of run %s: Logs Ingestion refused %d of %d, the run carries on: %s",
                run_id,
                len(refused),
                len(rows),
                one_line(refused[0].reason, 500),
            )


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


def connector_from_settings(
    settings: Settings,
    host: str,
    credential: TokenCredential | None = None,
    stop: threading.Event | None = None,
) -> Connector:
    credential = credential or azure_credential(settings)
    source = settings.source
    state, dead_letters = table_stores(settings, credential)
    events_sink, health_sink = ingestion_sinks(settings.sink, credential)
    collector = Collector(
        source=PulumiAuditSource(source.pulumi_api_url, pulumi_tokens(settings, credential)),
        sink=events_sink,
        state=state,
        dead_letters=dead_letters,
        catalog=default_catalog(),
        holder=run_holder(),
        holder_ended=holder_process_ended,
        stop=stop or threading.Event(),
    )
    return Connector(settings=settings, collector=collector, health=HealthReporter(health_sink, host))


@dataclass(frozen=True)
class Connector:
    settings: Settings
    collector: Collector
    health: HealthReporter

    def run_once(self) -> list[CollectionReport]:
        """One poll of every org, then its health rows."""
        source = self.settings.source
        reports = run_cycle(
            self.collector,
            source.orgs,
            int(source.initial_lookback.total_seconds()),
            int(source.late_event_overlap.total_seconds()),
            source.run_time_budget.total_seconds(),
            source.max_parallel_orgs,
        )
        self.report_health(reports)
        return reports

    def report_health(self, reports: Sequence[CollectionReport]) -> None:
        self.health.report(reports, int(self.collector.wall_clock()))


def connector_from_environment(
    environ: Mapping[str, str] | None = None, stop: threading.Event | None = None
) -> Connector:
    """`stop`: set on SIGINT/SIGTERM, to stop the collections under way (see shared/graceful_stop.py)."""
    quiet_library_logs()
    environ = os.environ if environ is None else environ
    return connector_from_settings(load_settings(environ), run_host(environ), stop=stop)


# The Functions worker is stopped with SIGTERM (scale-in, redeploy): the cycle under way stops
# and saves first, then the worker's own handler shuts it down.
WORKER_STOP = GracefulStop(LEASE_SECONDS)


def stop_gracefully_on_signals() -> None:
    """Called where the Functions worker imports the app, in its main thread if Python allows it."""
    if not WORKER_STOP.install(pass_on=True):
        log.warning("SIGTERM stops the worker without saving first: the app was not imported in the main thread")


@cache
def process_connector() -> Connector:
    """The connector of this Functions worker process: settings are read once, clients reused."""
    return connector_from_environment(stop=WORKER_STOP.requested)


def run_timer_cycle() -> None:
    """What the timer does: one cycle, one summary line per org, and a failed invocation
    (so Functions monitoring shows it) when any org failed."""
    with WORKER_STOP.working():  # a SIGTERM that stopped the cycle goes on to the worker once it is told
        reports = process_connector().run_once()
        for report in reports:
            (log.error if report.failed else log.info)("%s", report.summary())
        if WORKER_STOP.requested.is_set():
            log.warning("%s", WORKER_STOP.resume_line("the next run"))
        failed = [report for report in reports if report.failed]
        if failed:
            raise CycleFailed("; ".join(f"org {report.org!r}: {report.error}" for report in failed))
