"""The one configuration object.

Read from a TOML file, then overridden by environment variables named
``SHADOWROUTE_<SECTION>__<KEY>`` (``__`` separates levels, a number indexes a list of tables:
``SHADOWROUTE_SHADOW__MODELS__0__BASE_URL``). An environment value is read as a TOML value
when it parses as one (``0.2``, ``true``, ``["a", "b"]``), otherwise as a plain string.

API keys are never configuration values: a model names the *environment variable* that holds its
key (``api_key_env``) and the key is read from the environment only when a call is made.

Every mistake raises `ConfigError` naming the key, e.g.
``sampling.default_rate: must be between 0 and 1, got 1.5``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowroute.errors import ConfigError

ENV_PREFIX = "SHADOWROUTE_"
# Variables of the command line, not config keys (SHADOWROUTE_CONFIG names the config file).
ENV_NOT_KEYS = {"SHADOWROUTE_CONFIG"}


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
class StorageConfig:
    db_path: str = "shadowroute.duckdb"
    """DuckDB file that holds every table. Only the service writes it while it runs."""
    max_raw_bytes: int = 4096
    """How many bytes of a rejected record are kept in `rejected.raw`."""
    max_record_bytes: int = 1_048_576
    """Records larger than this are rejected without being parsed."""
    writer: str = "process"
    """Where the service runs DuckDB: `process` (a child process that owns the file, so DuckDB
    never holds up the event loop; the default) or `thread` (a thread of the service's own
    process: one process fewer, but every call in flight waits while DuckDB holds the GIL)."""
    threads: int = 0
    """DuckDB's worker threads in the service. 0: one fewer than the machine's cores (at least
    one), so a write or a long `/v1/sql` query never takes every core from the event loop."""
    memory_limit: str = "512MB"
    """DuckDB's memory limit in the service's store (e.g. `256MB`, `2GB`; empty: DuckDB's
    default, 80% of RAM). DuckDB keeps the blocks it read or wrote cached up to this limit, so
    the store process grows towards it under steady load and stays there; larger queries spill
    to a temporary directory beside the file."""


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


MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
# DuckDB size literals; checked, since `SET memory_limit` takes no bound parameter.
MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


@dataclass(frozen=True)
class DeploymentConfig:
    """One endpoint serving a model. A field left unset takes the model's value, so a model with
    two keys for the same URL needs only `deployments = [{api_key_env = "K1"}, {api_key_env = "K2"}]`."""

    base_url: str = ""
    """OpenAI-compatible base URL (empty: the model's `base_url`)."""
    name: str = ""
    """Label in metrics and logs (empty: `<model name>#<index>`)."""
    model: str = ""
    """Model name sent in the request body (empty: the model's `model`, else its `name`)."""
    api_key_env: str = ""
    """Name of the environment variable holding this deployment's key (empty: the model's)."""
    api_key_header: str = ""
    """Header that carries the key (empty: the model's; `Authorization` sends `Bearer <key>`)."""
    rpm: int = -1
    """Requests per minute allowed (0: no limit; -1: the model's `rpm`)."""
    tpm: int = -1
    """Tokens per minute allowed (0: no limit; -1: the model's `tpm`)."""
    max_concurrency: int = -1
    """Most calls in flight at this deployment (0: no limit of its own; -1: the model's)."""
    timeout_s: float = 0.0
    """Timeout of one attempt (0: the model's `timeout_s`)."""
    max_tokens: int = 0
    """Cap on `max_tokens` sent (0: the model's `max_tokens`)."""
    max_tokens_field: str = ""
    """Body field the cap is sent in (empty: the model's `max_tokens_field`)."""
    input_per_mtok: float = -1.0
    """USD per 1M input tokens (negative: the model's)."""
    cached_input_per_mtok: float = -1.0
    """USD per 1M cached input tokens (negative: the model's)."""
    output_per_mtok: float = -1.0
    """USD per 1M output tokens (negative: the model's)."""
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    """Headers sent with every call, over the model's `extra_headers` (not for keys: those only
    come from `api_key_env`)."""
    ca_bundle: str = ""
    """PEM file of the CAs trusted for this endpoint's HTTPS (empty: the model's)."""


@dataclass(frozen=True)
class ModelConfig:
    """A cheap model: a group of one or more deployments serving it. Without `deployments` the
    model is one deployment built from its own fields (the original, single-endpoint form)."""

    name: str
    """Name used in tables and reports."""
    base_url: str = ""
    """OpenAI-compatible base URL, e.g. `https://api.openai.com/v1` (`/chat/completions` is added).
    Required unless every deployment has its own."""
    model: str = ""
    """Model name sent in the request body (defaults to `name`)."""
    api_key_env: str = ""
    """Name of the environment variable holding the API key (empty: no key is sent)."""
    api_key_header: str = "Authorization"
    """Header that carries the key: `Authorization` sends `Bearer <key>`, any other header
    (e.g. Azure's `api-key`) the key itself."""
    input_per_mtok: float = 0.0
    """USD per 1M input tokens."""
    cached_input_per_mtok: float = 0.0
    """USD per 1M cached input tokens."""
    output_per_mtok: float = 0.0
    """USD per 1M output tokens."""
    timeout_s: float = 60.0
    """Timeout of one attempt of one call."""
    max_tokens: int = 1024
    """Cap on `max_tokens` sent to the cheap model (the budget reserves this many output tokens)."""
    max_tokens_field: str = "max_tokens"
    """Body field the cap is sent in: `max_tokens`, or `max_completion_tokens` for models that
    refuse `max_tokens` (OpenAI's o-series reasoning models)."""
    rpm: int = 0
    """Requests per minute allowed per deployment (0: no limit)."""
    tpm: int = 0
    """Tokens per minute allowed per deployment, prompt + max_tokens estimated before the call
    and corrected from `usage` after (0: no limit)."""
    max_concurrency: int = 0
    """Most calls in flight per deployment (0: only `shadow.concurrency` bounds it)."""
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    """Headers sent with every call (not for keys: those only come from `api_key_env`)."""
    ca_bundle: str = ""
    """PEM file of the CAs trusted for this model's HTTPS endpoints, instead of the default ones
    (empty: `SSL_CERT_FILE`/`SSL_CERT_DIR` when set, else certifi's or the system's)."""
    deployments: tuple[DeploymentConfig, ...] = ()
    """Endpoints serving this model; calls go to the least busy healthy one and fall back to the
    others when one fails (empty: one deployment from the fields above)."""

    def resolved_deployments(self) -> tuple[DeploymentConfig, ...]:
        """Every deployment with each unset field filled from the model."""
        specs = self.deployments or (DeploymentConfig(),)
        out = []
        for i, d in enumerate(specs):
            out.append(DeploymentConfig(
                base_url=d.base_url or self.base_url,
                name=d.name or f"{self.name}#{i}",
                model=d.model or self.model or self.name,
                api_key_env=d.api_key_env or self.api_key_env,
                api_key_header=d.api_key_header or self.api_key_header,
                rpm=self.rpm if d.rpm < 0 else d.rpm,
                tpm=self.tpm if d.tpm < 0 else d.tpm,
                max_concurrency=self.max_concurrency if d.max_concurrency < 0 else d.max_concurrency,
                timeout_s=d.timeout_s or self.timeout_s,
                max_tokens=d.max_tokens or self.max_tokens,
                max_tokens_field=d.max_tokens_field or self.max_tokens_field,
                input_per_mtok=self.input_per_mtok if d.input_per_mtok < 0 else d.input_per_mtok,
                cached_input_per_mtok=(self.cached_input_per_mtok if d.cached_input_per_mtok < 0
                                       else d.cached_input_per_mtok),
                output_per_mtok=self.output_per_mtok if d.output_per_mtok < 0 else d.output_per_mtok,
                extra_headers=types.MappingProxyType({**self.extra_headers, **d.extra_headers}),
                ca_bundle=d.ca_bundle or self.ca_bundle,
            ))
        return tuple(out)


@dataclass(frozen=True)
class BudgetConfig:
    usd_per_hour: float = math.inf
    """Hard cap on shadow spend over any sliding hour, all models together (`inf`: no cap;
    0: only free models are called)."""
    usd_per_day: float = math.inf
    """Hard cap on shadow spend over any sliding 24 hours (`inf`: no cap; 0: only free models)."""


@dataclass(frozen=True)
class ShadowConfig:
    concurrency: int = 8
    """Most shadow calls in flight at once, over all models."""
    models: tuple[ModelConfig, ...] = ()
    """The cheap candidate models every sampled request is replayed through."""
    replay_tools: bool = False
    """Replay requests that offered tools (their answers are rarely comparable as text); when
    false such samples end `skipped_tools`."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """Hard spend caps: every call reserves its worst-case cost before it starts."""
    max_retries: int = 2
    """Retries of one call after a 429, 5xx, timeout, dropped connection or malformed answer."""
    backoff_s: float = 0.5
    """First retry delay; doubles each retry, with jitter (a `Retry-After` answer wins)."""
    max_backoff_s: float = 20.0
    """Longest delay between two attempts."""
    allowed_fails: int = 3
    """Consecutive failures after which a deployment goes on cooldown."""
    cooldown_s: float = 60.0
    """Longest a deployment that is down gets no calls; then one probe call decides."""
    first_probe_s: float = 2.0
    """The first probe of a deployment that went down comes this soon; each failed probe
    doubles the wait, up to `cooldown_s`."""
    max_wait_s: float = 300.0
    """Longest a call waits for a deployment of its model (cooldown, rate limit, concurrency)
    before it is given up as unavailable; once every deployment of a model has been down this
    long, its calls are given up at once (samples end `skipped_unavailable`)."""
    reuse_window_s: float = 0.0
    """Identical replays (same model, messages and parameters) within this many seconds reuse
    the first answer instead of paying again (0: never reuse)."""
    max_queue: int = 10000
    """Most samples waiting for shadow work; beyond it the newest are shed (`skipped_shed`)."""
    stop_grace_s: float = 8.0
    """On SIGTERM/SIGINT, how long the shadow calls in flight may take to finish (their results
    are written); then the rest are cancelled, their samples stay pending for the next start and
    their attempts are recorded at worst-case cost in `shadow_attempts`. Keep it below the
    supervisor's kill timeout (Docker: 10 s)."""
    http_client: str = "aiohttp"
    """HTTP client of the shadow calls: `aiohttp` (the one kept: see docs/architecture.md).
    Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY`."""
    max_response_bytes: int = 4 * 1024 * 1024
    """Largest answer body read (after decompression); a bigger one fails the call, charged as
    sent and not retried."""


@dataclass(frozen=True)
class RouterConfig:
    name: str
    """Name used in `router_scores` and the savings view."""
    kind: str = "rules"
    """Registered router kind: `random` or `rules`."""
    seed: int = 0
    """`random`: seed mixed with the request id (scores are reproducible)."""
    long_prompt_chars: int = 2000
    """`rules`: prompt length (characters) at which the length part of the score is full."""
    strong_keywords: tuple[str, ...] = ()
    """`rules`: words that push a request to the strong model (case-insensitive)."""
    weak_keywords: tuple[str, ...] = ()
    """`rules`: words that mark an easy request."""
    force_strong_keywords: tuple[str, ...] = ()
    """`rules`: any of these in the prompt forces the strong model (score 1)."""
    force_strong_tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """`rules`: tag -> values that force the strong model, e.g. {tenant = ["acme"]}."""
    force_strong_models: tuple[str, ...] = ()
    """`rules`: frontier models whose traffic is never routed away."""


@dataclass(frozen=True)
class ScoringConfig:
    default: str = "exact_match"
    """Scorer for samples whose tag has no entry in `by_tag`."""
    tag: str = ""
    """Tag whose value picks the scorer (defaults to `sampling.stratify_tag`)."""
    by_tag: Mapping[str, str] = field(default_factory=dict)
    """Tag value -> scorer name, e.g. {math = "final_number"}; `auto` picks per sample from
    the frontier answer; `json_match:a.b,c` compares only those JSON paths."""
    open_ended: str = "token_f1"
    """What `auto` uses for an open-ended frontier answer (`token_f1`, `rouge_l`, `contains`,
    `tfidf_cosine`)."""
    refit_s: float = 600.0
    """`tfidf_cosine`: how often its vectorizers are fitted again on stored frontier answers
    (sooner while none is fitted yet)."""
    tfidf_min_docs: int = 20
    """`tfidf_cosine`: frontier answers a segment needs for a vectorizer of its own."""
    tfidf_max_docs: int = 5000
    """`tfidf_cosine`: the newest answers per segment it is fitted on."""


@dataclass(frozen=True)
class Price:
    input: float = 0.0
    """USD per 1M input tokens."""
    cached_input: float = -1.0
    """USD per 1M cached input tokens (negative: same as input)."""
    output: float = 0.0
    """USD per 1M output tokens."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address of /healthz, /metrics, /v1/verdict and /v1/sql. Loopback unless you mean it."""
    port: int = 8787
    """Port of the local HTTP API (0: pick a free one)."""
    host_names: tuple[str, ...] = ()
    """Host names (and addresses) the API answers to besides 127.0.0.1, localhost, [::1] and the
    bind address: any other Host header is refused (a DNS-rebinding guard). E.g. the name a
    reverse proxy or a Kubernetes Service is reached by."""
    token_env: str = ""
    """Name of the environment variable holding the API's bearer token (never the token
    itself). Required when `host` is not a loopback address; optional on loopback."""
    sql_timeout_s: float = 30.0
    """A query on /v1/sql is interrupted after this long."""
    sql_max_rows: int = 10_000
    """At most this many rows of a /v1/sql answer (it says `truncated` when there were more)."""
    sql_max_bytes: int = 16 << 20
    """About this many bytes of values at most in a /v1/sql answer (then `truncated` too)."""
    max_body_bytes: int = 1_048_576
    """Largest request body the API reads."""


MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def api_token(server: ServerConfig) -> str | None:
    """The API's bearer token from the variable `server.token_env` names (None: no token).
    ConfigError when a token is needed (a non-loopback `host`) or named but missing or short."""
    if not server.token_env:
        if is_loopback(server.host):
            return None
        raise ConfigError("server.token_env",
                          f"server.host {server.host!r} is not loopback: name the environment "
                          "variable holding the API token (e.g. token_env = \"SHADOWROUTE_API_TOKEN\")")
    token = os.environ.get(server.token_env, "")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError("server.token_env",
                          f"environment variable {server.token_env} must hold the API token "
                          f"(at least {MIN_TOKEN_CHARS} characters), "
                          f"{'got a shorter one' if token else 'it is not set'}")
    return token


@dataclass(frozen=True)
class GateConfig:
    min_quality: float = 0.95
    """Default lower bound on quality relative to the frontier model."""
    min_samples: int = 200
    """Default number of scored samples below which the verdict is `inconclusive`."""
    confidence: float = 0.95
    """One-sided confidence of the quality bound the gate compares."""
    min_segment_samples: int = 100
    """A segment (tag value) with at least this many scored samples fails the gate when its
    quality upper bound is below its bar."""
    segment_min_quality: Mapping[str, float] = field(default_factory=dict)
    """Per-segment quality bars (`{"legal" = 0.99}`; `model|tag` when segmenting by model
    too); other segments use the global bar."""


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


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    routers: tuple[RouterConfig, ...] = (
        RouterConfig(name="random", kind="random"),
    )
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    prices: Mapping[str, Price] = field(default_factory=dict)
    """Frontier model -> price, used when a log record carries no cost. A dated snapshot or a
    provider-prefixed name takes its model's price (`Ingestor.price_for`)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    formats: FormatsConfig = field(default_factory=FormatsConfig)
    """Log format per topic, and in-house formats described by field paths."""

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (optional), apply `SHADOWROUTE_*` overrides from `env`, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("", f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("", f"config file {p} is not valid TOML: {e}") from None
    _apply_env(raw, os.environ if env is None else env)
    cfg = _build(Config, raw, "")
    _validate(cfg)
    return cfg


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        value = _parse_env_value(env[name])
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt_is_index = parts[i + 1].isdigit()
            node = _child(node, part, [] if nxt_is_index else {}, name)
        last = parts[-1]
        if isinstance(node, list):
            idx = int(last)
            while len(node) <= idx:
                node.append({})
            node[idx] = value
        else:
            node[last] = value


def _child(node: Any, part: str, empty: Any, env_name: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit():
            raise ConfigError(env_name, f"'{part}' must be a list index")
        idx = int(part)
        while len(node) <= idx:
            node.append({})
        return node[idx]
    if part not in node or not isinstance(node[part], (dict, list)):
        node[part] = empty
    return node[part]


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"must be a table, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(_join(prefix, key), f"unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "is required")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {_kind(value)}")
        return value
    if origin is tuple:
        if isinstance(value, str) and args[0] is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {_kind(value)}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {_kind(value)}")
        return types.MappingProxyType(
            {str(k): _convert(args[1], v, _join(key, str(k))) for k, v in value.items()})
    raise ConfigError(key, f"unsupported type {tp}")  # a bug in this module, not user input


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _validate(cfg: Config) -> None:
    def rate(key: str, v: float) -> None:
        if not 0.0 <= v <= 1.0:
            raise ConfigError(key, f"must be between 0 and 1, got {v}")

    def positive(key: str, v: float) -> None:
        if v <= 0:
            raise ConfigError(key, f"must be greater than 0, got {v}")

    rate("sampling.default_rate", cfg.sampling.default_rate)
    for k, v in cfg.sampling.rates.items():
        if "|" not in k:
            raise ConfigError(f"sampling.rates.{k}", "key must be 'model|tag', 'model|*' or '*|tag'")
        rate(f"sampling.rates.{k}", v)
    if cfg.kafka.auto_offset_reset not in ("earliest", "latest"):
        raise ConfigError("kafka.auto_offset_reset",
                          f"must be 'earliest' or 'latest', got {cfg.kafka.auto_offset_reset!r}")
    if cfg.kafka.reset_past_end not in ("earliest", "latest"):
        raise ConfigError("kafka.reset_past_end",
                          f"must be 'earliest' or 'latest', got {cfg.kafka.reset_past_end!r}")
    if not cfg.kafka.topics:
        raise ConfigError("kafka.topics", "must name at least one topic")
    positive("kafka.max_batch_records", cfg.kafka.max_batch_records)
    if cfg.storage.memory_limit and not MEMORY_LIMIT.fullmatch(cfg.storage.memory_limit):
        raise ConfigError("storage.memory_limit", "must be a size like '512MB' or '2GB' (or empty "
                          f"for DuckDB's default), got {cfg.storage.memory_limit!r}")
    if cfg.shadow.stop_grace_s < 0:
        raise ConfigError("shadow.stop_grace_s", f"must be 0 or more, got {cfg.shadow.stop_grace_s}")
    positive("kafka.poll_timeout_ms", cfg.kafka.poll_timeout_ms)
    if cfg.kafka.dead_letter_topic in cfg.kafka.topics:
        raise ConfigError("kafka.dead_letter_topic",
                          f"must not be one of kafka.topics (got {cfg.kafka.dead_letter_topic!r}): "
                          "rejected records would be read again")
    positive("storage.max_record_bytes", cfg.storage.max_record_bytes)
    if cfg.storage.writer not in ("process", "thread"):
        raise ConfigError("storage.writer",
                          f"must be 'process' or 'thread', got {cfg.storage.writer!r}")
    if cfg.storage.threads < 0:
        raise ConfigError("storage.threads",
                          f"must be 0 (one fewer than the cores) or more, got {cfg.storage.threads}")

    positive("shadow.concurrency", cfg.shadow.concurrency)
    if not 0 <= cfg.server.port <= 65535:
        raise ConfigError("server.port", f"must be 0..65535, got {cfg.server.port}")
    positive("server.sql_timeout_s", cfg.server.sql_timeout_s)
    positive("server.sql_max_rows", cfg.server.sql_max_rows)
    positive("server.sql_max_bytes", cfg.server.sql_max_bytes)
    positive("server.max_body_bytes", cfg.server.max_body_bytes)
    _validate_shadow(cfg.shadow)
    from shadow.routers import ROUTER_KINDS  # late: routers import config types
    from shadow.scorers import OPEN_ENDED, known
    from shadow.scorers import names as scorer_names

    names: set[str] = set()
    for i, r in enumerate(cfg.routers):
        if r.kind not in ROUTER_KINDS:
            raise ConfigError(f"routers[{i}].kind",
                              f"unknown router kind {r.kind!r}; known: {', '.join(sorted(ROUTER_KINDS))}")
        if r.name in names or r.name in ("all_cheap", "oracle"):
            raise ConfigError(f"routers[{i}].name", f"name {r.name!r} is taken")
        names.add(r.name)
    for key, scorer in [("scoring.default", cfg.scoring.default),
                        *((f"scoring.by_tag.{k}", v) for k, v in cfg.scoring.by_tag.items())]:
        if not known(scorer):
            raise ConfigError(key, f"unknown scorer {scorer!r}; known: "
                                   f"{', '.join(scorer_names())}, json_match:<paths>")
    if cfg.scoring.open_ended not in OPEN_ENDED:
        raise ConfigError("scoring.open_ended", f"must be one of {', '.join(OPEN_ENDED)}, got "
                                                f"{cfg.scoring.open_ended!r}")
    rate("gate.min_quality", cfg.gate.min_quality)
    if not 0.5 <= cfg.gate.confidence < 1.0:
        raise ConfigError("gate.confidence", f"must be in [0.5, 1), got {cfg.gate.confidence}")
    _validate_formats(cfg.formats)


def _validate_shadow(sh: ShadowConfig) -> None:
    def at_least(key: str, v: float, low: float) -> None:
        if not v >= low:  # also refuses NaN
            raise ConfigError(key, f"must be at least {low:g}, got {v}")

    at_least("shadow.budget.usd_per_hour", sh.budget.usd_per_hour, 0)
    at_least("shadow.budget.usd_per_day", sh.budget.usd_per_day, 0)
    at_least("shadow.max_retries", sh.max_retries, 0)
    at_least("shadow.backoff_s", sh.backoff_s, 0)
    at_least("shadow.max_backoff_s", sh.max_backoff_s, 0)
    at_least("shadow.allowed_fails", sh.allowed_fails, 1)
    at_least("shadow.cooldown_s", sh.cooldown_s, 0)
    at_least("shadow.first_probe_s", sh.first_probe_s, 0)
    at_least("shadow.max_wait_s", sh.max_wait_s, 0)
    at_least("shadow.reuse_window_s", sh.reuse_window_s, 0)
    if sh.http_client != "aiohttp":
        raise ConfigError("shadow.http_client", f"must be 'aiohttp' (the built-in client and "
                          f"httpx were retired), got {sh.http_client!r}")
    at_least("shadow.max_response_bytes", sh.max_response_bytes, 1024)
    if sh.max_queue < 2 * sh.concurrency:
        raise ConfigError("shadow.max_queue", f"must be at least 2 x shadow.concurrency "
                          f"({2 * sh.concurrency}, the samples in flight), got {sh.max_queue}")
    seen: set[str] = set()
    for i, m in enumerate(sh.models):
        key = f"shadow.models[{i}]"
        if m.name in seen:
            raise ConfigError(f"{key}.name", f"duplicate model name {m.name!r}")
        seen.add(m.name)
        if not m.timeout_s > 0:
            raise ConfigError(f"{key}.timeout_s", f"must be greater than 0, got {m.timeout_s}")
        at_least(f"{key}.max_tokens", m.max_tokens, 1)
        for p in ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "rpm", "tpm",
                  "max_concurrency"):
            if not getattr(m, p) >= 0:
                raise ConfigError(f"{key}.{p}", "must not be negative")
        if m.base_url and not m.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.base_url",
                              f"must start with http:// or https://, got {m.base_url!r}")
        names: set[str] = set()
        for j, d in enumerate(m.resolved_deployments()):
            dkey = f"{key}.deployments[{j}]" if m.deployments else key
            if not d.base_url:
                raise ConfigError(f"{dkey}.base_url", "is required")
            if not d.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"{dkey}.base_url",
                                  f"must start with http:// or https://, got {d.base_url!r}")
            if d.name in names:
                raise ConfigError(f"{dkey}.name", f"duplicate deployment name {d.name!r}")
            if d.max_tokens_field not in MAX_TOKENS_FIELDS:
                raise ConfigError(f"{dkey}.max_tokens_field", "must be 'max_tokens' or "
                                  f"'max_completion_tokens', got {d.max_tokens_field!r}")
            if d.ca_bundle and not os.path.isfile(d.ca_bundle):
                raise ConfigError(f"{dkey}.ca_bundle", f"no such file: {d.ca_bundle!r}")
            names.add(d.name)
            if m.deployments:
                raw = m.deployments[j]
                for p in ("rpm", "tpm", "max_concurrency"):
                    at_least(f"{dkey}.{p}", getattr(raw, p), -1)
                at_least(f"{dkey}.timeout_s", raw.timeout_s, 0)
                at_least(f"{dkey}.max_tokens", raw.max_tokens, 0)


def _validate_formats(fc: FormatsConfig) -> None:
    from consumers.formats import FORMATS  # late: the registry imports every decoder
    from consumers.formats.mapping import NOT_PATHS, compile_path

    for name, m in fc.mappings.items():
        key = f"formats.mappings.{name}"
        if name == "auto" or name in FORMATS:
            raise ConfigError(key, f"name {name!r} is taken by a built-in format")
        for f in dataclasses.fields(m):
            path = getattr(m, f.name)
            if f.name in NOT_PATHS or (not path and f.name != "model"):
                continue
            try:
                compile_path(path)
            except ValueError as e:
                raise ConfigError(f"{key}.{f.name}", str(e)) from None
        for tag, path in m.tags.items():
            try:
                compile_path(path)
            except ValueError as e:
                raise ConfigError(f"{key}.tags.{tag}", str(e)) from None
        if m.messages and m.prompt:
            raise ConfigError(f"{key}.prompt", "set either messages or prompt, not both")
        if m.system and not m.prompt:
            raise ConfigError(f"{key}.system", "goes with prompt (a plain-string prompt); "
                              "with messages the system prompt is one of the messages")
        if m.latency_unit not in ("ms", "s"):
            raise ConfigError(f"{key}.latency_unit", f"must be 'ms' or 's', got {m.latency_unit!r}")
        if m.status and not m.ok_values:
            raise ConfigError(f"{key}.ok_values", "must list at least one value when status is set")
    if not 0 <= fc.otlp_join_window_s < float("inf"):  # also refuses NaN
        raise ConfigError("formats.otlp_join_window_s",
                          f"must be a number of seconds >= 0, got {fc.otlp_join_window_s}")
    if not fc.otlp_join_max_pending >= 1:
        raise ConfigError("formats.otlp_join_max_pending",
                          f"must be at least 1, got {fc.otlp_join_max_pending}")
    known = sorted({"auto", *FORMATS, *fc.mappings})
    for topic, fmt in fc.by_topic.items():
        if fmt not in known:
            raise ConfigError(f"formats.by_topic.{topic}",
                              f"unknown format {fmt!r}; known: {', '.join(known)}")


def secret_from_env(env_name: str) -> str | None:
    """The value of an API-key variable; read at call time, never stored in config or logs."""
    return os.environ.get(env_name) if env_name else None
