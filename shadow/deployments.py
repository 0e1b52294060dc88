"""Deployments of a model and how calls are spread over them.

A model is a `DeploymentGroup` of one or more `Deployment`s (endpoints). `acquire` picks the
least busy deployment that can take a call now: not on cooldown, not asked to wait by a
`Retry-After`, under its `max_concurrency`, with room in its rpm/tpm windows. When none can,
the call waits (woken when a call finishes, or when the earliest deployment frees up) until
its deadline, and then `GroupUnavailable` says why.

Health works like LiteLLM's allowed fails / cooldown, as a circuit breaker: `allowed_fails`
consecutive failures take a deployment *down* and put it on cooldown; after it, one probe call
is let through (half-open): a success brings it back up, a failure starts a new cooldown at
once. Cooldowns start short and double up to `cooldown_s` (`first_probe_s`, 2× each failed
probe), so a deployment back after 30 s is used again seconds later, not a whole cooldown later,
while one that stays down is asked at most once per `cooldown_s`. Going down and coming back
are logged once each, not at every failed probe.

When every deployment of a group has been down for `give_up_after_s` (`shadow.max_wait_s`),
calls stop waiting for a probe that keeps failing: they fail at once (`GroupUnavailable`), so
samples end `skipped_unavailable` and the pipeline moves on; the next probe still goes out when
its cooldown ends, and the first success brings the group back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

from shadow.config import DeploymentConfig
from shadow.errors import GroupUnavailable
from shadow.limits import Entry, RateWindow

log = logging.getLogger("shadowroute.shadow")


class Deployment:
    def __init__(self, spec: DeploymentConfig) -> None:
        self.spec = spec
        self.name = spec.name
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.rpm = RateWindow(spec.rpm) if spec.rpm > 0 else None
        self.tpm = RateWindow(spec.tpm) if spec.tpm > 0 else None
        self.inflight = 0
        self.fails = 0
        self.cooldown_until = -math.inf
        self.half_open = False
        self.not_before = -math.inf
        self.last_error: str | None = None
        self.cooldowns = 0
        self.down_since: float | None = None  # clock time it went down; None while up
        self.backoff = 0.0  # the cooldown it is on (or had last)
        # Prices in USD per token, worst case for the input (cached input may be dearer).
        self.in_price = spec.input_per_mtok / 1e6
        self.cached_price = spec.cached_input_per_mtok / 1e6
        self.out_price = spec.output_per_mtok / 1e6

    def on_cooldown(self, now: float) -> bool:
        return now < self.cooldown_until

    def wait_time(self, now: float, tokens: int) -> float:
        """0 when a call can start now, else a lower bound on the wait (a finishing call may
        end it sooner)."""
        if now < self.cooldown_until:
            return self.cooldown_until - now
        if now < self.not_before:
            return self.not_before - now
        s = self.spec
        if self.half_open and self.inflight:
            return s.timeout_s  # the probe decides first
        if s.max_concurrency and self.inflight >= s.max_concurrency:
            return s.timeout_s
        wait = 0.0
        if self.rpm is not None:
            wait = self.rpm.wait_time(now, 1)
        if self.tpm is not None:
            wait = max(wait, self.tpm.wait_time(now, tokens))
        return wait

    def state(self, now: float) -> str:
        if now < self.cooldown_until:
            return "cooldown"
        return "probing" if self.half_open else "ok"

    def health(self, now: float) -> dict[str, object]:
        """What /healthz shows: `up` or `down` (on cooldown, or its probe running), since when
        (seconds) and why."""
        if self.down_since is None:
            return {"state": "up"}
        out: dict[str, object] = {"state": "down", "down_for_s": round(now - self.down_since, 1),
                                  "last_error": self.last_error}
        if now < self.cooldown_until:
            out["next_probe_in_s"] = round(self.cooldown_until - now, 1)
        else:
            out["probing"] = True
        return out

    def input_cost(self, tokens: int, cached: int = 0) -> float:
        return max(tokens - cached, 0) * self.in_price + cached * self.cached_price

    def worst_cost(self, prompt_bound: int, max_tokens: int) -> float:
        return prompt_bound * max(self.in_price, self.cached_price) + max_tokens * self.out_price

    def cost(self, inp: int, cached: int, out: int) -> float:
        return self.input_cost(inp, cached) + out * self.out_price


class Lease:
    __slots__ = ("deployment", "rpm_entry", "tpm_entry", "done")

    def __init__(self, deployment: Deployment, rpm_entry: Entry | None,
                 tpm_entry: Entry | None) -> None:
        self.deployment = deployment
        self.rpm_entry = rpm_entry
        self.tpm_entry = tpm_entry
        self.done = False


class DeploymentGroup:
    def __init__(self, name: str, deployments: Sequence[Deployment], *, allowed_fails: int = 3,
                 cooldown_s: float = 60.0, first_probe_s: float | None = None,
                 give_up_after_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not deployments:
            raise ValueError(f"model {name!r} has no deployments")
        self.name = name
        self.deployments = list(deployments)
        self.allowed_fails = allowed_fails
        self.cooldown_s = cooldown_s
        self.first_probe_s = cooldown_s if first_probe_s is None else min(first_probe_s, cooldown_s)
        self.give_up_after_s = give_up_after_s
        self.clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()

    # -- picking ----------------------------------------------------------------------------
    def _pick(self, now: float, tokens: int, avoid: Deployment | None
              ) -> tuple[Deployment | None, float]:
        best: Deployment | None = None
        best_key = (True, 0)
        wait = math.inf
        for d in self.deployments:
            w = d.wait_time(now, tokens)
            if w > 0:
                wait = min(wait, w)
                continue
            key = (d is avoid, d.inflight)  # least busy; the one that just failed last
            if best is None or key < best_key:
                best, best_key = d, key
        return best, wait

    def down_since(self) -> float | None:
        """While every deployment is down: when the last of them went down; else None."""
        since = [d.down_since for d in self.deployments]
        return None if None in since else max(s for s in since if s is not None)

    def is_down(self) -> bool:
        return self.down_since() is not None

    def ready_other_than(self, d: Deployment, tokens: int) -> bool:
        now = self.clock()
        return any(o is not d and o.wait_time(now, tokens) <= 0 for o in self.deployments)

    async def acquire(self, tokens: int, deadline: float, avoid: Deployment | None = None) -> Lease:
        """A lease on the best deployment for a call of about `tokens` tokens, waiting until
        `deadline` (clock time) at most; `avoid` is used only when nothing else is ready."""
        while True:
            now = self.clock()
            d, wait = self._pick(now, tokens, avoid)
            if d is not None:
                d.inflight += 1
                return Lease(d, d.rpm.add(now, 1) if d.rpm else None,
                             d.tpm.add(now, tokens) if d.tpm else None)
            # `wait` is when the windows free room by themselves; a call in flight can free it
            # sooner (its tokens are corrected down to its `usage`), so while one runs, wait for
            # it until the deadline rather than give up now.
            if now >= deadline or (now + wait > deadline
                                   and not any(x.inflight for x in self.deployments)):
                raise GroupUnavailable(self.describe(now))
            limit = deadline
            down = self.down_since()
            if down is not None and self.give_up_after_s is not None:
                limit = min(limit, down + self.give_up_after_s)
                if now >= limit:  # down for long enough: waiting for the probe is pointless
                    raise GroupUnavailable(self.describe(now))
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout(min(wait, limit - now)):
                    await fut
            except TimeoutError:
                pass
            finally:
                if not fut.done():
                    fut.cancel()

    def describe(self, now: float) -> str:
        parts = []
        for d in self.deployments:
            st = d.state(now)
            if st == "cooldown":
                why = f"on cooldown for {d.cooldown_until - now:.0f}s more"
                if d.down_since is not None:
                    why = f"down for {now - d.down_since:.0f}s, {why}"
            elif now < d.not_before:
                why = f"asked to retry after {d.not_before - now:.0f}s"
            elif d.spec.max_concurrency and d.inflight >= d.spec.max_concurrency:
                why = f"at max_concurrency {d.spec.max_concurrency}"
            else:
                why = "at its rpm/tpm limit" if st == "ok" else "probing"
            if d.last_error and st != "ok":
                why += f" (last error: {d.last_error})"
            parts.append(f"{d.name} {why}")
        return f"no deployment of {self.name!r} available: " + "; ".join(parts)

    # -- finishing --------------------------------------------------------------------------
    def _release(self, lease: Lease) -> Deployment:
        lease.done = True
        d = lease.deployment
        d.inflight -= 1
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        return d

    def cancel(self, lease: Lease) -> None:
        """The call was not sent (e.g. the budget refused it): as if it never started."""
        if lease.done:
            return
        d = self._release(lease)
        if lease.rpm_entry is not None and d.rpm is not None:
            d.rpm.correct(lease.rpm_entry, 0)
        if lease.tpm_entry is not None and d.tpm is not None:
            d.tpm.correct(lease.tpm_entry, 0)

    def succeeded(self, lease: Lease, tokens: int | None) -> None:
        if lease.done:
            return
        d = self._release(lease)
        if tokens is not None and lease.tpm_entry is not None and d.tpm is not None:
            d.tpm.correct(lease.tpm_entry, tokens)
        if d.down_since is not None:
            log.warning("deployment %s of %s is up again after %.0fs down", d.name, self.name,
                        self.clock() - d.down_since)
            d.down_since = None
        d.fails = 0
        d.half_open = False
        d.last_error = None

    def failed(self, lease: Lease, error: str, *, health: bool = True,
               retry_after: float | None = None) -> None:
        """The call failed; `health` says whether it counts against the deployment (a 400
        is the request's fault, not the deployment's)."""
        if lease.done:
            return
        d = self._release(lease)
        now = self.clock()
        if retry_after is not None:
            d.not_before = max(d.not_before, now + retry_after)
        if not health:
            return
        d.last_error = error
        d.fails += 1
        if (d.half_open or d.fails >= self.allowed_fails) and not d.on_cooldown(now):
            if d.down_since is None:  # it just went down: said once, not at every probe
                d.down_since = now
                d.backoff = self.first_probe_s
                log.warning("deployment %s of %s is down after %d failure(s): %s; on cooldown, "
                            "next probe in %gs (then doubling up to %gs)", d.name, self.name,
                            d.fails, error, d.backoff, self.cooldown_s)
            else:
                d.backoff = min(self.cooldown_s, max(d.backoff, self.first_probe_s) * 2)
                log.debug("deployment %s of %s still down (%s): next probe in %gs", d.name,
                          self.name, error, d.backoff)
            d.cooldown_until = now + d.backoff
            d.half_open = True
            d.cooldowns += 1
            d.fails = 0
