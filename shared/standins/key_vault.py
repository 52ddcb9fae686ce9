"""A local stand-in for Azure Key Vault's secrets API, as `azure-keyvault-secrets` talks to it.

It behaves like the service where the SDK and the connector can tell:

* The first request of a client carries no token. The answer is 401 with the challenge
  `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="<resource>"`. The service names as resource its domain, not the vault
  (`https://vault.azure.net` for `kv.vault.azure.net`), and the SDK checks that the vault's
  host ends with "." + the resource's host, port included. So the resource here is the host
  without its first label: `https://0.0.1:PORT` for `https://127.0.0.1:PORT`.
* Then `Authorization: Bearer <token>` is required: any token, or exactly `expected_token` when
  set. Anything else is 401 with the challenge again.
* `GET /secrets/{name}[/{version}]?api-version=...` answers the newest version (or that one) as
  the service's SecretBundle. Names are case-insensitive. A missing name or version is 404
  `SecretNotFound`; a disabled version is 403 `Forbidden` (inner code `SecretDisabled`).
* Error bodies have the service's shape, `{"error": {"code", "message"[, "innererror"]}}`, also for
  faults scripted with `Fault.respond(403)` and the like.

Only reading is served: secrets are put in with `set_secret`, as `az keyvault secret set` would.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from shared.standins.server import LOOPBACK, Fault, RecordedRequest, Response, StandInServer, json_response

SECRET_PATH = re.compile(r"^/secrets/(?P<name>[^/]+)(?:/(?P<version>[^/]*))?/?$")
SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
API_VERSION = re.compile(r"^(\d+\.\d+|\d{4}-\d{2}-\d{2}(-preview)?)$")
DEFAULT_TENANT_ID = "72f988bf-0000-0000-0000-00000000aa1d"
MISSING_TOKEN_MESSAGE = "AKV10000: Request is missing a Bearer or PoP token."
INVALID_TOKEN_MESSAGE = "AKV10022: Invalid audience or token."
_ERROR_CODES = {
    400: "BadParameter",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    429: "Throttled",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


@dataclass(frozen=True)
class SecretVersion:
    name: str
    version: str
    value: str
    enabled: bool
    content_type: str | None
    created: int


class KeyVaultStandIn(StandInServer):
    """Serves secrets put in with `set_secret`. Needs an `ssl_context`: the SDK speaks https only."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        expected_token: str | None = None,
        tenant_id: str = DEFAULT_TENANT_ID,
        host: str = LOOPBACK,
        port: int = 0,
    ):
        self.expected_token = expected_token
        self.tenant_id = tenant_id
        self._versions: dict[str, list[SecretVersion]] = {}
        self._secrets_lock = threading.Lock()
        super().__init__(ssl_context=ssl_context, host=host, port=port)

    @property
    def resource(self) -> str:
        """What the challenge names as resource: the vault's host without its first label."""
        return f"https://{self.host.split('.', 1)[-1]}:{self.port}"

    @property
    def challenge(self) -> str:
        return (
            f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
            f'resource="{self.resource}"'
        )

    # -- data ---------------------------------------------------------------------------------

    def set_secret(
        self, name: str, value: str, *, enabled: bool = True, content_type: str | None = "text/plain"
    ) -> str:
        """Add a new version of `name` (creating the secret if new); return the version id."""
        if not SECRET_NAME.match(name):
            raise ValueError(f"{name!r} is not a Key Vault secret name (1-127 letters, digits and '-')")
        version = SecretVersion(name, os.urandom(16).hex(), value, enabled, content_type, int(time.time()))
        with self._secrets_lock:
            self._versions.setdefault(name.lower(), []).append(version)
        return version.version

    def versions(self, name: str) -> list[SecretVersion]:
        """Every version of `name`, oldest first."""
        with self._secrets_lock:
            return list(self._versions.get(name.lower(), []))

    # -- HTTP ---------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest, body: bytes, fault: Fault | None) -> Response:
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._unauthorized(MISSING_TOKEN_MESSAGE)
        if self.expected_token is not None and token.strip() != self.expected_token:
            return self._unauthorized(INVALID_TOKEN_MESSAGE)

        api_version = request.query.get("api-version", "")
        if not API_VERSION.match(api_version):
            return self.error_response(400, "The request URI contains an invalid or missing api-version.")
        match = SECRET_PATH.match(request.path)
        if match is None:
            return self.error_response(404, "The requested resource was not found.")
        if request.method != "GET":
            return self.error_response(405, f"The method {request.method} is not served by this stand-in.")
        name, version = unquote(match["name"]), unquote(match["version"] or "")
        if not SECRET_NAME.match(name):
            return self.error_response(400, f"The secret name {name!r} is invalid.")
        return self._secret(name, version)

    def _secret(self, name: str, version: str) -> Response:
        versions = self.versions(name)
        chosen = versions[-1] if versions and not version else next(
            (item for item in versions if item.version == version.lower()), None
        )
        if chosen is None:
            shown = f"{name}/{version}" if version else name
            return self._error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {shown} was not found in this key vault. If you recently deleted this "
                "secret you may be able to recover it using the correct recovery command.",
            )
        if not chosen.enabled:
            return self._error(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled")
        bundle: dict[str, Any] = {
            "value": chosen.value,
            "id": f"{self.url}/secrets/{chosen.name}/{chosen.version}",
            "attributes": {
                "enabled": True,
                "created": chosen.created,
                "updated": chosen.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }
        if chosen.content_type:
            bundle["contentType"] = chosen.content_type
        return json_response(200, bundle)

    def _unauthorized(self, message: str) -> Response:
        response = self.error_response(401, message)
        response.headers["WWW-Authenticate"] = self.challenge
        return response

    def _error(self, status: int, code: str, message: str, inner_code: str | None = None) -> Response:
        error: dict[str, Any] = {"code": code, "message": message}
        if inner_code:
            error["innererror"] = {"code": inner_code}
        return json_response(status, {"error": error})

    def error_response(self, status: int, message: str | None = None) -> Response:
        code = _ERROR_CODES.get(status, "InternalServerError" if status >= 500 else "BadParameter")
        inner_code = "ForbiddenByRbac" if status == 403 else None
        if status == 403 and message is None:
            message = "Caller is not authorized to perform action on resource."
        return self._error(status, code, message or code, inner_code)
