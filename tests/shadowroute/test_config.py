"""shadowroute.config: a TOML file, SHADOWROUTE_* overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.config import Price
from consumers.errors import ConfigError, ShadowrouteError
from shadow.config import ModelConfig
from shadow.routers import RandomRouterConfig, RulesRouterConfig
from shadow.scorers import SCORERS
from shadowroute.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
KNOWN_SCORERS = ", ".join(sorted([*SCORERS, "auto", "embedding_cosine", "judge",
                                  "tfidf_cosine"])) + ", json_match:<paths>"

GOOD = """
[kafka]
bootstrap_servers = "kafka-1:9092,kafka-2:9092"
topics = ["llm-logs", "llm-logs-eu"]

[storage]
db_path = "/data/s.duckdb"

[sampling]
default_rate = 0.1
rates = { "gpt-4o|math" = 0.3, "*|chat" = 0.01 }

[prices]
"gpt-4o" = { input = 2.5, output = 10.0 }

[[shadow.models]]
name = "mini"
base_url = "https://api.example.com/v1"
api_key_env = "EXAMPLE_KEY"
input_per_mtok = 0.15

[[shadow.models]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"

[[routers]]
name = "rules"
kind = "rules"
weak_keywords = ["extract"]
force_strong_tags = { tenant = ["acme"] }

[scoring]
by_tag = { math = "final_number" }
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def error(tmp_path: Path, text: str = "", env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env=env or {})
    return e.value


# -- loading ---------------------------------------------------------------------------------

def test_defaults_without_a_file() -> None:
    cfg = load_config(None, env={})
    assert cfg == Config()
    assert cfg.sampling.default_rate == 0.05
    assert [r.kind for r in cfg.routers] == ["random"]


def test_load_from_toml(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    assert cfg.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert cfg.kafka.topics == ("llm-logs", "llm-logs-eu")
    assert cfg.kafka.group_id == "shadowroute"  # untouched keys keep their defaults
    assert cfg.storage.db_path == "/data/s.duckdb"
    assert dict(cfg.sampling.rates) == {"gpt-4o|math": 0.3, "*|chat": 0.01}
    assert cfg.prices == {"gpt-4o": Price(input=2.5, output=10.0)}
    assert [m.name for m in cfg.shadow.models] == ["mini", "local"]
    assert cfg.shadow.models[0] == ModelConfig(name="mini", base_url="https://api.example.com/v1",
                                               api_key_env="EXAMPLE_KEY", input_per_mtok=0.15)
    assert cfg.routers == (RulesRouterConfig(name="rules", weak_keywords=("extract",),
                                        force_strong_tags={"tenant": ("acme",)}),)
    assert dict(cfg.scoring.by_tag) == {"math": "final_number"}


def test_config_is_immutable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampling.default_rate = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.sampling.rates["x|y"] = 0.5  # type: ignore[index]


def test_the_example_config_loads() -> None:
    cfg = load_config(ROOT / "shadowroute.example.toml", env={})
    assert cfg.shadow.models


def test_the_store_reopen_interval_is_a_storage_key(tmp_path: Path) -> None:
    assert load_config(None, env={}).storage.reopen_every_s == 300.0
    cfg = load_config(write(tmp_path, "[storage]\nreopen_every_s = 120\n"), env={})
    assert cfg.storage.reopen_every_s == 120.0
    env = {"SHADOWROUTE_STORAGE__REOPEN_EVERY_S": "600"}
    assert load_config(None, env=env).storage.reopen_every_s == 600.0


def test_an_int_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[sampling]\ndefault_rate = 1\n"), env={})
    assert cfg.sampling.default_rate == 1.0
    assert isinstance(cfg.sampling.default_rate, float)


# -- environment overrides -------------------------------------------------------------------

def test_env_overrides_a_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={
        "SHADOWROUTE_SAMPLING__DEFAULT_RATE": "0.2",
        "SHADOWROUTE_KAFKA__GROUP_ID": "shadow-2",      # not TOML: a plain string
        "SHADOWROUTE_SHADOW__REPLAY_TOOLS": "true",     # TOML bool
        "SHADOWROUTE_KAFKA__MAX_BATCH_RECORDS": "500",  # TOML int
        "OTHER__VARIABLE": "ignored",
    })
    assert cfg.sampling.default_rate == 0.2
    assert cfg.kafka.group_id == "shadow-2"
    assert cfg.shadow.replay_tools is True
    assert cfg.kafka.max_batch_records == 500
    assert cfg.sampling.rates["gpt-4o|math"] == 0.3  # the rest of the section stays


def test_env_overrides_a_list_of_tables_by_index(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={
        "SHADOWROUTE_SHADOW__MODELS__0__BASE_URL": "http://10.0.0.5:8000/v1",
        "SHADOWROUTE_SHADOW__MODELS__1__TIMEOUT_S": "5",
    })
    assert cfg.shadow.models[0].base_url == "http://10.0.0.5:8000/v1"
    assert cfg.shadow.models[0].name == "mini"
    assert cfg.shadow.models[1].timeout_s == 5.0
    assert cfg.shadow.models[1].base_url == "http://127.0.0.1:11434/v1"


def test_env_adds_a_list_entry(tmp_path: Path) -> None:
    cfg = load_config(None, env={"SHADOWROUTE_SHADOW__MODELS__0__NAME": "m",
                                 "SHADOWROUTE_SHADOW__MODELS__0__BASE_URL": "http://h/v1"})
    assert cfg.shadow.models == (ModelConfig(name="m", base_url="http://h/v1"),)


def test_env_values_are_toml(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={
        "SHADOWROUTE_KAFKA__TOPICS": '["a", "b"]',
        "SHADOWROUTE_SAMPLING__RATES": '{ "o3|*" = 0.5 }',
        "SHADOWROUTE_ROUTERS__0__STRONG_KEYWORDS": "prove, derive",  # comma list for strings
        "SHADOWROUTE_STORAGE__DB_PATH": '"quoted.duckdb"',
    })
    assert cfg.kafka.topics == ("a", "b")
    assert dict(cfg.sampling.rates) == {"o3|*": 0.5}
    assert cfg.routers[0].strong_keywords == ("prove", "derive")
    assert cfg.storage.db_path == "quoted.duckdb"


def test_env_of_a_table_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={"SHADOWROUTE_SAMPLING__RATES__O3|*": "0.4"})
    assert cfg.sampling.rates["o3|*"] == 0.4
    assert cfg.sampling.rates["gpt-4o|math"] == 0.3


