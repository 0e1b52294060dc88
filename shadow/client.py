"""Calls to a cheap model (a group of OpenAI-compatible deployments), as dependable as a router.

`ModelClient.complete` never raises for a failed call: it returns a `CallResult` whose
`outcome` and `error` say what happened, so a failing endpoint cannot stall or crash the
pipeline. One call:

1. reuses an identical earlier replay within `reuse_window_s` (`outcome = "reused"`);
2. takes a lease on the best deployment of the group (`DeploymentGroup.acquire`: cooldowns,
   `Retry-After`, concurrency and rpm/tpm limits; waits at most `max_wait_s`, else
   `"unavailable"`);
3. reserves the attempt's worst-case cost in the `Budget` (exhausted: `"budget"`);
4. sends it; 429, 5xx, timeouts, connection errors and malformed answers are retried with
   exponential backoff and jitter, on another deployment right away when one is ready, and
   `Retry-After` keeps the deployment idle that long; 400/401/403/404 (and other 4xx) are not
   retried and are reported as they came (`"error"`);
5. settles the reservation to the actual cost: from `usage`, or when the answer has none, from
   the upper bounds of `shadow.tokens` (`usage_estimated`). An attempt whose fate is unknown
   (timed out or dropped after the request was sent, malformed answer) is charged its worst
   case: it may have been billed.

`cost_usd` is what the answer costs (the cheap model's cost in the estimates); `spend_usd` is
what the budget was charged for this call over all its attempts. Every attempt is itemised
(`CallResult.attempt_log`, the `shadow_attempts` table), and so is an attempt cancelled in flight
(a stop past `shadow.stop_grace_s`): it is charged its worst case and kept in `cancelled` for
the runner to write, so a call paid twice (once cancelled, again after the restart) shows in
SQL. The API key is read from the environment at call time and never appears in results,
errors or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from consumers.config import secret_from_env
from shadow.budget import Budget
from shadow.config import ModelConfig, ShadowConfig
from shadow.deployments import Deployment, DeploymentGroup, Lease
from shadow.errors import GroupUnavailable, HttpFailure, SendTimedOut
from shadow.http import HttpClient
from shadow.results import Attempt, CallResult
from shadow.reuse import ReuseCache, reuse_key
from shadow.tokens import prompt_token_bound, prompt_token_estimate

# Attempt ids: one random prefix per process and a counter (uuid4 per attempt read the OS's
# random source on every call: ~1.6% of the shadow stage's CPU at 1,000 calls in flight).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count()


def attempt_id() -> str:
    """Unique across processes and restarts (a 64-bit random prefix per process)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


