"""Training learned routers in the service: new versions on a schedule or when labels arrive,
and out-of-fold scores for the samples that came before a version (see `shadow.learned`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from shadow import learned
from shadow.learned import VersionInfo
from shadow.routers import LearnedRouter

log = logging.getLogger(__name__)


class TrainingStore(Protocol):
    async def learned_rows(self, model: str) -> list[tuple[Any, ...]]:
        """(sample_id, ts, frontier model, messages JSON, tags JSON, cheap score) in time order."""
        ...

    async def write_router_scores(self, rows: Sequence[tuple[str, str, float, str]]) -> None:
        """(sample_id, router, score, version) for samples the router has no score for."""
        ...


def _as_utc(ts: object) -> datetime:
    """A stored time (DuckDB gives naive UTC) as an aware one; now when there is none."""
    if not isinstance(ts, datetime):
        return datetime.now(UTC)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def prepare(rows: Sequence[tuple[Any, ...]], bar: float
            ) -> tuple[list[str], list[tuple[str, dict[str, float]]], list[int], datetime]:
    """`learned_rows` as (sample ids, features, labels at `bar`, training cutoff: the last
    sample's time)."""
    ids, feats, labels = [], [], []
    for sid, _, model, messages, tags, value in rows:
        ids.append(sid)
        feats.append(learned.features(orjson.loads(messages or "[]"), model or "",
                                      orjson.loads(tags or "{}")))
        labels.append(learned.label(float(value), bar))
    return ids, feats, labels, _as_utc(rows[-1][1] if rows else None)


class Trainer:
    """Trains versions of one learned router from the store's labelled samples."""

    def __init__(self, router: LearnedRouter, store: TrainingStore) -> None:
        self.router = router
        self.cfg = router.cfg
        self.store = store
        self.models_dir = Path(self.cfg.models_dir)
        versions = learned.list_versions(self.models_dir, router.name)
        self._rows_at_last = versions[-1].rows if versions else 0
        self._lock = asyncio.Lock()

    async def on_new_labels(self) -> VersionInfo | None:
        """Train when enough samples were labelled since the last version (or for the first)."""
        return await self.train(force=False)

    async def train(self, force: bool = True) -> VersionInfo | None:
        """A new version on every labelled sample, then out-of-fold scores for the samples
        without a score from this router. None when there is not enough to train on (or, not
        forced, too few new labels)."""
        async with self._lock:
            cfg = self.cfg
            rows = await self.store.learned_rows(cfg.model)
            first = not learned.list_versions(self.models_dir, self.router.name)
            if len(rows) < cfg.min_rows:
                return None
            if not force and not first and (
                    not cfg.retrain_after_labels
                    or len(rows) - self._rows_at_last < cfg.retrain_after_labels):
                return None
            ids, feats, labels, cutoff = await asyncio.to_thread(prepare, rows, cfg.bar)
            if len(set(labels)) < 2:
                log.info("learned router %s: %d labelled samples, all %s: nothing to learn yet",
                         self.router.name, len(labels),
                         "needing the strong model" if labels[0] else "fine on the cheap one")
                return None
            versions = learned.list_versions(self.models_dir, self.router.name)
            number = versions[-1].version + 1 if versions else 1
            model, info = await asyncio.to_thread(
                learned.train_version, self.router.name, cfg.algorithm, cfg.model, cfg.bar,
                feats, labels, cutoff, number)
            await asyncio.to_thread(learned.save_version, self.models_dir, model, info)
            self._rows_at_last = len(rows)
            self.router.use(model, info)
            log.info("learned router %s: trained %s on %d samples (cutoff %s, %.0f%% needing "
                     "the strong model, cross-validated AUC %s)", self.router.name, info.tag,
                     info.rows, info.cutoff, 100 * info.strong_share,
                     "n/a" if info.cv_auc is None else f"{info.cv_auc:.3f}")
            scheme = f"oof-{cfg.backfill}/{cfg.folds}"
            oof = await asyncio.to_thread(learned.cross_fit, feats, labels, cfg.algorithm,
                                          folds=cfg.folds, scheme=cfg.backfill)
            await self.store.write_router_scores(
                [(sid, self.router.name, p, scheme)
                 for sid, p in zip(ids, oof, strict=True) if p is not None])
            return info
