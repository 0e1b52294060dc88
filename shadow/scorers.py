"""Scorers: how good a cheap answer is relative to the frontier answer, in [0, 1].

A scorer is one function `(candidate, reference) -> float`, registered by name in `SCORERS`.
1.0 means "as good as the frontier answer for this purpose".

- `exact_match`: normalized text equality (case, whitespace, surrounding punctuation/quotes,
  articles and markdown emphasis ignored).
- `final_number`: GSM8K-style — the last number in each answer compared numerically
  (handles `1,234`, `-3`, `+2`, `0.50`, `$12`, `12%`, `1/2` stays as two numbers).
- `token_f1`: SQuAD-style token overlap F1 of the normalized answers (graded, for free text).
- `contains`: 1 when the normalized reference appears in the normalized candidate as a whole
  word sequence ("Paris" in "The capital is Paris."): for short-value tasks where a chattier
  model still gives the right value. It cannot see negation ("not Paris"): prefer
  `exact_match` where answers must be the value alone.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable

Scorer = Callable[[str, str], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_WS = re.compile(r"\s+")
_EMPHASIS = re.compile(r"[*_`]+")
_PUNCT_EDGES = string.punctuation + "“”‘’«»"
# A number: optional sign, optional currency, digits with optional thousands separators, decimals.
_NUMBER = re.compile(r"(?<![\w.])([-+−]?)\s?[$€£]?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def normalize(text: str) -> str:
    t = _EMPHASIS.sub("", text.lower())
    t = _WS.sub(" ", t).strip().strip(_PUNCT_EDGES).strip()
    t = _ARTICLES.sub(" ", t)
    return _WS.sub(" ", t).strip()


def exact_match(candidate: str, reference: str) -> float:
    if candidate == reference:
        return 1.0
    return 1.0 if normalize(candidate) == normalize(reference) else 0.0


def final_number(text: str) -> float | None:
    """The last number written in `text`, or None."""
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    if last is None:
        return None
    sign = -1.0 if last.group(1) in ("-", "−") else 1.0
    try:
        return sign * float(last.group(2).replace(",", ""))
    except ValueError:
        return None


def final_number_match(candidate: str, reference: str) -> float:
    ref = final_number(reference)
    cand = final_number(candidate)
    if ref is None or cand is None:
        # No number in the reference: fall back to text equality rather than guessing.
        return exact_match(candidate, reference) if ref is None else 0.0
    return 1.0 if math.isclose(cand, ref, rel_tol=1e-6, abs_tol=1e-9) else 0.0


def _tokens(text: str) -> list[str]:
    # Punctuation glued to a word ("France,") is not part of the token, as in SQuAD.
    return [t for t in (w.strip(_PUNCT_EDGES) for w in normalize(text).split()) if t]


def token_f1(candidate: str, reference: str) -> float:
    c = _tokens(candidate)
    r = _tokens(reference)
    if not c or not r:
        return 1.0 if c == r else 0.0
    common = sum((Counter(c) & Counter(r)).values())
    if common == 0:
        return 0.0
    p, rc = common / len(c), common / len(r)
    return 2 * p * rc / (p + rc)


def contains(candidate: str, reference: str) -> float:
    ref = _words(reference)
    if not ref:
        return exact_match(candidate, reference)
    return 1.0 if f" {ref} " in f" {_words(candidate)} " else 0.0


def _words(text: str) -> str:
    return _WS.sub(" ", _PUNCT_SPACES.sub(" ", normalize(text))).strip()


_PUNCT_SPACES = re.compile(r"[^\w\s@./:+-]+|(?<=\w)[.,:;!?](?=\s|$)")


SCORERS: dict[str, Scorer] = {
    "contains": contains,
    "exact_match": exact_match,
    "final_number": final_number_match,
    "token_f1": token_f1,
}
