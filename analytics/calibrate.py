"""Calibrate a router's threshold to a quality target, honestly: choose on the samples up to a
cutoff, verify on the samples after it (out-of-time).

On the calibration period, every threshold of the grid is estimated with its interval
(`analytics.gate.estimate`, one-sided at `confidence`); the chosen threshold is the one with
the largest savings whose quality *lower* bound meets the target (choosing on the point
estimate would pick a threshold that fails half the time). The same threshold is then judged
on the later samples, as the gate would (`verified`: pass / fail / inconclusive), so a
threshold tuned to one period's noise shows up as not verified. Each period is weighted by its
own traffic (N_h of the requests on its side of the cutoff).

Results can be saved by name beside the DuckDB file (`<db>.calibrations.json`) and used by
the gate (`shadowroute gate --calibration NAME`, `/v1/verdict?calibration=NAME`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

import sql
from analytics.gate import GateRequest, QueryFn, estimate, judge
from analytics.intervals import StratifiedSample

GRID = [round(i * 0.01, 2) for i in range(101)]


def calibration_file(db: Path) -> Path:
    return db.with_name(db.name + ".calibrations.json")


def _side(cols: list[str], rows: list[tuple[Any, ...]], before: bool
          ) -> dict[str, np.ndarray] | None:
    """The arrays of one side of the cutoff (read once, routed at any threshold by _at)."""
    c = {name: i for i, name in enumerate(cols)}
    rows = [r for r in rows if bool(r[c["before"]]) == before]
    if not rows:
        return None
    _, codes = np.unique(np.array([r[c["stratum"]] for r in rows], dtype=object),
                         return_inverse=True)
    first = np.unique(codes, return_index=True)[1]
    out = {name: np.array([np.nan if r[c[name]] is None else r[c[name]] for r in rows],
                          dtype=np.float64)
           for name in ("big_n", "frontier_usd", "q", "cf", "cm", "score")}
    out["big_n"], out["frontier_usd"] = out["big_n"][first], out["frontier_usd"][first]
    out["stratum"] = codes.astype(np.int64)
    return out


def _at(side: dict[str, np.ndarray], threshold: float) -> StratifiedSample:
    return StratifiedSample.build(side["stratum"], side["big_n"], side["q"], side["cf"],
                                  side["cm"], side["score"] < threshold, side["frontier_usd"])


def calibrate(query: QueryFn, router: str, model: str, target: float,
              until: dt.datetime | None = None, *, confidence: float = 0.95,
              min_samples: int = 200, interval: str = "analytic",
              grid: list[float] | None = None) -> dict[str, Any]:
    if until is None:
        _, rows = query(sql.query("calibration_default_cutoff"), {})
        until = rows[0][0] if rows and rows[0][0] is not None else dt.datetime.max
    cols, rows = query(sql.query("calibration_samples"),
                       {"router": router, "model": model, "until": until})
    req = GateRequest(router, 0.0, model, min_quality=target, min_samples=min_samples,
                      confidence=confidence, interval=interval)  # type: ignore[arg-type]
    before, after = _side(cols, rows, True), _side(cols, rows, False)
    candidates = []
    for t in grid or GRID:
        if before is None:
            break
        est = estimate(_at(before, t), req)
        if est["quality_lower"] >= target:
            candidates.append({"threshold": t, **est})
    out: dict[str, Any] = {"router": router, "model": model, "target": target,
                           "confidence": confidence, "interval": interval,
                           "until": until.isoformat() if until != dt.datetime.max else None}
    out["calibration_samples"] = 0 if before is None else len(before["q"])
    out["verification_samples"] = 0 if after is None else len(after["q"])
    if not candidates:
        out.update(threshold=None, calibration=None, verification=None, verified=None,
                   reason="no threshold's quality lower bound meets the target on the "
                          f"{out['calibration_samples']} samples up to the cutoff")
        return _finite(out)
    best = max(candidates, key=lambda e: (e["savings"], -e["threshold"]))
    t = best.pop("threshold")
    out["threshold"] = t
    out["calibration"] = best
    if after is None:
        out.update(verification=None, verified="inconclusive",
                   reason="no samples after the cutoff to verify on")
        return _finite(out)
    ver = estimate(_at(after, t), GateRequest(router, t, model, min_quality=target,
                                      min_samples=min_samples, confidence=confidence,
                                      interval=interval))  # type: ignore[arg-type]
    verdict, reasons = judge(ver, GateRequest(router, t, model, min_quality=target,
                                              min_samples=min_samples, confidence=confidence))
    out.update(verification=ver, verified=verdict, reason="; ".join(reasons))
    return _finite(out)


def save(db: Path, name: str, result: dict[str, Any]) -> Path:
    """Store `result` under `name` in `<db>.calibrations.json` (atomically replaced)."""
    path = calibration_file(db)
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[name] = result
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=2))
    os.replace(tmp, path)
    return path


def load(db: Path, name: str) -> dict[str, Any]:
    """The calibration saved as `name`; KeyError names what is missing."""
    path = calibration_file(db)
    saved = json.loads(path.read_text()) if path.exists() else {}
    if name not in saved:
        raise KeyError(f"no calibration named {name!r} in {path}"
                       + (f" (saved: {', '.join(sorted(saved))})" if saved else ""))
    if saved[name].get("threshold") is None:
        raise KeyError(f"calibration {name!r} found no threshold meeting its target")
    return saved[name]  # type: ignore[no-any-return]


def _finite(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items()}
    return None if isinstance(d, float) and not math.isfinite(d) else d