def test_the_config_file_variable_is_not_a_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={"SHADOWROUTE_CONFIG": "c.toml"})
    assert cfg.sampling.default_rate == 0.1


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWROUTE_GATE__MIN_SAMPLES", "17")
    assert load_config(write(tmp_path, GOOD)).gate.min_samples == 17


# -- mistakes name the key -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "key", "problem"), [
    ("[sampling]\ndefault_rat = 0.1\n", "sampling.default_rat",
     "unknown key (did you mean 'default_rate'?)"),
    ("[samplng]\n", "samplng", "unknown key (did you mean 'sampling'?)"),
    ("[sampling]\nzzz = 1\n", "sampling.zzz",
     "unknown key; known keys: default_rate, stratify_tag, rates, salt"),
    ("[kafka]\nmax_batch_records = \"many\"\n", "kafka.max_batch_records",
     "must be an integer, got str 'many'"),
    ("[kafka]\nmax_batch_records = 1.5\n", "kafka.max_batch_records",
     "must be an integer, got float 1.5"),
    ("[shadow]\nreplay_tools = 1\n", "shadow.replay_tools", "must be true or false, got int 1"),
    ("[sampling]\ndefault_rate = true\n", "sampling.default_rate", "must be a number, got bool True"),
    ("[kafka]\ntopics = 5\n", "kafka.topics", "must be a list, got int 5"),
    ("[kafka]\ntopics = [\"a\", 5]\n", "kafka.topics[1]", "must be a string, got int 5"),
    ("kafka = 3\n", "kafka", "must be a table, got int 3"),
    ("[sampling]\ndefault_rate = 1.5\n", "sampling.default_rate", "must be between 0 and 1, got 1.5"),
    ("[sampling]\ndefault_rate = -0.1\n", "sampling.default_rate",
     "must be between 0 and 1, got -0.1"),
    ("[sampling]\ndefault_rate = nan\n", "sampling.default_rate", "must be between 0 and 1, got nan"),
    ("[sampling]\nrates = { \"gpt-4o|math\" = 2 }\n", "sampling.rates.gpt-4o|math",
     "must be between 0 and 1, got 2.0"),
    ("[sampling]\nrates = { \"gpt-4o\" = 0.5 }\n", "sampling.rates.gpt-4o",
     "key must be 'model|tag', 'model|*' or '*|tag'"),
    ("[[routers]]\nname = \"r\"\nkind = \"neural\"\n", "routers[0].kind",
     "unknown router kind 'neural'; known: http, learned, random, rules"),
    ("[[routers]]\nkind = \"rules\"\n", "routers[0].name", "is required"),
    ("[[routers]]\nname = \"oracle\"\n", "routers[0].name", "name 'oracle' is taken"),
    ("[scoring]\ndefault = \"bleu\"\n", "scoring.default",
     f"unknown scorer 'bleu'; known: {KNOWN_SCORERS}"),
    ("[scoring]\nby_tag = { math = \"numbers\" }\n", "scoring.by_tag.math",
     f"unknown scorer 'numbers'; known: {KNOWN_SCORERS}"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"api.example.com/v1\"\n",
     "shadow.models[0].base_url", "must start with http:// or https://, got 'api.example.com/v1'"),
    ("[[shadow.models]]\nname = \"m\"\n", "shadow.models[0].base_url", "is required"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\n[[shadow.models]]\nname = \"m\"\n"
     "base_url = \"http://b\"\n", "shadow.models[1].name", "duplicate model name 'm'"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\ntimeout_s = 0\n",
     "shadow.models[0].timeout_s", "must be greater than 0, got 0.0"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\noutput_per_mtok = -1\n",
     "shadow.models[0].output_per_mtok", "must not be negative"),
    ("[kafka]\nauto_offset_reset = \"newest\"\n", "kafka.auto_offset_reset",
     "must be 'earliest' or 'latest', got 'newest'"),
    ("[kafka]\ntopics = []\n", "kafka.topics", "must name at least one topic"),
    ("[kafka]\ntopics = [\"logs\"]\ndead_letter_topic = \"logs\"\n", "kafka.dead_letter_topic",
     "must not be one of kafka.topics (got 'logs'): rejected records would be read again"),
    ("[storage]\nwriter = \"fork\"\n", "storage.writer", "must be 'process' or 'thread', got 'fork'"),
    ("[[shadow.models]]\nname = \"m\"\nbase_url = \"http://a\"\nmax_tokens_field = \"max_output\"\n",
     "shadow.models[0].max_tokens_field",
     "must be 'max_tokens' or 'max_completion_tokens', got 'max_output'"),
    ("[kafka]\nreset_past_end = \"none\"\n", "kafka.reset_past_end",
     "must be 'earliest' or 'latest', got 'none'"),
    ("[storage]\nmemory_limit = \"1GB'; DROP\"\n", "storage.memory_limit",
     "must be a size like '512MB' or '2GB' (or empty for DuckDB's default), got \"1GB'; DROP\""),
    ("[shadow]\nstop_grace_s = -1\n", "shadow.stop_grace_s", "must be 0 or more, got -1.0"),
    ("[storage]\nthreads = -1\n", "storage.threads",
     "must be 0 (one fewer than the cores) or more, got -1"),
    ("[server]\nport = 70000\n", "server.port", "must be 0..65535, got 70000"),
    ("[gate]\nconfidence = 1.0\n", "gate.confidence", "must be in [0.5, 1), got 1.0"),
    ("[prices]\n\"gpt-4o\" = { input = 2.5, outptu = 10 }\n", "prices.gpt-4o.outptu",
     "unknown key (did you mean 'output'?)"),

    # A router table is built as its kind's type: another kind's keys are unknown there.
    ("[[routers]]\nname = \"r\"\nkind = \"random\"\nstrong_keywords = [\"prove\"]\n",
     "routers[0].strong_keywords", "unknown key; known keys: name, kind, cost_per_call_usd, seed"),
    ("[[routers]]\nname = \"r\"\nkind = 3\n", "routers[0].kind",
     "unknown router kind 3; known: http, learned, random, rules"),
    ("[prices]\n\"gpt-4o\" = { input = -2.5, output = 10 }\n", "prices.gpt-4o.input",
     "must be at least 0, got -2.5"),
    ("[gate]\nsegment_min_quality = { legal = 1.5 }\n", "gate.segment_min_quality.legal",
     "must be between 0 and 1, got 1.5"),
    ("[storage]\ninstance_id = \"../eu\"\n", "storage.instance_id",
     "letters, digits, '.', '_' and '-' only (it names a directory of the lake), got '../eu'"),
    ("[storage]\nlake_every_s = 0\n", "storage.lake_every_s", "must be greater than 0, got 0.0"),
    ("[storage]\nreopen_every_s = -5\n", "storage.reopen_every_s",
     "must be greater than 0, got -5.0"),
    ("[retention]\nrequests_days = -1\n", "retention.requests_days",
     "must be 0 (keep) or more, got -1.0"),
    # Multi-tier policies name cheap models and routers that exist.
    ("[[shadow.models]]\nname = \"a\"\nbase_url = \"http://a\"\n[[policies]]\nname = \"p\"\n"
     "models = [\"a\"]\nrouter = \"nope\"\nthresholds = [0.5]\n", "policies[0].router",
     "'nope' is not one of the routers (random)"),
    ("[[shadow.models]]\nname = \"a\"\nbase_url = \"http://a\"\n[[shadow.models]]\nname = \"b\"\n"
     "base_url = \"http://b\"\n[[routers]]\nname = \"la\"\nkind = \"learned\"\nmodel = \"a\"\n"
     "[[policies]]\nname = \"p\"\nkind = \"cheapest\"\nmodels = [\"b\", \"a\"]\n"
     "routers = [\"la\", \"la\"]\n", "policies[0].routers[0]",
     "'la' predicts for 'a', not for the tier's model 'b'"),
])
def test_mistakes_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    e = error(tmp_path, text)
    assert (e.key, e.problem) == (key, problem)
    assert str(e) == f"{key}: {problem}"
    assert isinstance(e, ShadowrouteError)


