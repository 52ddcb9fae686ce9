"""`python -m shared demo --vault`: each org's Pulumi token read from a local Key Vault stand-in.

The stand-in speaks HTTPS with a throwaway test CA (the Key Vault client refuses plain http),
answers the SDK's challenge handshake, and holds one secret per org except the last, which
reads the shared `pulumi-access-token`. The Pulumi stand-in accepts only each org's own token.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from collections.abc import Sequence

import trustme
from azure.core.credentials import TokenCredential
from azure.keyvault.secrets import SecretClient

from shared.standins import KeyVaultStandIn, PulumiAuditApiStandIn
from shared.token_source import CACHE_SECONDS, DEFAULT_SECRET_NAME, KeyVaultTokens, org_secret_name


def _demo_token() -> str:
    return "pul-demo-" + os.urandom(8).hex()


class DemoVault:
    """The Key Vault stand-in, its secrets, and the real SecretClient-backed token source reading it."""

    def __init__(self, pulumi_api: PulumiAuditApiStandIn, orgs: Sequence[str], credential: TokenCredential):
        self._pulumi_api = pulumi_api
        self._files = contextlib.ExitStack()
        ca = trustme.CA()
        ca_path = self._files.enter_context(ca.cert_pem.tempfile())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.vault = KeyVaultStandIn(ssl_context=context)
        self._files.callback(self.vault.close)
        self.secret_names = {}
        shared_token = _demo_token()
        self.vault.set_secret(DEFAULT_SECRET_NAME, shared_token)
        for org in orgs:
            own = org != orgs[-1]
            token = _demo_token() if own else shared_token
            if own:
                self.vault.set_secret(org_secret_name(org), token)
            self.secret_names[org] = org_secret_name(org) if own else DEFAULT_SECRET_NAME
            pulumi_api.org_tokens[org] = {token}
        self._clock_offset = 0.0
        client = SecretClient(self.vault.url, credential, connection_verify=ca_path)
        self.tokens = KeyVaultTokens(client, clock=lambda: time.monotonic() + self._clock_offset)

    def __enter__(self) -> DemoVault:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._files.close()

    def rotate(self, org: str) -> None:
        """A new token as a new secret version, the old one revoked in Pulumi; then the token cache's
        5 minutes pass, so the next run reads the new version."""
        token = _demo_token()
        self.vault.set_secret(self.secret_names[org], token)
        self._pulumi_api.org_tokens[org] = {token}
        self._clock_offset += CACHE_SECONDS
