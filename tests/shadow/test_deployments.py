"""Deployments: config of model groups, rate windows, picking, cooldown and probing."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from consumers.errors import ConfigError
from shadow.config import DeploymentConfig, ModelConfig
from shadow.deployments import Deployment, DeploymentGroup
from shadow.errors import GroupUnavailable
from shadow.limits import RateWindow
from shadowroute.config import load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


# -- config -----------------------------------------------------------------------------------

def test_a_plain_model_is_a_group_of_one(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[[shadow.models]]
name = "mini"
base_url = "https://api.example.com/v1"
api_key_env = "K"
rpm = 100
output_per_mtok = 0.6
"""), env={})
    [d] = cfg.shadow.models[0].resolved_deployments()
    assert (d.name, d.base_url, d.model, d.api_key_env, d.rpm, d.tpm, d.output_per_mtok,
            d.api_key_header) == ("mini#0", "https://api.example.com/v1", "mini", "K", 100, 0, 0.6,
                                  "Authorization")
    assert cfg.shadow.budget.usd_per_hour == math.inf and cfg.shadow.reuse_window_s == 0


def test_deployments_inherit_what_they_do_not_set(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[shadow]
max_retries = 4
allowed_fails = 2
cooldown_s = 30
reuse_window_s = 600
max_queue = 5000
[shadow.budget]
usd_per_hour = 1.5
usd_per_day = 10
[[shadow.models]]
name = "mini"
base_url = "https://a.example.com/v1"
model = "gpt-4o-mini"
api_key_env = "KEY_A"
input_per_mtok = 0.15
output_per_mtok = 0.6
timeout_s = 30
max_tokens = 512
rpm = 500
extra_headers = { "X-Team" = "shadow" }
[[shadow.models.deployments]]
name = "a"
[[shadow.models.deployments]]
name = "b"
api_key_env = "KEY_B"
rpm = 0
max_concurrency = 4
timeout_s = 10
[[shadow.models.deployments]]
base_url = "https://azure.example.com/openai/v1"
api_key_header = "api-key"
model = "mini-deploy"
output_per_mtok = 0.5
extra_headers = { "X-Region" = "eu" }
"""), env={"SHADOWROUTE_SHADOW__MODELS__0__TPM": "100000"})
    sh = cfg.shadow
    assert (sh.max_retries, sh.allowed_fails, sh.cooldown_s, sh.reuse_window_s, sh.max_queue) == (
        4, 2, 30.0, 600.0, 5000)
    assert (sh.budget.usd_per_hour, sh.budget.usd_per_day) == (1.5, 10.0)
    a, b, c = sh.models[0].resolved_deployments()
    assert (a.name, a.base_url, a.api_key_env, a.rpm, a.tpm, a.timeout_s, a.max_tokens) == (
        "a", "https://a.example.com/v1", "KEY_A", 500, 100000, 30.0, 512)
    assert (b.api_key_env, b.rpm, b.max_concurrency, b.timeout_s) == ("KEY_B", 0, 4, 10.0)
    assert (c.name, c.base_url, c.model, c.api_key_header, c.output_per_mtok,
            c.input_per_mtok) == ("mini#2", "https://azure.example.com/openai/v1", "mini-deploy",
                                  "api-key", 0.5, 0.15)
    assert dict(c.extra_headers) == {"X-Team": "shadow", "X-Region": "eu"}


def test_ca_bundle_per_model_and_per_deployment(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_text("")
    (tmp_path / "b.pem").write_text("")
    cfg = load_config(write(tmp_path, f"""
[shadow]
max_response_bytes = 65536
[[shadow.models]]
name = "m"
base_url = "https://a.example.com/v1"
ca_bundle = "{tmp_path / 'a.pem'}"
deployments = [{{ name = "x" }}, {{ name = "y", ca_bundle = "{tmp_path / 'b.pem'}" }}]
"""), env={})
    x, y = cfg.shadow.models[0].resolved_deployments()
    assert (x.ca_bundle, y.ca_bundle) == (str(tmp_path / "a.pem"), str(tmp_path / "b.pem"))
    assert (cfg.shadow.http_client, cfg.shadow.max_response_bytes) == ("aiohttp", 65536)


def test_budget_from_the_environment(tmp_path: Path) -> None:
    cfg = load_config(None, env={"SHADOWROUTE_SHADOW__BUDGET__USD_PER_DAY": "25",
                                 "SHADOWROUTE_SHADOW__BUDGET__USD_PER_HOUR": "inf"})
    assert (cfg.shadow.budget.usd_per_day, cfg.shadow.budget.usd_per_hour) == (25.0, math.inf)


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("[shadow.budget]\nusd_per_hour = -1\n", "shadow.budget.usd_per_hour", "must be at least 0, got -1.0"),
    ("[shadow.budget]\nusd_per_day = nan\n", "shadow.budget.usd_per_day", "must be at least 0, got nan"),
    ("[shadow]\nallowed_fails = 0\n", "shadow.allowed_fails", "must be at least 1, got 0"),
    ("[shadow]\nmax_retries = -1\n", "shadow.max_retries", "must be at least 0, got -1"),
    ("[shadow]\nreuse_window_s = -5\n", "shadow.reuse_window_s", "must be at least 0, got -5.0"),
    ("[shadow]\nconcurrency = 8\nmax_queue = 10\n", "shadow.max_queue",
     "must be at least 2 x shadow.concurrency (16, the samples in flight), got 10"),
    ("[[shadow.models]]\nname = \"m\"\ndeployments = [{ name = \"a\" }]\n",
     "shadow.models[0].deployments[0].base_url", "is required"),
    ("[[shadow.models]]\nname = \"m\"\ndeployments = [{ base_url = \"ftp://x\" }]\n",
     "shadow.models[0].deployments[0].base_url", "must start with http:// or https://, got 'ftp://x'"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\n"
     "deployments = [{ name = \"x\" }, { name = \"x\" }]\n",
     "shadow.models[0].deployments[1].name", "duplicate deployment name 'x'"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\ndeployments = [{ rpm = -2 }]\n",
     "shadow.models[0].deployments[0].rpm", "must be at least -1, got -2"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\ntpm = -1\n",
     "shadow.models[0].tpm", "must not be negative"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\ndeployments = [{ rpn = 5 }]\n",
     "shadow.models[0].deployments[0].rpn", "unknown key (did you mean 'rpm'?)"),
    ("[shadow]\nhttp_client = \"builtin\"\n", "shadow.http_client",
     "must be 'aiohttp' (the built-in client and httpx were retired), got 'builtin'"),
    ("[shadow]\nmax_response_bytes = 10\n", "shadow.max_response_bytes",
     "must be at least 1024, got 10"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"https://a\"\nca_bundle = \"/nonexistent.pem\"\n",
     "shadow.models[0].ca_bundle", "no such file: '/nonexistent.pem'"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"https://a\"\n"
     "deployments = [{ ca_bundle = \"/nonexistent.pem\" }]\n",
     "shadow.models[0].deployments[0].ca_bundle", "no such file: '/nonexistent.pem'"),
])
def test_mistakes_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert (e.value.key, e.value.problem) == (key, problem)


# -- rate windows -----------------------------------------------------------------------------

def test_rate_window_waits_for_the_oldest_entries_to_expire() -> None:
    w = RateWindow(100)
    w.add(0.0, 60)
    w.add(10.0, 30)
    assert w.wait_time(20.0, 10) == 0
    assert w.wait_time(20.0, 20) == pytest.approx(40.0)  # the t=0 entry frees 60 at t=60
    assert w.wait_time(20.0, 80) == pytest.approx(50.0)  # both must go
    assert w.wait_time(60.0, 20) == 0
    assert w.used(60.0) == 30


def test_rate_window_is_corrected_from_usage() -> None:
    w = RateWindow(1000)
    e = w.add(0.0, 900)  # estimate: prompt + max_tokens
    assert w.wait_time(1.0, 200) > 0
    w.correct(e, 150)  # what usage said
    assert w.wait_time(1.0, 200) == 0 and w.used(1.0) == 150
    w.used(61.0)
    w.correct(e, 500)  # after expiry a correction changes nothing
    assert w.used(61.0) == 0


def test_an_oversized_call_fits_an_empty_window() -> None:
    w = RateWindow(100)
    assert w.wait_time(0.0, 500) == 0
    w.add(0.0, 500)
    assert w.wait_time(1.0, 1) == pytest.approx(59.0)


# -- picking, cooldown, probing ---------------------------------------------------------------

def group(n: int = 2, clock: list[float] | None = None, **spec: int) -> DeploymentGroup:
    now = clock if clock is not None else [0.0]
    deps = [Deployment(ModelConfig(name="m", base_url=f"http://d{i}", **spec)
                       .resolved_deployments()[0]) for i in range(n)]
    for i, d in enumerate(deps):
        d.name = f"d{i}"
    return DeploymentGroup("m", deps, allowed_fails=2, cooldown_s=10, clock=lambda: now[0])


def test_the_least_busy_deployment_takes_the_call() -> None:
    g = group(3)

    async def go() -> list[str]:
        leases = [await g.acquire(10, 1.0) for _ in range(5)]
        return [lease.deployment.name for lease in leases]

    assert asyncio.run(go()) == ["d0", "d1", "d2", "d0", "d1"]


def test_cooldown_after_allowed_fails_then_one_probe() -> None:
    now = [0.0]
    g = group(1, now)
    d = g.deployments[0]

    async def go() -> None:
        for _ in range(2):
            g.failed(await g.acquire(1, 1.0), "HTTP 503")
        assert d.state(now[0]) == "cooldown"
        with pytest.raises(GroupUnavailable, match="on cooldown for 10s more"):
            await g.acquire(1, 1.0)  # the cooldown outlasts the deadline: no wait
        now[0] = 10.0
        probe = await g.acquire(1, 11.0)
        assert d.state(now[0]) == "probing"
        with pytest.raises(GroupUnavailable):
            await g.acquire(1, 10.0)  # only the probe goes while probing
        g.failed(probe, "HTTP 503")  # one failure while probing: straight back on cooldown
        assert d.state(now[0]) == "cooldown" and d.cooldowns == 2
        now[0] = 20.0
        g.succeeded(await g.acquire(1, 21.0), 5)
        assert d.state(now[0]) == "ok" and d.fails == 0

    asyncio.run(go())


def test_a_bad_request_does_not_count_against_the_deployment() -> None:
    g = group(1)

    async def go() -> None:
        for _ in range(5):
            g.failed(await g.acquire(1, 1.0), "HTTP 400", health=False)

    asyncio.run(go())
    assert g.deployments[0].fails == 0 and g.deployments[0].state(0.0) == "ok"


def test_a_waiting_call_is_woken_when_a_slot_frees() -> None:
    g = DeploymentGroup("m", [Deployment(DeploymentConfig(base_url="http://x", name="x",
                                                          max_concurrency=1, timeout_s=60))])

    async def go() -> float:
        loop = asyncio.get_running_loop()
        first = await g.acquire(1, loop.time() + 5)
        t0 = loop.time()
        waiter = asyncio.create_task(g.acquire(1, 1e12))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        g.succeeded(first, 1)
        await waiter
        return loop.time() - t0

    assert asyncio.run(go()) < 1.0  # woken at once, not after the 60 s lower bound
