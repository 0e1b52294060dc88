"""Multi-tier policies (`[[policies]]`): several cheap models at once, each request sent to the
first tier whose rule lets it through, else to the frontier model.

Two kinds, both estimated from what the shadow stage already stores (every sample is answered by
every cheap model, and every router scores every sample):

- `thresholds`: one router's score split by thresholds t1 <= t2 <= ... (one per model, cheapest
  first): score < t1 goes to the first model, t1 <= score < t2 to the second, ..., and a score at
  or above the last threshold to the frontier model.
- `cheapest`: one router per model, each giving P(strong needed) for its own model (a learned
  router trained on that model's labels); a request goes to the cheapest model whose predicted
  success 1 - score is at least `bar`, else to the frontier model.

A request without a score from a tier's router does not pass that tier (as a single router's
missing score never sends a request cheap).

The service writes each policy to the `tier_policies` table at start: its configured setting
(number 0), which the savings views estimate under the policy's name, and a sweep of settings
over a grid of `sweep_step` (every non-decreasing threshold vector, or every bar), which the
`policy_frontier` view places on the cost-quality frontier beside the single-tier routers and
the cascades.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import polars as pl

from consumers.config import check_choice
from consumers.errors import ConfigError

KINDS = ("thresholds", "cheapest")
# Settings per policy in the frontier's sweep: the sweep is evaluated on every sample, so its
# cost grows with samples x settings x tiers.
MAX_SETTINGS = 2000


@dataclass(frozen=True)
class TierPolicyConfig:
    """One multi-tier policy."""

    name: str
    """Name in the savings views (the `router` column; `model` lists the tiers, `a>b`)."""
    models: tuple[str, ...]
    """The cheap models, cheapest first (each one of `shadow.models`)."""
    kind: str = "thresholds"
    """`thresholds` (one router's score split by `thresholds`) or `cheapest` (the cheapest model
    whose own router predicts success >= `bar`)."""
    router: str = ""
    """`thresholds`: the router whose score is split."""
    thresholds: tuple[float, ...] = ()
    """`thresholds`: one per model, non-decreasing, in [0, 1]."""
    routers: tuple[str, ...] = ()
    """`cheapest`: one router per model, in the same order; its score is P(strong needed) for
    that model."""
    bar: float = 0.9
    """`cheapest`: the predicted success (1 - score) a model needs to take the request."""
    sweep_step: float = 0.1
    """Grid step of the settings the `policy_frontier` view sweeps."""


class TierRow(NamedTuple):
    """One row of `tier_policies`: a tier of one setting of a policy."""

    policy: str
    kind: str
    setting: int
    label: str
    tier: int
    model: str
    router: str
    threshold: float
    on_success: bool
    """True: the tier takes a request when 1 - score >= threshold (a bar on predicted
    success); False: when score < threshold."""


# The columns of `tier_policies`, in order.
TIER_SCHEMA: dict[str, pl.DataType] = {
    "policy": pl.Utf8(), "kind": pl.Utf8(), "setting": pl.Int32(), "label": pl.Utf8(),
    "tier": pl.Int32(), "model": pl.Utf8(), "router": pl.Utf8(), "threshold": pl.Float64(),
    "on_success": pl.Boolean()}


def grid(step: float) -> list[float]:
    """0, step, 2 step, ..., up to 1 (1 included)."""
    n = int(round(1.0 / step))
    values = [round(i * step, 10) for i in range(n + 1) if i * step <= 1.0 + 1e-9]
    if values[-1] < 1.0:
        values.append(1.0)
    return values


def _fmt(x: float) -> str:
    return f"{x:g}"


def settings(p: TierPolicyConfig) -> list[TierRow]:
    """Every setting of `p` as rows: number 0 as configured, then the sweep."""
    if p.kind == "thresholds":
        vectors = [tuple(p.thresholds)] + list(
            itertools.combinations_with_replacement(grid(p.sweep_step), len(p.models)))
        return [TierRow(p.name, p.kind, s, "t=" + ",".join(_fmt(t) for t in ts), i + 1, m,
                        p.router, t, False)
                for s, ts in enumerate(vectors) for i, (m, t) in enumerate(zip(p.models, ts, strict=True))]
    bars = [p.bar] + grid(p.sweep_step)
    return [TierRow(p.name, p.kind, s, f"bar={_fmt(b)}", i + 1, m, r, b, True)
            for s, b in enumerate(bars) for i, (m, r) in enumerate(zip(p.models, p.routers, strict=True))]


def setting_count(p: TierPolicyConfig) -> int:
    n = len(grid(p.sweep_step))
    return 1 + (len(list(itertools.combinations_with_replacement(range(n), len(p.models))))
                if p.kind == "thresholds" else n)


def check_policies(policies: Sequence[TierPolicyConfig], models: Sequence[str],
                   routers: Sequence[str], taken: Sequence[str], key: str = "policies") -> None:
    """Each policy against the cheap models and routers configured; `taken`: names the savings
    views already use (routers, cascades, the reference policies)."""
    names: set[str] = set()
    for i, p in enumerate(policies):
        k = f"{key}[{i}]"
        if not p.name or "#" in p.name:
            raise ConfigError(f"{k}.name", f"must be a non-empty name without '#', got {p.name!r}")
        if p.name in names or p.name in taken:
            raise ConfigError(f"{k}.name", f"{p.name!r} is already the name of a router, "
                              "cascade, policy or reference row in the savings views")
        names.add(p.name)
        check_choice(f"{k}.kind", p.kind, KINDS)
        if not p.models:
            raise ConfigError(f"{k}.models", "list the cheap models, cheapest first")
        for j, m in enumerate(p.models):
            if m not in models:
                raise ConfigError(f"{k}.models[{j}]", f"{m!r} is not one of the cheap models "
                                  f"({', '.join(models) or 'none configured'})")
        if len(set(p.models)) != len(p.models):
            raise ConfigError(f"{k}.models", "each model may be one tier only")
        if not 0.0 < p.sweep_step <= 1.0:
            raise ConfigError(f"{k}.sweep_step", f"must be in (0, 1], got {p.sweep_step}")
        if p.kind == "thresholds":
            _check_thresholds(p, k, routers)
        else:
            _check_cheapest(p, k, routers)
        if (n := setting_count(p)) > MAX_SETTINGS:
            raise ConfigError(f"{k}.sweep_step", f"{p.sweep_step} gives {n} settings for "
                              f"{len(p.models)} tiers (at most {MAX_SETTINGS}): take a larger step")


def _known(key: str, router: str, routers: Sequence[str]) -> None:
    if router not in routers:
        raise ConfigError(key, f"{router!r} is not one of the routers "
                          f"({', '.join(routers) or 'none configured'})")


def _one_per_model(key: str, what: str, given: Sequence[object], models: Sequence[str]) -> None:
    if len(given) != len(models):
        raise ConfigError(key, f"give one {what} per model ({len(models)}), got {len(given)}")


def _check_thresholds(p: TierPolicyConfig, k: str, routers: Sequence[str]) -> None:
    _known(f"{k}.router", p.router, routers)
    if p.routers:
        raise ConfigError(f"{k}.routers", "is for kind = 'cheapest'; a 'thresholds' policy "
                          "splits one `router`'s score")
    _one_per_model(f"{k}.thresholds", "threshold", p.thresholds, p.models)
    for j, t in enumerate(p.thresholds):
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"{k}.thresholds[{j}]", f"must be in [0, 1], got {t}")
    if any(a > b for a, b in itertools.pairwise(p.thresholds)):
        raise ConfigError(f"{k}.thresholds", "must not decrease (the cheapest model takes the "
                          f"lowest scores), got {list(p.thresholds)}")


def _check_cheapest(p: TierPolicyConfig, k: str, routers: Sequence[str]) -> None:
    if p.router or p.thresholds:
        raise ConfigError(f"{k}.router", "`router` and `thresholds` are for kind = "
                          "'thresholds'; a 'cheapest' policy takes `routers` and `bar`")
    _one_per_model(f"{k}.routers", "router", p.routers, p.models)
    for j, r in enumerate(p.routers):
        _known(f"{k}.routers[{j}]", r, routers)
    if not 0.0 <= p.bar <= 1.0:
        raise ConfigError(f"{k}.bar", f"must be in [0, 1], got {p.bar}")
