"""Cascades (FrugalGPT): ask the cheap model first, keep its answer when an acceptance scorer
trusts it, else escalate to the frontier model, paying for both.

An acceptance scorer sees only the request and the cheap answer, never the frontier answer
(production would not have it): its score is the probability that the cheap answer is good
enough. At threshold t a cascade keeps the cheap answer when the score is at least t. In the
estimates (the `cascade_savings` view) an escalated request costs the cheap call plus the
frontier call and takes both calls' time; its quality is the frontier's (1), an accepted one's
the cheap answer's score.

Kinds (`[[cascades]]`):

- `rules`: the answer is refused (`refusal_patterns`, e.g. "I can't help") or empty: 0; it
  states its own confidence ("Confidence: 0.7", "confidence 70%"): that figure; it hedges
  (`hedge_patterns`, e.g. "I'm not sure"): `hedge_score`; shorter than `min_chars`:
  `short_score`; else 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from consumers.errors import ConfigError

REFUSALS = (r"\bI(?:'m| am) (?:sorry|unable|not able)\b", r"\bI can(?:'|no)t (?:help|assist|"
            r"answer|provide|do that)\b", r"\bas an AI\b", r"\bI do not have (?:access|enough)\b")
HEDGES = (r"\bI(?:'m| am) not (?:sure|certain)\b", r"\bI (?:think|believe|guess)\b",
          r"\bprobably\b", r"\bit (?:might|may) be\b", r"\bnot entirely sure\b")
_CONFIDENCE = re.compile(r"\bconfidence\s*(?:level|score)?\s*[:=]?\s*(\d{1,3}(?:\.\d+)?)\s*(%)?",
                         re.IGNORECASE)


@dataclass(frozen=True)
class CascadeConfig:
    """One cascade policy: a cheap model tried first and its acceptance scorer."""

    name: str
    """Name used in `cascade_scores` and the `cascade_savings` view."""
    model: str
    """The cheap model asked first (one of `shadow.models`)."""
    kind: str = "rules"
    """How its answer is judged acceptable: `rules`."""
    refusal_patterns: tuple[str, ...] = REFUSALS
    """Regular expressions (case-insensitive) of a refusal: the answer scores 0."""
    hedge_patterns: tuple[str, ...] = HEDGES
    """Regular expressions of hedging: the answer scores `hedge_score`."""
    hedge_score: float = 0.4
    min_chars: int = 1
    """An answer shorter than this scores `short_score`."""
    short_score: float = 0.5


class Acceptance(Protocol):
    name: str
    model: str

    def accept(self, messages: Sequence[Mapping[str, Any]], answer: str) -> float:
        """Probability in [0, 1] that `answer` is good enough to keep."""
        ...


class RulesAcceptance:
    def __init__(self, cfg: CascadeConfig) -> None:
        self.name, self.model, self.cfg = cfg.name, cfg.model, cfg
        flags = re.IGNORECASE
        self._refusal = re.compile("|".join(cfg.refusal_patterns), flags) \
            if cfg.refusal_patterns else None
        self._hedge = re.compile("|".join(cfg.hedge_patterns), flags) \
            if cfg.hedge_patterns else None

    def accept(self, messages: Sequence[Mapping[str, Any]], answer: str) -> float:
        text = answer.strip()
        if not text or (self._refusal is not None and self._refusal.search(text)):
            return 0.0
        m = _CONFIDENCE.search(text)
        if m is not None:
            value = float(m.group(1)) / (100.0 if m.group(2) or float(m.group(1)) > 1 else 1.0)
            if 0.0 <= value <= 1.0:
                return value
        if self._hedge is not None and self._hedge.search(text):
            return self.cfg.hedge_score
        if len(text) < self.cfg.min_chars:
            return self.cfg.short_score
        return 1.0


def build_cascades(cfgs: Sequence[CascadeConfig]) -> list[Acceptance]:
    return [RulesAcceptance(c) for c in cfgs]


def check_cascades(cfgs: Sequence[CascadeConfig], models: Sequence[str],
                   key: str = "cascades") -> None:
    names: set[str] = set()
    for i, c in enumerate(cfgs):
        k = f"{key}[{i}]"
        if c.name in names:
            raise ConfigError(f"{k}.name", f"duplicate cascade name {c.name!r}")
        names.add(c.name)
        if c.kind != "rules":
            raise ConfigError(f"{k}.kind", f"must be 'rules', got {c.kind!r}")
        if c.model not in models:
            raise ConfigError(f"{k}.model", f"{c.model!r} is not one of the cheap models "
                              f"({', '.join(models) or 'none configured'})")
        for field_name in ("refusal_patterns", "hedge_patterns"):
            for j, p in enumerate(getattr(c, field_name)):
                try:
                    re.compile(p)
                except re.error as e:
                    raise ConfigError(f"{k}.{field_name}[{j}]", f"not a regular expression: {e}"
                                      ) from None
        for field_name in ("hedge_score", "short_score"):
            v = getattr(c, field_name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{k}.{field_name}", f"must be between 0 and 1, got {v}")
