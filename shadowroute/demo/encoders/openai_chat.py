"""Generated calls as the service's plain format: one OpenAI chat completion request and
response per record."""

from __future__ import annotations

from typing import Any

import orjson

from shadowroute.demo.calls import Call


def encode_openai_chat(c: Call, failed: bool = False) -> bytes:
    rec: dict[str, Any] = {
        "request_id": c.request_id, "ts": c.ts, "provider": "openai",
        "request": {"model": c.model, "messages": c.messages, "temperature": 0, "max_tokens": 512},
        "latency_ms": c.latency_ms, "tags": c.tags,
    }
    if failed:
        rec["status"] = "error"
        rec["error"] = "RateLimitError: 429 Too Many Requests"
    else:
        rec["response"] = {
            "id": f"chatcmpl-{c.request_id}", "object": "chat.completion", "model": c.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": c.task.answer}}],
            "usage": {"prompt_tokens": c.input_tokens, "completion_tokens": c.output_tokens,
                      "total_tokens": c.input_tokens + c.output_tokens,
                      "prompt_tokens_details": {"cached_tokens": c.cached_input_tokens}}}
        rec["cost_usd"] = c.cost_usd
    return orjson.dumps(rec)
