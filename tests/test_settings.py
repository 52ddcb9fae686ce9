"""Settings are read once into a typed config; every problem is reported at once."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from shared.settings import SETTING_SPECS, Secret, SettingsError, load_settings, parse_duration

TOKEN = "pul-canary-0123456789abcdef"
VALID = {
    "PULUMI_ORGS": "acme, acme-labs,acme",
    "PULUMI_ACCESS_TOKEN": TOKEN,
    "LOGS_INGESTION_ENDPOINT": "https://dcr-x.eastus-1.ingest.monitor.azure.com/",
    "DCR_IMMUTABLE_ID": "dcr-0123456789abcdef0123456789abcdef",
    "CHECKPOINT_TABLE_ENDPOINT": "https://acct.table.core.windows.net",
}


def problems_of(environ: dict) -> tuple[str, ...]:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ)
    return raised.value.problems


def test_a_complete_environment_gives_typed_settings_with_defaults():
    settings = load_settings(VALID)
    assert settings.source.orgs == ("acme", "acme-labs")
    assert settings.source.pulumi_api_url == "https://api.pulumi.com"
    assert settings.source.initial_lookback == timedelta(days=1)
    assert settings.sink.logs_ingestion_endpoint == "https://dcr-x.eastus-1.ingest.monitor.azure.com"
    assert settings.sink.dcr_stream_name == "Custom-PulumiAuditLogs"
    assert settings.sink.dcr_health_stream_name == "Custom-PulumiAuditConnectorHealth"
    assert settings.store.checkpoint_table_name == "PulumiAuditCheckpoints"


def test_settings_are_immutable():
    settings = load_settings(VALID)
    with pytest.raises(AttributeError):
        settings.source.orgs = ("other",)


def test_every_missing_required_setting_is_reported_at_once():
    problems = problems_of({})
    for name in ("PULUMI_ORGS", "LOGS_INGESTION_ENDPOINT", "DCR_IMMUTABLE_ID"):
        assert any(problem.startswith(f"{name} is required") for problem in problems), name
    assert any("PULUMI_ACCESS_TOKEN" in problem and "PULUMI_TOKEN_VAULT_URL" in problem for problem in problems)
    assert any("CHECKPOINT_TABLE_ENDPOINT" in problem for problem in problems)


def test_malformed_values_are_each_named():
    problems = problems_of(
        {
            **VALID,
            "INITIAL_LOOKBACK": "yesterday",
            "DCR_IMMUTABLE_ID": "abc",
            "DCR_STREAM_NAME": "PulumiAuditLogs",
            "TIMER_SCHEDULE": "*/5 * * * *",
        }
    )
    assert [problem.split(" ")[0].rstrip(":") for problem in problems] == [
        "TIMER_SCHEDULE",
        "INITIAL_LOOKBACK",
        "DCR_IMMUTABLE_ID",
        "DCR_STREAM_NAME",
    ]


def test_a_malformed_health_stream_is_named():
    [problem] = problems_of({**VALID, "DCR_HEALTH_STREAM_NAME": "PulumiAuditConnectorHealth"})
    assert problem.startswith("DCR_HEALTH_STREAM_NAME must look like Custom-<name>")


def test_health_rows_cannot_share_the_audit_stream():
    [problem] = problems_of({**VALID, "DCR_HEALTH_STREAM_NAME": "Custom-PulumiAuditLogs"})
    assert problem.startswith("DCR_STREAM_NAME and DCR_HEALTH_STREAM_NAME must differ")


def test_orgs_and_backfill_lanes_run_four_at_once_by_default():
    source = load_settings(VALID).source
    assert (source.max_parallel_orgs, source.backfill_parallelism) == (4, 4)
    source = load_settings({**VALID, "MAX_PARALLEL_ORGS": "32", "BACKFILL_PARALLELISM": "1"}).source
    assert (source.max_parallel_orgs, source.backfill_parallelism) == (32, 1)


@pytest.mark.parametrize("value", ["0", "33", "four", "-1", "2.5"])
def test_a_parallelism_out_of_its_bounds_is_named_with_the_bounds(value):
    problems = problems_of({**VALID, "MAX_PARALLEL_ORGS": value, "BACKFILL_PARALLELISM": "17"})
    assert problems == (
        f"MAX_PARALLEL_ORGS must be a whole number from 1 to 32, got {value!r}",
        "BACKFILL_PARALLELISM must be a whole number from 1 to 16, got '17'",
    )


@pytest.mark.parametrize("name", ["PULUMI_API_URL", "LOGS_INGESTION_ENDPOINT", "CHECKPOINT_TABLE_ENDPOINT"])
def test_plain_http_is_refused_except_for_loopback(name):
    assert any("must use https://" in problem for problem in problems_of({**VALID, name: "http://example.com"}))
    load_settings({**VALID, name: "http://127.0.0.1:8080"})
    load_settings({**VALID, name: "http://localhost:8080"})


@pytest.mark.parametrize("org", ["../admin", "a/b", "a%2Fb", "two words", "tab\there", "bell\x07", "..", ".hidden"])
def test_org_names_that_could_change_the_request_path_are_refused(org):
    [problem] = problems_of({**VALID, "PULUMI_ORGS": org})
    assert "is not a Pulumi organization name" in problem


def test_both_checkpoint_connections_at_once_is_an_error():
    problems = problems_of({**VALID, "CHECKPOINT_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    assert problems == ("set CHECKPOINT_TABLE_ENDPOINT or CHECKPOINT_CONNECTION_STRING, not both",)


def test_a_partial_app_registration_names_what_is_missing():
    [problem] = problems_of({**VALID, "AZURE_CLIENT_ID": "x"})
    assert "missing AZURE_TENANT_ID, AZURE_CLIENT_SECRET" in problem


def test_an_unresolved_key_vault_reference_says_how_to_fix_it():
    [problem] = problems_of({**VALID, "PULUMI_ACCESS_TOKEN": "@Microsoft.KeyVault(SecretUri=https://kv/secrets/t/)"})
    assert "Key Vault Secrets User" in problem


VAULT = "https://kv-name.vault.azure.net"


def test_a_token_vault_instead_of_a_token_reads_each_orgs_token_from_the_vault():
    settings = load_settings({**VALID, "PULUMI_ACCESS_TOKEN": "", "PULUMI_TOKEN_VAULT_URL": VAULT + "/"})
    assert settings.source.token_vault_url == VAULT
    assert settings.source.pulumi_token is None


def test_a_token_alone_is_one_token_for_every_org():
    settings = load_settings(VALID)
    assert settings.source.token_vault_url is None
    assert settings.source.pulumi_token.reveal() == TOKEN


@pytest.mark.parametrize(
    ("token", "vault", "state"), [(TOKEN, VAULT, "both are set"), ("", "", "neither is set")], ids=["both", "neither"]
)
def test_the_token_and_the_token_vault_are_mutually_exclusive(token, vault, state):
    [problem] = problems_of({**VALID, "PULUMI_ACCESS_TOKEN": token, "PULUMI_TOKEN_VAULT_URL": vault})
    assert problem.startswith("set exactly one of PULUMI_ACCESS_TOKEN")
    assert "PULUMI_TOKEN_VAULT_URL" in problem and problem.endswith(state)
    assert TOKEN not in problem


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://kv-name.vault.azure.net", "must use https://"),
        ("http://127.0.0.1:8443", "must use https://"),  # the Key Vault client refuses plain http, even on loopback
        ("https://kv-name.vault.azure.net/secrets/pulumi-token-acme", "without a path"),
        ("https://kv-name.vault.azure.net?x=1", "plain base URL"),
        ("kv-name.vault.azure.net", "must be an https:// URL"),
    ],
)
def test_a_token_vault_url_must_be_the_vaults_https_root(url, complaint):
    [problem] = problems_of({**VALID, "PULUMI_ACCESS_TOKEN": "", "PULUMI_TOKEN_VAULT_URL": url})
    assert problem.startswith("PULUMI_TOKEN_VAULT_URL") and complaint in problem


def test_a_token_vault_on_loopback_is_accepted_over_https():
    settings = load_settings({**VALID, "PULUMI_ACCESS_TOKEN": "", "PULUMI_TOKEN_VAULT_URL": "https://127.0.0.1:8443"})
    assert settings.source.token_vault_url == "https://127.0.0.1:8443"


def test_a_command_is_only_checked_for_the_parts_it_uses():
    settings = load_settings({"PULUMI_ORGS": "acme", "PULUMI_ACCESS_TOKEN": TOKEN}, parts=frozenset({"source"}))
    assert settings.sink is None and settings.store is None


def test_secrets_never_show_in_reprs_or_errors():
    settings = load_settings(
        {**VALID, "CHECKPOINT_TABLE_ENDPOINT": "", "CHECKPOINT_CONNECTION_STRING": "AccountKey=c2VjcmV0;"}
    )
    assert TOKEN not in repr(settings) and "c2VjcmV0" not in repr(settings)
    assert settings.source.pulumi_token.reveal() == TOKEN
    problems = problems_of({**VALID, "DCR_IMMUTABLE_ID": "x"})
    assert TOKEN not in " ".join(problems)
    assert repr(Secret(TOKEN)) == str(Secret(TOKEN)) == "Secret('***')"


@pytest.mark.parametrize(("text", "expected"), [("90s", 90), ("15m", 900), ("6h", 21600), ("1d", 86400)])
def test_durations_accept_seconds_minutes_hours_and_days(text, expected):
    assert parse_duration(text) == timedelta(seconds=expected)


def test_the_sample_local_settings_list_every_setting_and_load():
    sample = json.loads((Path(__file__).parent.parent / "local.settings.sample.json").read_text())["Values"]
    assert {spec.name for spec in SETTING_SPECS} <= set(sample)
    load_settings(sample)
