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
                                    "Shadow calls by cheap model and outcome (ok, reused, error, "
                                    "budget, unavailable)",
                                    ["model", "outcome"], registry=r)
        self.shadow_latency = Histogram(
            "shadowroute_shadow_call_seconds", "Shadow call latency by model", ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.spend = Counter("shadowroute_shadow_spend_usd_total",
                             "USD charged to the shadow budget (worst case for attempts of unknown "
                             "fate)",
                             ["model"], registry=r)
        self.floor_calls = Counter("shadowroute_noise_floor_calls_total",
                                   "Calls to the frontier model for the noise floor, by model and "
                                   "outcome (their spend is in shadowroute_shadow_spend_usd_total)",
                                   ["model", "outcome"], registry=r)
        self.judge_calls = Counter("shadowroute_judge_calls_total",
                                   "Calls to the LLM judge, by judge, mode (grade, pairwise) and "
                                   "result (ok, unparseable, or the call's outcome); their spend "
                                   "is in shadowroute_shadow_spend_usd_total under the judge's name",
                                   ["judge", "mode", "result"], registry=r)
        self.router_calls = Counter("shadowroute_router_calls_total",
                                    "Router calls, by router and outcome (ok, error: the sample "
                                    "got no score from it)", ["router", "outcome"], registry=r)
        self.samples_finished = Counter("shadowroute_samples_finished_total",
                                        "Samples finished, by status", ["status"], registry=r)
        self.pending = Gauge("shadowroute_samples_pending", "Samples waiting for shadow calls",
                             registry=r)
        # Shadow execution: budget, backlog, reuse, deployment health.
        self.budget_left = Gauge("shadowroute_shadow_budget_left_usd",
                                 "Room left under the shadow budget cap (+Inf: no cap), after "
                                 "settled spend and in-flight reservations", ["window"], registry=r)
        self.budget_spent = Gauge("shadowroute_shadow_budget_spent_usd",
                                  "Settled shadow spend in the sliding window", ["window"],
                                  registry=r)
        self.queue_depth = Gauge("shadowroute_shadow_queue_depth",
                                 "Pending samples at the last backlog check (bounded by "
                                 "shadow.max_queue)", registry=r)
        self.inflight = Gauge("shadowroute_shadow_inflight_samples",
                              "Samples being replayed right now", registry=r)
        self.shed = Counter("shadowroute_shadow_shed_total",
                            "Samples shed because the backlog was above shadow.max_queue",
                            registry=r)
        self.reused = Counter("shadowroute_shadow_reused_total",
                              "Shadow calls answered by reusing an identical earlier replay",
                              ["model"], registry=r)
        self.cooldown = Gauge("shadowroute_shadow_deployment_cooldown",
                              "1 while a deployment is on cooldown, else 0",
                              ["model", "deployment"], registry=r)
        self.deployment_up = Gauge("shadowroute_shadow_deployment_up",
                                   "1 while a deployment is up, 0 while it is down (failing: on "
                                   "cooldown or being probed)", ["model", "deployment"], registry=r)
        self.cooldowns = Gauge("shadowroute_shadow_deployment_cooldowns",
                               "Times a deployment was put on cooldown since start",
                               ["model", "deployment"], registry=r)
        self.lag = Gauge("shadowroute_consumer_lag", "Records behind the partition's high water "
                         "(negative: the position is past the high water, a reset)",
                         ["topic", "partition"], registry=r)
        self.ingest_paused = Gauge("shadowroute_ingest_paused",
                                   "1 while ingest is paused because its writes fail (disk full); "
                                   "it retries with backoff and resumes by itself", registry=r)
        self.offset_resets = Counter("shadowroute_offset_resets_total",
                                     "Stored positions found outside the partition's log (kind: "
                                     "past_end, before_start); see the offset_resets table",
                                     ["topic", "kind"], registry=r)
        self.offset_reset_lost = Counter("shadowroute_offset_reset_lost_records_total",
                                         "Records removed by retention before they were read",
                                         ["topic"], registry=r)
        self.dead_letters = Counter("shadowroute_dead_letters_total",
                                    "Rejected records produced to kafka.dead_letter_topic "
                                    "(outcome: sent, failed)", ["outcome"], registry=r)
        self.quality_drop = Gauge("shadowroute_quality_drop",
                                  "1 when the last windowed verdict (/v1/verdict?window=...) saw "
                                  "quality fall from the window before beyond both intervals",
                                  ["router", "model", "window"], registry=r)
