"""Where each org's Pulumi access token comes from: the environment, or Key Vault at run time.

An org-scoped Pulumi token reads one org only, so a deployment with several orgs needs a token
per org. `KeyVaultTokens` reads secret `pulumi-token-<org>` (else `pulumi-access-token`), always
the newest version, and keeps it at most `CACHE_SECONDS`: a rotated token is picked up by a
long-lived worker within that time, with no restart. Errors name the org, the vault and the
secrets tried, never a value.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from shared.ports import OrgToken, TokenUnavailable
from shared.settings import Secret

CACHE_SECONDS = 300
DEFAULT_SECRET_NAME = "pulumi-access-token"
ORG_SECRET_PREFIX = "pulumi-token-"
_NOT_IN_SECRET_NAME = re.compile(r"[^a-z0-9-]")
_MAX_DETAIL = 300


def org_secret_name(org: str) -> str:
    """`pulumi-token-<org>`: the org lowercased, every character but a-z, 0-9 and '-' made '-'."""
    return ORG_SECRET_PREFIX + _NOT_IN_SECRET_NAME.sub("-", org.lower())


class EnvironmentToken:
    """PULUMI_ACCESS_TOKEN for every org: local runs, `func start` and the demo."""

    def __init__(self, token: Secret):
        self._token = OrgToken(token, "PULUMI_ACCESS_TOKEN")

    def __repr__(self) -> str:
        return "EnvironmentToken(PULUMI_ACCESS_TOKEN)"

    def token_for(self, org: str) -> OrgToken:
        return self._token

    def forget(self, org: str) -> None:
        """Nothing to read again: the environment is fixed for the life of the process."""


@dataclass(frozen=True)
class _Cached:
    token: OrgToken
    read_at: float


class KeyVaultTokens:
    """Each org's token from Key Vault, through the app's Azure credential (see module docstring)."""

    def __init__(
        self,
        client: SecretClient,
        *,
        max_age_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._max_age_seconds = max_age_seconds
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyVaultTokens({self._client.vault_url!r})"

    def token_for(self, org: str) -> OrgToken:
        # The lanes of an org ask at once: one of them reads the vault, the others wait for that
        # read. Each org has its own lock, so a slow vault read for one org holds up no other.
        with self._lock_of(org):
            now = self._clock()
            cached = self._cache.get(org)
            if cached is not None and now - cached.read_at < self._max_age_seconds:
                return cached.token
            token = self._read(org)
            self._cache[org] = _Cached(token, now)
            return token

    def forget(self, org: str) -> None:
        with self._lock_of(org):
            self._cache.pop(org, None)

    def _lock_of(self, org: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(org, threading.Lock())

    def _read(self, org: str) -> OrgToken:
        tried: list[str] = []
        for name in (org_secret_name(org), DEFAULT_SECRET_NAME):
            tried.append(name)
            try:
                secret = self._client.get_secret(name)
            except ResourceNotFoundError:
                continue
            except HttpResponseError as error:
                raise self._unavailable(org, tried, _refusal(error)) from None
            except AzureError as error:
                raise self._unavailable(org, tried, f"vault unreachable after retries ({_detail(error)})") from None
            except ValueError:  # the SDK's check that the vault's challenge names the vault's own domain
                raise self._unavailable(
                    org,
                    tried,
                    "the Key Vault client refused the vault's authentication challenge: PULUMI_TOKEN_VAULT_URL "
                    "must be the vault's own URL, https://<name>.vault.azure.net",
                ) from None
            if not (secret.value or "").strip():
                raise self._unavailable(org, tried, f"secret {name!r} is empty: set a new version holding the token")
            return OrgToken(Secret(secret.value.strip()), self._origin(org, name))
        raise self._unavailable(
            org,
            tried,
            "neither secret exists: create one with "
            f"`az keyvault secret set --vault-name <vault> --name {tried[0]} --value <org token>`",
        )

    def _origin(self, org: str, name: str) -> str:
        where = f"Key Vault secret {name!r} in {self._client.vault_url}"
        if name == DEFAULT_SECRET_NAME:
            return f"{where} (the shared token: {org_secret_name(org)!r} does not exist)"
        return where

    def _unavailable(self, org: str, tried: list[str], reason: str) -> TokenUnavailable:
        names = ("secret " if len(tried) == 1 else "secrets ") + ", ".join(repr(name) for name in tried)
        return TokenUnavailable(
            f"no Pulumi token for org {org!r} from Key Vault {self._client.vault_url} (tried {names}): {reason}"
        )


def _detail(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:_MAX_DETAIL]}" if text else type(error).__name__


def _refusal(error: HttpResponseError) -> str:
    if error.response is None:  # the credential failed before anything reached the vault
        return f"no Azure token for the vault: {_detail(error)}"
    codes = [getattr(error.error, "code", None), (getattr(error.error, "innererror", None) or {}).get("code")]
    shown = "/".join(code for code in codes if code) or (error.reason or "")
    hint = {
        401: "the vault did not accept the app's Azure token",
        403: "grant the app's identity 'Key Vault Secrets User' on the vault, and check the secret is enabled",
    }.get(error.status_code)
    return f"the vault answered {error.status_code} {shown}".rstrip() + (f": {hint}" if hint else "")
