"""Local stand-ins for the services the connector talks to (std-lib only).

Used by `python -m shared demo` over plain http on 127.0.0.1, and by the tests over HTTPS
with a test CA. See each module for the behaviour it reproduces.

`shared.standins.azurite` launches Microsoft's Azurite for the tests and the benchmarks; it is not
exported here, so the demo (which imports this package) never loads it.
"""

from shared.standins.key_vault import KeyVaultStandIn
from shared.standins.logs_ingestion import LogsIngestionStandIn, OversizedField
from shared.standins.managed_identity import ManagedIdentityEndpointStandIn, TokenRequest
from shared.standins.pulumi_api import PulumiAuditApiStandIn
from shared.standins.server import Fault, FaultScript, RecordedRequest, Response, StandInServer
from shared.standins.simulated_events import event_catalog, simulate_events

__all__ = [
    "Fault",
    "FaultScript",
    "KeyVaultStandIn",
    "LogsIngestionStandIn",
    "ManagedIdentityEndpointStandIn",
    "OversizedField",
    "PulumiAuditApiStandIn",
    "RecordedRequest",
    "Response",
    "StandInServer",
    "TokenRequest",
    "event_catalog",
    "simulate_events",
]
