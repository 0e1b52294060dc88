"""`openai_batch`: lines of OpenAI Batch API files.

An input line (what was submitted) and an output line (what came back) share `custom_id`::

    {"custom_id": "task-7", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o", "messages": [...], "max_tokens": 256}}

    {"id": "batch_req_...", "custom_id": "task-7", "error": null,
     "response": {"status_code": 200, "request_id": "req_...", "body": {<chat completion>}}}

- An output line alone (as it usually reaches Kafka) is counted traffic with tokens and status,
  but has no messages: its request is marked not replayable.
- An input line alone is not an LLM call yet: it is counted as skipped.
- An output line with only an error (the request never ran: expired or cancelled batch) and no
  input line to name its model is counted as skipped; joined with its input it is a failed call.
- A joined line, the union of both lines' keys (they share only `custom_id`), is a whole request.
  `join_batch_files` makes them from the two files, for replay.

`/v1/chat/completions`, `/v1/completions` and `/v1/responses` results become requests;
embeddings are counted as skipped. The Batch API bills at a discount the price table does not
know: records carry no cost, so they are priced at the table's (list) prices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import orjson

from consumers.formats.common import (
    PARAM_KEYS,
    Count,
    NonEmpty,
    SamplingParams,
    TextChoice,
    Usage,
    UsageDetails,
    convert_as,
    decode_json_as,
    message_text,
    normalize_messages,
    parse_ts_ms,
    storable,
    tool_params,
    whole,
)
from consumers.formats.litellm import decode_each, is_many, validation_reason
from consumers.records import Decoded, DecodeError, RawMessage, Request

FORMAT = "openai_batch"


class _Usage(Usage, gc=False):
    """`prompt_tokens` and `completion_tokens`: chat and text completions."""

    input_tokens: Count | None = None  # Responses API
    output_tokens: Count | None = None
    input_tokens_details: UsageDetails | None = None


class _ApiError(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None
    type: str | None = None


class _Body(msgspec.Struct):
    """A chat completion, text completion or Responses object, or an error body."""

    object: str | None = None
    model: str | None = None
    created: float | None = None
    created_at: float | None = None
    choices: list[TextChoice] | None = None
    output: list[Any] | None = None
    status: str | None = None
    usage: _Usage | None = None
    error: _ApiError | None = None


class _BatchResponse(msgspec.Struct):
    status_code: int
    request_id: str | None = None
    body: _Body | None = None


class _InputBody(SamplingParams, gc=False):
    model: str | None = None
    messages: list[Any] | None = None
    input: str | list[Any] | None = None  # Responses API (and embeddings)
    instructions: str | None = None
    prompt: str | list[Any] | None = None  # text completions
    max_output_tokens: Count | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None


class _Line(msgspec.Struct):
    custom_id: NonEmpty
    id: str | None = None
    response: _BatchResponse | None = None
    error: _ApiError | None = None
    method: str | None = None
    url: str | None = None
    body: _InputBody | None = None


_decoder = msgspec.json.Decoder(_Line)


def decode(value: bytes, msg: RawMessage) -> Decoded:
    """One line, or several (a JSON array, or JSONL as read from a file)."""
    if is_many(value):
        return decode_each(value, msg, decode_obj)
    line = decode_json_as(_decoder, value, validation_reason)
    return _from_line(line, msg)


def decode_obj(obj: Any, msg: RawMessage) -> Decoded:
    if not isinstance(obj, dict):
        raise DecodeError(f"an OpenAI Batch line must be a JSON object, got {type(obj).__name__}")
    line = convert_as(obj, _Line, validation_reason)
    return _from_line(line, msg)


def _from_line(line: _Line, msg: RawMessage) -> Decoded:
    cid = line.custom_id
    resp = line.response
    if resp is None and line.error is None:
        if line.body is not None:
            return Decoded([], skipped=1)  # an input line: submitted, not yet a call
        raise DecodeError(f"OpenAI Batch line (custom_id {cid!r:.60}) has neither a body (input "
                          f"line) nor a response or error (output line)")
    body = resp.body if resp is not None else None
    inp = line.body
    if (line.url or "").endswith("/embeddings") or (body is not None and body.object == "list"):
        return Decoded([], skipped=1)  # embeddings: not a generation

    model = (body.model if body is not None else None) or (inp.model if inp is not None else None)
    if not model and resp is None:
        # Never executed (`batch_expired`, `batch_cancelled`) and no input line to name the model.
        return Decoded([], skipped=1)
    if not model:
        raise DecodeError("missing field response.body.model (and no input body with a model)")

    status = "ok"
    error = None
    if line.error is not None or resp is None or not 200 <= resp.status_code < 300:
        status = "error"
        error = _error_text(line, resp)

    text = finish = None
    usage = body.usage if body is not None else None
    if body is not None:
        if body.choices:
            c0 = body.choices[0]
            if c0.message is not None:
                text = message_text(c0.message.content) or None
            elif c0.text:
                text = c0.text
            finish = c0.finish_reason
        elif body.output:
            text = _output_text(body.output) or None
            finish = body.status

    inp_tokens = out_tokens = cached = None
    if usage is not None:
        w = "response.body.usage."
        inp_tokens = whole(_first(usage.prompt_tokens, usage.input_tokens), w + "prompt_tokens")
        out_tokens = whole(_first(usage.completion_tokens, usage.output_tokens),
                           w + "completion_tokens")
        details = usage.prompt_tokens_details or usage.input_tokens_details
        if details is not None:
            cached = whole(details.cached_tokens, w + "prompt_tokens_details.cached_tokens")

    if inp is not None:
        messages = _input_messages(inp)
        not_replayable = None if messages else f"OpenAI Batch input line (custom_id {cid}) has no messages"
    else:
        messages = []
        not_replayable = f"OpenAI Batch output without its input line (custom_id {cid})"

    created = body.created if body is not None and body.created is not None else (
        body.created_at if body is not None else None)
    try:
        ts_ms = parse_ts_ms(created, msg.timestamp_ms)
    except DecodeError as e:
        raise DecodeError(str(e).replace("field ts", "field response.body.created", 1)) from None

    rid = line.id or (resp.request_id if resp is not None else None) or cid
    return Decoded([Request(
        request_id=rid,
        ts_ms=ts_ms,
        format=FORMAT,
        provider="openai",
        model=model,
        messages=messages,
        params=_params(inp),
        response_text=text,
        finish_reason=finish,
        input_tokens=inp_tokens,
        output_tokens=out_tokens,
        cached_input_tokens=cached,
        cost_usd=None,
        cost_source=None,
        latency_ms=None,
        status=status,
        error=error,
        tags={"custom_id": cid},
        not_replayable=not_replayable,
    )])


def _first(a: int | float | None, b: int | float | None) -> int | float | None:
    return a if a is not None else b


def _error_text(line: _Line, resp: _BatchResponse | None) -> str:
    err = line.error
    if err is None and resp is not None and resp.body is not None:
        err = resp.body.error
    head = f"HTTP {resp.status_code}" if resp is not None else "batch request failed"
    if err is None:
        return head
    code = f" {err.code}" if err.code not in (None, "") else ""
    return f"{head}{code}: {err.message}" if err.message else f"{head}{code}"


def _output_text(output: list[Any]) -> str:
    """The text of a Responses API `output`: its message items' `output_text` parts."""
    parts: list[str] = []
    for item in output:
        if isinstance(item, dict) and item.get("type") == "message":
            parts.append(message_text(item.get("content")))
    return "".join(parts)


