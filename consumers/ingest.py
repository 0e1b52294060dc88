"""Batch ingest: raw messages -> decoded requests, rejections and samples, as column batches.

`Ingestor.process` does no I/O: it turns one batch of `RawMessage` into an `IngestBatch` of
polars frames plus the next offset per partition; a sink persists all of it in one transaction.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import polars as pl

from consumers.config import FormatsConfig, Price, SamplingConfig
from consumers.formats import Decoders, message_text
from consumers.formats.mapping import build_mapping_formats
from consumers.join import JOIN_ROW_FIELDS, Origin, SpanJoin
from consumers.records import Decoded, DecodeError, RawMessage, Request, SpanContent
from consumers.sampling import Sampler, stratum_of

log = logging.getLogger("shadowroute.ingest")


class RecordLimits(Protocol):
    @property
    def max_record_bytes(self) -> int: ...
    @property
    def max_raw_bytes(self) -> int: ...


class ScorerChoice(Protocol):
    """Which scorer a sample gets, from its tags (the shadow stage's `[scoring]`)."""

    @property
    def tag(self) -> str: ...
    @property
    def default(self) -> str: ...
    @property
    def by_tag(self) -> Mapping[str, str]: ...


class ToolReplay(Protocol):
    @property
    def replay_tools(self) -> bool: ...


class IngestConfig(Protocol):
    """What ingest reads of the assembled configuration (`shadowroute.config.Config` is one):
    its own sections, and the few keys of other stages' sections that decide what a sample
    row holds."""

    @property
    def sampling(self) -> SamplingConfig: ...
    @property
    def formats(self) -> FormatsConfig: ...
    @property
    def prices(self) -> Mapping[str, Price]: ...
    @property
    def storage(self) -> RecordLimits: ...
    @property
    def scoring(self) -> ScorerChoice: ...
    @property
    def shadow(self) -> ToolReplay: ...

REQUESTS_SCHEMA: dict[str, Any] = {
    "request_id": pl.Utf8, "ts": pl.Datetime("ms"), "topic": pl.Utf8, "partition": pl.Int32,
    "offset": pl.Int64, "format": pl.Utf8, "provider": pl.Utf8, "model": pl.Utf8,
    "input_tokens": pl.Int64, "output_tokens": pl.Int64, "cached_input_tokens": pl.Int64,
    "cost_usd": pl.Float64, "cost_source": pl.Utf8, "latency_ms": pl.Float64,
    "status": pl.Utf8, "error": pl.Utf8, "tags": pl.Utf8, "prompt_hash": pl.Utf8,
    "prompt_chars": pl.Int64, "stratum": pl.Utf8, "eligible": pl.Boolean,
    "ineligible_reason": pl.Utf8, "sampled": pl.Boolean, "sample_rate": pl.Float64,
    "served_model": pl.Utf8,
}
SAMPLES_SCHEMA: dict[str, Any] = {
    "sample_id": pl.Utf8, "stratum": pl.Utf8, "frontier_model": pl.Utf8, "messages": pl.Utf8,
    "params": pl.Utf8, "tags": pl.Utf8, "response_text": pl.Utf8, "frontier_cost_usd": pl.Float64,
    "input_tokens": pl.Int64, "output_tokens": pl.Int64, "scorer": pl.Utf8,
}
MAX_REASON_CHARS = 300
_RELEASE_DATE = re.compile(r"[-@](\d{4}-\d{2}-\d{2}|\d{8})$")
SKIPPED_SCHEMA: dict[str, Any] = {
    "topic": pl.Utf8, "partition": pl.Int32, "offset": pl.Int64, "reason": pl.Utf8, "items": pl.Int64,
}
# Changes to `otlp_pending` (`consumers.join`): rows held, and keys let go.
JOIN_SCHEMA: dict[str, Any] = dict(zip(JOIN_ROW_FIELDS, (
    pl.Utf8, pl.Utf8, pl.Int64, pl.Utf8, pl.Utf8, pl.Int32, pl.Int64, pl.Int64, pl.Utf8),
    strict=True))
NOT_JOINED = "GenAI log events not joined (formats.otlp_join_window_s = 0)"
REJECTED_SCHEMA: dict[str, Any] = {
    "topic": pl.Utf8, "partition": pl.Int32, "offset": pl.Int64, "reason": pl.Utf8,
    "raw": pl.Binary, "raw_size": pl.Int64,
}


@dataclass
class IngestBatch:
    requests: pl.DataFrame
    samples: pl.DataFrame
    rejected: pl.DataFrame
    # (topic, partition) -> next offset to read, i.e. last processed offset + 1.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # Items inside records that are counted, not stored: non-LLM spans, repeated request ids.
    skipped: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SKIPPED_SCHEMA))
    # (topic, partition) -> (timestamp ms, CRC-32 of the value) of the last record read: stored
    # with the offset, so a log replaced under it is seen (`consumers.kafka_source`).
    marks: dict[tuple[str, int], tuple[int | None, int]] = field(default_factory=dict)
    # Spans and content held for, or let go by, the OTel join: `otlp_pending` rows.
    otlp_join: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=JOIN_SCHEMA))

    @property
    def empty(self) -> bool:
        return not self.offsets


