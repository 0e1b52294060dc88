"""The shadow stage's sections of the configuration: `[shadow]` (models, their deployments,
budget, limits) and `[scoring]`; router kinds carry their own types in `shadow.routers`.

Frozen types read by `shadowroute.config`, which assembles them with the other stages' sections.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from consumers.config import check_at_least, check_choice, check_positive, check_rate
from consumers.errors import ConfigError

MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")


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
class NoiseFloorConfig:
    """The frontier model asked again, in shadow, on a share of samples: how often it agrees
    with itself (per scorer and segment) is the floor a cheap model is judged against."""

    share: float = 0.0
    """Share of samples (chosen by a hash of the sample id) whose frontier model is asked again
    (0: never)."""
    models: tuple[ModelConfig, ...] = ()
    """The production frontier models as endpoints, `name` = the model name in the logs (e.g.
    `gpt-4o`); a sample whose frontier model is not here gets no floor call. Their calls take
    room in the same budget; identical replays are never reused for them."""


JUDGE_MODES = ("grade", "pairwise", "both")


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM judge (`shadow.judge`): scores the samples whose scorer is `judge`."""

    model: ModelConfig
    """The judge model, configured as a cheap model is (`[shadow.judge.model]`: endpoint, key,
    prices, limits, deployments); its calls take room in the same hard budget."""
    mode: str = "grade"
    """`grade`: a 1-10 grade against the frontier answer as reference; `pairwise`: which of the
    two answers is better, asked in both orders; `both`: the grade scores, the pairwise verdicts
    measure the judge's position and length biases (three calls per answer)."""
    prefilter: str = "exact_match"
    """A deterministic scorer asked first: an answer it scores at least `accept_at` is good
    without the judge (empty: every answer goes to the judge)."""
    accept_at: float = 1.0
    """The prefilter's score at which the judge is not asked."""
    max_chars: int = 8000
    """Longest request, reference or answer text put in a judge prompt; longer ones are cut,
    saying so (bounds what one judge call can cost)."""
    allow_candidate: bool = False
    """Allow a judge that is also one of the cheap candidates (models favour their own answers,
    so it is refused unless set)."""


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
    noise_floor: NoiseFloorConfig = field(default_factory=NoiseFloorConfig)
    """The frontier model re-asked on a share of samples (Diffy's noise floor)."""
    judge: JudgeConfig | None = None
    """The LLM judge (`[shadow.judge]`), for samples scored by `judge`."""


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
    `tfidf_cosine`, `embedding_cosine`, `judge`)."""
    also: tuple[str, ...] = ()
    """Scorers every answer is also scored by, beside its sample's own (not `judge`): each gets
    its rows in `scores`, so the savings macros can estimate with any of them
    (`savings_at([...], scorer := 'embedding_cosine')`)."""
    refit_s: float = 600.0
    """`tfidf_cosine`: how often its vectorizers are fitted again on stored frontier answers
    (sooner while none is fitted yet)."""
    tfidf_min_docs: int = 20
    """`tfidf_cosine`: frontier answers a segment needs for a vectorizer of its own."""
    tfidf_max_docs: int = 5000
    """`tfidf_cosine`: the newest answers per segment it is fitted on."""


def check_shadow(sh: ShadowConfig, key: str = "shadow") -> None:
    """The `[shadow]` section: limits, retries, models and their deployments."""
    at_least = check_at_least
    check_positive(f"{key}.concurrency", sh.concurrency)
    if sh.stop_grace_s < 0:
        raise ConfigError(f"{key}.stop_grace_s", f"must be 0 or more, got {sh.stop_grace_s}")
    at_least(f"{key}.budget.usd_per_hour", sh.budget.usd_per_hour, 0)
    at_least(f"{key}.budget.usd_per_day", sh.budget.usd_per_day, 0)
    at_least(f"{key}.max_retries", sh.max_retries, 0)
    at_least(f"{key}.backoff_s", sh.backoff_s, 0)
    at_least(f"{key}.max_backoff_s", sh.max_backoff_s, 0)
    at_least(f"{key}.allowed_fails", sh.allowed_fails, 1)
    at_least(f"{key}.cooldown_s", sh.cooldown_s, 0)
    at_least(f"{key}.first_probe_s", sh.first_probe_s, 0)
    at_least(f"{key}.max_wait_s", sh.max_wait_s, 0)
    at_least(f"{key}.reuse_window_s", sh.reuse_window_s, 0)
    if sh.http_client != "aiohttp":
        raise ConfigError(f"{key}.http_client", f"must be 'aiohttp' (the built-in client and "
                          f"httpx were retired), got {sh.http_client!r}")
    at_least(f"{key}.max_response_bytes", sh.max_response_bytes, 1024)
    if sh.max_queue < 2 * sh.concurrency:
        raise ConfigError(f"{key}.max_queue", f"must be at least 2 x shadow.concurrency "
                          f"({2 * sh.concurrency}, the samples in flight), got {sh.max_queue}")
    check_models(sh.models, f"{key}.models")
    check_rate(f"{key}.noise_floor.share", sh.noise_floor.share)
    check_models(sh.noise_floor.models, f"{key}.noise_floor.models")
    if sh.judge is not None:
        check_judge_endpoint(sh.judge, sh.models, f"{key}.judge")


def check_judge_endpoint(j: JudgeConfig, candidates: tuple[ModelConfig, ...], key: str) -> None:
    """The judge's own values, and that it is not one of the candidates it judges."""
    check_choice(f"{key}.mode", j.mode, JUDGE_MODES)
    check_at_least(f"{key}.max_chars", j.max_chars, 100)
    check_rate(f"{key}.accept_at", j.accept_at)
    check_models((j.model,), f"{key}.model")
    if j.allow_candidate:
        return
    mine = {_endpoint(d) for d in j.model.resolved_deployments()}
    for m in candidates:
        if m.name == j.model.name or mine & {_endpoint(d) for d in m.resolved_deployments()}:
            raise ConfigError(f"{key}.model", f"is also the candidate model {m.name!r}: a model "
                              "judging its own answers favours them (set "
                              f"{key}.allow_candidate = true to allow it)")


def _endpoint(d: DeploymentConfig) -> tuple[str, str]:
    return d.base_url.rstrip("/"), d.model


def check_models(models: tuple[ModelConfig, ...], key: str) -> None:
    """Each model's and deployment's values, names unique."""
    at_least = check_at_least
    seen: set[str] = set()
    for i, m in enumerate(models):
        mkey = f"{key}[{i}]"
        if m.name in seen:
            raise ConfigError(f"{mkey}.name", f"duplicate model name {m.name!r}")
        seen.add(m.name)
        if not m.timeout_s > 0:
            raise ConfigError(f"{mkey}.timeout_s", f"must be greater than 0, got {m.timeout_s}")
        at_least(f"{mkey}.max_tokens", m.max_tokens, 1)
        for p in ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "rpm", "tpm",
                  "max_concurrency"):
            if not getattr(m, p) >= 0:
                raise ConfigError(f"{mkey}.{p}", "must not be negative")
        if m.base_url and not m.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{mkey}.base_url",
                              f"must start with http:// or https://, got {m.base_url!r}")
        names: set[str] = set()
        for j, d in enumerate(m.resolved_deployments()):
            dkey = f"{mkey}.deployments[{j}]" if m.deployments else mkey
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
