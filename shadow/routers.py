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
- `rules`: explainable rules from the config. Forced-strong overrides (tags, models, keywords)
  give 1.0 — the escape hatch. Otherwise
  `score = 0.5 * min(1, prompt_chars / long_prompt_chars) + 0.5 * [any strong keyword]`,
  halved when a weak keyword is present and no strong keyword is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from consumers.errors import ConfigError
from consumers.sampling import UnitHash

# Names the savings views give their own rows: no router may take them.
RESERVED_NAMES = ("all_cheap", "oracle")


@dataclass(frozen=True)
class RouterConfig:
    """What every router kind has; each kind's type adds its own fields."""

    name: str
    """Name used in `router_scores` and the savings view."""
    kind: str = "rules"
    """Registered router kind: `random` or `rules`."""

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
class RouteInput:
    """What a router sees of a production request."""

    request_id: str
    model: str
    prompt: str
    tags: dict[str, str] = field(default_factory=dict)


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


class RouterKind(NamedTuple):
    config: type[RouterConfig]
    build: Callable[[Any], Router]  # takes its own `config` type


ROUTER_KINDS: dict[str, RouterKind] = {
    "random": RouterKind(RandomRouterConfig, RandomRouter),
    "rules": RouterKind(RulesRouterConfig, RulesRouter),
}


def build_routers(cfgs: tuple[RouterConfig, ...]) -> list[Router]:
    return [ROUTER_KINDS[c.kind].build(c) for c in cfgs]


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
        if r.name in names or r.name in RESERVED_NAMES:
            raise ConfigError(f"{key}[{i}].name", f"name {r.name!r} is taken")
        names.add(r.name)
