"""What shadowing would cost, before it runs: `shadowroute plan`.

From the observed eligible traffic per stratum (requests per hour over a recent window, mean
input and output tokens, mean frontier cost), the sampling rates and the cheap models' prices,
the expected shadow spend per hour and per day, per model and in all, beside the hard budget
caps. Two figures per model: `expected` (output tokens as production's answers had them, capped
at the model's `max_tokens`) and `reserved` (what the budget holds before each call: the whole
`max_tokens`), since a cap is met by reservations first. The noise floor's frontier calls are a
line of their own (priced at the production calls' mean cost), and so is the LLM judge: in the
strata whose scorer can send answers to it (`judge`, or `auto` with `open_ended = "judge"`),
every answer is counted as judged (the prefilter and `auto` only lower that), each prompt
holding the request, both answers and the template (`JUDGE_PROMPT_TOKENS`), its output the
judge's whole `max_tokens`: an upper bound, before the judge has run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consumers.sampling import Sampler
from shadow.config import JudgeConfig, ModelConfig, NoiseFloorConfig

JUDGE_PROMPT_TOKENS = 300  # the judge's instructions around the request and the answers
JUDGE_CALLS = {"grade": 1, "pairwise": 2, "both": 3}  # per judged answer


@dataclass(frozen=True)
class StratumTraffic:
    stratum: str
    eligible: int
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    mean_frontier_usd: float | None
    span_s: float


def _usd(tokens_in: float, tokens_out: float, m: ModelConfig) -> float:
    return (tokens_in * m.input_per_mtok + tokens_out * m.output_per_mtok) / 1e6


def plan(traffic: Sequence[StratumTraffic], sampler: Sampler, models: Sequence[ModelConfig],
         floor: NoiseFloorConfig, usd_per_hour: float, usd_per_day: float,
         judge: JudgeConfig | None = None,
         judged: Callable[[str], bool] = lambda stratum: False) -> dict[str, Any]:
    """The expected spend (see the module docstring), as a JSON-ready dict. `judged(stratum)`:
    whether that stratum's scorer can send answers to the judge."""
    rows = []
    samples_per_hour = 0.0
    per_model = {m.name: {"expected": 0.0, "reserved": 0.0} for m in models}
    floor_usd = 0.0
    judge_usd = 0.0
    floor_names = {m.name for m in floor.models}
    for t in traffic:
        per_hour = t.eligible / t.span_s * 3600
        rate = sampler.rate(t.stratum)
        sampled = per_hour * rate
        samples_per_hour += sampled
        tin, tout = t.mean_input_tokens or 0.0, t.mean_output_tokens or 0.0
        for m in models:
            per_model[m.name]["expected"] += sampled * _usd(tin, min(tout, m.max_tokens), m)
            per_model[m.name]["reserved"] += sampled * _usd(tin, m.max_tokens, m)
        floored = t.stratum.partition("|")[0] in floor_names
        if floored:
            floor_usd += sampled * floor.share * (t.mean_frontier_usd or 0.0)
        if judge is not None and judged(t.stratum):
            # Each cheap answer (and the floor's, on its share) is judged against the frontier's;
            # each text in a judge prompt is cut to max_chars (~4 characters a token).
            cut = judge.max_chars / 4
            answers = [(1.0, min(tout, m.max_tokens)) for m in models]
            if floored:
                answers.append((floor.share, tout))
            judge_usd += sampled * JUDGE_CALLS[judge.mode] * sum(
                weight * _usd(JUDGE_PROMPT_TOKENS + min(tin, cut) + min(tout, cut)
                              + min(answer, cut), judge.model.max_tokens, judge.model)
                for weight, answer in answers)
        rows.append({"stratum": t.stratum, "eligible_per_hour": per_hour, "sample_rate": rate,
                     "samples_per_hour": sampled})
    expected = sum(v["expected"] for v in per_model.values()) + floor_usd + judge_usd
    reserved = sum(v["reserved"] for v in per_model.values()) + floor_usd + judge_usd

    def verdict(cap: float, hours: float) -> str:
        if cap == float("inf"):
            return "no cap"
        if reserved * hours <= cap:
            return "within the cap"
        if expected * hours <= cap:
            return ("within the cap on expected spend, over it on reservations: some calls may "
                    "wait for room or end skipped_budget")
        share = 1 - cap / (expected * hours)
        return f"over the cap: about {share:.0%} of samples would end skipped_budget"

    return {
        "window_hours": round(max((t.span_s for t in traffic), default=0.0) / 3600, 3),
        "samples_per_hour": samples_per_hour,
        "models": [{"model": name, "expected_usd_per_hour": v["expected"],
                    "expected_usd_per_day": v["expected"] * 24,
                    "reserved_usd_per_hour": v["reserved"]} for name, v in per_model.items()],
        "noise_floor_usd_per_hour": floor_usd,
        "judge_usd_per_hour": judge_usd,
        "expected_usd_per_hour": expected, "expected_usd_per_day": expected * 24,
        "reserved_usd_per_hour": reserved,
        "cap_usd_per_hour": None if usd_per_hour == float("inf") else usd_per_hour,
        "cap_usd_per_day": None if usd_per_day == float("inf") else usd_per_day,
        "hourly": verdict(usd_per_hour, 1), "daily": verdict(usd_per_day, 24),
        "strata": rows,
    }
