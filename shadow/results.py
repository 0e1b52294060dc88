"""What the shadow stage reads and writes, as typed records: the pending sample it replays (messages
already parsed: stored once as JSON, parsed once by the store, encoded once for the wire), each
attempt sent, each model's call, and a sample's whole result. `analytics` builds these from and
into its tables; nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("ok", "reused", "error", "budget", "unavailable")
ATTEMPT_OUTCOMES = ("ok", "error", "unknown", "cancelled")


@dataclass(frozen=True)  # no slots: a slotted dataclass unpickles ~10x slower (it calls
class PendingSample:      # `fields()` per object), and these cross the store's process boundary
    """A sampled production request waiting for its shadow calls."""

    sample_id: str
    stratum: str
    frontier_model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    tags: dict[str, str]
    response_text: str
    """The frontier answer the cheap answers are scored against."""
    frontier_cost_usd: float | None
    input_tokens: int | None
    scorer: str
    sample_key: int | None = None
    """The sample's integer key in the store (`samples.sample_key`), written with its results."""


@dataclass
class Attempt:
    """One request sent (or about to be) to a deployment. `outcome`: ok; error (an answer that
    was not one: not billed); unknown (sent, then no usable answer: charged its worst case);
    cancelled (in flight when the service stopped: charged its worst case)."""

    attempt_id: str
    sample_id: str
    model: str
    attempt: int
    deployment: str
    outcome: str
    spend_usd: float
    latency_ms: float
    error: str | None = None


@dataclass
class CallResult:
    model: str
    answer: str | None
    input_tokens: int | None
    cached_input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    latency_ms: float
    error: str | None
    attempts: int
    outcome: str = "ok"  # one of OUTCOMES
    deployment: str | None = None
    spend_usd: float = 0.0
    usage_estimated: bool = False
    reused_from: str | None = None
    attempt_log: list[Attempt] = field(default_factory=list)


@dataclass
class JudgeCall:
    """One question to the LLM judge about one cheap answer (`shadow.judge`)."""

    model: str
    """The model whose answer was judged (a cheap model, or the frontier's noise-floor call)."""
    judge: str
    mode: str  # grade | pairwise
    position: str | None  # pairwise: where the judged answer stood, cheap_first | cheap_second
    template: str  # the prompt template's version
    call: CallResult  # the judge model's call: its raw output is `call.answer`
    grade: float | None = None  # grade: 1-10
    verdict: str | None = None  # pairwise, for the judged answer: cheap | frontier | tie
    parse_error: str | None = None
    candidate_chars: int = 0
    reference_chars: int = 0


SAMPLE_STATUSES = ("pending", "done", "skipped_budget", "skipped_unavailable", "skipped_failed",
                   "skipped_shed", "skipped_tools", "skipped_no_models", "skipped_error")


@dataclass
class SampleResult:
    sample_id: str
    status: str  # one of SAMPLE_STATUSES
    skip_reason: str | None = None
    # (router, score, the router's version that gave it: a learned router's, else None)
    router_scores: list[tuple[str, float, str | None]] = field(default_factory=list)
    calls: list[CallResult] = field(default_factory=list)
    # (model, scorer, value, scorer used, failure): `auto` says which scorer it used; a scorer
    # that could not judge the pair gives no value and its reason.
    scores: list[tuple[str, str, float | None, str, str | None]] = field(default_factory=list)
    # Attempts not in `calls` (cancelled in flight at a stop); a result whose status is
    # `pending` carries only these: its sample stays pending and runs again.
    attempts: list[Attempt] = field(default_factory=list)
    # (router, latency ms, failure or None): every router call, answered or not.
    router_calls: list[tuple[str, float, str | None]] = field(default_factory=list)
    # The noise floor: (the frontier model's call, scorer, scorer used, value, failure) when the
    # sample's frontier model was asked again.
    floor: list[tuple[CallResult, str, str, float | None, str | None]] = field(default_factory=list)
    # Every call to the LLM judge about this sample's answers (its floor answer's included).
    judge_calls: list[JudgeCall] = field(default_factory=list)
    # (cascade, cheap model, acceptance score): how much each cascade trusts the cheap answer.
    cascade_scores: list[tuple[str, str, float]] = field(default_factory=list)
    # The sample's key in the store, written with its calls and scores (the savings views join
    # on it); None: the store finds it by sample_id.
    sample_key: int | None = None
