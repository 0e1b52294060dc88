"""Generated calls as LiteLLM proxy logs: the `StandardLoggingPayload` its `generic_api` callback
sends (with `log_format: single`; a JSON array or NDJSON of these is a batch of them).

The payload has every field LiteLLM writes for a chat completion through the proxy, with the
values a real one holds: the virtual key's metadata, the model map, hidden params, timing with
time-to-first-token, the full `ModelResponse`, and for failures `error_str` and
`error_information` with zero tokens and cost. Everything is derived from the call (ids from a
hash of its request id), so a call is always encoded the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from shadowroute.demo.calls import Call

API_BASE = "https://api.openai.com/v1"
TEAMS = ("search", "support", "growth", "platform")


def _hex(seed: str, n: int) -> str:
    return hashlib.blake2b(seed.encode(), digest_size=n).hexdigest()


def _uuid(seed: str) -> str:
    h = _hex(seed, 16)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def encode_litellm(call: Call, failed: bool = False) -> bytes:
    """One StandardLoggingPayload as JSON bytes: `id` is the call's request id, `request_tags`
    hold its tags as `key:value`, the cost is in `response_cost`."""
    rid = call.request_id
    h = int(_hex(rid, 4), 16)
    team = TEAMS[h % len(TEAMS)]
    tenant = call.tags.get("tenant", "t0")
    start = call.ts
    latency_s = call.latency_ms / 1000
    end = round(start + latency_s, 6)
    ttft = round(start + min(latency_s, 0.12 + (h % 200) / 1000), 6)
    created = int(start)
    model_id = _hex(f"deployment:{call.model}", 32)
    key_hash = _hex(f"key:{team}", 32)
    inp = 0 if failed else call.input_tokens
    out = 0 if failed else call.output_tokens
    cached = 0 if failed else call.cached_input_tokens
    cost = 0.0 if failed else call.cost_usd
    usage = {
        "completion_tokens": out, "prompt_tokens": inp, "total_tokens": inp + out,
        "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                                      "reasoning_tokens": 0, "rejected_prediction_tokens": 0},
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": cached},
    }
    response: dict[str, Any] | None = None
    if not failed:
        response = {
            "id": f"chatcmpl-{_hex(rid, 14)}", "created": created, "model": f"{call.model}-2024-08-06",
            "object": "chat.completion", "system_fingerprint": f"fp_{_hex(call.model, 5)}",
            "choices": [{"finish_reason": "stop", "index": 0,
                         "message": {"content": call.task.answer, "role": "assistant",
                                     "tool_calls": None, "function_call": None,
                                     "annotations": []}}],
            "usage": usage, "service_tier": "default",
        }
    error_message = ("litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached "
                     f"for {call.model} in organization org-shadow on tokens per min (TPM): "
                     "Limit 30000000, Used 29998211, Requested 1893. Please try again in 180ms.")
    payload: dict[str, Any] = {
        "id": rid,
        "trace_id": _uuid(f"trace:{rid}"),
        "call_type": "acompletion",
        "stream": False,
        "response_cost": cost,
        "cost_breakdown": None if failed else {
            "input_cost": cost * inp / max(inp + 4 * out, 1), "output_cost": cost * 4 * out / max(
                inp + 4 * out, 1), "total_cost": cost, "tool_usage_cost": 0.0},
        "response_cost_failure_debug_info": None,
        "status": "failure" if failed else "success",
        "status_fields": {"llm_api_status": "failure" if failed else "success",
                          "guardrail_status": "not_run"},
        "custom_llm_provider": "openai",
        "total_tokens": inp + out,
        "prompt_tokens": inp,
        "completion_tokens": out,
        "startTime": start,
        "endTime": end,
        "completionStartTime": end if failed else ttft,
        "response_time": round(end - start, 6),
        "model_map_information": {"model_map_key": call.model, "model_map_value": None},
        "model": call.model,
        "model_id": model_id,
        "model_group": call.model,
        "api_base": f"{API_BASE}/chat/completions",
        "metadata": {
            "user_api_key_hash": key_hash,
            "user_api_key_alias": f"{team}-prod",
            "user_api_key_org_id": None,
            "user_api_key_team_id": _uuid(f"team:{team}"),
            "user_api_key_user_id": None,
            "user_api_key_team_alias": team,
            "user_api_key_user_email": None,
            "user_api_key_end_user_id": f"{tenant}-user-{h % 97}",
            "user_api_key_request_route": "/chat/completions",
            "spend_logs_metadata": {"app": call.tags["app"]} if "app" in call.tags else None,
            "requester_ip_address": "10.0.3.17",
            "requester_metadata": {},
            "requester_custom_headers": {},
            "prompt_management_metadata": None,
            "mcp_tool_call_metadata": None,
            "vector_store_request_metadata": None,
            "applied_guardrails": [],
            "usage_object": None if failed else usage,
            "cold_storage_object_key": None,
        },
        "cache_hit": False,
        "cache_key": None,
        "saved_cache_cost": 0.0,
        "request_tags": [f"{k}:{v}" for k, v in call.tags.items()],
        "end_user": f"{tenant}-user-{h % 97}",
        "requester_ip_address": "10.0.3.17",
        "messages": call.messages,
        "response": response,
        "error_str": error_message if failed else None,
        "error_information": {
            "error_code": "429" if failed else "", "error_class": "RateLimitError" if failed else "",
            "llm_provider": "openai" if failed else "",
            "traceback": "Traceback (most recent call last):\n  ...\nopenai.RateLimitError: "
                         "Error code: 429" if failed else "",
            "error_message": error_message if failed else ""},
        "model_parameters": {"temperature": 0, "max_tokens": 512, "user": f"{tenant}-user-{h % 97}"},
        "hidden_params": {
            "model_id": model_id, "cache_key": None, "api_base": API_BASE,
            "response_cost": None if failed else str(cost),
            "additional_headers": {"x_ratelimit_limit_requests": 10000,
                                   "x_ratelimit_remaining_requests": 9999 - h % 50,
                                   "x_ratelimit_limit_tokens": 30000000,
                                   "x_ratelimit_remaining_tokens": 29990000 - h % 5000},
            "litellm_model_name": f"openai/{call.model}",
            "batch_models": None,
        },
        "guardrail_information": None,
        "standard_built_in_tools_params": {"web_search_options": None, "file_search": None},
    }
    return orjson.dumps(payload)
