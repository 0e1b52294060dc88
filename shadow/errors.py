"""Errors of the shadow stage, under the one root (`consumers.errors.ShadowrouteError`):

    ShadowrouteError
    ├── HttpFailure            a call got no usable HTTP response (`sent`, `retriable`)
    │   ├── ConnectFailed      no connection: the request never left (not charged)
    │   ├── SendTimedOut       no connection free, or connecting or writing took too long
    │   ├── ResponseTimedOut   sent, no answer within the timeout
    │   ├── ConnectionDropped  sent, the connection closed before a whole answer
    │   └── ResponseTooLarge   the answer is bigger than `shadow.max_response_bytes`
    ├── GroupUnavailable       no deployment of a model could take a call before its deadline
    ├── RouterCallFailed       an external router gave no usable score for a request
    └── ScoreFailed            a scorer cannot judge a pair (stored as the score's error)
"""

from __future__ import annotations

from consumers.errors import ShadowrouteError


class HttpFailure(ShadowrouteError):
    """A request that got no usable HTTP response. `sent`: the server may have received it.
    `retriable`: another attempt may fare better."""

    sent = True
    retriable = True


class ConnectFailed(HttpFailure):
    sent = False


class SendTimedOut(HttpFailure):
    """No connection free, or the connection or the write took longer than the timeout."""

    sent = False


class ResponseTimedOut(HttpFailure):
    pass


class ConnectionDropped(HttpFailure):
    pass


class ResponseTooLarge(HttpFailure):
    """The answer is bigger than the cap: the model answered (it may bill it), and asking again
    would most likely bring the same."""

    retriable = False


class GroupUnavailable(ShadowrouteError):
    """No deployment of the group could take the call before its deadline."""

    retriable = True


class RouterCallFailed(ShadowrouteError):
    """An external router gave no usable score for one request (the sample gets no score from
    it; the reason is recorded in `router_calls`)."""

    retriable = True


class ScoreFailed(ShadowrouteError, ValueError):
    """The scorer cannot judge this pair; the message says why (stored, not a score)."""
