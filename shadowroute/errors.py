"""Errors of shadowroute, under one root.

    ShadowrouteError
    ├── ConfigError            a key or value in the config / environment / CLI is wrong
    ├── StoreError             the DuckDB file cannot be opened or queried
    │   ├── StoreLockedError   another process (the running service) holds the file
    │   └── StoreWriteError    a write failed (disk full, I/O error): retriable
    ├── ServiceUnreachable     the running service's local HTTP API did not answer
    ├── SourceUnavailable      the log source (Kafka) cannot be reached or subscribed
    └── ModelCallError         a shadow call to a cheap model failed (carries `retriable`)

Every error carries the context a person needs (the key, the path, the model) in its message.
"""

from __future__ import annotations


class ShadowrouteError(Exception):
    """Root of every error shadowroute raises on purpose."""


class ConfigError(ShadowrouteError):
    """A configuration key or value is wrong; the message names the key and what to fix."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class StoreError(ShadowrouteError):
    """The DuckDB store could not be opened or a query failed."""


class StoreLockedError(StoreError):
    """The DuckDB file is held for writing by another process (usually the running service)."""


class StoreWriteError(StoreError):
    """A transaction could not be written (no space left, an I/O error); the message is one line:
    what failed, where, and the free space there. Nothing of it was stored, so it can be retried
    once the cause is gone."""

    retriable = True


class ServiceUnreachable(ShadowrouteError):
    """The running service's local HTTP API could not be reached."""


class SourceUnavailable(ShadowrouteError):
    """The log source cannot be reached (e.g. no Kafka broker at kafka.bootstrap_servers)."""


class ModelCallError(ShadowrouteError):
    """A call to a model endpoint failed. `retriable` says whether trying again can help."""

    def __init__(self, model: str, reason: str, *, retriable: bool) -> None:
        self.model = model
        self.reason = reason
        self.retriable = retriable
        super().__init__(f"{model}: {reason}")
