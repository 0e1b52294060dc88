"""The LLM judge: an OpenAI-compatible model grading a cheap answer against the frontier's.

A sample whose scorer is `judge` (directly, per tag, or through `auto` when `scoring.open_ended =
"judge"`) is scored by a judge model, called through the same `ModelClient` as the cheap models:
the same deployments, limits, retries and the same hard budget. Two ways to ask, each a prompt
template with a version stored with every call:

- **grade** (reference-guided, as MT-Bench's single-answer grading with a reference): the judge
  sees the request, the frontier answer as the reference and the cheap answer, and gives a 1-10
  grade; the score is (grade - 1) / 9.
- **pairwise**: the judge sees both answers, unnamed, and says which serves the request better
  or that they tie; asked twice, in both orders, because judges favour a position. The same
  winner in both orders wins; any disagreement counts as a tie. The score is 1 when the cheap
  answer wins or ties (it is as good), 0 when the frontier's wins.

`mode = "both"` asks both ways: the grade is the score, the pairwise verdicts measure the
judge's biases. Every call is kept (`judge_calls`): template version, raw output, the parsed
grade or verdict, or why it could not be parsed. Unparseable output is a recorded failure, never
a score. A deterministic scorer decides first (`prefilter`): an answer it scores at least
`accept_at` is taken as good without paying for the judge (by default, the same answer as the
frontier's after normalisation).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consumers.errors import ConfigError
from shadow.client import ModelClient
from shadow.config import JudgeConfig, ScoringConfig, ShadowConfig
from shadow.results import CallResult, JudgeCall
from shadow.scorers import JUDGE, SCORERS, known, resolve

GRADE_TEMPLATE = "grade-v1"
PAIRWISE_TEMPLATE = "pairwise-v1"

_SYSTEM = ("You are an impartial, careful reviewer of AI assistant answers. You judge how well "
           "an answer serves the user's request: correctness first, then completeness, "
           "relevance and clarity. Length is not merit: a longer answer is not better for "
           "being longer. Do not let the order in which answers appear influence you.")

_GRADE = """\
[Request]
{request}

[Reference answer]
{reference}

[Answer to grade]
{candidate}

The reference answer is a good answer to the request. Grade the answer to grade on a scale \
of 1 to 10, where 10 means it serves the request as well as the reference or better, 7 means \
minor omissions or flaws, 4 means a substantial error or omission, and 1 means wrong, harmful \
or unrelated. Explain briefly, then end with the grade in exactly this form: [[N]]"""

_PAIRWISE = """\
[Request]
{request}

[Answer A]
{a}

[Answer B]
{b}

Which answer serves the request better? Compare them on correctness first, then \
completeness, relevance and clarity; ignore length and the order they appear in. Explain \
briefly, then end with exactly one verdict: [[A]] if A is better, [[B]] if B is better, \
[[C]] for a tie."""

_GRADE_RE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_GRADE_LOOSE_RE = re.compile(r"\b(?:grade|rating|score)\s*(?:is|:)?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?",
                             re.IGNORECASE)
_VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


class Unparseable(ValueError):
    """The judge's output holds no grade or verdict in the asked form."""


def parse_grade(text: str) -> float:
    """The last `[[N]]` in the output (a `Grade: N` line if there is none), 1 <= N <= 10."""
    found = _GRADE_RE.findall(text) or _GRADE_LOOSE_RE.findall(text)
    if not found:
        raise Unparseable("no grade in the judge's output (asked for [[N]], 1-10)")
    grade = float(found[-1])
    if not 1.0 <= grade <= 10.0:
        raise Unparseable(f"grade {found[-1]} outside 1-10")
    return grade


def parse_verdict(text: str) -> str:
    """`A`, `B` or `C` (a tie): the last `[[X]]` in the output."""
    found = _VERDICT_RE.findall(text)
    if not found:
        raise Unparseable("no verdict in the judge's output (asked for [[A]], [[B]] or [[C]])")
    return str(found[-1])


