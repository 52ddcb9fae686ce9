"""One token per org, read from Key Vault at run time (PULUMI_TOKEN_VAULT_URL).

End to end: the real SecretClient and DefaultAzureCredential (through the local managed-identity
endpoint) against the Key Vault stand-in, the real Pulumi client against the Pulumi stand-in,
which accepts each org's own token only, Logs Ingestion and Azurite.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter

import pytest
from azure.data.tables import TableClient

from shared.ports import OrgToken
from shared.pulumi_source import PulumiAuditSource
from shared.settings import Secret
from shared.standins import Fault, KeyVaultStandIn, simulate_events
from shared.token_source import DEFAULT_SECRET_NAME, EnvironmentToken, KeyVaultTokens, org_secret_name
from shared.wiring import Connector, token_vault_client
from tests.harness import MANAGED_IDENTITY_CLIENT_ID, Deployment, expected_ids, run_demo
from tests.invariants import wait_until

CACHE_SECONDS = 300


def canary(org: str) -> str:
    """A token unique to this test; if it shows up anywhere but on the wire to Pulumi, it leaked."""
    return f"pul-canary-{org.lower()}-{uuid.uuid4().hex}"


class Clock:
    """Seconds since the test began, moved by hand: the token cache's clock and the runs' wall clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def vault_mode(deployment: Deployment, key_vault: KeyVaultStandIn, *orgs: str) -> None:
    deployment.orgs = orgs
    deployment.extra.update({"PULUMI_ACCESS_TOKEN": "", "PULUMI_TOKEN_VAULT_URL": key_vault.url})


def own_token(deployment: Deployment, key_vault: KeyVaultStandIn, org: str) -> str:
    """Store a new token for `org` in its own secret; Pulumi accepts only that one for the org."""
    token = canary(org)
    key_vault.set_secret(org_secret_name(org), token)
    deployment.pulumi_api.org_tokens[org] = {token}
    return token


def seed(deployment: Deployment, org: str, count: int, seed_value: int, at: float = 0, span: int = 3000) -> list[dict]:
    """`count` events of the `span` seconds before `at` seconds from now. Now is when `seed` is
    called, as for the runs' wall clock: a moment fixed when the module was imported would be
    minutes old by the time the suite gets here, and events seeded as new would reach the
    connector as late ones, which it delivers only after LATE_EVENT_OVERLAP."""
    end = int(time.time() + at) - 120
    events = simulate_events(org, end - span, end, count, seed=seed_value)
    deployment.pulumi_api.add_events(org, events)
    return events


def tokens_sent(deployment: Deployment, org: str, since: int = 0) -> set[str]:
    """The tokens the Pulumi stand-in was sent for `org`, from its `since`-th request on."""
    return {
        request.headers["Authorization"].removeprefix("token ")
        for request in deployment.pulumi_api.requests[since:]
        if request.path == f"/api/orgs/{org}/auditlogs/v2"
    }


def secrets_read(key_vault: KeyVaultStandIn, since: int = 0) -> list[tuple[str, int | None]]:
    """(secret name, status) of each authenticated request to the vault."""
    return [
        (request.path.split("/")[2], request.status)
        for request in key_vault.requests[since:]
        if "Authorization" in request.headers
    ]


def new_worker(deployment: Deployment, clock: Clock) -> Connector:
    """A worker's connector as wired from the settings, its runs `clock.now` seconds later than now."""
    connector = deployment.connector()
    connector.collector.wall_clock = lambda: time.time() + clock.now
    return connector


def long_lived(deployment: Deployment, clock: Clock) -> Connector:
    """One worker's connector, as wired from the settings, with the token cache on `clock`."""
    connector = new_worker(deployment, clock)
    tokens = KeyVaultTokens(token_vault_client(connector.settings), clock=clock)
    connector.collector.source = PulumiAuditSource(connector.settings.source.pulumi_api_url, tokens)
    return connector


def statuses(reports) -> dict[str, str]:
    return {report.org: report.status for report in reports}


# == several orgs, each with its own token =========================================================


@pytest.mark.parametrize(
    ("org", "secret"),
    [
        ("acme", "pulumi-token-acme"),
        ("Acme_Labs.EU", "pulumi-token-acme-labs-eu"),
        ("GLOBEX-2", "pulumi-token-globex-2"),
    ],
)
def test_an_orgs_secret_name_is_its_name_lowercased_with_other_characters_made_dashes(org, secret):
    assert org_secret_name(org) == secret


