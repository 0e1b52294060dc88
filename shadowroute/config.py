"""The one configuration object.

Read from a TOML file, then overridden by environment variables named
``SHADOWROUTE_<SECTION>__<KEY>`` (``__`` separates levels, a number indexes a list of tables:
``SHADOWROUTE_SHADOW__MODELS__0__BASE_URL``). An environment value is read as a TOML value
when it parses as one (``0.2``, ``true``, ``["a", "b"]``), otherwise as a plain string.

API keys are never configuration values: a model names the *environment variable* that holds its
key (``api_key_env``) and the key is read from the environment only when a call is made.

Every mistake raises `ConfigError` naming the key, e.g.
``sampling.default_rate: must be between 0 and 1, got 1.5``.

Each stage owns its sections (their frozen types and checks): `consumers.config` (kafka,
sampling, formats, prices), `shadow.config` and `shadow.routers` (shadow, scoring, routers),
`analytics.config` (storage, gate). This module keeps what only the root can do: the `[server]`
section of its HTTP API, loading, the environment, the checks that span sections, and the
assembled `Config`. A `[[routers]]` table is built as the type of its `kind`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analytics.config import (
    GateConfig,
    RetentionConfig,
    StorageConfig,
    check_gate,
    check_retention,
    check_storage,
)
from analytics.tiers import TierPolicyConfig, check_policies
from consumers.config import (
    FormatsConfig,
    KafkaConfig,
    MappingConfig,
    Price,
    SamplingConfig,
    check_kafka,
    check_positive,
    check_prices,
    check_sampling,
    secret_from_env,
)
from consumers.errors import ConfigError
from consumers.formats.mapping import check_formats
from shadow.cascade import CascadeConfig, check_cascades
from shadow.config import (
    BudgetConfig,
    DeploymentConfig,
    JudgeConfig,
    ModelConfig,
    ScoringConfig,
    ShadowConfig,
    check_shadow,
)
from shadow.judge import check_judge
from shadow.routers import (
    RESERVED_NAMES,
    HttpRouterConfig,
    LearnedRouterConfig,
    RandomRouterConfig,
    RouterConfig,
    RulesRouterConfig,
    check_routers,
)
from shadow.scorers import check_scoring

# The sections' types live with their stages; they are named here too, as the one place a
# reader (or a test) finds every part of the configuration.
__all__ = ["BudgetConfig", "CascadeConfig", "Config", "ConfigError", "DeploymentConfig", "FormatsConfig",
           "GateConfig", "HttpRouterConfig", "JudgeConfig", "KafkaConfig", "LearnedRouterConfig",
           "MappingConfig",
           "ModelConfig", "Price",
           "RandomRouterConfig", "RetentionConfig", "RouterConfig", "RulesRouterConfig",
           "SamplingConfig", "ScoringConfig", "ServerConfig", "ShadowConfig", "StorageConfig",
           "TierPolicyConfig", "api_token",
           "is_loopback", "load_config", "secret_from_env"]

ENV_PREFIX = "SHADOWROUTE_"
# Variables of the command line, not config keys (SHADOWROUTE_CONFIG names the config file).
ENV_NOT_KEYS = {"SHADOWROUTE_CONFIG"}


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
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    routers: tuple[RouterConfig, ...] = (
        RandomRouterConfig(name="random"),
    )
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    cascades: tuple[CascadeConfig, ...] = ()
    """Cascade policies (FrugalGPT): a cheap model first, escalated when not trusted."""
    policies: tuple[TierPolicyConfig, ...] = ()
    """Multi-tier policies: several cheap models, a request to the first tier that takes it."""
    prices: Mapping[str, Price] = field(default_factory=dict)
    """Frontier model -> price, used when a log record carries no cost. A dated snapshot or a
    provider-prefixed name takes its model's price (`Ingestor.price_for`)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
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
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        # An optional section (`X | None`): present in the file means set; absent keeps None.
        (inner,) = (a for a in args if a is not type(None))
        return _convert(inner, value, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and hasattr(tp, "kinds") and isinstance(value, dict):
            return _build(_kind_type(tp, value, key), value, key)
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


def _kind_type(tp: type, value: dict[str, Any], key: str) -> type:
    """The type a table of a kinded section (a router) is built as, from its `kind`."""
    kinds = tp.kinds()  # type: ignore[attr-defined]
    kind = value.get("kind", next(f.default for f in dataclasses.fields(tp) if f.name == "kind"))
    if not isinstance(kind, str) or kind not in kinds:
        raise ConfigError(_join(key, "kind"),
                          f"unknown {tp.__name__.removesuffix('Config').lower()} kind {kind!r}; "
                          f"known: {', '.join(sorted(kinds))}")
    return typing.cast(type, kinds[kind])


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _validate(cfg: Config) -> None:
    """Each section by its stage's checks, then what spans sections."""
    check_kafka(cfg.kafka)
    check_storage(cfg.storage)
    check_sampling(cfg.sampling)
    check_shadow(cfg.shadow)
    check_routers(cfg.routers)
    check_scoring(cfg.scoring)
    check_judge(cfg.shadow, cfg.scoring)
    check_cascades(cfg.cascades, [m.name for m in cfg.shadow.models])
    cheap = {m.name for m in cfg.shadow.models}
    for i, r in enumerate(cfg.routers):
        if isinstance(r, LearnedRouterConfig) and cheap and r.model not in cheap:
            raise ConfigError(f"routers[{i}].model", f"{r.model!r} is not one of the cheap "
                              f"models ({', '.join(sorted(cheap))}): its scores are the labels")
    check_policies(cfg.policies, [m.name for m in cfg.shadow.models],
                   [r.name for r in cfg.routers],
                   [*RESERVED_NAMES, *(r.name for r in cfg.routers),
                    *(c.name for c in cfg.cascades)])
    by_name = {r.name: r for r in cfg.routers}
    for i, p in enumerate(cfg.policies):
        if p.kind != "cheapest":
            continue
        for j, (m, name) in enumerate(zip(p.models, p.routers, strict=True)):
            r = by_name[name]
            if isinstance(r, LearnedRouterConfig) and r.model != m:
                raise ConfigError(f"policies[{i}].routers[{j}]", f"{name!r} predicts for "
                                  f"{r.model!r}, not for the tier's model {m!r}")
    check_prices(cfg.prices)
    check_server(cfg.server)
    check_gate(cfg.gate)
    check_retention(cfg.retention)
    check_formats(cfg.formats)


def check_server(sv: ServerConfig, key: str = "server") -> None:
    if not 0 <= sv.port <= 65535:
        raise ConfigError(f"{key}.port", f"must be 0..65535, got {sv.port}")
    for name in ("sql_timeout_s", "sql_max_rows", "sql_max_bytes", "max_body_bytes"):
        check_positive(f"{key}.{name}", getattr(sv, name))
