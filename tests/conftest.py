"""Fixtures shared by the whole suite: a test CA, the local stand-ins and Azurite."""

from __future__ import annotations

import contextlib
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.schema import AUDIT_TABLE, HEALTH_TABLE  # noqa: E402
from shared.standins import (  # noqa: E402
    KeyVaultStandIn,
    LogsIngestionStandIn,
    ManagedIdentityEndpointStandIn,
    PulumiAuditApiStandIn,
)
from shared.standins.azurite import AzuriteNotInstalled, AzuriteUnavailable, running_azurite  # noqa: E402

PULUMI_TEST_TOKEN = "pul-test-token"
CREDENTIAL_ENV_VARS = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TOKEN_CREDENTIALS",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
)


# -- TLS ---------------------------------------------------------------------------------------


@dataclass
class TlsTestCA:
    ca: trustme.CA
    ca_path: str
    _leaf: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        """A fresh server-side context presenting a cert for 127.0.0.1 and localhost."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._leaf.configure_cert(context)
        return context


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsTestCA:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return TlsTestCA(ca, str(path), ca.issue_cert("127.0.0.1", "localhost"))


@pytest.fixture(scope="session", autouse=True)
def _trust_test_ca_and_bypass_proxies(tls_ca: TlsTestCA):
    # The machine pre-sets REQUESTS_CA_BUNDLE to the system bundle: overwrite it, don't add to it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", tls_ca.ca_path)
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        yield


# -- time ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """time.sleep records the requested durations instead of sleeping."""
    requested: list[float] = []

    def fake_sleep(seconds: float) -> None:
        requested.append(seconds)

    monkeypatch.setattr(time, "sleep", fake_sleep)
    return requested


@pytest.fixture
def now() -> int:
    """The second the test starts, on the wall clock the connector runs on. Events seeded relative
    to a moment taken at import are minutes old by the time a long suite reaches the test, and the
    connector then reads them as late events, or not at all past its initial lookback."""
    return int(time.time())


# -- Azurite ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """Azurite's table service for the whole session; if it cannot start, the tests that need it fail saying why."""
    with contextlib.ExitStack() as running:
        try:
            service = running.enter_context(running_azurite(tmp_path_factory.mktemp("azurite")))
        except AzuriteNotInstalled as error:
            failure = (
                f"Azurite cannot start: {error.missing}. Run .ci/run (it installs node tools with "
                f"`npm ci` in tools/azurite) and try again."
            )
        except AzuriteUnavailable as error:
            failure = str(error)
        else:
            failure = None
        if failure is not None:
            # Failed outside the handler, so the report shows this message alone, not the launcher's error first.
            pytest.fail(failure, pytrace=False)
        yield service


@pytest.fixture
def table_name() -> str:
    return "t" + uuid.uuid4().hex


# -- stand-ins -------------------------------------------------------------------------------


def _fail_on_standin_errors(standin) -> None:
    # An exception inside a stand-in (or in a predicate a test gave it) is answered with a 500;
    # make sure it does not go unnoticed.
    if standin.errors:
        pytest.fail(f"{standin!r} raised while handling requests: {standin.errors!r}", pytrace=False)


@pytest.fixture
def pulumi_api(tls_ca: TlsTestCA):
    with PulumiAuditApiStandIn(PULUMI_TEST_TOKEN, ssl_context=tls_ca.server_context()) as api:
        yield api
    _fail_on_standin_errors(api)


@pytest.fixture
def ingestion(tls_ca: TlsTestCA):
    """One DCR with the connector's two streams, as infra/modules/dcr.bicep declares them."""
    dcr_id = "dcr-" + uuid.uuid4().hex
    with LogsIngestionStandIn(
        dcr_id,
        AUDIT_TABLE.stream,
        AUDIT_TABLE.columns,
        streams={HEALTH_TABLE.stream: HEALTH_TABLE.columns},
        ssl_context=tls_ca.server_context(),
    ) as standin:
        yield standin
    _fail_on_standin_errors(standin)


@pytest.fixture
def managed_identity(monkeypatch: pytest.MonkeyPatch):
    with ManagedIdentityEndpointStandIn() as endpoint:
        for name in CREDENTIAL_ENV_VARS:
            monkeypatch.delenv(name, raising=False)
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        yield endpoint
    _fail_on_standin_errors(endpoint)


@pytest.fixture
def key_vault(tls_ca: TlsTestCA, managed_identity):
    """A Key Vault stand-in over HTTPS that accepts the local managed identity's token only."""
    with KeyVaultStandIn(ssl_context=tls_ca.server_context(), expected_token=managed_identity.access_token) as vault:
        yield vault
    _fail_on_standin_errors(vault)


class StaticTokenCredential:
    """A TokenCredential that always returns the same bearer token and records the scopes asked for."""

    def __init__(self, token: str = "test-bearer", lifetime: int = 3600):
        self.token = token
        self.lifetime = lifetime
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs):
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + self.lifetime)


@pytest.fixture
def static_token_credential() -> StaticTokenCredential:
    return StaticTokenCredential()


@pytest.fixture
def deployment(pulumi_api, ingestion, managed_identity, azurite, table_name):
    """The connector wired to the HTTPS stand-ins, Azurite and the local managed identity."""
    from tests.harness import Deployment

    ingestion.expected_token = managed_identity.access_token
    return Deployment(pulumi_api, ingestion, managed_identity, azurite.connection_string, table_name)


# -- fault matrix ------------------------------------------------------------------------------


@pytest.fixture
def world(deployment, no_real_sleep):
    """A deployment whose secrets are canaries, a controllable clock and checkpoint probes
    (tests/invariants.py)."""
    from tests.invariants import CANARY_MONITOR_TOKEN, CANARY_PULUMI_TOKEN, World

    deployment.extra["PULUMI_ACCESS_TOKEN"] = CANARY_PULUMI_TOKEN
    deployment.pulumi_api.expected_token = CANARY_PULUMI_TOKEN
    deployment.managed_identity.access_token = CANARY_MONITOR_TOKEN
    deployment.ingestion.expected_token = CANARY_MONITOR_TOKEN
    return World(deployment, no_real_sleep)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the fault matrix figures and write them to test-results/fault-matrix-latest.md."""
    from tests.invariants import FIGURES

    if not FIGURES.rows:
        return
    command = " ".join(["pytest", *map(str, config.invocation_params.args)])
    results = ROOT / "test-results"
    results.mkdir(exist_ok=True)
    (results / "fault-matrix-latest.md").write_text(FIGURES.document(command), encoding="utf-8")
    terminalreporter.section("fault matrix figures (also in test-results/fault-matrix-latest.md)")
    for line in FIGURES.render().splitlines():
        terminalreporter.write_line(line)


# -- detection harness -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def story_rows(tls_ca: TlsTestCA, azurite):
    """`story_rows(story)`: the rows the real connector writes for a scripted story, produced once
    per session (tests/detection_rows.py)."""
    from tests.detection_rows import StoryCache

    return StoryCache(tls_ca.server_context, azurite.connection_string)


class _KqlHarnessSummary:
    """Prints, after the run, how many shipped queries ran on connector rows and with which rewrites."""

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        from tests.kql_engine import summary_lines

        lines = summary_lines()
        if lines:
            terminalreporter.section("KQL detection harness")
            for line in lines:
                terminalreporter.write_line(line)


def pytest_configure(config):
    config.pluginmanager.register(_KqlHarnessSummary(), "kql-harness-summary")