def clip(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars` with a note of the cut (the judge's prompt stays bounded, and
    so does what the budget reserves for it)."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[... {len(text) - max_chars} characters cut]"


def request_text(messages: Sequence[dict[str, Any]]) -> str:
    """The conversation as the judge reads it: one `role: content` paragraph per message."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # parts: their text, a placeholder for the rest
            content = "\n".join(p.get("text", "") if isinstance(p, dict) and p.get("type") == "text"
                                else f"[{p.get('type', 'part') if isinstance(p, dict) else 'part'}]"
                                for p in content)
        out.append(f"{m.get('role', 'user')}: {content or ''}")
    return "\n\n".join(out)


@dataclass
class Judged:
    """A judged pair: the score (None when the judge could not give one), why not, and the
    calls made."""

    value: float | None
    failure: str | None
    calls: list[JudgeCall]
    used: str = JUDGE


class Judge:
    """Grades (and compares) answers through `client`, a `ModelClient` of the judge model."""

    def __init__(self, cfg: JudgeConfig, client: ModelClient) -> None:
        self.cfg = cfg
        self.client = client
        self.name = cfg.model.name
        self.prefilter = resolve(cfg.prefilter) if cfg.prefilter else None

    async def judge(self, messages: Sequence[dict[str, Any]], reference: str, candidate: str,
                    *, model: str, sample_id: str) -> Judged:
        """Score `candidate` (by `model`) against the frontier's `reference`."""
        if self.prefilter is not None and self.prefilter(candidate, reference) >= self.cfg.accept_at:
            return Judged(1.0, None, [], used=self.cfg.prefilter)
        request = clip(request_text(messages), self.cfg.max_chars)
        ref, cand = clip(reference, self.cfg.max_chars), clip(candidate, self.cfg.max_chars)
        mode = self.cfg.mode
        jobs = []
        if mode in ("grade", "both"):
            jobs.append(self._grade(request, ref, cand, model, sample_id))
        if mode in ("pairwise", "both"):
            jobs.append(self._pair(request, ref, cand, model, sample_id, cheap_first=True))
            jobs.append(self._pair(request, ref, cand, model, sample_id, cheap_first=False))
        calls = list(await asyncio.gather(*jobs))
        lengths = (len(candidate), len(reference))
        for c in calls:
            c.candidate_chars, c.reference_chars = lengths
        if mode == "pairwise":
            value, failure = pair_score(calls[0], calls[1])
        else:
            value, failure = grade_score(calls[0])
        return Judged(value, failure, calls)

    async def _ask(self, prompt: str, sample_id: str) -> CallResult:
        return await self.client.complete(
            [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": prompt}],
            {"temperature": 0}, sample_id=sample_id)

    async def _grade(self, request: str, ref: str, cand: str, model: str, sample_id: str
                     ) -> JudgeCall:
        call = await self._ask(_GRADE.format(request=request, reference=ref, candidate=cand),
                               sample_id)
        jc = JudgeCall(model, self.name, "grade", None, GRADE_TEMPLATE, call)
        if call.error is None:
            try:
                jc.grade = parse_grade(call.answer or "")
            except Unparseable as e:
                jc.parse_error = str(e)
        return jc

    async def _pair(self, request: str, ref: str, cand: str, model: str, sample_id: str, *,
                    cheap_first: bool) -> JudgeCall:
        a, b = (cand, ref) if cheap_first else (ref, cand)
        call = await self._ask(_PAIRWISE.format(request=request, a=a, b=b), sample_id)
        jc = JudgeCall(model, self.name, "pairwise",
                       "cheap_first" if cheap_first else "cheap_second", PAIRWISE_TEMPLATE, call)
        if call.error is None:
            try:
                v = parse_verdict(call.answer or "")
            except Unparseable as e:
                jc.parse_error = str(e)
            else:
                jc.verdict = ("tie" if v == "C" else
                              "cheap" if (v == "A") == cheap_first else "frontier")
        return jc


def _failure(c: JudgeCall) -> str | None:
    if c.call.error is not None:
        return f"judge {c.call.outcome}: {c.call.error}"[:300]
    return f"judge output unparseable: {c.parse_error}" if c.parse_error else None


def grade_score(c: JudgeCall) -> tuple[float | None, str | None]:
    failure = _failure(c)
    if failure is not None or c.grade is None:
        return None, failure
    return (c.grade - 1.0) / 9.0, None


def pair_verdict(first: JudgeCall, second: JudgeCall) -> str | None:
    """The pair's verdict from both orders: the same winner twice wins, anything else ties."""
    if first.verdict is None or second.verdict is None:
        return None
    return first.verdict if first.verdict == second.verdict else "tie"


def pair_score(first: JudgeCall, second: JudgeCall) -> tuple[float | None, str | None]:
    failure = _failure(first) or _failure(second)
    verdict = pair_verdict(first, second)
    if failure is not None or verdict is None:
        return None, failure
    return (0.0 if verdict == "frontier" else 1.0), None


def check_judge(sh: ShadowConfig, sc: ScoringConfig) -> None:
    """Across `[shadow.judge]` and `[scoring]`: a scorer named `judge` has a judge to ask, and the
    prefilter is a deterministic scorer."""
    uses = [k for k, v in [("scoring.default", sc.default), ("scoring.open_ended", sc.open_ended),
                           *((f"scoring.by_tag.{t}", v) for t, v in sc.by_tag.items())]
            if v == JUDGE]
    if uses and sh.judge is None:
        raise ConfigError(uses[0], "is 'judge' but no judge is configured: add [shadow.judge] "
                                   "with its endpoint in [shadow.judge.model]")
    if sh.judge is not None and sh.judge.prefilter:
        p = sh.judge.prefilter
        if not (p in SCORERS or (p.startswith("json_match:") and known(p))):
            raise ConfigError("shadow.judge.prefilter", f"must be empty or a deterministic "
                              f"scorer ({', '.join(sorted(SCORERS))}, json_match:<paths>), "
                              f"got {p!r}")