RETRY_STATUS = {408, 409, 429}  # and every 5xx
HEALTH_STATUS = {401, 403, 404}  # not retried, but they say the deployment is misconfigured
REPLAY_PARAMS = ("temperature", "top_p", "response_format", "stop", "seed",
                 "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    max_wait_s: float = 300.0

    def delay(self, failures: int) -> float:
        d = min(self.max_backoff_s, self.backoff_s * 2 ** (failures - 1))
        return d * (0.5 + random.random())  # jitter: callers that failed together spread out


def replay_params(params: dict[str, Any]) -> dict[str, Any]:
    """The production request's parameters the replay keeps. Never `stream` (a streamed request
    is replayed unstreamed), never `n` (one answer is scored). The tools it offered, with its
    `tool_choice`, when ingest kept their definitions (a sample that offered tools reaches the
    client only with `shadow.replay_tools = true`)."""
    out = {k: params[k] for k in REPLAY_PARAMS if params.get(k) is not None}
    if params.get("tool_definitions"):
        out["tools"] = params["tool_definitions"]
        if params.get("tool_choice") is not None:
            out["tool_choice"] = params["tool_choice"]
    return out


def capped_max_tokens(params: dict[str, Any], cap: int) -> int:
    asked = params.get("max_tokens") or params.get("max_completion_tokens")
    try:
        return min(int(asked), cap) if asked else cap
    except (TypeError, ValueError):
        return cap


class _Attempt:
    """What one attempt produced."""

    __slots__ = ("result", "error", "retriable", "health", "retry_after", "unknown_cost")

    def __init__(self, result: CallResult | None = None, error: str = "", *,
                 retriable: bool = False, health: bool = True, retry_after: float | None = None,
                 unknown_cost: bool = False) -> None:
        self.result = result
        self.error = error
        self.retriable = retriable
        self.health = health
        self.retry_after = retry_after
        self.unknown_cost = unknown_cost


class ModelClient:
    def __init__(self, cfg: ModelConfig, http: HttpClient, *, retries: int = 2,
                 backoff_s: float = 0.5, max_backoff_s: float = 20.0, max_wait_s: float = 300.0,
                 allowed_fails: int = 3, cooldown_s: float = 60.0,
                 first_probe_s: float | None = None, budget: Budget | None = None,
                 reuse_window_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.http = http
        self.policy = RetryPolicy(retries, backoff_s, max_backoff_s, max_wait_s)
        self.budget = budget
        self.clock = clock
        self.group = DeploymentGroup(cfg.name, [Deployment(d) for d in cfg.resolved_deployments()],
                                     allowed_fails=allowed_fails, cooldown_s=cooldown_s,
                                     first_probe_s=first_probe_s, give_up_after_s=max_wait_s,
                                     clock=clock)
        self.reuse: ReuseCache[CallResult] | None = (
            ReuseCache(reuse_window_s, clock=clock) if reuse_window_s > 0 else None)
        # Attempts cancelled in flight, with their worst-case spend, until the runner writes them.
        self.cancelled: list[Attempt] = []
        self._static_headers = {
            d.name: {"Content-Type": "application/json", **d.spec.extra_headers}
            for d in self.group.deployments}

    @classmethod
    def from_config(cls, cfg: ModelConfig, shadow: ShadowConfig, http: HttpClient,
                    budget: Budget | None = None) -> ModelClient:
        return cls(cfg, http, retries=shadow.max_retries, backoff_s=shadow.backoff_s,
                   max_backoff_s=shadow.max_backoff_s, max_wait_s=shadow.max_wait_s,
                   allowed_fails=shadow.allowed_fails, cooldown_s=shadow.cooldown_s,
                   first_probe_s=shadow.first_probe_s, budget=budget,
                   reuse_window_s=shadow.reuse_window_s)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def deployments(self) -> Sequence[Deployment]:
        return self.group.deployments

    def _headers(self, d: Deployment) -> dict[str, str]:
        headers = self._static_headers[d.name]
        key = secret_from_env(d.spec.api_key_env)
        if not key:
            return headers
        h = d.spec.api_key_header or "Authorization"
        return {**headers, h: f"Bearer {key}" if h.lower() == "authorization" else key}

    async def complete(self, messages: list[dict[str, Any]], params: dict[str, Any], *,
                       sample_id: str | None = None) -> CallResult:
        start = time.perf_counter()
        # Serialized once: the body of each deployment is spliced around it.
        base = orjson.dumps({"messages": messages, **replay_params(params)})
        cap = capped_max_tokens(params, self.cfg.max_tokens)
        sid = sample_id or ""
        if self.reuse is None:
            return await self._call(base, cap, messages, params, start, sid)
        key = reuse_key(self.cfg.name, base + b"%d" % cap)
        hit = await self.reuse.claim(key)
        if hit is not None:
            first_id, r = hit
            return CallResult(r.model, r.answer, r.input_tokens, r.cached_input_tokens,
                              r.output_tokens, r.cost_usd, r.latency_ms, None, 0, "reused",
                              r.deployment, 0.0, r.usage_estimated, first_id)
        res: CallResult | None = None
        try:
            res = await self._call(base, cap, messages, params, start, sid)
        finally:
            self.reuse.release(key, sample_id, res if res is not None and res.outcome == "ok"
                               else None)
        return res

    def take_cancelled(self) -> list[Attempt]:
        out, self.cancelled = self.cancelled, []
        return out

    async def _call(self, base: bytes, group_cap: int, messages: list[dict[str, Any]],
                    params: dict[str, Any], start: float, sample_id: str) -> CallResult:
        tried: list[Attempt] = []
        try:
            return await self._attempts(base, group_cap, messages, params, start, sample_id,
                                        tried)
        except asyncio.CancelledError:
            # Stopped (past `shadow.stop_grace_s`) mid-call: what it paid so far is written by
            # the runner, so a call paid again after the restart is visible.
            self.cancelled.extend(tried)
            raise

    async def _attempts(self, base: bytes, group_cap: int, messages: list[dict[str, Any]],
                        params: dict[str, Any], start: float, sample_id: str,
                        tried: list[Attempt]) -> CallResult:
        group = self.group
        deadline = self.clock() + self.policy.max_wait_s
        tokens = prompt_token_estimate(base) + group_cap  # what a rate limiter counts up front
        bodies: dict[tuple[str, int, str], bytes] = {}
        failures = attempts = 0
        spend = 0.0
        avoid: Deployment | None = None
        last: str | None = None
        last_dep: str | None = None
        while True:
            try:
                lease = await group.acquire(tokens, deadline, avoid)
            except GroupUnavailable as e:
                outcome = "unavailable" if attempts == 0 else "error"
                error = str(e) if last is None else f"{last}; then {e}"
                return self._failed(outcome, error, attempts, spend, last_dep, start, tried)
            d = lease.deployment
            cap = capped_max_tokens(params, d.spec.max_tokens)
            field = d.spec.max_tokens_field
            body = bodies.get((d.spec.model, cap, field))
            if body is None:
                body = bodies[(d.spec.model, cap, field)] = (
                    b'{"model":' + orjson.dumps(d.spec.model) + b"," + base[1:-1]
                    + b',"%s":%d}' % (field.encode(), cap))
            bound = prompt_token_bound(body, messages)
            reservation = None
            if self.budget is not None:
                reservation = await self.budget.reserve(d.worst_cost(bound, cap))
                if reservation is None:
                    group.cancel(lease)
                    left = min(self.budget.left_usd("hour"), self.budget.left_usd("day"))
                    error = (f"shadow budget exhausted: this call may cost up to "
                             f"${d.worst_cost(bound, cap):.6f}, ${left:.6f} left")
                    if last is not None:
                        error = f"{last}; then {error}"
                    return self._failed("budget" if attempts == 0 else "error", error, attempts,
                                        spend, d.name, start, tried)
            attempts += 1
            sent = time.perf_counter()
            try:
                att = await self._attempt(lease, body, bound, cap, start, attempts)
            except asyncio.CancelledError:
                # In flight at a stop: it may have been billed. Charged its worst case and kept
                # for the runner to write: the call runs again after the restart.
                worst = d.worst_cost(bound, cap)
                if reservation is not None and self.budget is not None:
                    self.budget.settle(reservation, worst)
                tried.append(Attempt(
                    attempt_id(), sample_id, self.cfg.name, attempts, d.name, "cancelled",
                    worst, (time.perf_counter() - sent) * 1000, "cancelled in flight at a stop"))
                raise
            charge = 0.0
            if att.result is not None:
                charge = att.result.cost_usd or 0.0
            elif att.unknown_cost:
                charge = d.worst_cost(bound, cap)
            if reservation is not None and self.budget is not None:
                self.budget.settle(reservation, charge)
            spend += charge
            if att.result is None:
                att.error = self._redact(att.error)  # before a log line, a row or last_error
            tried.append(Attempt(attempt_id(), sample_id, self.cfg.name, attempts, d.name,
                               "ok" if att.result is not None else
                               "unknown" if att.unknown_cost else "error",
                               charge, (time.perf_counter() - sent) * 1000,
                               None if att.result is not None else att.error))
            if att.result is not None:
                group.succeeded(lease, (att.result.input_tokens or 0)
                                + (att.result.output_tokens or 0))
                att.result.spend_usd = spend
                att.result.attempt_log = tried
                return att.result
            group.failed(lease, att.error, health=att.health, retry_after=att.retry_after)
            last, last_dep = f"{d.name}: {att.error}", d.name
            if not att.retriable:
                return self._failed("error", last, attempts, spend, d.name, start, tried)
            failures += 1
            if failures > self.policy.max_retries:
                return self._failed("error", last, attempts, spend, d.name, start, tried)
            avoid = d
            if not group.ready_other_than(d, tokens):  # no fallback ready: back off
                delay = self.policy.delay(failures)
                if att.retry_after is not None:
                    delay = max(delay, att.retry_after)
                remaining = deadline - self.clock()
                if delay > remaining:
                    return self._failed("error", f"{last} (no time left to retry)", attempts,
                                        spend, d.name, start, tried)
                await asyncio.sleep(delay)

    def _failed(self, outcome: str, error: str, attempts: int, spend: float,
                deployment: str | None, start: float, log: list[Attempt]) -> CallResult:
        return CallResult(self.cfg.name, None, None, None, None, None,
                          (time.perf_counter() - start) * 1000, self._redact(error), attempts,
                          outcome, deployment, spend, attempt_log=log)

    def _redact(self, text: str) -> str:
        # Some providers echo the key they were given in their error text.
        keys = [k for d in self.group.deployments if (k := secret_from_env(d.spec.api_key_env))]
        return redact(text, keys)

    async def _attempt(self, lease: Lease, body: bytes, bound: int, cap: int, start: float,
                       attempts: int) -> _Attempt:
        d = lease.deployment
        try:
            resp = await self.http.post(d.url, body, self._headers(d), d.spec.timeout_s,
                                        ca_bundle=d.spec.ca_bundle or None)
        except SendTimedOut as e:
            return _Attempt(error=f"timeout sending the request ({e})", retriable=True)
        except HttpFailure as e:
            # Sent, then no (usable) answer: the provider may have billed it.
            return _Attempt(error=str(e), retriable=e.retriable, unknown_cost=e.sent)
        status = resp.status
        if status == 200:
            res = self._parse(resp.content, d, bound, cap, start, attempts)
            if res is None:
                return _Attempt(error="malformed response body", retriable=True,
                                unknown_cost=True)
            return _Attempt(res)
        error = f"HTTP {status}: {_short(resp.text)}"
        if status in RETRY_STATUS or status >= 500:
            return _Attempt(error=error, retriable=True,
                            retry_after=_retry_after(resp.headers.get("retry-after")))
        return _Attempt(error=error, retriable=False, health=status in HEALTH_STATUS)

    def _parse(self, content: bytes, d: Deployment, bound: int, cap: int, start: float,
               attempts: int) -> CallResult | None:
        latency = (time.perf_counter() - start) * 1000
        try:
            data = orjson.loads(content)
            msg = data["choices"][0]["message"]
            answer = msg.get("content") or ""
            if not isinstance(answer, str):
                return None
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return None
        usage = data.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        inp = _int(usage.get("prompt_tokens"))
        out = _int(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = (_int(details.get("cached_tokens")) if isinstance(details, dict) else 0) or 0
        estimated = inp is None or out is None
        if inp is None:
            inp = bound  # no usage: charge upper bounds, never a silent zero
        if out is None:
            # Not the answer's length: a reasoning model is billed for tokens it does not show.
            out = cap
        return CallResult(self.cfg.name, answer, inp, cached, out, d.cost(inp, cached, out),
                          latency, None, attempts, "ok", d.name, 0.0, estimated)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else None


def _retry_after(v: str | None) -> float | None:
    """Seconds from a `Retry-After` header: a number or an HTTP date."""
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


MIN_SECRET_PREFIX = 8  # a key's first 8 characters are redacted too; fewer say nothing


def _encodings(c: str) -> list[str]:
    """How one character of a key may be written back: as is, JSON-escaped (`\\/`, `\\"`,
    `\\uXXXX`), URL-encoded (`%XX` per UTF-8 byte; `+` for a space)."""
    out = [c, "\\" + c, f"\\u{ord(c):04x}", "".join(f"%{b:02x}" for b in c.encode())]
    if c == " ":
        out.append("+")
    return out


def _key_run(text: str, low: str, start: int, key: str) -> tuple[int, int]:
    """(how many characters of `key`, from its first, are written at `text[start:]` in any of
    their forms, where that run ends). `low`: `text.lower()`, for %XX and \\uXXXX in either
    case of hex digit."""
    i, n = start, 0
    while n < len(key):
        for enc in _encodings(key[n]):
            hay = low if len(enc) > 2 else text  # escapes compare without case
            if hay.startswith(enc if hay is text else enc.lower(), i):
                i += len(enc)
                break
        else:
            break
        n += 1
    return n, i


def redact(text: str, keys: Sequence[str]) -> str:
    """`text` with every key replaced by `***`, whichever way it is written back (as is,
    JSON-escaped, URL-encoded, or any mix: see `_encodings`), and with every run of at least
    `MIN_SECRET_PREFIX` of a key's first characters (a key cut short by a provider's or our own
    truncation). A key shorter than that is redacted whole only."""
    keys = [k for k in keys if k]
    if not keys:
        return text
    low = text.lower()
    out, i, p = [], 0, 0
    while p < len(text):
        end = -1
        for key in keys:
            n, e = _key_run(text, low, p, key)
            if n >= min(MIN_SECRET_PREFIX, len(key)) and e > end:
                end = e
        if end > p:
            out += [text[i:p], "***"]
            i = p = end
        else:
            p += 1
    return "".join(out) + text[i:]


def _short(text: str) -> str:
    return " ".join(text.split())[:200]
