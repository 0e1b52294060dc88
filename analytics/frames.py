"""The shadow stage's results as the column batches `Store.write_results` inserts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from consumers.ingest import frame
from shadow.results import SampleResult

# `sample_key` (the sample's integer key, NULL when the result does not carry it) is written with
# the rows the savings views join: router scores, calls and scores.
ROUTER_SCORES_SCHEMA: dict[str, Any] = {"sample_id": pl.Utf8, "router": pl.Utf8,
                                        "score": pl.Float64, "version": pl.Utf8,
                                        "sample_key": pl.Int64}
NOISE_FLOOR_SCHEMA: dict[str, Any] = {
    "sample_id": pl.Utf8, "model": pl.Utf8, "answer": pl.Utf8, "input_tokens": pl.Int64,
    "cached_input_tokens": pl.Int64, "output_tokens": pl.Int64, "cost_usd": pl.Float64,
    "spend_usd": pl.Float64, "latency_ms": pl.Float64, "error": pl.Utf8, "outcome": pl.Utf8,
    "scorer": pl.Utf8, "scorer_used": pl.Utf8, "value": pl.Float64, "score_error": pl.Utf8}
ROUTER_CALLS_SCHEMA: dict[str, Any] = {"sample_id": pl.Utf8, "router": pl.Utf8,
                                       "latency_ms": pl.Float64, "error": pl.Utf8}
SHADOW_CALLS_SCHEMA: dict[str, Any] = {
    "sample_id": pl.Utf8, "model": pl.Utf8, "answer": pl.Utf8, "input_tokens": pl.Int64,
    "cached_input_tokens": pl.Int64, "output_tokens": pl.Int64, "cost_usd": pl.Float64,
    "latency_ms": pl.Float64, "error": pl.Utf8, "attempts": pl.Int32, "deployment": pl.Utf8,
    "outcome": pl.Utf8, "spend_usd": pl.Float64, "usage_estimated": pl.Boolean,
    "reused_from": pl.Utf8, "sample_key": pl.Int64}
SCORES_SCHEMA: dict[str, Any] = {
    "sample_id": pl.Utf8, "model": pl.Utf8, "scorer": pl.Utf8, "value": pl.Float64,
    "scorer_used": pl.Utf8, "error": pl.Utf8, "sample_key": pl.Int64}
FINISHED_SCHEMA: dict[str, Any] = {"sample_id": pl.Utf8, "status": pl.Utf8, "skip_reason": pl.Utf8}
ATTEMPTS_SCHEMA: dict[str, Any] = {
    "attempt_id": pl.Utf8, "sample_id": pl.Utf8, "model": pl.Utf8, "attempt": pl.Int32,
    "deployment": pl.Utf8, "outcome": pl.Utf8, "spend_usd": pl.Float64, "latency_ms": pl.Float64,
    "error": pl.Utf8}


CASCADE_SCORES_SCHEMA: dict[str, Any] = {"sample_id": pl.Utf8, "cascade": pl.Utf8,
                                         "model": pl.Utf8, "accept": pl.Float64}
JUDGE_CALLS_SCHEMA: dict[str, Any] = {
    "sample_id": pl.Utf8, "model": pl.Utf8, "judge": pl.Utf8, "mode": pl.Utf8,
    "position": pl.Utf8, "template": pl.Utf8, "output": pl.Utf8, "grade": pl.Float64,
    "verdict": pl.Utf8, "parse_error": pl.Utf8, "candidate_chars": pl.Int64,
    "reference_chars": pl.Int64, "input_tokens": pl.Int64, "output_tokens": pl.Int64,
    "cost_usd": pl.Float64, "spend_usd": pl.Float64, "latency_ms": pl.Float64,
    "error": pl.Utf8, "outcome": pl.Utf8, "attempts": pl.Int32}


def _attempt_rows(results: Sequence[SampleResult]) -> list[tuple[Any, ...]]:
    return [(a.attempt_id, a.sample_id, a.model, a.attempt, a.deployment, a.outcome,
             a.spend_usd, a.latency_ms, a.error)
            for r in results
            for a in (*(a for c in (*r.calls, *(f[0] for f in r.floor),
                                    *(j.call for j in r.judge_calls)) for a in c.attempt_log),
                      *r.attempts)]


def results_to_frames(results: Sequence[SampleResult]) -> dict[str, pl.DataFrame]:
    """The results as the four frames `write_results` inserts, built column by column
    (`consumers.ingest.frame`): the writer thread runs this beside the event loop, and every
    millisecond it holds the GIL is a millisecond of delay for the calls finishing meanwhile
    (`orient="row"` took ~4x as long)."""
    return {
        "batch_router_scores": frame(
            [(r.sample_id, *rs, r.sample_key) for r in results for rs in r.router_scores],
            ROUTER_SCORES_SCHEMA),
        "batch_router_calls": frame(
            [(r.sample_id, *call) for r in results for call in r.router_calls],
            ROUTER_CALLS_SCHEMA),
        "batch_noise_floor": frame(
            [(r.sample_id, c.model, c.answer, c.input_tokens, c.cached_input_tokens,
              c.output_tokens, c.cost_usd, c.spend_usd, c.latency_ms, c.error, c.outcome,
              scorer, used, value, failure)
             for r in results for c, scorer, used, value, failure in r.floor],
            NOISE_FLOOR_SCHEMA),
        "batch_shadow_calls": frame(
            [(r.sample_id, c.model, c.answer, c.input_tokens, c.cached_input_tokens,
              c.output_tokens, c.cost_usd, c.latency_ms, c.error, c.attempts, c.deployment,
              c.outcome, c.spend_usd, c.usage_estimated, c.reused_from, r.sample_key)
             for r in results for c in r.calls], SHADOW_CALLS_SCHEMA),
        "batch_scores": frame(
            [(r.sample_id, *sc, r.sample_key) for r in results for sc in r.scores], SCORES_SCHEMA),
        "batch_finished": frame(
            [(r.sample_id, r.status, r.skip_reason) for r in results if r.status != "pending"],
            FINISHED_SCHEMA),
        "batch_attempts": frame(_attempt_rows(results), ATTEMPTS_SCHEMA),
        "batch_cascade_scores": frame(
            [(r.sample_id, *c) for r in results for c in r.cascade_scores],
            CASCADE_SCORES_SCHEMA),
        "batch_judge_calls": frame(
            [(r.sample_id, j.model, j.judge, j.mode, j.position, j.template, j.call.answer,
              j.grade, j.verdict, j.parse_error, j.candidate_chars, j.reference_chars,
              j.call.input_tokens, j.call.output_tokens, j.call.cost_usd, j.call.spend_usd,
              j.call.latency_ms, j.call.error, j.call.outcome, j.call.attempts)
             for r in results for j in r.judge_calls], JUDGE_CALLS_SCHEMA),
    }