@pytest.mark.parametrize(("env", "key", "problem"), [
    ({"SHADOWROUTE_SAMPLING__DEFAULT_RATE": "2"}, "sampling.default_rate",
     "must be between 0 and 1, got 2.0"),
    ({"SHADOWROUTE_SAMPLING__DEFAULT_RATE": "high"}, "sampling.default_rate",
     "must be a number, got str 'high'"),
    ({"SHADOWROUTE_SAMPLNG__DEFAULT_RATE": "0.1"}, "samplng",
     "unknown key (did you mean 'sampling'?)"),
    ({"SHADOWROUTE_SHADOW__MODELS__0__BASE_URL": "ftp://x"}, "shadow.models[0].name",
     "is required"),
    ({"SHADOWROUTE_SHADOW__MODELS__0__BASE_URL": "ftp://x",
      "SHADOWROUTE_SHADOW__MODELS__0__NAME": "m"}, "shadow.models[0].base_url",
     "must start with http:// or https://, got 'ftp://x'"),
    ({"SHADOWROUTE_SHADOW__MODELS__X__NAME": "m"}, "shadow.models",
     "must be a list, got dict {'x': {'name': 'm'}}"),
])
def test_env_mistakes_name_the_key(env: dict[str, str], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, env=env)
    assert (e.value.key, e.value.problem) == (key, problem)


