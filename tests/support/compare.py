"""Comparing query results from two files: equal, floats to 1e-9 relative (sums in another
order differ in the last bits)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def assert_same_rows(got: Sequence[Sequence[object]], want: Sequence[Sequence[object]],
                     what: object = "") -> None:
    assert len(got) == len(want), (what, len(got), len(want))
    for x, y in zip(got, want, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(v, float):
                assert u == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), (what, x, y)
            else:
                assert u == v, (what, x, y)
