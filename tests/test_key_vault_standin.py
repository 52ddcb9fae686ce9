"""The Key Vault stand-in behaves like the service for the real SecretClient, which gets its token
from the real DefaultAzureCredential through the local managed-identity endpoint."""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.keyvault.secrets import SecretClient

from shared.standins import Fault, KeyVaultStandIn


def secret_client(vault: KeyVaultStandIn) -> SecretClient:
    return SecretClient(vault.url, DefaultAzureCredential())


def test_the_first_request_is_challenged_and_the_sdk_answers_with_the_identitys_token(key_vault, managed_identity):
    key_vault.set_secret("pulumi-token-acme", "org-token-1")
    assert secret_client(key_vault).get_secret("pulumi-token-acme").value == "org-token-1"
    challenge, answered = key_vault.requests
    assert "Authorization" not in challenge.headers and challenge.status == 401
    assert answered.headers["Authorization"] == f"Bearer {managed_identity.access_token}" and answered.status == 200
    assert managed_identity.resources == [key_vault.resource]


def test_the_challenge_names_the_tenant_authority_and_the_vaults_parent_domain(key_vault):
    response = requests.get(f"{key_vault.url}/secrets/anything", params={"api-version": "7.5"}, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.microsoftonline.com/{key_vault.tenant_id}", '
        f'resource="https://0.0.1:{key_vault.port}"'
    )
    assert response.json()["error"]["code"] == "Unauthorized"


class VaultNamingItselfAsResource(KeyVaultStandIn):
    """A challenge whose resource is the vault's own URL, which the service never sends."""

    @property
    def resource(self) -> str:
        return self.url


def test_the_sdk_refuses_a_challenge_for_a_resource_the_vault_is_not_under(tls_ca, managed_identity):
    with VaultNamingItselfAsResource(ssl_context=tls_ca.server_context()) as vault:
        vault.set_secret("pulumi-access-token", "token")
        with pytest.raises(ValueError, match="does not match the requested domain"):
            secret_client(vault).get_secret("pulumi-access-token")
    assert managed_identity.resources == []


def test_the_newest_version_is_served_unless_a_version_is_asked_for(key_vault):
    first = key_vault.set_secret("pulumi-token-acme", "old")
    key_vault.set_secret("pulumi-token-acme", "new")
    client = secret_client(key_vault)
    newest = client.get_secret("pulumi-token-acme")
    assert newest.value == "new" and newest.properties.version == key_vault.versions("pulumi-token-acme")[-1].version
    assert client.get_secret("pulumi-token-acme", first).value == "old"
    assert newest.id == f"{key_vault.url}/secrets/pulumi-token-acme/{newest.properties.version}"


def test_secret_names_are_case_insensitive(key_vault):
    key_vault.set_secret("Pulumi-Token-ACME", "value")
    assert secret_client(key_vault).get_secret("pulumi-token-acme").value == "value"


@pytest.mark.parametrize("version", [None, "0" * 32], ids=["no-such-secret", "no-such-version"])
def test_a_missing_secret_or_version_is_secret_not_found(key_vault, version):
    key_vault.set_secret("pulumi-token-acme", "value")
    name = "pulumi-token-globex" if version is None else "pulumi-token-acme"
    with pytest.raises(ResourceNotFoundError) as missing:
        secret_client(key_vault).get_secret(name, version)
    assert missing.value.status_code == 404 and missing.value.error.code == "SecretNotFound"
    assert name in missing.value.error.message


def test_a_disabled_version_is_forbidden(key_vault):
    key_vault.set_secret("pulumi-token-acme", "value", enabled=False)
    with pytest.raises(HttpResponseError) as refused:
        secret_client(key_vault).get_secret("pulumi-token-acme")
    assert refused.value.status_code == 403
    assert (refused.value.error.code, refused.value.error.innererror["code"]) == ("Forbidden", "SecretDisabled")


def test_a_token_other_than_the_identitys_is_refused_with_the_challenge_again(key_vault):
    key_vault.set_secret("pulumi-token-acme", "value")
    key_vault.expected_token = "a-token-for-another-audience"
    with pytest.raises(ClientAuthenticationError) as refused:
        secret_client(key_vault).get_secret("pulumi-token-acme")
    assert refused.value.status_code == 401
    challenge, answered = key_vault.requests  # a second challenge in a row ends the handshake
    assert "Authorization" not in challenge.headers and "Authorization" in answered.headers
    assert answered.status == 401


def test_a_scripted_403_has_the_services_rbac_error_body(key_vault):
    key_vault.set_secret("pulumi-token-acme", "value")
    key_vault.faults.add(Fault.respond(403, match=lambda request: "Authorization" in request.headers))
    with pytest.raises(HttpResponseError) as refused:
        secret_client(key_vault).get_secret("pulumi-token-acme")
    assert refused.value.status_code == 403
    assert (refused.value.error.code, refused.value.error.innererror["code"]) == ("Forbidden", "ForbiddenByRbac")


@pytest.mark.parametrize(
    "fault", [Fault.respond(503, times=2), Fault.reset(times=2)], ids=["503-twice", "reset-twice"]
)
def test_transient_faults_are_retried_by_the_sdk(key_vault, fault, no_real_sleep):
    key_vault.set_secret("pulumi-token-acme", "value")
    key_vault.faults.add(fault)
    assert secret_client(key_vault).get_secret("pulumi-token-acme").value == "value"
    assert fault.fired == 2 and no_real_sleep


def test_a_request_without_api_version_is_a_bad_parameter(key_vault, managed_identity):
    headers = {"Authorization": f"Bearer {managed_identity.access_token}"}
    response = requests.get(f"{key_vault.url}/secrets/pulumi-access-token", headers=headers, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "BadParameter"


def test_only_names_key_vault_accepts_can_be_stored(key_vault):
    with pytest.raises(ValueError, match="not a Key Vault secret name"):
        key_vault.set_secret("pulumi_token.acme", "value")
