"""Errors of the analytics stage, under the one root (`consumers.errors.ShadowrouteError`):

    ShadowrouteError
    └── StoreError             the DuckDB file cannot be opened or queried
        ├── StoreLockedError   another process (the running service) holds the file
        └── StoreWriteError    a write failed (disk full, I/O error): retriable
"""

from __future__ import annotations

from consumers.errors import ShadowrouteError


class StoreError(ShadowrouteError):
    """The DuckDB store could not be opened or a query failed."""


class StoreLockedError(StoreError):
    """The DuckDB file is held for writing by another process (usually the running service)."""


class StoreWriteError(StoreError):
    """A transaction could not be written (no space left, an I/O error); the message is one line:
    what failed, where, and the free space there. Nothing of it was stored, so it can be retried
    once the cause is gone."""

    retriable = True
