"""The consumers stage's sections of the configuration: `[kafka]`, `[sampling]`, `[formats]`
and `[prices]`, with their checks, and the small checks every stage's sections share.

Each type is frozen and read by `shadowroute.config`, which loads the TOML, applies the
`SHADOWROUTE_*` overrides and assembles the sections; nothing here knows of the others.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from consumers.errors import ConfigError


def check_at_least(key: str, value: float, low: float) -> None:
    if not value >= low:  # also refuses NaN
        raise ConfigError(key, f"must be at least {low:g}, got {value}")


def check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be greater than 0, got {value}")


def check_rate(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(key, f"must be between 0 and 1, got {value}")


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        quoted = [f"'{c}'" for c in choices]
        one_of = " or ".join(quoted) if len(quoted) <= 2 else ", ".join(quoted[:-1]) + f" or {quoted[-1]}"
        raise ConfigError(key, f"must be {one_of}, got {value!r}")


def secret_from_env(env_name: str) -> str | None:
    """The value of a secret's variable (an API key, a SASL password); read when it is used,
    never stored in config or logs."""
    return os.environ.get(env_name) if env_name else None


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list of the Kafka cluster holding the production LLM logs."""
    topics: tuple[str, ...] = ("llm-logs",)
    """Topics to consume."""
    group_id: str = "shadowroute"
    """Consumer group; lag is visible to ordinary Kafka tooling under this name."""
    auto_offset_reset: str = "earliest"
    """Where a partition with no stored offset starts: `earliest` or `latest`; also where a stored
    offset that retention removed from the log (before its start) goes on (the records lost are
    counted in `offset_resets`)."""
    reset_past_end: str = "earliest"
    """Where a stored offset past the partition's high water goes on (the broker restarted empty
    or the topic was re-created): `earliest` (the default: every record there is new) or
    `latest`. Either way the reset is logged, counted and recorded in `offset_resets`."""
    session_timeout_ms: int = 10000
    """Consumer group session timeout (real Kafka requires >= 6000). After a kill -9 the dead
    member holds its partitions until this runs out (unless `group_instance_id` is set): a
    shorter one resumes sooner, a longer one survives longer pauses (GC, a slow disk) without a
    rebalance."""
    group_instance_id: str = ""
    """Static group membership (KIP-345): a restarted service with the same id takes its
    partitions back without waiting out the dead member's session. One unique id per running
    instance (two with the same id fence each other). Empty: dynamic membership. See
    docs/architecture.md for the measured rejoin times."""
    max_batch_records: int = 2000
    """Most records decoded and persisted in one DuckDB transaction."""
    poll_timeout_ms: int = 500
    """How long one fetch waits for records before an empty batch."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str = "PLAIN"
    """SASL mechanism when a SASL protocol is used."""
    sasl_username_env: str = ""
    """Name of the environment variable holding the SASL username."""
    sasl_password_env: str = ""
    """Name of the environment variable holding the SASL password."""
    dead_letter_topic: str = ""
    """When set, every rejected record is also produced to this topic, whole (value, key and
    headers), with headers `shadowroute-reason` and `shadowroute-source` (`topic/partition/offset`).
    It is in the `rejected` table either way."""


@dataclass(frozen=True)
class SamplingConfig:
    default_rate: float = 0.05
    """Share of eligible requests in a stratum that is replayed in shadow."""
    stratify_tag: str = "feature"
    """Tag that, with the frontier model, forms the strata (stratum = `model|tag value`)."""
    rates: Mapping[str, float] = field(default_factory=dict)
    """Rate per stratum: keys `model|tag`, `model|*` or `*|tag`; the most specific wins."""
    salt: str = "shadowroute"
    """Mixed into the hash of the request id, so two deployments can draw different samples."""


@dataclass(frozen=True)
class Price:
    input: float = 0.0
    """USD per 1M input tokens."""
    cached_input: float = -1.0
    """USD per 1M cached input tokens (negative: same as input)."""
    output: float = 0.0
    """USD per 1M output tokens."""


@dataclass(frozen=True)
class MappingConfig:
    """Where the fields of an in-house JSON log format are. Each field except `model` is an
    optional field path: keys separated by dots, a number indexes a list (`choices.0.text`),
    `$headers.<name>` reads a Kafka message header and `$key` the message key."""

    model: str
    """Path of the model name (required), e.g. `llm.model`."""
    request_id: str = ""
    """Path of the request id, e.g. `$headers.x-request-id` (none: `topic:partition:offset`)."""
    ts: str = ""
    """Path of the request time: epoch seconds, milliseconds or ISO-8601 (none: the message's)."""
    provider: str = ""
    """Path of the provider name."""
    default_provider: str = "unknown"
    """Provider when the record names none."""
    messages: str = ""
    """Path of the chat message list (`[{role, content}]`). Set this or `prompt`."""
    prompt: str = ""
    """Path of the prompt as a plain string (a single user message). Set this or `messages`."""
    system: str = ""
    """Path of the system prompt as a plain string (with `prompt`)."""
    response_text: str = ""
    """Path of the answer text."""
    finish_reason: str = ""
    """Path of the finish reason."""
    input_tokens: str = ""
    """Path of the input (prompt) token count."""
    output_tokens: str = ""
    """Path of the output (completion) token count."""
    cached_input_tokens: str = ""
    """Path of the cached input token count."""
    cost_usd: str = ""
    """Path of the cost in USD (none: priced from [prices])."""
    latency_ms: str = ""
    """Path of the latency, in `latency_unit`."""
    latency_unit: str = "ms"
    """Unit of the latency field: `ms` or `s`."""
    status: str = ""
    """Path of the status; the call succeeded when its value is in `ok_values` (none: it
    succeeded unless `error` is set)."""
    ok_values: tuple[str, ...] = ("ok", "success", "succeeded", "200", "true")
    """Status values (compared ignoring case) that mean the call succeeded."""
    error: str = ""
    """Path of the error message."""
    params: str = ""
    """Path of an object of request parameters (temperature, max_tokens, ..., tools)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tag name -> path of its value, e.g. {feature = "meta.feature"}."""


@dataclass(frozen=True)
class FormatsConfig:
    by_topic: Mapping[str, str] = field(default_factory=dict)
    """Topic -> format: `auto` (detected per message, the default for unlisted topics),
    `openai_chat`, `litellm`, `openai_batch`, `otlp_json`, `otlp_proto`, or a mapping's name."""
    mappings: Mapping[str, MappingConfig] = field(default_factory=dict)
    """In-house JSON formats by name, described by field paths ([formats.mappings.<name>])."""
    otlp_join_window_s: float = 60.0
    """How long an OTel span without message content waits for its content as OTLP log records
    (GenAI events, e.g. from an `otlp_logs` topic), and content for its span; 0 joins nothing
    (such spans are stored at once, not replayable)."""
    otlp_join_max_pending: int = 50_000
    """At most this many spans and contents wait (held in memory and in DuckDB); past it the
    oldest are let go early."""


def check_kafka(k: KafkaConfig, key: str = "kafka") -> None:
    check_choice(f"{key}.auto_offset_reset", k.auto_offset_reset, ("earliest", "latest"))
    check_choice(f"{key}.reset_past_end", k.reset_past_end, ("earliest", "latest"))
    if not k.topics:
        raise ConfigError(f"{key}.topics", "must name at least one topic")
    check_positive(f"{key}.max_batch_records", k.max_batch_records)
    check_positive(f"{key}.poll_timeout_ms", k.poll_timeout_ms)
    if k.dead_letter_topic in k.topics:
        raise ConfigError(f"{key}.dead_letter_topic",
                          f"must not be one of kafka.topics (got {k.dead_letter_topic!r}): "
                          "rejected records would be read again")


def check_sampling(s: SamplingConfig, key: str = "sampling") -> None:
    check_rate(f"{key}.default_rate", s.default_rate)
    for k, v in s.rates.items():
        if "|" not in k:
            raise ConfigError(f"{key}.rates.{k}", "key must be 'model|tag', 'model|*' or '*|tag'")
        check_rate(f"{key}.rates.{k}", v)


def check_prices(prices: Mapping[str, Price], key: str = "prices") -> None:
    for model, p in prices.items():
        for name in ("input", "output"):
            check_at_least(f"{key}.{model}.{name}", getattr(p, name), 0)
        if math.isnan(p.cached_input):
            raise ConfigError(f"{key}.{model}.cached_input", "must be a number, got nan")
