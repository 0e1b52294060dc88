"""Calls to cheap models through an OpenAI-compatible `/chat/completions` endpoint.

`ModelClient.complete` never raises for a failed call: it returns a `CallResult` whose `error`
says what went wrong (status, timeout, malformed body), so a failing endpoint cannot stall or
crash the pipeline. Transient failures (429, 5xx, timeouts, connection errors) are retried with
exponential backoff and jitter, honouring `Retry-After`. The API key is read from the
environment at call time and never appears in results, errors or logs.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from shadowroute.config import ModelConfig, secret_from_env

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REPLAY_PARAMS = ("temperature", "top_p", "response_format", "stop", "seed",
                 "presence_penalty", "frequency_penalty")


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


def replay_body(model: ModelConfig, messages: list[dict[str, Any]], params: dict[str, Any]
                ) -> dict[str, Any]:
    """The production request, as faithfully as the cheap model allows: same messages and
    sampling parameters, `max_tokens` capped, never streamed."""
    body: dict[str, Any] = {"model": model.model or model.name, "messages": messages}
    for k in REPLAY_PARAMS:
        if params.get(k) is not None:
            body[k] = params[k]
    asked = params.get("max_tokens") or params.get("max_completion_tokens")
    body["max_tokens"] = min(int(asked), model.max_tokens) if asked else model.max_tokens
    return body


def cost_of(model: ModelConfig, inp: int, cached: int, out: int) -> float:
    return (max(inp - cached, 0) * model.input_per_mtok + cached * model.cached_input_per_mtok
            + out * model.output_per_mtok) / 1e6


class ModelClient:
    def __init__(self, cfg: ModelConfig, http: httpx.AsyncClient, *, retries: int = 2,
                 backoff_s: float = 0.5, max_backoff_s: float = 20.0) -> None:
        self.cfg = cfg
        self.http = http
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        key = secret_from_env(self.cfg.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def complete(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> CallResult:
        body = orjson.dumps(replay_body(self.cfg, messages, params))
        headers = {"Content-Type": "application/json", **self._headers()}
        start = time.perf_counter()
        error = "not attempted"
        attempt = 0
        while attempt <= self.retries:
            attempt += 1
            delay: float | None = None
            try:
                resp = await self.http.post(self.url, content=body, headers=headers,
                                            timeout=self.cfg.timeout_s)
            except httpx.TimeoutException:
                error = f"timeout after {self.cfg.timeout_s:g}s"
            except httpx.TransportError as e:
                error = f"connection error: {type(e).__name__}"
            else:
                if resp.status_code == 200:
                    return self._parse(resp.content, start, attempt)
                error = f"HTTP {resp.status_code}: {_short(resp.text)}"
                if resp.status_code not in RETRY_STATUS:
                    break
                delay = _retry_after(resp.headers.get("retry-after"))
            if attempt > self.retries:
                break
            if delay is None:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random()  # jitter: callers that failed together spread out
            await asyncio.sleep(min(delay, self.max_backoff_s))
        key = secret_from_env(self.cfg.api_key_env)
        if key:  # some providers echo the key they were given in their error text
            error = error.replace(key, "***")
        return CallResult(self.cfg.name, None, None, None, None, None,
                          (time.perf_counter() - start) * 1000, error, attempt)

    def _parse(self, content: bytes, start: float, attempts: int) -> CallResult:
        latency = (time.perf_counter() - start) * 1000
        try:
            data = orjson.loads(content)
            msg = data["choices"][0]["message"]
            answer = msg.get("content") or ""
            if not isinstance(answer, str):
                raise TypeError("content is not a string")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as e:
            return CallResult(self.cfg.name, None, None, None, None, None, latency,
                              f"malformed response body: {type(e).__name__}", attempts)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        inp = _int(usage.get("prompt_tokens"))
        out = _int(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        if inp is None or out is None:
            # No usage reported: estimate ~4 characters a token so the cost is not silently zero.
            inp = inp if inp is not None else 0
            out = out if out is not None else max(1, len(answer) // 4)
        return CallResult(self.cfg.name, answer, inp, cached or 0, out,
                          cost_of(self.cfg, inp, cached or 0, out), latency, None, attempts)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else None


def _retry_after(v: str | None) -> float | None:
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None


def _short(text: str) -> str:
    return " ".join(text.split())[:200]
