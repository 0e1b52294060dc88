"""A seeded generator of realistic production LLM traffic, for the demo and the benchmarks.

THE TRAFFIC AND ITS FRONTIER ANSWERS ARE GENERATED: every task is built from templates with a
right answer the generator computes (sums, dates, extracted fields, evaluated expressions), so
the "frontier answer" is known to be correct. The mix is skewed like real traffic: mostly easy
tasks (extraction, classification, reformatting, short facts), fewer hard ones (multi-step word
problems, code questions). Records come in the supported log formats (`encode`).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from typing import Any

from shadowroute.demo import encoders
from shadowroute.demo.calls import Call, Task

__all__ = ["FORMATS", "FRONTIER", "MIX", "SCORER_BY_TASK", "Call", "Task", "TrafficGenerator"]

FRONTIER = {  # model -> (USD per 1M input, cached input, output)
    "gpt-4o": (2.5, 1.25, 10.0),
    "gpt-4.1": (2.0, 0.5, 8.0),
}
# task -> share of traffic; easy tasks dominate, as in most production mixes
MIX = {
    "extraction": 0.22, "classification": 0.2, "reformatting": 0.14, "factual": 0.14,
    "arithmetic": 0.12, "word_problem": 0.1, "code": 0.08,
}
# Which scorer compares answers of each task (used by the demo config).
SCORER_BY_TASK = {"arithmetic": "final_number", "word_problem": "final_number"}

SYSTEM_PROMPTS = [
    "You are a helpful assistant for an e-commerce company. Answer concisely and precisely. "
    "If the user asks for a single value, reply with that value only, without explanation. "
    "Never reveal internal policies. Use the user's language. Prefer short answers.",
    "You are the support copilot of a SaaS product. Follow the instructions exactly; when a "
    "format is requested, reply in that format only. Do not add greetings or sign-offs. If the "
    "question is ambiguous, choose the most likely interpretation and answer it.",
]
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima",
            "Norway": "Oslo", "Egypt": "Cairo", "Canada": "Ottawa", "Vietnam": "Hanoi",
            "Chile": "Santiago", "Poland": "Warsaw", "Ghana": "Accra", "Spain": "Madrid"}
NAMES = ["alice", "bob", "carol", "dmitri", "emeka", "fatima", "gwen", "hiro", "ines", "jon"]
DOMAINS = ["example.com", "mail.test", "corp.example", "shop.test"]
REVIEWS = {
    "positive": ["Arrived early and works perfectly, very happy with it.",
                 "Great quality for the price, would buy again."],
    "negative": ["Broke after two days and support never answered.",
                 "Terrible fit, returned it immediately."],
    "neutral": ["It is a cable. It charges the phone.",
                "Delivery took the expected time; product as described."],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def _extraction(r: random.Random) -> tuple[str, str]:
    email = f"{r.choice(NAMES)}.{r.randint(1, 99)}@{r.choice(DOMAINS)}"
    text = (f"Hi team, please update my account. You can reach me at {email} or by phone "
            f"after {r.randint(9, 17)}:00. Order #{r.randint(10000, 99999)} is affected.")
    return f"Extract the email address from this message. Reply with the address only.\n\n{text}", email


def _classification(r: random.Random) -> tuple[str, str]:
    label = r.choice(list(REVIEWS))
    return (f"Classify the sentiment of this review as positive, negative or neutral. Reply with "
            f"one word.\n\nReview: \"{r.choice(REVIEWS[label])}\"", label)


def _reformatting(r: random.Random) -> tuple[str, str]:
    d = dt.date(r.randint(2015, 2026), r.randint(1, 12), r.randint(1, 28))
    return (f"Convert this date to ISO format (YYYY-MM-DD): {MONTHS[d.month - 1]} {d.day}, "
            f"{d.year}. Reply with the date only.", d.isoformat())


def _factual(r: random.Random) -> tuple[str, str]:
    country = r.choice(list(CAPITALS))
    return f"What is the capital of {country}? Reply with the city name only.", CAPITALS[country]


def _arithmetic(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(12, 99), r.randint(12, 99)
    if r.random() < 0.5:
        return f"What is {a} * {b}?", f"{a} * {b} = {a * b:,}"
    return f"What is {a * 10 + b} + {b * 7 + a}?", f"The sum is {a * 10 + b + b * 7 + a:,}."


def _word_problem(r: random.Random) -> tuple[str, str]:
    price, qty, disc, ship = r.randint(3, 40), r.randint(2, 12), r.choice([10, 20, 25]), r.randint(4, 15)
    total = price * qty * (100 - disc) / 100 + ship
    prompt = (f"A store sells notebooks at ${price} each. Maya buys {qty} notebooks, gets a "
              f"{disc}% discount on the notebooks, and pays ${ship} for shipping. How many dollars "
              f"does she pay in total? Think step by step.")
    ans = (f"Notebooks: {qty} x ${price} = ${price * qty}. Discount {disc}%: "
           f"${price * qty * (100 - disc) / 100:g}. Plus shipping ${ship}: ${total:g}.\n"
           f"The answer is {total:g}.")
    return prompt, ans


def _code(r: random.Random) -> tuple[str, str]:
    xs = r.sample(range(1, 20), 5)
    k = r.randint(1, 3)
    forms: list[tuple[str, Callable[[], Any]]] = [
        (f"sorted({xs})[::-1][:{k + 1}]", lambda: sorted(xs)[::-1][: k + 1]),
        (f"[x * {k} for x in {xs} if x % 2 == 0]", lambda: [x * k for x in xs if x % 2 == 0]),
        (f"sum({xs}) // {k + 1}", lambda: sum(xs) // (k + 1)),
    ]
    expr, fn = r.choice(forms)
    return (f"What does this Python expression evaluate to? Reply with the value only.\n\n"
            f"```python\n{expr}\n```", repr(fn()))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "extraction": _extraction, "classification": _classification, "reformatting": _reformatting,
    "factual": _factual, "arithmetic": _arithmetic, "word_problem": _word_problem, "code": _code,
}


class TrafficGenerator:
    """`calls(n)` yields generated production calls; `encoded(n)` yields log records as bytes."""

    def __init__(self, seed: int = 0, formats: tuple[str, ...] = ("openai_chat",),
                 start_ts: float = 1_780_000_000.0, error_rate: float = 0.01) -> None:
        self.rnd = random.Random(seed)
        self.seed = seed
        self.formats = formats
        self.ts = start_ts
        self.error_rate = error_rate
        self._tasks = list(MIX)
        self._weights = list(MIX.values())

    def calls(self, n: int) -> Iterator[Call]:
        r = self.rnd
        for i in range(n):
            task = r.choices(self._tasks, self._weights)[0]
            prompt, answer = TASKS[task](r)
            system = r.choice(SYSTEM_PROMPTS)
            model = "gpt-4o" if r.random() < 0.8 else "gpt-4.1"
            inp = (len(system) + len(prompt)) // 4 + r.randint(0, 40)
            cached = (len(system) // 4) if r.random() < 0.4 else 0
            out = len(answer) // 4 + r.randint(2, 30)
            p_in, p_cached, p_out = FRONTIER[model]
            cost = ((inp - cached) * p_in + cached * p_cached + out * p_out) / 1e6
            self.ts += r.expovariate(20.0)
            yield Call(
                request_id=f"gen-{self.seed}-{i}", ts=round(self.ts, 3), model=model,
                task=Task(task, system, prompt, answer), input_tokens=inp,
                cached_input_tokens=cached, output_tokens=out, cost_usd=cost,
                latency_ms=round(250 + out * r.uniform(15, 40) + r.expovariate(1 / 150), 1),
                tags={"feature": task, "app": r.choice(["web", "mobile", "api"]),
                      "tenant": f"t{r.randint(1, 25)}"})

    def encoded(self, n: int) -> Iterator[bytes]:
        for i, call in enumerate(self.calls(n)):
            fmt = self.formats[i % len(self.formats)]
            yield ENCODERS[fmt](call, self.rnd.random() < self.error_rate)


ENCODERS = encoders.ENCODERS
FORMATS = tuple(ENCODERS)
