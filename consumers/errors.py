"""The root of shadowroute's errors, and the errors of the consumers stage.

`consumers` is the bottom stage (every other stage and the composition root sit above it), so
the one root error lives here, in a module that imports nothing. Each stage adds its own
subclasses in its own `errors` module; `shadowroute.errors` draws the whole tree:

    ShadowrouteError
    ├── ConfigError            a key or value in the config / environment / CLI is wrong
    ├── SourceUnavailable      the log source (Kafka) cannot be reached or subscribed
    ├── DecodeError            a record cannot become a request (a reason for `rejected`)
    └── ReplayFileError        a file given to `replay` cannot be read

`retriable` says whether trying the same thing again can help (aiokafka's convention).
"""

from __future__ import annotations


class ShadowrouteError(Exception):
    """Root of every error shadowroute raises on purpose."""

    retriable = False


class ConfigError(ShadowrouteError):
    """A configuration key or value is wrong; the message names the key and what to fix."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class SourceUnavailable(ShadowrouteError):
    """The log source cannot be reached (e.g. no Kafka broker at kafka.bootstrap_servers)."""

    retriable = True


class DecodeError(ShadowrouteError, ValueError):
    """A record cannot become a request; the message is the reason a person reads in `rejected`.
    Reasons quote values, so they are cut to one readable line."""

    MAX_CHARS = 300

    def __init__(self, reason: str) -> None:
        if len(reason) > self.MAX_CHARS:
            reason = reason[: self.MAX_CHARS - 1] + "…"
        super().__init__(reason)


class ReplayFileError(ShadowrouteError):
    """A file given to `replay` cannot be read (missing, unreadable, not a supported file)."""
