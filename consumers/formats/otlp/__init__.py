"""`otlp_proto` and `otlp_json`: OpenTelemetry GenAI spans, as the OpenTelemetry Collector's Kafka
exporter writes them (encoding `otlp_proto`, its default, or `otlp_json`).

One message is one `ExportTraceServiceRequest` (on the wire the same as `TracesData`):
``resourceSpans[] -> scopeSpans[] -> spans[]``. Each span that is one model call becomes one
`Request`; every other span (HTTP, database, tool and agent spans) is counted in `Decoded.skipped`.

Which spans are model calls
    A span with `gen_ai.operation.name` is one, unless the operation is not a single model call:
    `execute_tool`, `invoke_agent`, `create_agent` and `embeddings` are skipped (an agent span
    would count its model calls a second time; an embedding cannot be replayed on a chat model).
    Spans from instrumentations older than that attribute are model calls when they have
    `gen_ai.system`, `gen_ai.provider.name` or `gen_ai.request.model`.

Attributes, current semantic conventions first, older names after
    model            gen_ai.request.model, else gen_ai.response.model (one of them required)
    served model     gen_ai.response.model (the dated snapshot that answered)
    provider         gen_ai.provider.name | gen_ai.system ("unknown" without either)
    tokens           gen_ai.usage.input_tokens | prompt_tokens, output_tokens | completion_tokens,
                     gen_ai.usage.cache_read.input_tokens (counts, range-checked)
    prompt           gen_ai.system_instructions + gen_ai.input.messages (JSON string or structured
                     value, messages of `parts`) | gen_ai.prompt (JSON or plain text) |
                     gen_ai.prompt.N.role/.content | events gen_ai.{system,user,assistant,tool}.message
                     (attribute `content` or `body`) and gen_ai.content.prompt
    answer           gen_ai.output.messages | gen_ai.completion | gen_ai.completion.N.content |
                     events gen_ai.choice (`message` or `content`) and gen_ai.content.completion
    finish reason    gen_ai.response.finish_reasons, else the answer's own
    parameters       gen_ai.request.temperature, top_p, max_tokens, seed, stop_sequences,
                     frequency_penalty, presence_penalty, choice.count
    cost             gen_ai.usage.cost if present, else None (the ingest prices it)
    status           span status code 2 (or an `error.type` on an unset status) is an error, with
                     the status message (or the error type)
    request id       `{traceId}:{spanId}` in hex; time from the start (the Kafka timestamp if
                     the span has none), latency = end - start
    tags             resource `service.name` -> `service`, `deployment.environment[.name]` ->
                     `environment`; resource and span attributes `app.*` / `tag.*`, prefix stripped

Bad input
    A `Decoded` holds no per-span rejections, so a message is all or nothing: if any model-call span
    cannot become a valid request, the whole message is rejected with a reason that names the span
    (its index among all spans of the message, from 0, and its ids), e.g. ``span 3 (trace
    4bf92f3577b34da6a3ce929d0e0e4736, span 00f067aa0ba902b7): missing field gen_ai.request.model``.
    A message that holds no span at all is rejected too, so that every message is accounted for.
    Bytes that are no OTLP protobuf export at all raise `NotOtlpProtobuf` (a `DecodeError`), so
    auto-detection can tell them from an export with a bad span. An unexpected exception becomes a
    rejection that says it is a decoder bug, never a crash of the ingest.
    Message *content* is different: it is needed only to replay, and a call without it is still
    real traffic (it counts in the strata sizes and the cost), so content that is missing,
    truncated (an attribute length limit cuts JSON) or malformed marks the request
    `not_replayable` with the reason instead of rejecting it.

OTLP/JSON is read as the OTLP spec writes it (hex ids, `intValue` as a string, enums as numbers)
and, leniently, as protobuf's generic JSON mapping writes it (base64 ids, enum names). It is
parsed and type-checked in one pass by msgspec; protobuf's own `json_format.Parse` is ~25 times
slower. Either way most of the time goes to the Python walk over the attributes (an OTLP span
keeps them as a list of key/value objects), so keys are classified once per set of keys (`_Plan`)
and only the values of model-call spans, and of the resource's tag attributes, are converted.
"""

from __future__ import annotations

from consumers.formats.otlp.conventions import NO_CONTENT, NOT_CALLS, join_content
from consumers.formats.otlp.proto import NotOtlpProtobuf, decode_proto, not_protobuf
from consumers.formats.otlp.wire_json import decode_json, decode_json_obj

__all__ = ["NOT_CALLS", "NO_CONTENT", "NotOtlpProtobuf", "decode_json", "decode_json_obj",
           "decode_proto", "join_content", "not_protobuf"]