def test_three_orgs_with_their_own_tokens_and_one_on_the_shared_secret_are_all_collected(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme", "Acme_Labs", "globex", "initech")
    tokens = {org: own_token(deployment, key_vault, org) for org in ("acme", "Acme_Labs", "globex")}
    tokens["initech"] = canary("shared")
    key_vault.set_secret(DEFAULT_SECRET_NAME, tokens["initech"])
    deployment.pulumi_api.org_tokens["initech"] = {tokens["initech"]}
    events = {org: seed(deployment, org, 40 + index, index) for index, org in enumerate(deployment.orgs)}

    reports = deployment.connector().run_once()

    assert statuses(reports) == dict.fromkeys(deployment.orgs, "ok")
    landed = deployment.landed()
    assert set(landed) == set().union(*(expected_ids(org, items) for org, items in events.items()))
    assert set(landed.values()) == {1}
    for org in deployment.orgs:
        assert tokens_sent(deployment, org) == {tokens[org]}, org
    reads = secrets_read(key_vault)  # the orgs run at once: each org's reads in order, the orgs in any order
    assert sorted(reads) == [
        ("pulumi-access-token", 200),
        ("pulumi-token-acme", 200),
        ("pulumi-token-acme-labs", 200),
        ("pulumi-token-globex", 200),
        ("pulumi-token-initech", 404),
    ]
    assert reads.index(("pulumi-token-initech", 404)) < reads.index(("pulumi-access-token", 200))
    assert set(deployment.managed_identity.resources) == {"https://monitor.azure.com", key_vault.resource}
    assert set(deployment.managed_identity.client_ids) == {MANAGED_IDENTITY_CLIENT_ID}


# == rotation =====================================================================================


def test_a_rotated_secret_is_used_by_a_new_workers_next_run_and_nothing_is_lost(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme", "globex")
    own_token(deployment, key_vault, "acme")
    globex_token = own_token(deployment, key_vault, "globex")
    events = {org: seed(deployment, org, 30, index) for index, org in enumerate(deployment.orgs)}
    first = deployment.run_cli("run")
    assert first.returncode == 0, first.stderr

    rotated = own_token(deployment, key_vault, "acme")  # new version; the old token is revoked in Pulumi
    clock = Clock()
    clock.now = CACHE_SECONDS + 1
    for index, org in enumerate(deployment.orgs):
        events[org] += seed(deployment, org, 10, 10 + index, at=clock.now, span=120)
    before = deployment.pulumi_api.request_count
    reports = new_worker(deployment, clock).run_once()

    assert statuses(reports) == {"acme": "ok", "globex": "ok"}
    assert tokens_sent(deployment, "acme", before) == {rotated}
    assert tokens_sent(deployment, "globex", before) == {globex_token}
    landed = deployment.landed()
    assert set(landed) == expected_ids("acme", events["acme"]) | expected_ids("globex", events["globex"])
    assert set(landed.values()) == {1}


def test_a_long_lived_worker_uses_a_new_secret_version_once_its_cached_token_is_five_minutes_old(
    deployment, key_vault
):
    vault_mode(deployment, key_vault, "acme", "globex")
    old = own_token(deployment, key_vault, "acme")
    own_token(deployment, key_vault, "globex")
    events = {org: seed(deployment, org, 20, index) for index, org in enumerate(deployment.orgs)}
    clock = Clock()
    connector = long_lived(deployment, clock)
    assert statuses(connector.run_once()) == {"acme": "ok", "globex": "ok"}

    new = canary("acme")
    key_vault.set_secret("pulumi-token-acme", new)
    deployment.pulumi_api.org_tokens["acme"] = {old, new}  # Pulumi keeps the old token until it is deleted
    sent_before, read_before = deployment.pulumi_api.request_count, key_vault.request_count
    clock.now = CACHE_SECONDS - 60
    events["acme"] += seed(deployment, "acme", 5, 20, at=clock.now, span=120)
    assert statuses(connector.run_once()) == {"acme": "ok", "globex": "ok"}
    assert tokens_sent(deployment, "acme", sent_before) == {old}
    assert key_vault.request_count == read_before

    sent_before = deployment.pulumi_api.request_count
    clock.now = CACHE_SECONDS
    events["acme"] += seed(deployment, "acme", 5, 21, at=clock.now, span=120)
    assert statuses(connector.run_once()) == {"acme": "ok", "globex": "ok"}
    assert tokens_sent(deployment, "acme", sent_before) == {new}
    assert sorted(secrets_read(key_vault, read_before)) == [("pulumi-token-acme", 200), ("pulumi-token-globex", 200)]

    deployment.pulumi_api.org_tokens["acme"] = {new}  # the old token deleted in Pulumi
    clock.now = CACHE_SECONDS + 60
    events["acme"] += seed(deployment, "acme", 5, 22, at=clock.now, span=120)
    assert statuses(connector.run_once()) == {"acme": "ok", "globex": "ok"}
    landed = deployment.landed()
    assert set(landed) == expected_ids("acme", events["acme"]) | expected_ids("globex", events["globex"])
    assert set(landed.values()) == {1}


def test_a_token_pulumi_refuses_is_read_again_on_the_next_run_without_waiting_for_the_cache(
    deployment, key_vault
):
    vault_mode(deployment, key_vault, "acme", "globex")
    own_token(deployment, key_vault, "acme")
    own_token(deployment, key_vault, "globex")
    events = {org: seed(deployment, org, 20, index) for index, org in enumerate(deployment.orgs)}
    clock = Clock()
    connector = long_lived(deployment, clock)
    assert statuses(connector.run_once()) == {"acme": "ok", "globex": "ok"}

    rotated = own_token(deployment, key_vault, "acme")  # rotated and the old token revoked at once
    clock.now = 60  # a minute later, the cached token is still fresh
    events["acme"] += seed(deployment, "acme", 5, 20, at=clock.now, span=120)
    refused = connector.run_once()
    assert statuses(refused) == {"acme": "failed", "globex": "ok"}
    assert "rejected the access token for org 'acme' (401): check Key Vault secret 'pulumi-token-acme'" in (
        refused[0].error
    )

    sent_before = deployment.pulumi_api.request_count
    clock.now = 120
    assert statuses(connector.run_once()) == {"acme": "ok", "globex": "ok"}
    assert tokens_sent(deployment, "acme", sent_before) == {rotated}
    landed = deployment.landed()
    assert set(landed) == expected_ids("acme", events["acme"]) | expected_ids("globex", events["globex"])
    assert set(landed.values()) == {1}


# == failures stay per org =========================================================================


def test_an_org_without_a_secret_fails_alone_naming_both_secrets_it_tried(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme", "globex")
    own_token(deployment, key_vault, "acme")
    events = seed(deployment, "acme", 15, 1)
    deployment.pulumi_api.add_org("globex")

    acme, globex = deployment.connector().run_once()

    assert acme.status == "ok" and set(deployment.landed()) == expected_ids("acme", events)
    assert globex.status == "failed"
    assert globex.error == (
        f"no Pulumi token for org 'globex' from Key Vault {key_vault.url} "
        "(tried secrets 'pulumi-token-globex', 'pulumi-access-token'): neither secret exists: create one with "
        "`az keyvault secret set --vault-name <vault> --name pulumi-token-globex --value <org token>`"
    )
    assert tokens_sent(deployment, "globex") == set()


def test_a_403_from_the_vault_fails_that_org_alone_and_names_the_role_it_needs(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme", "globex")
    own_token(deployment, key_vault, "acme")
    own_token(deployment, key_vault, "globex")
    seed(deployment, "acme", 15, 1)
    seed(deployment, "globex", 15, 2)
    key_vault.faults.add(
        Fault.respond(403, match=lambda request: request.path.startswith("/secrets/pulumi-token-globex"), times=None)
    )

    acme, globex = deployment.connector().run_once()

    assert acme.status == "ok" and acme.sent == 15
    assert globex.status == "failed"
    assert globex.error.startswith(
        f"no Pulumi token for org 'globex' from Key Vault {key_vault.url} (tried secret 'pulumi-token-globex'): "
        "the vault answered 403 Forbidden/ForbiddenByRbac: grant the app's identity 'Key Vault Secrets User'"
    )
    assert tokens_sent(deployment, "globex") == set()


def test_an_unreachable_vault_fails_each_org_after_the_sdks_retries(deployment, key_vault, no_real_sleep):
    vault_mode(deployment, key_vault, "acme", "globex")
    own_token(deployment, key_vault, "acme")
    own_token(deployment, key_vault, "globex")
    key_vault.faults.add(Fault.reset(times=None))

    reports = deployment.connector().run_once()

    assert statuses(reports) == {"acme": "failed", "globex": "failed"}
    for report in reports:
        assert report.error.startswith(
            f"no Pulumi token for org {report.org!r} from Key Vault {key_vault.url} "
            f"(tried secret 'pulumi-token-{report.org}'): vault unreachable after retries (ServiceResponseError"
        ), report.error
    assert key_vault.request_count == 2 * 4  # per org: the first try and the SDK's 3 retries
    assert deployment.pulumi_api.request_count == 0


def test_a_vault_that_fails_briefly_is_retried_within_the_run(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme")
    own_token(deployment, key_vault, "acme")
    events = seed(deployment, "acme", 15, 1)
    key_vault.faults.add(Fault.respond(503, times=2))
    [report] = deployment.connector().run_once()
    assert report.status == "ok" and set(deployment.landed()) == expected_ids("acme", events)


def test_a_401_from_pulumi_names_the_org_and_its_secret_and_the_run_exits_non_zero(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme", "globex")
    own_token(deployment, key_vault, "acme")
    stale = canary("globex")
    key_vault.set_secret("pulumi-token-globex", stale)
    deployment.pulumi_api.org_tokens["globex"] = {canary("globex")}
    seed(deployment, "acme", 12, 1)
    deployment.pulumi_api.add_org("globex")

    result = deployment.run_cli("run")

    assert result.returncode == 1
    acme_line, globex_line = result.stdout.splitlines()
    assert acme_line.startswith("org=acme status=ok fetched=12 sent=12")
    assert globex_line.startswith("org=globex status=failed")
    [reason] = result.stderr.strip().splitlines()
    assert reason == (
        "error: org 'globex': Pulumi API rejected the access token for org 'globex' (401): "
        f"check Key Vault secret 'pulumi-token-globex' in {key_vault.url}"
    )
    assert stale not in result.stdout + result.stderr


def test_an_org_on_the_shared_secret_is_told_which_secret_pulumi_refused(deployment, key_vault):
    vault_mode(deployment, key_vault, "globex")
    key_vault.set_secret(DEFAULT_SECRET_NAME, canary("shared"))
    deployment.pulumi_api.add_org("globex")
    [report] = deployment.connector().run_once()
    assert report.error == (
        "Pulumi API rejected the access token for org 'globex' (401): check Key Vault secret "
        f"'pulumi-access-token' in {key_vault.url} (the shared token: 'pulumi-token-globex' does not exist)"
    )


def test_tls_to_the_vault_follows_requests_ca_bundle(deployment, key_vault, monkeypatch):
    vault_mode(deployment, key_vault, "acme")
    own_token(deployment, key_vault, "acme")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    [report] = deployment.connector().run_once()
    assert report.failed and "vault unreachable after retries" in report.error and "SSL" in report.error
    assert key_vault.requests == []  # no TLS handshake completed, so no request was ever read


# == settings ======================================================================================


def test_setting_both_the_token_and_the_vault_is_refused_naming_both(deployment, key_vault):
    deployment.extra["PULUMI_TOKEN_VAULT_URL"] = key_vault.url
    result = deployment.run_cli("run")
    assert result.returncode == 2
    assert "set exactly one of PULUMI_ACCESS_TOKEN" in result.stderr and "PULUMI_TOKEN_VAULT_URL" in result.stderr
    assert key_vault.request_count == 0 and deployment.pulumi_api.request_count == 0


def test_preview_reads_the_orgs_token_from_the_vault_too(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme")
    token = own_token(deployment, key_vault, "acme")
    seed(deployment, "acme", 3, 1)
    result = deployment.run_cli("preview", "--since", "2h")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3 and token not in result.stdout + result.stderr


# == no token value anywhere but on the wire to Pulumi ==============================================


def table_texts(deployment: Deployment) -> str:
    texts = []
    for name in (deployment.table_name, deployment.table_name + "dead"):
        table = TableClient.from_connection_string(deployment.azurite_connection_string, table_name=name)
        texts += [repr(dict(entity)) for entity in table.list_entities()]
    texts += [json.dumps(letter.row) + letter.reason for letter in deployment.dead_letters()]
    return "\n".join(texts)


def test_a_canary_in_every_secret_version_never_shows_in_logs_errors_output_reprs_or_tables(
    deployment, key_vault, caplog
):
    caplog.set_level(logging.DEBUG)
    vault_mode(deployment, key_vault, "acme", "globex", "initech", "umbrella")
    canaries = [own_token(deployment, key_vault, "acme") for _ in range(3)]  # three versions; the newest is valid
    canaries.append(canary("globex"))
    key_vault.set_secret("pulumi-token-globex", canaries[-1])  # a token Pulumi refuses
    deployment.pulumi_api.add_org("globex")
    canaries.append(canary("shared"))
    key_vault.set_secret(DEFAULT_SECRET_NAME, canaries[-1])  # initech reads it; Pulumi refuses it too
    deployment.pulumi_api.add_org("initech")
    key_vault.faults.add(Fault.respond(403, match=lambda request: "umbrella" in request.path, times=None))
    first, *_ = seed(deployment, "acme", 12, 1)
    poison = {**first, "description": "a row the service refuses"}  # no random twin shares it
    deployment.pulumi_api.add_events("acme", [poison])
    deployment.ingestion.reject_rows(lambda row: row.get("Description_s") == poison["description"])

    connector = deployment.connector()
    tokens = KeyVaultTokens(token_vault_client(connector.settings))
    connector.collector.source = PulumiAuditSource(connector.settings.source.pulumi_api_url, tokens)
    reports = connector.run_once()
    cached = tokens.token_for("acme")
    outputs = [
        *(report.summary() for report in reports),
        repr(connector),
        repr(connector.collector.source),
        repr(tokens),
        repr(cached),
        repr(connector.settings),
        repr(EnvironmentToken(Secret(canaries[0]))),
        repr(OrgToken(Secret(canaries[0]), "here")),
    ]
    for args in (("run",), ("preview", "--since", "2h"), ("checkpoint", "show"), ("deadletter", "list")):
        result = deployment.run_cli(*args)
        outputs += [result.stdout, result.stderr]

    assert statuses(reports) == {"acme": "ok", "globex": "failed", "initech": "failed", "umbrella": "failed"}
    assert cached.secret.reveal() == canaries[2] and len(deployment.dead_letters()) == 1
    assert any(record.name.startswith("azure") for record in caplog.records), "DEBUG capture is not active"
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    places = {
        "log records": "\n".join(formatter.format(record) for record in caplog.records),
        "reports, reprs and CLI output": "\n".join(outputs),
        "tables": table_texts(deployment),
        "rows sent to Sentinel": json.dumps(deployment.ingestion.rows),
    }
    for token in canaries:
        for place, text in places.items():
            assert token not in text, f"a Pulumi token leaked into {place}"
    for request in deployment.ingestion.requests + deployment.managed_identity.requests:
        assert not any(token in json.dumps(dict(request.headers)) for token in canaries)


# == the demo ======================================================================================


def test_the_demo_runs_in_vault_mode_with_a_rotation_between_its_runs(tmp_path):
    result = run_demo(tmp_path, "--vault")
    assert result.returncode == 0, result.stderr
    assert "acme: secret pulumi-token-acme" in result.stdout
    assert "globex: secret pulumi-access-token" in result.stdout
    assert "acme's token rotated" in result.stdout
    assert "every event forwarded exactly once: True" in result.stdout
    assert Counter(line.split()[1] for line in result.stdout.splitlines() if line.startswith("  org="))[
        "status=ok"
    ] == 6


# == several threads at once ======================================================================


def test_the_lanes_of_an_org_asking_for_its_token_at_once_read_the_vault_once(deployment, key_vault):
    vault_mode(deployment, key_vault, "acme")
    token = own_token(deployment, key_vault, "acme")
    tokens = KeyVaultTokens(token_vault_client(deployment.connector().settings))
    # The first read is answered late, so every lane asks while it is under way.
    key_vault.faults.add(Fault.delay(0.5, match=lambda request: "Authorization" in request.headers))
    start = threading.Barrier(8)
    got: list[str] = []

    def lane() -> None:
        start.wait()
        got.append(tokens.token_for("acme").secret.reveal())

    threads = [threading.Thread(target=lane) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [token] * 8
    assert secrets_read(key_vault) == [("pulumi-token-acme", 200)]


def test_a_slow_vault_read_for_one_org_holds_up_no_other_org(deployment, key_vault):
    vault_mode(deployment, key_vault, "slow", "fast")
    own_token(deployment, key_vault, "slow")
    fast = own_token(deployment, key_vault, "fast")
    tokens = KeyVaultTokens(token_vault_client(deployment.connector().settings))
    key_vault.faults.add(Fault.delay(2, match=lambda request: "pulumi-token-slow" in request.path, times=None))
    slow_read = threading.Thread(target=tokens.token_for, args=("slow",))
    slow_read.start()
    try:
        wait_until(lambda: any("pulumi-token-slow" in request.path for request in key_vault.requests), what="slow read")
        assert tokens.token_for("fast").secret.reveal() == fast
        assert slow_read.is_alive(), "the fast org's token came only after the slow org's"
    finally:
        slow_read.join()
