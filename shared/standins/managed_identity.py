"""A local stand-in for the App Service managed identity endpoint.

azure-identity's `ManagedIdentityCredential` (and so `DefaultAzureCredential`) uses it when
`IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set: `GET <IDENTITY_ENDPOINT>?api-version=
2019-08-01&resource=<audience>[&client_id=<id>]` with the header `X-IDENTITY-HEADER`.
Plain http on 127.0.0.1, like the real endpoint inside an App Service sandbox.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from shared.standins.server import LOOPBACK, Fault, RecordedRequest, Response, StandInServer, json_response

TOKEN_PATH = "/msi/token"
API_VERSION = "2019-08-01"
DEFAULT_CLIENT_ID = "00000000-0000-0000-0000-00000000c11d"


@dataclass(frozen=True)
class TokenRequest:
    resource: str
    client_id: str | None
    principal_id: str | None
    mi_res_id: str | None


class ManagedIdentityEndpointStandIn(StandInServer):
    """Issues `access_token` (a fixed string) for any resource to callers presenting `secret`."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        access_token: str = "msi-test-token",
        expires_in: int = 3600,
        default_client_id: str = DEFAULT_CLIENT_ID,
        host: str = LOOPBACK,
        port: int = 0,
    ):
        self.secret = secret if secret is not None else "identity-header-" + os.urandom(8).hex()
        self.access_token = access_token
        self.expires_in = expires_in
        self.default_client_id = default_client_id
        self._token_requests: list[TokenRequest] = []
        self._token_lock = threading.Lock()
        super().__init__(host=host, port=port)

    @property
    def endpoint(self) -> str:
        return self.url + TOKEN_PATH

    def env(self) -> dict[str, str]:
        """The environment variables that point azure-identity at this endpoint."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.secret}

    @property
    def token_requests(self) -> list[TokenRequest]:
        """Every successfully answered token request, in order."""
        with self._token_lock:
            return list(self._token_requests)

    @property
    def resources(self) -> list[str]:
        return [request.resource for request in self.token_requests]

    @property
    def client_ids(self) -> list[str | None]:
        return [request.client_id for request in self.token_requests]

    def error_response(self, status: int, message: str | None = None) -> Response:
        return json_response(status, {"statusCode": status, "message": message or f"HTTP {status}"})

    def handle(self, request: RecordedRequest, body: bytes, fault: Fault | None) -> Response:
        if request.path.rstrip("/") != TOKEN_PATH:
            return self.error_response(404, "Not found")
        if request.method != "GET":
            return self.error_response(405, "Method not allowed")
        if request.headers.get("X-IDENTITY-HEADER") != self.secret:
            return self.error_response(401, "The X-IDENTITY-HEADER header is missing or wrong.")
        query = request.query
        if query.get("api-version") != API_VERSION:
            return self.error_response(400, f"api-version must be {API_VERSION}")
        resource = query.get("resource", "")
        if not resource:
            return self.error_response(400, "The resource parameter is required.")
        client_id = query.get("client_id") or None
        with self._token_lock:
            self._token_requests.append(
                TokenRequest(resource, client_id, query.get("principal_id"), query.get("mi_res_id"))
            )
        return json_response(
            200,
            {
                "access_token": self.access_token,
                "expires_on": str(int(time.time()) + self.expires_in),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id or self.default_client_id,
            },
        )
