"""Routers: for a request, the probability that the strong (frontier) model is needed.

A router is one async method (RouteLLM's `calculate_strong_win_rate`, typed)::

    class Router(Protocol):
        name: str
        async def score(self, request: RouteInput) -> float: ...

At threshold t a request goes to the cheap model when score < t. Router kinds are registered
by name in `ROUTER_KINDS`, each with its own config type (a `RouterConfig` with the kind's
fields), which the config loader picks by the table's `kind`: a new kind touches only this
package.

- `random`: RouteLLM's baseline. A uniform number fixed by (seed, request id), so the same
  sample always gets the same score.
- `http`: an external router, called over HTTP for every sample (a RouteLLM OpenAI-compatible
  server, a router product, your own service): the request goes out as a JSON body built from
  a template, and the answer gives a score at `score_path`, or the name of the model it chose at
  `model_path`, mapped to a score by `model_scores` (RouteLLM's server answers with the routed
  model's name). A failure or a timeout raises: the runner records it in `router_calls` and the
  sample gets no score from that router; nothing waits longer than `timeout_s`.
- `rules`: explainable rules from the config. Forced-strong overrides (tags, models, keywords)
  give 1.0 — the escape hatch. Otherwise
  `score = 0.5 * min(1, prompt_chars / long_prompt_chars) + 0.5 * [any strong keyword]`,
  halved when a weak keyword is present and no strong keyword is.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson
from apscheduler.triggers.cron import CronTrigger

from consumers.config import check_positive, secret_from_env
from consumers.errors import ConfigError
from consumers.formats.mapping import compile_path
from consumers.sampling import UnitHash
from shadow import learned
from shadow.errors import HttpFailure, RouterCallFailed
from shadow.http import HttpClient
from shadow.learned import VersionInfo

# Names the savings views give their own rows: no router may take them.
RESERVED_NAMES = ("all_cheap", "oracle")


@dataclass(frozen=True)
class RouterConfig:
    """What every router kind has; each kind's type adds its own fields."""

    name: str
    """Name used in `router_scores` and the savings view."""
    kind: str = "rules"
    """Registered router kind: `random`, `rules`, `http` or `learned`."""
    cost_per_call_usd: float = 0.0
    """What one call of this router costs (an external router's price, a learned router's
    serving cost): the savings estimates add it to every request the router scores."""

    @classmethod
    def kinds(cls) -> Mapping[str, type[RouterConfig]]:
        """Config type per kind: the loader builds a `[[routers]]` table as its kind's type."""
        return {name: k.config for name, k in ROUTER_KINDS.items()}


@dataclass(frozen=True)
class RandomRouterConfig(RouterConfig):
    kind: str = "random"
    seed: int = 0
    """Mixed with the request id, so scores are reproducible."""


@dataclass(frozen=True)
class RulesRouterConfig(RouterConfig):
    kind: str = "rules"
    long_prompt_chars: int = 2000
    """Prompt length (characters) at which the length part of the score is full."""
    strong_keywords: tuple[str, ...] = ()
    """Words that push a request to the strong model (case-insensitive)."""
    weak_keywords: tuple[str, ...] = ()
    """Words that mark an easy request."""
    force_strong_keywords: tuple[str, ...] = ()
    """Any of these in the prompt forces the strong model (score 1)."""
    force_strong_tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Tag -> values that force the strong model, e.g. {tenant = ["acme"]}."""
    force_strong_models: tuple[str, ...] = ()
    """Frontier models whose traffic is never routed away."""


@dataclass(frozen=True)
class LearnedRouterConfig(RouterConfig):
    """A router trained on this project's own shadow results (see `shadow.learned`)."""

    kind: str = "learned"
    model: str = ""
    """The cheap model whose scores label the samples (required)."""
    bar: float = 0.8
    """A sample whose cheap score is below this needed the strong model (label 1)."""
    algorithm: str = "logreg"
    """`logreg` (logistic regression) or `gbdt` (gradient-boosted trees)."""
    models_dir: str = "shadowroute-models"
    """Where versions are kept: `<models_dir>/<name>/vNNNN.skops` and `.json`."""
    min_rows: int = 200
    """Labelled samples needed (with both labels present) before a first version is trained."""
    retrain_every_s: float = 3600.0
    """Train a new version this often (0: only on `retrain_cron` or new labels)."""
    retrain_cron: str = ""
    """A crontab line (`0 3 * * *`) on which to train a new version, instead of every N s."""
    retrain_after_labels: int = 500
    """Also train when this many labelled samples arrived since the last version (0: never)."""
    check_every_s: float = 30.0
    """How often the labelled samples are counted (for the first version and the one above)."""
    pin_version: int = 0
    """Score with this version (0: the newest)."""
    backfill: str = "forward"
    """Out-of-fold scores for the samples that came before a version: `forward` (each fold by
    a model of the folds before it) or `kfold` (by the other folds; time leaks across them)."""
    folds: int = 5