def frontier_cost(price: Price, inp: int | None, cached: int | None, out: int | None) -> float | None:
    if inp is None and out is None:
        return None
    cached = cached or 0
    cached_price = price.input if price.cached_input < 0 else price.cached_input
    return (max((inp or 0) - cached, 0) * price.input + cached * cached_price
            + (out or 0) * price.output) / 1e6


def prompt_text(messages: Sequence[dict[str, Any]]) -> str:
    return "\n".join(message_text(m.get("content")) for m in messages)


def prompt_chars(messages: Sequence[dict[str, Any]]) -> int:
    """`len(prompt_text(messages))`, without building the text."""
    if not messages:
        return 0
    n = len(messages) - 1
    for m in messages:
        c = m.get("content")
        n += len(c) if type(c) is str else len(message_text(c))  # str: most contents
    return n


INCOMPLETE_PROMPT = "prompt content incomplete"


def incomplete_prompt(messages: Sequence[dict[str, Any]]) -> bool:
    """A message with an empty or dropped part: instrumentations drop what they cannot log
    (image parts become `parts: []`), and replaying the rest asks another question."""
    for m in messages:
        c = m.get("content")
        if type(c) is str:
            if c or m.get("tool_calls") or m.get("role") == "tool":
                continue
            return True
        if c is None:
            # An assistant turn that only called tools; a tool's empty result is a result.
            if m.get("tool_calls") or m.get("function_call") or m.get("role") == "tool":
                continue
            return True
        if type(c) is list:
            if not c:
                return True
            for p in c:
                if type(p) is dict and p.get("type", "text") == "text" and not p.get("text"):
                    return True
    return False


_EMPTY: dict[tuple[tuple[str, Any], ...], pl.DataFrame] = {}


def frame(rows: list[tuple[Any, ...]], schema: dict[str, Any]) -> pl.DataFrame:
    """Rows -> a frame, built as one typed series per column: half the time of a dict of
    columns with a schema, a third of `orient="row"`. An empty frame is cleared from one made
    once per schema (making one from a schema takes 70-300 µs, clearing 2 µs)."""
    if not rows:
        key = tuple(schema.items())
        empty = _EMPTY.get(key)
        if empty is None:
            empty = _EMPTY[key] = pl.DataFrame(schema=schema)
        return empty.clear()
    return pl.DataFrame([pl.Series(name, col, dtype=dtype) for (name, dtype), col in
                         zip(schema.items(), zip(*rows, strict=True), strict=True)])


