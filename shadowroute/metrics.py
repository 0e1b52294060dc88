"""Prometheus metrics of one service instance (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter("shadowroute_records_total",
                               "Log records consumed, by outcome (request or rejected)",
                               ["outcome"], registry=r)
        self.sampled = Counter("shadowroute_sampled_total", "Requests sampled for shadow replay",
                               registry=r)
        self.batches = Counter("shadowroute_ingest_batches_total", "Persisted ingest batches",
                               registry=r)
        self.shadow_calls = Counter("shadowroute_shadow_calls_total",
                                    "Shadow calls by cheap model and outcome",
                                    ["model", "outcome"], registry=r)
        self.shadow_latency = Histogram(
            "shadowroute_shadow_call_seconds", "Shadow call latency by model", ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.spend = Counter("shadowroute_shadow_spend_usd_total", "USD spent on shadow calls",
                             ["model"], registry=r)
        self.samples_finished = Counter("shadowroute_samples_finished_total",
                                        "Samples finished, by status", ["status"], registry=r)
        self.pending = Gauge("shadowroute_samples_pending", "Samples waiting for shadow calls",
                             registry=r)
        self.lag = Gauge("shadowroute_consumer_lag", "Records behind the partition's high water",
                         ["topic", "partition"], registry=r)