@dataclass(frozen=True)
class RouteInput:
    """What a router sees of a production request."""

    request_id: str
    model: str
    prompt: str
    tags: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The request's chat messages (what an external router is sent)."""


class Router(Protocol):
    name: str

    async def score(self, request: RouteInput) -> float:
        """Probability in [0, 1] that the strong model is needed."""
        ...


class RandomRouter:
    def __init__(self, cfg: RandomRouterConfig) -> None:
        self.name = cfg.name
        self._hash = UnitHash(f"router:{cfg.seed}")

    async def score(self, request: RouteInput) -> float:
        return self._hash(request.request_id)


def _word_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    # An empty word would match everywhere: it is a config slip, not a keyword.
    words = tuple(w for w in words if w)
    if not words:
        return None
    # Not \b: it needs a word character inside the keyword's edge, so "c++" or "#urgent"
    # never matched. "No word character just outside" is the same for ordinary words.
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w.lower()) for w in words) + r")(?!\w)")


class RulesRouter:
    def __init__(self, cfg: RulesRouterConfig) -> None:
        self.name = cfg.name
        self.long = max(cfg.long_prompt_chars, 1)
        self.strong = _word_pattern(cfg.strong_keywords)
        self.weak = _word_pattern(cfg.weak_keywords)
        self.force = _word_pattern(cfg.force_strong_keywords)
        self.force_tags = {k: set(v) for k, v in cfg.force_strong_tags.items()}
        self.force_models = set(cfg.force_strong_models)

    def forced(self, request: RouteInput, lowered: str) -> bool:
        if request.model in self.force_models:
            return True
        if any(request.tags.get(k) in vals for k, vals in self.force_tags.items()):
            return True
        return bool(self.force and self.force.search(lowered))

    async def score(self, request: RouteInput) -> float:
        lowered = request.prompt.lower()
        if self.forced(request, lowered):
            return 1.0
        strong = bool(self.strong and self.strong.search(lowered))
        s = 0.5 * min(1.0, len(request.prompt) / self.long) + (0.5 if strong else 0.0)
        if not strong and self.weak and self.weak.search(lowered):
            s *= 0.5
        return min(s, 1.0)


PLACEHOLDERS = ("{prompt}", "{messages}", "{model}", "{request_id}", "{tags}")


@dataclass(frozen=True)
class HttpRouterConfig(RouterConfig):
    kind: str = "http"
    url: str = ""
    """Where the request is POSTed (required), e.g. RouteLLM's
    `http://127.0.0.1:6060/v1/chat/completions`."""
    body_template: str = '{"model": "{model}", "messages": "{messages}"}'
    """JSON body sent; a string value that is exactly `{prompt}`, `{messages}`, `{model}`,
    `{request_id}` or `{tags}` is replaced by that value (as JSON: a list for messages, an
    object for tags), so nothing is ever formatted into the text. For RouteLLM's server:
    `{"model": "router-mf-0.11593", "messages": "{messages}", "max_tokens": 1}`."""
    score_path: str = ""
    """Path of the score in the JSON answer (keys separated by dots, numbers index lists),
    e.g. `score` or `data.0.strong_probability`. Set this or `model_path`."""
    model_path: str = ""
    """Path of the name of the model the router chose, e.g. `model`; the name is looked up in
    `model_scores`. Set this or `score_path`."""
    model_scores: Mapping[str, float] = field(default_factory=dict)
    """Chosen model name -> score, e.g. {"gpt-4o" = 1.0, "gpt-4o-mini" = 0.0}; a name not in it
    is a failure for that sample."""
    timeout_s: float = 2.0
    """Longest one call to the router may take; then the sample gets no score from it."""
    api_key_env: str = ""
    """Name of the environment variable holding a key, sent as `Authorization: Bearer <key>`."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Other headers sent with every call (not for keys: those only come from `api_key_env`)."""


