"""Test traffic whose right answers the tests know: arithmetic and extraction requests in
OpenAI chat format, and a cheap-model answer rule with known mistakes."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import orjson

CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Perth", "Dakar"]
PRICE_IN, PRICE_OUT = 2.5, 10.0  # frontier USD per 1M tokens in the test price table


@dataclass
class Truth:
    request_id: str
    feature: str
    answer: str
    cost_usd: float
    prompt: str


def make_records(n: int, seed: int = 7, bad_every: int = 0) -> tuple[list[bytes], dict[str, Truth]]:
    rnd = random.Random(seed)
    out: list[bytes] = []
    truth: dict[str, Truth] = {}
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            out.append([b"{not json", b"\xff\xfe\x00", b'{"request": {"messages": []}}',
                        b"[1, 2, 3]"][i % 4])
            continue
        rid = f"req-{seed}-{i}"
        if rnd.random() < 0.6:
            a, b = rnd.randint(1, 999), rnd.randint(1, 999)
            feature, prompt, answer = "math", f"What is {a} + {b}?", f"The answer is {a + b:,}."
        else:
            city = rnd.choice(CITIES)
            feature = "extract"
            prompt = f"Extract the city from: 'I flew to {city} last May.' Reply with the city only."
            answer = city
        inp, outp = len(prompt) // 4 + 20, len(answer) // 4 + 5
        cost = (inp * PRICE_IN + outp * PRICE_OUT) / 1e6
        rec = {
            "request_id": rid, "ts": 1764244800 + i,
            "request": {"model": "gpt-4o", "temperature": 0, "max_tokens": 64,
                        "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": prompt}]},
            "response": {"id": f"chatcmpl-{i}", "model": "gpt-4o",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": answer}}],
                         "usage": {"prompt_tokens": inp, "completion_tokens": outp}},
            "latency_ms": rnd.uniform(200, 2000),
            "tags": {"feature": feature, "tenant": rnd.choice(["a", "b"])},
        }
        # Half the records carry their cost; the rest must be priced from the price table.
        if i % 2 == 0:
            rec["cost_usd"] = cost
        out.append(orjson.dumps(rec))
        truth[rid] = Truth(rid, feature, answer, cost, prompt)
    return out, truth


_SUM = re.compile(r"What is (\d+) \+ (\d+)\?")
_CITY = re.compile(r"flew to (\w+) last")


def cheap_answer(prompt: str) -> str:
    """The test's cheap model: right on most prompts, wrong on a known subset."""
    m = _SUM.search(prompt)
    if m:
        s = int(m.group(1)) + int(m.group(2))
        return f"{s}" if s % 3 else f"I think it is {s + 1}"
    m = _CITY.search(prompt)
    if m:
        city = m.group(1)
        return city.upper() + "." if city not in ("Oslo", "Lima") else "Somewhere in Europe"
    return "no idea"


def expected_quality(t: Truth) -> float:
    """The score the configured scorer must give `cheap_answer` for this request."""
    return 1.0 if _right(t) else 0.0


def _right(t: Truth) -> bool:
    ans = cheap_answer(t.prompt)
    if t.feature == "math":
        m = _SUM.search(t.prompt)
        assert m
        return int(m.group(1)) + int(m.group(2)) == int(re.findall(r"\d+", ans)[-1])
    return ans.rstrip(".").lower() == t.answer.lower()


def cheap_cost(prompt: str, answer: str, price_in: float, price_out: float) -> float:
    """What the test model server's usage costs at the cheap model's prices."""
    full = "Be brief.\n" + prompt
    return ((len(full) // 4 + 1) * price_in + (len(answer) // 4 + 1) * price_out) / 1e6