def test_env_non_index_into_a_list_names_the_variable(tmp_path: Path) -> None:
    e = error(tmp_path, GOOD, env={"SHADOWROUTE_SHADOW__MODELS__FIRST__NAME": "m"})
    assert str(e) == "SHADOWROUTE_SHADOW__MODELS__FIRST__NAME: 'first' must be a list index"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.toml", env={})
    assert str(e.value) == f"config file {tmp_path / 'nope.toml'} does not exist"


def test_invalid_toml(tmp_path: Path) -> None:
    e = error(tmp_path, "[sampling]\ndefault_rate = \n")
    assert str(e).startswith(f"config file {tmp_path / 'c.toml'} is not valid TOML: ")
    assert "line 2" in str(e)


# -- the command line ------------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWROUTE_")}
    return subprocess.run([sys.executable, "-m", "shadowroute.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})}, cwd=ROOT)


@pytest.mark.parametrize(("text", "key"), [
    ("[sampling]\ndefault_rate = 1.5\n", "sampling.default_rate: must be between 0 and 1"),
    ("[sampling]\ndefault_rat = 0.1\n", "sampling.default_rat: unknown key (did you mean"),
    ("[[routers]]\nname = \"r\"\nkind = \"neural\"\n", "routers[0].kind: unknown router kind"),
])
def test_cli_config_error_is_one_line_and_exit_2(tmp_path: Path, text: str, key: str) -> None:
    bad = write(tmp_path, text, "BAD.toml")
    p = run_cli("sql", "select 1", "--config", str(bad))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert key in lines[0]
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


def test_cli_config_from_env_variable_and_env_override(tmp_path: Path) -> None:
    from analytics.store import Store

    db = tmp_path / "s.duckdb"
    Store(db).close()
    good = write(tmp_path, f'[storage]\ndb_path = "{db}"\n', "good.toml")
    p = run_cli("sql", "select 41 + 1 AS answer", "--format", "csv",
                env={"SHADOWROUTE_CONFIG": str(good)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["answer", "42"]
    p = run_cli("sql", "select 1", env={"SHADOWROUTE_CONFIG": str(good),
                                        "SHADOWROUTE_SAMPLING__DEFAULT_RATE": "7"})
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "shadowroute: config error: sampling.default_rate: must be between 0 and 1, got 7.0"]


def test_each_router_table_is_built_as_its_kinds_type() -> None:
    cfg = load_config(None, env={"SHADOWROUTE_ROUTERS__0__NAME": "r", "SHADOWROUTE_ROUTERS__0__KIND":
                                 "random", "SHADOWROUTE_ROUTERS__0__SEED": "7",
                                 "SHADOWROUTE_ROUTERS__1__NAME": "k",
                                 "SHADOWROUTE_ROUTERS__1__STRONG_KEYWORDS": "prove"})
    assert cfg.routers == (RandomRouterConfig(name="r", seed=7),
                           RulesRouterConfig(name="k", strong_keywords=("prove",)))
    # The default, when no router is configured, is RouteLLM's random baseline.
    assert load_config(None, env={}).routers == (RandomRouterConfig(name="random"),)
