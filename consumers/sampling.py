"""Deterministic stratified sampling.

A request is sampled when a hash of its id (salted) falls below its stratum's rate, so a replay
of the same traffic samples the same requests, and the probability is known for every row.
Strata are `frontier model | value of one tag`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

_SCALE = float(1 << 64)


def stratum_of(model: str, tag_value: str | None) -> str:
    return f"{model}|{tag_value if tag_value else '-'}"


class UnitHash:
    """`unit_hash` for one salt: the keyed hash is set up once and copied per request (half the
    cost of keying it again for every message)."""

    __slots__ = ("_base",)

    def __init__(self, salt: str) -> None:
        self._base = hashlib.blake2b(digest_size=8, key=salt.encode()[:64])

    def __call__(self, request_id: str) -> float:
        h = self._base.copy()
        h.update(request_id.encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest(), "big") / _SCALE


def unit_hash(salt: str, request_id: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, request id)."""
    return UnitHash(salt)(request_id)


class Sampler:
    def __init__(self, default_rate: float, rates: Mapping[str, float], salt: str) -> None:
        self.default_rate = default_rate
        self.rates = dict(rates)
        self.salt = salt
        self._hash = UnitHash(salt)
        self._cache: dict[str, float] = {}

    def rate(self, stratum: str) -> float:
        r = self._cache.get(stratum)
        if r is None:
            model, _, tag = stratum.partition("|")
            for key in (stratum, f"{model}|*", f"*|{tag}"):
                if key in self.rates:
                    r = self.rates[key]
                    break
            else:
                r = self.default_rate
            self._cache[stratum] = r
        return r

    def decide(self, request_id: str, stratum: str) -> tuple[bool, float]:
        """(sampled, probability) for one request."""
        r = self.rate(stratum)
        return (r > 0.0 and self._hash(request_id) < r), r
