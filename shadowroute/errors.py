"""Errors of shadowroute, under one root. Each stage defines its own in its `errors` module (the
root in `consumers.errors`, the bottom stage, so that no stage imports this package); this
module adds the composition root's own and names them all:

    ShadowrouteError                 consumers.errors
    ├── ConfigError                  a key or value in the config / environment / CLI is wrong
    ├── SourceUnavailable            the log source (Kafka) cannot be reached or subscribed
    ├── DecodeError                  a record cannot become a request (its reason in `rejected`)
    ├── ReplayFileError              a file given to `replay` cannot be read
    ├── HttpFailure                  shadow.errors: a shadow call got no usable HTTP response
    │   ├── ConnectFailed            (never sent: not charged)
    │   ├── SendTimedOut             (never sent: not charged)
    │   ├── ResponseTimedOut
    │   ├── ConnectionDropped
    │   └── ResponseTooLarge
    ├── GroupUnavailable             no deployment of a model could take a call in time
    ├── RouterCallFailed             an external router gave no usable score for a request
    ├── ScoreFailed                  a scorer cannot judge a pair
    ├── StoreError                   analytics.errors: the DuckDB file cannot be opened or queried
    │   ├── StoreLockedError         another process (the running service) holds the file
    │   └── StoreWriteError          a write failed (disk full, I/O error): retriable
    ├── ServiceUnreachable           the running service's local HTTP API did not answer
    └── LocalModelError              shadowroute.demo: the demo's local model cannot run
        └── LocalModelDied

Every error carries the context a person needs (the key, the path, the model) in its message,
and `retriable` says whether trying again can help.
"""

from __future__ import annotations

from analytics.errors import StoreError, StoreLockedError, StoreWriteError
from consumers.errors import (
    ConfigError,
    DecodeError,
    ReplayFileError,
    ShadowrouteError,
    SourceUnavailable,
)
from shadow.errors import (
    ConnectFailed,
    ConnectionDropped,
    GroupUnavailable,
    HttpFailure,
    ResponseTimedOut,
    ResponseTooLarge,
    RouterCallFailed,
    ScoreFailed,
    SendTimedOut,
)

__all__ = ["ConfigError", "ConnectFailed", "ConnectionDropped", "DecodeError", "GroupUnavailable",
           "HttpFailure", "ReplayFileError", "ResponseTimedOut", "ResponseTooLarge",
           "RouterCallFailed", "ScoreFailed", "SendTimedOut", "ServiceUnreachable", "ShadowrouteError",
           "SourceUnavailable", "StoreError", "StoreLockedError", "StoreWriteError"]


class ServiceUnreachable(ShadowrouteError):
    """The running service's local HTTP API could not be reached."""

    retriable = True