class Ingestor:
    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        self.sampler = Sampler(cfg.sampling.default_rate, cfg.sampling.rates, cfg.sampling.salt)
        self.tag = cfg.sampling.stratify_tag
        self.score_tag = cfg.scoring.tag or cfg.sampling.stratify_tag
        self.prices: Mapping[str, Price] = cfg.prices
        self._prices_seen: dict[str, Price | None] = {}
        self.max_bytes = cfg.storage.max_record_bytes
        self.max_raw = cfg.storage.max_raw_bytes
        self.decoders = Decoders(cfg.formats.by_topic, extra=build_mapping_formats(cfg.formats))
        fc = cfg.formats
        self.join = (SpanJoin(fc.otlp_join_window_s, fc.otlp_join_max_pending)
                     if fc.otlp_join_window_s > 0 else None)

    def restore(self, pending: Sequence[tuple[Any, ...]]) -> None:
        """What the OTel join held when the last run stopped (`otlp_pending_rows`). With the
        join turned off since, the held spans are stored by the next batch."""
        if not pending:
            return
        if self.join is None:
            self.join = SpanJoin(0.0, self.cfg.formats.otlp_join_max_pending)
        self.join.restore(pending)

    @property
    def holding(self) -> int:
        """Spans and contents waiting in the OTel join."""
        return self.join.holding if self.join is not None else 0

    def due(self) -> bool:
        """Whether `process([])` would let something go (the join window passed for a span
        or content): a source with no new records calls it so waiting spans still end."""
        return self.join is not None and self.join.due(int(time.time() * 1000))

    def decode(self, msg: RawMessage) -> Decoded:
        """Decode one message or raise `DecodeError` with the reason."""
        value = msg.value
        if value is None:
            raise DecodeError("empty message (null value)")
        if len(value) > self.max_bytes:
            raise DecodeError(f"message of {len(value):,} bytes exceeds "
                              f"storage.max_record_bytes ({self.max_bytes:,})")
        return self.decoders.decode(value, msg)

    def process(self, msgs: Sequence[RawMessage], *, now_ms: int | None = None,
                flush_held: bool = False) -> IngestBatch:
        """`flush_held`: let every span waiting for content go (a finite source has ended)."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        req_rows: list[tuple[Any, ...]] = []
        sample_rows: list[tuple[Any, ...]] = []
        rej_rows: list[tuple[Any, ...]] = []
        offsets: dict[tuple[str, int], int] = {}
        skip_rows: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for msg in msgs:
            tp = (msg.topic, msg.partition)
            offsets[tp] = max(offsets.get(tp, -1), msg.offset + 1)
            try:
                decoded = self.decode(msg)
                rows: dict[str, tuple[tuple[Any, ...], tuple[Any, ...] | None]] = {}
                dups = 0
                waiting: list[Request] = []
                for r in decoded.requests:
                    if r.request_id in seen or r.request_id in rows:
                        dups += 1  # the same id twice in one batch is stored once
                        continue
                    if r.awaits_content and self.join is not None:
                        waiting.append(r)  # joined below, once the whole record is accepted
                        continue
                    rows[r.request_id] = self._rows(r, msg)
            except DecodeError as e:
                rej_rows.append(self._rejection(msg, str(e)))
                continue
            # orjson reads 1024 levels of nesting but writes only 254: a record in between
            # decodes, then fails in `_rows`.
            except (RecursionError, orjson.JSONEncodeError):
                rej_rows.append(self._rejection(msg, "JSON nested too deeply"))
                continue
            except Exception as e:  # a decoder bug must cost one record, never the pipeline
                log.exception("decoder failed on %s", msg.where)
                rej_rows.append(self._rejection(msg, f"decoder error: {type(e).__name__}: {e}"))
                continue
            if decoded.skipped:
                skip_rows.append((msg.topic, msg.partition, msg.offset, "not an LLM call",
                                  decoded.skipped))
            if dups:
                skip_rows.append((msg.topic, msg.partition, msg.offset, "duplicate request id", dups))
            for rid, (row, sample) in rows.items():
                seen.add(rid)
                req_rows.append(row)
                if sample is not None:
                    sample_rows.append(sample)
            if waiting or decoded.content:
                joined = self._join(msg, waiting, decoded.content, now, skip_rows)
                self._add_joined(joined, seen, req_rows, sample_rows)
        join_rows: list[tuple[Any, ...]] = []
        if self.join is not None:
            ready, expired = self.join.expire(now, everything=flush_held)
            self._add_joined(ready, seen, req_rows, sample_rows)
            skip_rows += expired
            join_rows = self.join.rows()
        return IngestBatch(
            requests=frame(req_rows, REQUESTS_SCHEMA),
            samples=frame(sample_rows, SAMPLES_SCHEMA),
            rejected=frame(rej_rows, REJECTED_SCHEMA),
            offsets=offsets,
            skipped=frame(skip_rows, SKIPPED_SCHEMA),
            otlp_join=frame(join_rows, JOIN_SCHEMA),
        )

    def _join(self, msg: RawMessage, waiting: list[Request], content: Sequence[SpanContent],
              now: int, skip_rows: list[tuple[Any, ...]]) -> list[tuple[Request, Origin]]:
        origin = (msg.topic, msg.partition, msg.offset)
        if self.join is None:  # content with nothing to join it to: counted
            n = sum(len(c.events) for c in content)
            skip_rows.append((*origin, NOT_JOINED, n))
            return []
        ready: list[tuple[Request, Origin]] = []
        for r in waiting:
            ready += self.join.span(r, origin, now)
        for c in content:
            ready += self.join.content(c, origin, now)
        return ready

    def _add_joined(self, joined: list[tuple[Request, Origin]], seen: set[str],
                    req_rows: list[tuple[Any, ...]], sample_rows: list[tuple[Any, ...]]) -> None:
        for r, (topic, partition, offset) in joined:
            if r.request_id in seen:
                continue
            where = RawMessage(topic, partition, offset, None)
            try:
                row, sample = self._rows(r, where)
            except (RecursionError, orjson.JSONEncodeError):
                # Content from log records too deep to write: the call still counts.
                r.messages, r.not_replayable = [], "message content nested too deeply"
                r.messages_json = None
                row, sample = self._rows(r, where)
            seen.add(r.request_id)
            req_rows.append(row)
            if sample is not None:
                sample_rows.append(sample)

    def _rejection(self, msg: RawMessage, reason: str) -> tuple[Any, ...]:
        raw = msg.value or b""
        if len(reason) > MAX_REASON_CHARS:  # a reason quotes values; keep it a readable line
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        return (msg.topic, msg.partition, msg.offset, reason, raw[: self.max_raw], len(raw))

    def _rows(self, r: Request, msg: RawMessage) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        if r.cost_usd is None and (price := self.price_for(r.model)) is not None:
            r.cost_usd = frontier_cost(price, r.input_tokens, r.cached_input_tokens,
                                       r.output_tokens)
            r.cost_source = "price_table" if r.cost_usd is not None else None
        # The decoder's own serialization when it made one (checking the messages can be
        # stored): the same bytes, written once.
        messages_json = r.messages_json if r.messages_json is not None else orjson.dumps(r.messages)
        prompt_hash = hashlib.blake2b(messages_json, digest_size=12).hexdigest()
        stratum = stratum_of(r.model, r.tags.get(self.tag))
        reason = self._ineligible(r)
        # An ineligible request is never sampled: its id is not hashed.
        sampled, rate = (self.sampler.decide(r.request_id, stratum) if reason is None
                         else (False, self.sampler.rate(stratum)))
        tags_json = orjson.dumps(r.tags).decode()
        row = (r.request_id, r.ts_ms, msg.topic, msg.partition, msg.offset, r.format, r.provider,
               r.model, r.input_tokens, r.output_tokens, r.cached_input_tokens, r.cost_usd,
               r.cost_source, r.latency_ms, r.status, r.error, tags_json, prompt_hash,
               prompt_chars(r.messages), stratum, reason is None, reason, sampled, rate,
               r.served_model)
        sample = None
        if sampled:
            scorer = self.cfg.scoring.by_tag.get(r.tags.get(self.score_tag, ""),
                                                 self.cfg.scoring.default)
            # Only when sampled: every decoder checks that the nested parameters it keeps
            # (tools, response_format, a mapping's params) can be written (`storable`), so
            # whether a record is accepted does not depend on sampling.
            sample = (r.request_id, stratum, r.model, messages_json.decode(),
                      orjson.dumps(r.params).decode(), tags_json, r.response_text, r.cost_usd,
                      r.input_tokens, r.output_tokens, scorer)
        return row, sample

    def price_for(self, model: str) -> Price | None:
        """The `[prices]` entry of `model`: by its name, else without a provider prefix
        (`openai/gpt-4o`) or a release date (`gpt-4o-2024-08-06`, `claude-3-5-haiku-20241022`):
        responses name the dated snapshot that served them, price tables the model."""
        if model in self._prices_seen:
            return self._prices_seen[model]
        base = model.rsplit("/", 1)[-1]
        price = (self.prices.get(model) or self.prices.get(base)
                 or self.prices.get(_RELEASE_DATE.sub("", base)))
        if len(self._prices_seen) < 100_000:  # model names are few; a flood of odd ones is not
            self._prices_seen[model] = price
        return price

    def _ineligible(self, r: Request) -> str | None:
        """Why a request cannot be replayed and compared, or None if it can."""
        if r.status != "ok":
            return "production call failed: no reference answer"
        if r.not_replayable:
            return r.not_replayable
        if incomplete_prompt(r.messages):
            return INCOMPLETE_PROMPT
        if not r.response_text:
            return "no frontier answer text in the log"
        if r.params.get("tools") and not self.cfg.shadow.replay_tools:
            return "request offered tools (shadow.replay_tools = false)"
        if r.cost_usd is None:
            if (r.input_tokens is None and r.output_tokens is None
                    and self.price_for(r.model) is not None):
                # Priced, but nothing to price: a streamed call logs usage only when asked to.
                return ("no token counts in the log to price the call with [prices] (a streamed "
                        "call has them only with stream_options.include_usage)")
            if r.cost_unknown:
                return f"unknown cost: {r.cost_unknown}, and no price for model {r.model!r} in [prices]"
            return f"no cost in the log and no price for model {r.model!r} in [prices]"
        return None