def _input_messages(inp: _InputBody) -> list[dict[str, Any]]:
    if inp.messages is not None:
        return normalize_messages(storable(inp.messages, "body.messages"), "body.")
    system = [{"role": "system", "content": inp.instructions}] if inp.instructions else []
    if isinstance(inp.input, str):  # Responses API
        return [*system, {"role": "user", "content": inp.input}]
    if isinstance(inp.input, list) and inp.input:
        items = [m for m in inp.input if not (isinstance(m, dict) and m.get("type") not in
                                              (None, "message"))]
        return [*system, *normalize_messages(storable(items, "body.input"), "body.input.")
                ] if items else []
    if isinstance(inp.prompt, str):  # text completions
        return [{"role": "user", "content": inp.prompt}]
    return []


def _params(inp: _InputBody | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if inp is not None:
        for k in PARAM_KEYS:
            v = getattr(inp, k)
            if v is not None:
                params[k] = v
        if inp.response_format is not None:
            storable(inp.response_format, "body.response_format")
        if inp.max_output_tokens is not None and "max_tokens" not in params:
            params["max_tokens"] = inp.max_output_tokens
    params["stream"] = False  # the Batch API does not stream
    if inp is not None:
        tool_params(params, inp.tools, inp.functions, inp.tool_choice, inp.function_call, "body.")
    else:
        params["tools"] = False
    return params


def join_batch_files(input_lines: Iterable[bytes], output_lines: Iterable[bytes]) -> Iterator[bytes]:
    """Join an OpenAI Batch input file to its output file by `custom_id`, for replay.

    Both arguments are the files' lines as bytes (e.g. `open(path, "rb")`); blank lines are
    ignored. Yields one JSON record per line, each decoded by this format (auto-detected by its
    `custom_id`):

    - for each output line, in output order, the union of its keys and its input line's: a
      whole request (messages, parameters, answer, usage). An output line whose input is missing
      is yielded as it is (a request marked not replayable);
    - then every input line no output line answered (an expired or cancelled batch), as it is:
      counted as skipped;
    - lines that are not JSON objects with a string `custom_id` are yielded as they are, so the
      decoder rejects them with a reason and nothing is silently dropped.

    The input file is held in memory, indexed by `custom_id`, as raw bytes (output lines come in
    any order). The output file is streamed.
    """
    inputs: dict[str, bytes] = {}
    stray: list[bytes] = []
    for raw in input_lines:
        line = raw.strip()
        if not line:
            continue
        cid = _custom_id(line)
        if cid is None or cid in inputs:
            stray.append(line)
        else:
            inputs[cid] = line
    for raw in output_lines:
        line = raw.strip()
        if not line:
            continue
        try:
            out = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield line
            continue
        cid = out.get("custom_id") if isinstance(out, dict) else None
        matched = inputs.pop(cid, None) if isinstance(cid, str) else None
        if matched is None:
            yield line
            continue
        joined = orjson.loads(matched)
        joined.update(out)
        yield orjson.dumps(joined)
    yield from inputs.values()
    yield from stray


def _custom_id(line: bytes) -> str | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    cid = obj.get("custom_id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) else None
