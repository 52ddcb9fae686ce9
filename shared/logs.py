"""What the libraries may say in the connector's logs.

The connector writes one line of its own for what happened: a run's summary, a dead-lettered
row, an error that names the setting or the role to fix. Left alone, the libraries add their
own WARNING and INFO lines for the same things: urllib3 warns on every connection retry it
then handles, DefaultAzureCredential warns with a multi-line list of every credential it
tried, and azure-core logs every request and response, headers and all, at INFO (which
host.json lets through). Those records are logged at DEBUG instead, so they show only where
DEBUG logging is on, for someone looking into a problem.

`quiet_library_logs` is applied by the composition root (the Functions timer) and the CLI.
"""

from __future__ import annotations

import logging

# Logger name -> the message templates (prefixes of `record.msg`) to log at DEBUG; () means all.
LOGGED_AT_DEBUG: dict[str, tuple[str, ...]] = {
    # A connection retry of the Pulumi client; a call that still fails is our error line.
    "urllib3.connectionpool": ("Retrying (",),
    # The attempted-credentials list; our error names the setting to fix in one line.
    "azure.identity._credentials.chained": ("DefaultAzureCredential failed to retrieve a token",),
    # Every request and response of every Azure SDK client.
    "azure.core.pipeline.policies.http_logging_policy": (),
}


class _AtDebug(logging.Filter):
    """Re-levels matching records to DEBUG; they pass only where the logger has DEBUG on."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        if self.prefixes and not str(record.msg).startswith(self.prefixes):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_library_logs() -> None:
    """Log the library records of `LOGGED_AT_DEBUG` at DEBUG. Safe to call more than once."""
    for name, prefixes in LOGGED_AT_DEBUG.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _AtDebug) for existing in logger.filters):
            logger.addFilter(_AtDebug(prefixes))
