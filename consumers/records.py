"""The canonical shapes that flow out of the consumers: raw messages in, requests or rejections out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from consumers.errors import DecodeError

__all__ = ["Decoded", "DecodeError", "OffsetReset", "RawMessage", "Request", "SpanContent"]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One record as read from a source (a Kafka message, a line of a file)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(slots=True)
class Request:
    """One production LLM call, decoded from whatever format the log used."""

    request_id: str
    ts_ms: int
    format: str
    provider: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    response_text: str | None
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    cost_usd: float | None
    cost_source: str | None
    latency_ms: float | None
    status: str
    error: str | None
    tags: dict[str, str] = field(default_factory=dict)
    # Set when the log lacks what a replay needs (no message content, tools, ...).
    not_replayable: str | None = None
    # The dated snapshot that answered (`gpt-4o-2024-08-06`) when the log names it apart from
    # the requested `model`: strata and prices go by the model asked for, whoever served it.
    served_model: str | None = None
    # An OTel span that carried no message content: it may come in log records (`SpanContent`).
    awaits_content: bool = False
    # Set when the log says it could not price the call (its cost field is then None, not 0).
    cost_unknown: str | None = None
    # `orjson.dumps(messages)` when the decoder already made it (to check they can be stored),
    # so ingest does not serialize them again; None otherwise.
    messages_json: bytes | None = None


class SpanContent(NamedTuple):
    """Message content logged apart from its span (OTel GenAI events as OTLP log records), to be
    joined to the span's request by `key` (= its request id, `{traceId}:{spanId}`)."""

    key: str
    # (time in ns, event name, the event's fields), in the order they were written.
    events: tuple[tuple[int, str, dict[str, Any]], ...]


class Decoded(NamedTuple):
    """What one record held: its LLM calls, how many other items it held that are not LLM
    calls (e.g. non-GenAI spans in an OTLP message), counted rather than rejected, and content
    that belongs to spans of other records."""

    requests: list[Request]
    skipped: int = 0
    content: tuple[SpanContent, ...] = ()


@dataclass(frozen=True, slots=True)
class OffsetReset:
    """A stored position found outside its partition's range (a broker or topic reset, or
    retention), and where reading goes on. Recorded in `offset_resets`."""

    topic: str
    partition: int
    stored: int
    log_start: int | None
    high_water: int | None
    kind: str  # past_end | before_start | replaced
    policy: str  # earliest | latest
    new_offset: int | None
    lost: int = 0  # records removed before they were read (before_start)

    def describe(self) -> str:
        span = f"[{'?' if self.log_start is None else self.log_start}, " \
               f"{'?' if self.high_water is None else self.high_water})"
        lost = f", {self.lost} records lost to retention" if self.lost else ""
        where = {"past_end": "is past the end of the log",
                 "before_start": "is before the start of the log",
                 "replaced": "follows another record than the one read there, in the log"}
        return (f"{self.topic}[{self.partition}]: stored offset {self.stored} {where[self.kind]} "
                f"{span} (broker or topic reset); reading goes on from {self.policy} "
                f"(offset {'?' if self.new_offset is None else self.new_offset}){lost}")
