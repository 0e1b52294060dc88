"""ModelClient against the local fault-injecting server: retries, cooldowns, fallbacks, skips,
budget accounting and replay fidelity, on real HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from shadow.budget import Budget
from shadow.client import ModelClient
from shadow.config import DeploymentConfig, ModelConfig
from shadow.http import AiohttpClient
from shadow.results import CallResult
from shadow.tokens import prompt_token_bound
from tests.support.model_server import ModelBehaviour, ModelServer, closed_port_url

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def model(url: str = "", **kw: Any) -> ModelConfig:
    kw.setdefault("timeout_s", 5.0)
    return ModelConfig(name="cheap", base_url=url, model="tiny", input_per_mtok=1.0,
                       output_per_mtok=2.0, **kw)


async def call(cfg: ModelConfig, params: dict[str, Any] | None = None, n: int = 1,
               **kw: Any) -> list[CallResult]:
    kw.setdefault("backoff_s", 0.01)
    http = AiohttpClient(16)
    try:
        client = ModelClient(cfg, http, **kw)
        return [await client.complete(MSGS, params or {}) for _ in range(n)]
    finally:
        await http.aclose()


def test_replays_the_production_request_faithfully(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHEAP_KEY", "sk-secret")
    with ModelServer(ModelBehaviour(answer=lambda p: "4")) as ms:
        cfg = model(ms.url, api_key_env="CHEAP_KEY", max_tokens=100,
                    extra_headers={"X-Team": "shadow"})
        params = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 500, "stream": True, "n": 3,
                  "tools": False, "response_format": {"type": "json_object"}, "seed": 7}
        [r] = asyncio.run(call(cfg, params))
        body = ms.behaviour.requests[0]
        headers = ms.behaviour.headers[0]
    assert r.outcome == "ok" and r.answer == "4" and r.error is None and r.attempts == 1
    assert body == {"model": "tiny", "messages": MSGS, "temperature": 0.3, "top_p": 0.9,
                    "response_format": {"type": "json_object"}, "seed": 7, "max_tokens": 100}
    assert headers["authorization"] == "Bearer sk-secret" and headers["x-team"] == "shadow"
    # Cost from usage at the model's prices; the budget was charged the same.
    assert (r.input_tokens, r.output_tokens) == (len("Be brief.\nWhat is 2 + 2?") // 4 + 1, 1)
    assert r.cost_usd == pytest.approx((r.input_tokens * 1.0 + 1 * 2.0) / 1e6)
    assert r.spend_usd == r.cost_usd and not r.usage_estimated and r.deployment == "cheap#0"


def test_429_is_retried_after_retry_after() -> None:
    with ModelServer(ModelBehaviour(script=[(429, "0.4")])) as ms:
        t0 = time.monotonic()
        [r] = asyncio.run(call(model(ms.url)))
        elapsed = time.monotonic() - t0
    assert r.outcome == "ok" and r.attempts == 2
    assert elapsed >= 0.4


def test_retry_after_as_an_http_date() -> None:
    from email.utils import formatdate
    with ModelServer(ModelBehaviour(script=[(503, formatdate(time.time() + 1.2, usegmt=True))])) as ms:
        t0 = time.monotonic()
        [r] = asyncio.run(call(model(ms.url)))
    assert r.outcome == "ok" and time.monotonic() - t0 >= 0.2


def test_5xx_retried_until_max_retries_then_reported() -> None:
    with ModelServer(ModelBehaviour(script=[500, 503, 502, 500])) as ms:
        [r] = asyncio.run(call(model(ms.url), retries=2))
        assert len(ms.behaviour.requests) == 3
    assert r.outcome == "error" and r.attempts == 3 and r.answer is None
    assert r.error is not None and "HTTP 502" in r.error and "injected 502" in r.error
    assert r.spend_usd == 0  # an error status is not billed


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried_and_reported_plainly(
        status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHEAP_KEY", "sk-very-secret")
    with ModelServer(ModelBehaviour(fail_next=[status], echo_auth=True)) as ms:
        [r] = asyncio.run(call(model(ms.url, api_key_env="CHEAP_KEY")))
        assert len(ms.behaviour.requests) == 1
    assert r.outcome == "error" and r.attempts == 1
    assert r.error is not None and r.error.startswith(f"cheap#0: HTTP {status}: ")
    assert "sk-very-secret" not in r.error and "***" in r.error


def test_a_hang_times_out_is_retried_and_charged_its_worst_case() -> None:
    with ModelServer(ModelBehaviour(script=["hang"])) as ms:
        budget = Budget(usd_per_hour=1.0)
        [r] = asyncio.run(call(model(ms.url, timeout_s=0.3, max_tokens=50), budget=budget))
    assert r.outcome == "ok" and r.attempts == 2
    # The hung attempt may have been billed: the budget counts its worst case on top.
    assert r.spend_usd > r.cost_usd  # type: ignore[operator]
    assert budget.spent_usd("hour") == pytest.approx(r.spend_usd, abs=1e-8)


def test_timeouts_exhaust_retries() -> None:
    with ModelServer(ModelBehaviour(hang=True)) as ms:
        [r] = asyncio.run(call(model(ms.url, timeout_s=0.2), retries=1))
    assert r.outcome == "error" and r.attempts == 2 and "timeout after 0.2s" in (r.error or "")


def test_a_dropped_connection_is_retried() -> None:
    with ModelServer(ModelBehaviour(script=["drop"])) as ms:
        [r] = asyncio.run(call(model(ms.url)))
    assert r.outcome == "ok" and r.attempts == 2


def test_a_malformed_answer_is_retried_then_reported() -> None:
    with ModelServer(ModelBehaviour(malformed=True)) as ms:
        [r] = asyncio.run(call(model(ms.url), retries=1))
    assert r.outcome == "error" and r.attempts == 2 and "malformed" in (r.error or "")


def test_no_usage_charges_upper_bounds() -> None:
    with ModelServer(ModelBehaviour(no_usage=True, answer=lambda p: "four")) as ms:
        budget = Budget(usd_per_day=1.0)
        [r] = asyncio.run(call(model(ms.url, max_tokens=64), budget=budget))
        body = ms.behaviour.requests[0]
    assert r.outcome == "ok" and r.usage_estimated
    import orjson
    bound = prompt_token_bound(orjson.dumps(body), MSGS)
    # max_tokens, not the answer's 4 bytes: hidden reasoning tokens are billed too.
    assert r.input_tokens == bound and r.output_tokens == 64
    assert r.cost_usd == pytest.approx((bound * 1.0 + 64 * 2.0) / 1e6)
    assert budget.spent_usd("day") == pytest.approx(r.cost_usd, abs=1e-8)


def test_a_server_that_is_down() -> None:
    [r] = asyncio.run(call(model(closed_port_url()), retries=2))
    assert r.outcome == "error" and r.attempts == 3 and "connection error" in (r.error or "")
    assert r.spend_usd == 0  # never sent, never billed


def test_failing_deployment_goes_on_cooldown_and_the_group_falls_back() -> None:
    with ModelServer(ModelBehaviour(answer=lambda p: "fine")) as good:
        cfg = model(deployments=(DeploymentConfig(base_url=closed_port_url(), name="down"),
                                 DeploymentConfig(base_url=good.url, name="up")))

        async def go() -> tuple[list[CallResult], ModelClient]:
            async with AiohttpClient() as http:
                c = ModelClient(cfg, http, allowed_fails=2, cooldown_s=60, backoff_s=0.01)
                out = [await c.complete(MSGS, {}) for _ in range(6)]
                return out, c

        results, client = asyncio.run(go())
        served = len(good.behaviour.requests)
    assert all(r.outcome == "ok" and r.deployment == "up" for r in results)
    down, up = client.deployments
    assert down.state(time.monotonic()) == "cooldown" and down.cooldowns == 1
    assert up.state(time.monotonic()) == "ok"
    assert served == 6
    # The first call tried the least busy deployment first (the down one), then fell back.
    assert results[0].attempts == 2


def test_whole_group_down_the_call_is_given_up_as_unavailable() -> None:
    cfg = model(deployments=(DeploymentConfig(base_url=closed_port_url()),
                             DeploymentConfig(base_url=closed_port_url())))

    async def go() -> list[CallResult]:
        async with AiohttpClient() as http:
            c = ModelClient(cfg, http, allowed_fails=1, cooldown_s=30, backoff_s=0.01,
                            max_wait_s=0.3, retries=5)
            first = await c.complete(MSGS, {})
            t0 = time.monotonic()
            second = await c.complete(MSGS, {})
            assert time.monotonic() - t0 < 0.2  # cooldown outlasts max_wait_s: no point waiting
            return [first, second]

    first, second = asyncio.run(go())
    assert first.outcome == "error" and first.attempts == 2
    assert "no deployment of 'cheap' available" in (first.error or "")
    assert second.outcome == "unavailable" and second.attempts == 0
    assert "on cooldown" in (second.error or "") and "connection error" in (second.error or "")


def test_after_the_cooldown_one_probe_decides() -> None:
    with ModelServer(ModelBehaviour(script=[503, 503])) as ms:
        async def go() -> tuple[list[CallResult], ModelClient]:
            async with AiohttpClient() as http:
                c = ModelClient(model(ms.url), http, allowed_fails=2, cooldown_s=0.3,
                                retries=1, backoff_s=0.01, max_wait_s=5)
                r1 = await c.complete(MSGS, {})  # 503, 503: cooldown
                t0 = time.monotonic()
                r2 = await c.complete(MSGS, {})  # waits for the cooldown, probe succeeds
                assert time.monotonic() - t0 >= 0.25
                return [r1, r2], c

        (r1, r2), c = asyncio.run(go())
    assert r1.outcome == "error" and r2.outcome == "ok"
    assert c.deployments[0].state(time.monotonic()) == "ok"


def test_rpm_limit_holds_calls_back() -> None:
    with ModelServer() as ms:
        async def go() -> list[CallResult]:
            async with AiohttpClient() as http:
                c = ModelClient(model(ms.url, rpm=2), http, max_wait_s=0.3)
                return list(await asyncio.gather(*(c.complete(MSGS, {}) for _ in range(3))))

        results = asyncio.run(go())
        assert len(ms.behaviour.requests) == 2
    assert sorted(r.outcome for r in results) == ["ok", "ok", "unavailable"]
    assert "rpm/tpm limit" in next(r.error for r in results if r.error)


def test_max_concurrency_per_deployment() -> None:
    with ModelServer(ModelBehaviour(delay_s=0.15)) as ms:
        async def go() -> float:
            async with AiohttpClient() as http:
                c = ModelClient(model(ms.url, max_concurrency=1), http)
                t0 = time.monotonic()
                rs = await asyncio.gather(*(c.complete(MSGS, {}) for _ in range(3)))
                assert all(r.outcome == "ok" for r in rs)
                return time.monotonic() - t0

        assert asyncio.run(go()) >= 0.45  # one at a time


def test_budget_exhausted_skips_the_call() -> None:
    with ModelServer() as ms:
        cfg = model(ms.url, max_tokens=1000)  # worst case ~ $0.002 at $2/M output
        budget = Budget(usd_per_hour=0.001)
        [r] = asyncio.run(call(cfg, budget=budget))
        assert ms.behaviour.requests == []
    assert r.outcome == "budget" and r.attempts == 0 and "budget exhausted" in (r.error or "")
    assert budget.spent_usd("hour") == 0 and budget.reserved == 0


def test_identical_replays_reuse_the_first_answer() -> None:
    with ModelServer(ModelBehaviour(delay_s=0.1, answer=lambda p: "4")) as ms:
        async def go() -> list[CallResult]:
            async with AiohttpClient() as http:
                c = ModelClient(model(ms.url), http, reuse_window_s=60)
                same = await asyncio.gather(*(c.complete(MSGS, {"temperature": 0},
                                                         sample_id=f"s{i}") for i in range(3)))
                other = await c.complete(MSGS, {"temperature": 1}, sample_id="s9")
                return [*same, other]

        results = asyncio.run(go())
        assert len(ms.behaviour.requests) == 2  # one per distinct replay, none for the copies
    first, *copies, other = results
    assert first.outcome == "ok" and other.outcome == "ok"
    for c in copies:
        assert c.outcome == "reused" and c.reused_from == "s0" and c.answer == "4"
        assert c.spend_usd == 0 and c.cost_usd == first.cost_usd and c.error is None


def test_reuse_window_expires() -> None:
    now = [0.0]
    with ModelServer() as ms:
        async def go() -> list[CallResult]:
            async with AiohttpClient() as http:
                c = ModelClient(model(ms.url), http, reuse_window_s=10, clock=lambda: now[0])
                a = await c.complete(MSGS, {}, sample_id="a")
                now[0] = 5
                b = await c.complete(MSGS, {}, sample_id="b")
                now[0] = 20
                d = await c.complete(MSGS, {}, sample_id="d")
                return [a, b, d]

        a, b, d = asyncio.run(go())
    assert (a.outcome, b.outcome, d.outcome) == ("ok", "reused", "ok")


def test_keys_never_reach_logs_or_errors(monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CHEAP_KEY", "sk-log-secret")
    with ModelServer(ModelBehaviour(fail_next=[503] * 10, echo_auth=True)) as ms:
        [r] = asyncio.run(call(model(ms.url, api_key_env="CHEAP_KEY"), retries=3,
                               allowed_fails=2, cooldown_s=0.05))
    assert r.outcome == "error" and "sk-log-secret" not in (r.error or "")
    assert "on cooldown" in caplog.text and "***" in caplog.text
    assert "sk-log-secret" not in caplog.text


def test_tpm_counts_the_estimate_up_front_and_usage_after() -> None:
    # The window takes each call's estimate (prompt estimate + max_tokens) while it runs and
    # the tokens `usage` reports once it is done. With room for one estimate plus the actual
    # usage of two calls, four concurrent calls: three run one after another (each finished
    # call frees its estimate but keeps its actual tokens), the fourth finds no room left.
    from shadow.tokens import prompt_token_estimate

    cap = 64
    estimate = prompt_token_estimate(orjson.dumps({"messages": MSGS})) + cap
    actual = (len("Be brief.\nWhat is 2 + 2?") // 4 + 1) + (len("ok") // 4 + 1)  # server's usage
    with ModelServer() as ms:
        async def go() -> list[CallResult]:
            async with AiohttpClient() as http:
                c = ModelClient(model(ms.url, tpm=estimate + 2 * actual, max_tokens=cap), http,
                                max_wait_s=0.5)
                return list(await asyncio.gather(*(c.complete(MSGS, {}) for _ in range(4))))

        results = asyncio.run(go())
        assert len(ms.behaviour.requests) == 3
    assert sorted(r.outcome for r in results) == ["ok", "ok", "ok", "unavailable"]
    assert all(r.input_tokens + r.output_tokens == actual for r in results if r.outcome == "ok")


def test_cached_input_tokens_are_priced_at_the_cached_price() -> None:
    # 100 prompt tokens of which 60 cached, 10 out: 40 x 1.0 + 60 x 0.25 + 10 x 2.0 per 1M.
    with ModelServer(ModelBehaviour(usage=lambda body, text: (100, 10, 60))) as ms:
        [r] = asyncio.run(call(model(ms.url, cached_input_per_mtok=0.25), budget=Budget(1.0, 1.0)))
    assert (r.input_tokens, r.cached_input_tokens, r.output_tokens) == (100, 60, 10)
    assert r.cost_usd == pytest.approx(75e-6) and r.spend_usd == pytest.approx(75e-6)


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    from shadow.client import RetryPolicy

    p = RetryPolicy(max_retries=8, backoff_s=0.5, max_backoff_s=4.0)
    for failures, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 4.0)]:
        delays = [p.delay(failures) for _ in range(300)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays)
        # Jitter: callers that failed together do not retry together.
        assert max(delays) - min(delays) > 0.5 * base


def test_the_cap_goes_in_the_field_the_deployment_takes() -> None:
    # OpenAI's o-series refuse `max_tokens`: such a deployment gets `max_completion_tokens`,
    # the model's other deployments keep `max_tokens`.
    slow = ModelBehaviour(delay_s=0.1)  # calls overlap, so the least busy deployment alternates
    with ModelServer(slow) as a, ModelServer(ModelBehaviour(delay_s=0.1)) as b:
        cfg = model(a.url, max_tokens=100, deployments=(
            DeploymentConfig(max_tokens_field="max_completion_tokens"),
            DeploymentConfig(base_url=b.url)))

        async def go() -> list[CallResult]:
            async with AiohttpClient() as http:
                c = ModelClient(cfg, http)
                return list(await asyncio.gather(
                    *(c.complete(MSGS, {"max_tokens": 500}) for _ in range(4))))

        assert all(r.outcome == "ok" for r in asyncio.run(go()))
        assert a.behaviour.requests and b.behaviour.requests  # both deployments were used
        for body in a.behaviour.requests:
            assert body["max_completion_tokens"] == 100 and "max_tokens" not in body
        for body in b.behaviour.requests:
            assert body["max_tokens"] == 100 and "max_completion_tokens" not in body
