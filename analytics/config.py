"""The analytics stage's sections of the configuration: `[storage]` (the DuckDB file) and
`[gate]` (the rollout gate's defaults), with their checks.

Frozen types read by `shadowroute.config`, which assembles them with the other stages' sections.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from consumers.config import check_choice, check_positive, check_rate
from consumers.errors import ConfigError

# An instance's name in the lake (a directory name): as analytics.lake.INSTANCE.
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# DuckDB size literals; checked, since `SET memory_limit` takes no bound parameter.
MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
REOPEN_EVERY_S = 300.0  # `StorageConfig.reopen_every_s` (see `analytics.store.Store.reopen`)


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
    lake_dir: str = ""
    """A directory shared by every instance (e.g. a network volume): the service exports its
    tables there as Parquet every `lake_every_s` and at a clean stop, under
    `instance=<instance_id>/`, and `shadowroute sql|gate|report --lake DIR` read the union.
    Empty: no export."""
    lake_every_s: float = 3600.0
    """How often the service exports to `lake_dir`."""
    instance_id: str = ""
    """This instance's name in the lake (letters, digits, '.', '_', '-'); empty: the host's
    name."""
    memory_limit: str = "512MB"
    """DuckDB's memory limit in the service's store (e.g. `256MB`, `2GB`; empty: DuckDB's
    default, 80% of RAM). DuckDB keeps the blocks it read or wrote cached up to this limit, so
    the store process grows towards it under steady load and stays there; larger queries spill
    to a temporary directory beside the file."""
    reopen_every_s: float = REOPEN_EVERY_S
    """How often the store closes its DuckDB instance and opens the file again, between two
    writes (no write or query is cut). DuckDB keeps some heap after every write and join until
    its database is closed, and keeps loaded index nodes and cached blocks; a reopen gives them
    back, so the store's memory is a sawtooth of this period (docs/architecture.md, "Soak and
    memory"). A reopen holds the writes for ~0.1-0.3 s."""


# What each of `[retention]`'s text horizons clears (`Store.apply_retention`).
TEXT_RETENTION = {"texts": ("purge_sample_texts", "purge_call_texts", "purge_floor_texts"),
                  "judge": ("purge_judge_texts",), "rejected": ("purge_rejected_raw",)}


@dataclass(frozen=True)
class RetentionConfig:
    """How long detail is kept. The estimates over any past window stay what they were: what
    they need of purged requests is kept per hour in `request_rollups`."""

    requests_days: float = 0.0
    """Requests older than this (production time) that were never sampled are rolled up per
    hour and deleted (0: kept for ever). Keep it longer than the topics' own retention, so that
    Kafka can no longer deliver a purged record again."""
    texts_days: float = 0.0
    """Prompts and answers of samples older than this (production time; the cheap models' and
    the noise floor's answers too) are cleared; their scores and costs stay (0: kept for ever)."""
    judge_days: float = 0.0
    """The LLM judge's raw outputs older than this are cleared; its grades stay (0: kept)."""
    rejected_days: float = 0.0
    """Rejected records' raw bytes older than this (when rejected) are cleared; the reason and
    position stay (0: kept)."""
    every_s: float = 3600.0
    """How often the service applies it."""


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


def check_storage(st: StorageConfig, key: str = "storage") -> None:
    if st.memory_limit and not MEMORY_LIMIT.fullmatch(st.memory_limit):
        raise ConfigError(f"{key}.memory_limit", "must be a size like '512MB' or '2GB' (or empty "
                          f"for DuckDB's default), got {st.memory_limit!r}")
    check_positive(f"{key}.max_record_bytes", st.max_record_bytes)
    check_choice(f"{key}.writer", st.writer, ("process", "thread"))
    check_positive(f"{key}.lake_every_s", st.lake_every_s)
    check_positive(f"{key}.reopen_every_s", st.reopen_every_s)
    if st.instance_id and not INSTANCE_ID.fullmatch(st.instance_id):
        raise ConfigError(f"{key}.instance_id", "letters, digits, '.', '_' and '-' only (it "
                          f"names a directory of the lake), got {st.instance_id!r}")
    if st.threads < 0:
        raise ConfigError(f"{key}.threads",
                          f"must be 0 (one fewer than the cores) or more, got {st.threads}")


def check_retention(r: RetentionConfig, key: str = "retention") -> None:
    for name in ("requests_days", "texts_days", "judge_days", "rejected_days"):
        if getattr(r, name) < 0:
            raise ConfigError(f"{key}.{name}", f"must be 0 (keep) or more, got {getattr(r, name)}")
    check_positive(f"{key}.every_s", r.every_s)


def check_gate(g: GateConfig, key: str = "gate") -> None:
    check_rate(f"{key}.min_quality", g.min_quality)
    if not 0.5 <= g.confidence < 1.0:
        raise ConfigError(f"{key}.confidence", f"must be in [0.5, 1), got {g.confidence}")
    for seg, bar in g.segment_min_quality.items():
        check_rate(f"{key}.segment_min_quality.{seg}", bar)
