"""The Azure credential, whose failure reads as one line that names what to fix.

DefaultAzureCredential fails with a multi-line list of every credential it tried, most of which
were never meant to work here. Every client (Logs Ingestion, both tables) reports what this
credential raises, so it raises one line instead: that no token came, and the setting to fix.
The full list stays in the DEBUG log of azure.identity (see shared/logs.py).

It also asks for one token at a time. Every org's thread meets an expired token together; one
request fetches it and the others then find it in azure-identity's cache, where sixteen at once
would each open a connection to the identity endpoint (which limits concurrent requests).
"""

from __future__ import annotations

import threading
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential

APP_REGISTRATION = "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"


def _what_to_fix(managed_identity_client_id: str | None) -> str:
    if managed_identity_client_id:
        return (
            f"check that the user-assigned identity MANAGED_IDENTITY_CLIENT_ID={managed_identity_client_id} "
            "is assigned to the Function App"
        )
    return (
        f"set MANAGED_IDENTITY_CLIENT_ID (in Azure), or {APP_REGISTRATION} (an app registration), "
        "or run `az login` (on a workstation)"
    )


class ExplainedCredential:
    """DefaultAzureCredential with a one-line failure; see the module docstring."""

    def __init__(self, managed_identity_client_id: str | None):
        self._credential = (
            DefaultAzureCredential(managed_identity_client_id=managed_identity_client_id)
            if managed_identity_client_id
            else DefaultAzureCredential()
        )
        self._what_to_fix = _what_to_fix(managed_identity_client_id)
        self._one_request_at_a_time = threading.Lock()

    def __repr__(self) -> str:
        return "ExplainedCredential(DefaultAzureCredential)"

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        try:
            with self._one_request_at_a_time:
                return self._credential.get_token(*scopes, **kwargs)
        except ClientAuthenticationError:
            raise self._failure(scopes) from None

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        try:
            with self._one_request_at_a_time:
                return self._credential.get_token_info(*scopes, options=options)
        except ClientAuthenticationError:
            raise self._failure(scopes) from None

    def close(self) -> None:
        self._credential.close()

    def _failure(self, scopes: tuple[str, ...]) -> ClientAuthenticationError:
        return ClientAuthenticationError(
            message=f"no Azure identity gave a token for {' '.join(scopes)}: {self._what_to_fix}"
        )