class HttpRouter:
    """A router behind a URL (see the module docstring)."""

    def __init__(self, cfg: HttpRouterConfig, http: HttpClient) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.http = http
        self.template = orjson.loads(cfg.body_template)
        self.score_path = compile_path(cfg.score_path) if cfg.score_path else None
        self.model_path = compile_path(cfg.model_path) if cfg.model_path else None

    def body(self, request: RouteInput) -> bytes:
        values = {"{prompt}": request.prompt, "{messages}": request.messages,
                  "{model}": request.model, "{request_id}": request.request_id,
                  "{tags}": request.tags}

        def fill(node: Any) -> Any:
            if isinstance(node, str):
                return values.get(node, node)
            if isinstance(node, dict):
                return {k: fill(v) for k, v in node.items()}
            if isinstance(node, list):
                return [fill(v) for v in node]
            return node
        return orjson.dumps(fill(self.template))

    async def score(self, request: RouteInput) -> float:
        headers = {"Content-Type": "application/json", **self.cfg.headers}
        if key := secret_from_env(self.cfg.api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        try:
            resp = await asyncio.wait_for(
                self.http.post(self.cfg.url, self.body(request), headers, self.cfg.timeout_s),
                self.cfg.timeout_s + 1.0)  # the client's own timeout first; this one is a floor
        except (HttpFailure, TimeoutError) as e:
            raise RouterCallFailed(f"no answer: {e or type(e).__name__}") from None
        if resp.status != 200:
            raise RouterCallFailed(f"HTTP {resp.status}: {resp.text[:120]!r}")
        try:
            answer = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise RouterCallFailed(f"answer is not JSON: {resp.text[:80]!r}") from None
        if self.score_path is not None:
            value = self.score_path.find(answer)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RouterCallFailed(f"no number at {self.cfg.score_path!r}: {value!r:.80}")
            if not 0.0 <= value <= 1.0:
                raise RouterCallFailed(f"score {value!r} at {self.cfg.score_path!r} is outside "
                                       "[0, 1]")
            return float(value)
        assert self.model_path is not None  # checked with the config
        chosen = self.model_path.find(answer)
        if not isinstance(chosen, str) or chosen not in self.cfg.model_scores:
            raise RouterCallFailed(f"model {chosen!r:.80} at {self.cfg.model_path!r} is not in "
                                   f"model_scores ({', '.join(sorted(self.cfg.model_scores))})")
        return float(self.cfg.model_scores[chosen])


@dataclass(frozen=True)
class RouterContext:
    """What a router kind may need besides its config (the service's shared HTTP client)."""

    http: HttpClient | None = None


def _http_router(cfg: HttpRouterConfig, ctx: RouterContext) -> Router:
    if ctx.http is None:
        raise ValueError(f"router {cfg.name!r}: an http router needs the HTTP client")
    return HttpRouter(cfg, ctx.http)


class LearnedRouter:
    """Scores with the newest (or pinned) trained version; before there is one it raises, so
    its samples get no score from it (they get out-of-fold ones once a version exists)."""

    def __init__(self, cfg: LearnedRouterConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.version: str | None = None  # the version that gave the last score
        self._model: Any = None
        self.reload()

    def reload(self) -> VersionInfo | None:
        """Load the version to score with from `models_dir`; returns it (None: none yet)."""
        versions = learned.list_versions(Path(self.cfg.models_dir), self.name)
        if self.cfg.pin_version:
            versions = [v for v in versions if v.version == self.cfg.pin_version]
        if not versions:
            return None
        info = versions[-1]
        art, _ = learned.version_paths(Path(self.cfg.models_dir), self.name, info.version)
        self._model, self.version = learned.load_model(art), info.tag
        return info

    def use(self, model: Any, info: VersionInfo) -> None:
        """Score with a version just trained (unless another is pinned)."""
        if not self.cfg.pin_version or self.cfg.pin_version == info.version:
            self._model, self.version = model, info.tag

    async def score(self, request: RouteInput) -> float:
        if self._model is None:
            raise RouterCallFailed("no version trained yet (it trains once "
                                   f"{self.cfg.min_rows} samples are labelled)")
        text, meta = learned.features(request.messages, request.model, request.tags)
        return learned.predict(self._model, [(text, meta)])[0]


def _check_learned(cfg: LearnedRouterConfig, key: str) -> None:
    if not cfg.model:
        raise ConfigError(f"{key}.model", "is required: the cheap model whose scores label "
                                          "the samples")
    if cfg.algorithm not in learned.ALGORITHMS:
        raise ConfigError(f"{key}.algorithm", f"must be one of {', '.join(learned.ALGORITHMS)}"
                                              f", got {cfg.algorithm!r}")
    if cfg.backfill not in learned.SCHEMES:
        raise ConfigError(f"{key}.backfill", f"must be one of {', '.join(learned.SCHEMES)}, "
                                             f"got {cfg.backfill!r}")
    if not 0.0 < cfg.bar <= 1.0:
        raise ConfigError(f"{key}.bar", f"must be above 0 and at most 1, got {cfg.bar}")
    check_positive(f"{key}.min_rows", cfg.min_rows)
    if cfg.folds < 2:
        raise ConfigError(f"{key}.folds", f"must be at least 2, got {cfg.folds}")
    check_positive(f"{key}.check_every_s", cfg.check_every_s)
    if cfg.retrain_every_s < 0 or cfg.retrain_after_labels < 0 or cfg.pin_version < 0:
        raise ConfigError(key, "retrain_every_s, retrain_after_labels and pin_version must not "
                               "be negative")
    if cfg.retrain_cron:
        try:
            CronTrigger.from_crontab(cfg.retrain_cron)
        except ValueError as e:
            raise ConfigError(f"{key}.retrain_cron", f"not a crontab line: {e}") from None


class RouterKind(NamedTuple):
    config: type[RouterConfig]
    build: Callable[[Any, RouterContext], Router]  # takes its own `config` type
    check: Callable[[Any, str], None] | None = None


def _check_http(cfg: HttpRouterConfig, key: str) -> None:
    if not cfg.url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.url", f"must start with http:// or https://, got {cfg.url!r}")
    if bool(cfg.score_path) == bool(cfg.model_path):
        raise ConfigError(f"{key}.score_path", "set either score_path (the answer holds a score) "
                                               "or model_path (it names the chosen model)")
    for name in ("score_path", "model_path"):
        if text := getattr(cfg, name):
            try:
                compile_path(text)
            except ValueError as e:
                raise ConfigError(f"{key}.{name}", str(e)) from None
            if text.startswith("$"):
                raise ConfigError(f"{key}.{name}", "must be a path in the JSON answer")
    if cfg.model_path and not cfg.model_scores:
        raise ConfigError(f"{key}.model_scores", "must map each model the router may choose to "
                                                 "a score, e.g. {\"gpt-4o\" = 1.0, \"gpt-4o-mini\" = 0.0}")
    for m, v in cfg.model_scores.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key}.model_scores.{m}", f"must be between 0 and 1, got {v}")
    check_positive(f"{key}.timeout_s", cfg.timeout_s)
    try:
        orjson.loads(cfg.body_template)
    except orjson.JSONDecodeError as e:
        raise ConfigError(f"{key}.body_template", f"must be JSON: {e}") from None


ROUTER_KINDS: dict[str, RouterKind] = {
    "random": RouterKind(RandomRouterConfig, lambda cfg, ctx: RandomRouter(cfg)),
    "rules": RouterKind(RulesRouterConfig, lambda cfg, ctx: RulesRouter(cfg)),
    "http": RouterKind(HttpRouterConfig, _http_router, _check_http),
    "learned": RouterKind(LearnedRouterConfig, lambda cfg, ctx: LearnedRouter(cfg),
                          _check_learned),
}


def build_routers(cfgs: tuple[RouterConfig, ...], ctx: RouterContext | None = None
                  ) -> list[Router]:
    return [ROUTER_KINDS[c.kind].build(c, ctx or RouterContext()) for c in cfgs]


def check_routers(cfgs: tuple[RouterConfig, ...], key: str = "routers") -> None:
    """Names unique and free; each table of its kind's type (the loader guarantees it for a
    config file; this catches a config built in code)."""
    names: set[str] = set()
    for i, r in enumerate(cfgs):
        kind = ROUTER_KINDS.get(r.kind)
        if kind is None:
            raise ConfigError(f"{key}[{i}].kind", f"unknown router kind {r.kind!r}; "
                                                  f"known: {', '.join(sorted(ROUTER_KINDS))}")
        if not isinstance(r, kind.config):
            raise ConfigError(f"{key}[{i}]", f"kind {r.kind!r} needs a {kind.config.__name__}")
        if not r.cost_per_call_usd >= 0:
            raise ConfigError(f"{key}[{i}].cost_per_call_usd",
                              f"must be 0 or more, got {r.cost_per_call_usd}")
        if r.name in names or r.name in RESERVED_NAMES:
            raise ConfigError(f"{key}[{i}].name", f"name {r.name!r} is taken")
        names.add(r.name)
        if kind.check is not None:
            kind.check(r, f"{key}[{i}]")
