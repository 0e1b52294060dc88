"""docker-compose.yml: valid Compose, and its shadowroute service runs the documented CLI.

There is no Docker engine in CI, so the file is checked statically:

- against the Compose Specification JSON schema that check-jsonschema vendors
  (`check-jsonschema --builtin-schema vendor.compose-spec`), with broken copies that must fail;
- the shadowroute service's `command`, behind the image's `ENTRYPOINT ["shadowroute"]`, is run
  through the real click CLI (only the long-running `Service` is replaced), with the config file
  the service mounts and the environment the service sets;
- the wiring between compose and deploy/shadowroute.compose.toml (Kafka address and topic,
  data volume, published port, API-key variables, the local model server).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from shadowroute.cli import main
from shadowroute.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "docker-compose.md"


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def service(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["shadowroute"]  # type: ignore[no-any-return]


def environment(svc: Mapping[str, Any]) -> tuple[dict[str, str], set[str]]:
    """(variables set to a value, variables passed through from the host by name only)."""
    env = svc.get("environment") or {}
    items = ([tuple(e.split("=", 1)) if "=" in e else (e, None) for e in env]
             if isinstance(env, list) else list(env.items()))
    values = {k: str(v) for k, v in items if v is not None}
    return values, {k for k, v in items if v is None}


def bind_mounts(svc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Container path -> long-syntax bind mount."""
    return {v["target"]: v for v in svc.get("volumes", [])
            if isinstance(v, dict) and v.get("type") == "bind"}


def host_path(container_path: str, svc: Mapping[str, Any]) -> Path | None:
    """The file on this machine that `svc` mounts at `container_path`."""
    mount = bind_mounts(svc).get(container_path)
    return (ROOT / mount["source"]).resolve() if mount else None


def run_cli_as_container(command: list[str], svc: Mapping[str, Any],
                         monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Config]]:
    """Run `shadowroute <command>` through click as the container would, without the service.

    Config paths are resolved through the service's bind mounts and loaded with the service's
    environment; the `Service` class is replaced by one that records the config it gets.
    """
    started: list[Config] = []

    class RecordingService:
        def __init__(self, cfg: Config) -> None:
            started.append(cfg)

        async def run(self) -> None:
            return None

    env, _ = environment(svc)

    def container_load_config(path: str | None = None, **_: Any) -> Config:
        mapped = host_path(path, svc) if path else None
        return load_config(mapped or path, env=env)

    monkeypatch.setattr("shadowroute.service.Service", RecordingService)
    monkeypatch.setattr("shadowroute.cli.load_config", container_load_config)
    result = CliRunner().invoke(main, command, prog_name="shadowroute",
                                env={"SHADOWROUTE_CONFIG": None})
    return result, started


# -- the Compose Specification --------------------------------------------------------------


def test_compose_file_matches_compose_spec() -> None:
    proc = check_compose_spec(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("breakage", [
    pytest.param(lambda d: d["services"]["shadowroute"].update(ports=5), id="ports-not-a-list"),
    pytest.param(lambda d: d.update(service={"x": {"image": "busybox"}}),
                 id="unknown-top-level-key"),
    pytest.param(lambda d: d["services"]["kafka"].update(helthcheck={"test": ["NONE"]}),
                 id="misspelt-service-key"),
    pytest.param(lambda d: d["services"]["shadowroute"]["depends_on"]["kafka"].update(
        condition="service_ready"), id="unknown-depends-on-condition"),
])
def test_broken_compose_file_fails_validation(breakage: Any, compose: dict[str, Any],
                                              tmp_path: Path) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False), encoding="utf-8")
    proc = check_compose_spec(path)
    assert proc.returncode != 0, f"a broken compose file passed validation:\n{proc.stdout}"
    assert "validation errors" in proc.stdout + proc.stderr


# -- the container command is the documented CLI --------------------------------------------


def test_image_entrypoint_is_the_cli(service: dict[str, Any]) -> None:
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert m, "Dockerfile has no exec-form ENTRYPOINT"
    assert json.loads(m.group(1)) == ["shadowroute"]
    assert "entrypoint" not in service, "the service must not override the image's ENTRYPOINT"
    assert service["build"]["context"] == "."


def test_service_command_is_a_real_cli_invocation(service: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    command = service["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    assert command == ["run", "--config", "/etc/shadowroute/shadowroute.toml"]
    # Listening on 0.0.0.0 needs the API token, passed through from the host by name.
    _, passed = environment(service)
    assert "SHADOWROUTE_API_TOKEN" in passed
    monkeypatch.delenv("SHADOWROUTE_API_TOKEN", raising=False)
    result, started = run_cli_as_container(command, service, monkeypatch)
    assert result.exit_code == 2 and "SHADOWROUTE_API_TOKEN" in result.output, result.output
    assert not started
    monkeypatch.setenv("SHADOWROUTE_API_TOKEN", "t" * 32)

    result, started = run_cli_as_container(command, service, monkeypatch)

    assert result.exit_code == 0, result.output
    assert len(started) == 1, "`shadowroute run` did not start the service"
    cfg = started[0]
    assert cfg.server.host == "0.0.0.0", "the published port cannot reach a loopback listener"
    assert cfg.storage.db_path == "/data/shadowroute.duckdb"


@pytest.mark.parametrize("command", [
    pytest.param(["serve", "--config", "/etc/shadowroute/shadowroute.toml"], id="no-such-command"),
    pytest.param(["run", "--conf", "/etc/shadowroute/shadowroute.toml"], id="no-such-option"),
    pytest.param(["run", "--config", "/etc/shadowroute/other.toml"], id="config-not-mounted"),
])
def test_broken_command_is_caught(command: list[str], service: dict[str, Any],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    result, started = run_cli_as_container(command, service, monkeypatch)
    assert result.exit_code != 0, result.output
    assert not started


def test_documented_command_matches_compose(service: dict[str, Any]) -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert "shadowroute " + " ".join(service["command"]) in text


# -- wiring between compose and the mounted config ------------------------------------------


def test_config_is_mounted_read_only_and_loads(service: dict[str, Any]) -> None:
    config_path = service["command"][service["command"].index("--config") + 1]
    mount = bind_mounts(service)[config_path]
    assert mount["read_only"] is True
    assert mount["source"] == "./deploy/shadowroute.compose.toml"
    path = host_path(config_path, service)
    assert path is not None and path.is_file()
    cfg = load_config(path, env={})
    assert cfg.server.host == "127.0.0.1", "the file alone keeps the safe default"


def test_database_is_on_a_named_volume(compose: dict[str, Any],
                                       service: dict[str, Any]) -> None:
    cfg = load_config(ROOT / "deploy" / "shadowroute.compose.toml", env=environment(service)[0])
    volumes = {v["target"]: v["source"] for v in service["volumes"]
               if isinstance(v, dict) and v.get("type") == "volume"}
    assert volumes.get("/data") in compose["volumes"]
    assert Path(cfg.storage.db_path).parent == Path("/data")


def test_ports_are_published_on_loopback_only(compose: dict[str, Any],
                                              service: dict[str, Any]) -> None:
    cfg = load_config(ROOT / "deploy" / "shadowroute.compose.toml", env=environment(service)[0])
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
    assert f"127.0.0.1:{cfg.server.port}:{cfg.server.port}" in service["ports"]


def test_api_keys_are_passed_through_by_name_only(service: dict[str, Any]) -> None:
    values, by_name = environment(service)
    assert set(values) == {"SHADOWROUTE_SERVER__HOST"}, "only non-secret settings carry values"
    cfg = load_config(ROOT / "deploy" / "shadowroute.compose.toml", env=values)
    key_vars = {m.api_key_env for m in cfg.shadow.models if m.api_key_env}
    assert key_vars, "the example config should show a hosted model with api_key_env"
    assert key_vars <= by_name, f"not passed to the container: {sorted(key_vars - by_name)}"


def test_kafka_is_a_single_kraft_node_matching_the_config(compose: dict[str, Any],
                                                          service: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env, _ = environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@kafka:")
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key
    assert "healthcheck" in kafka
    assert service["depends_on"]["kafka"]["condition"] == "service_healthy"

    cfg = load_config(ROOT / "deploy" / "shadowroute.compose.toml", env={})
    advertised = {a.split("://", 1)[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert set(cfg.kafka.bootstrap_servers.split(",")) <= advertised
    init = compose["services"]["kafka-init"]
    topic = init["command"][init["command"].index("--topic") + 1]
    assert topic in cfg.kafka.topics
    assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set in the environment: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_local_model_profile_serves_the_configured_model(compose: dict[str, Any]) -> None:
    llm = compose["services"]["llm"]
    assert llm["profiles"] == ["local-model"]
    # The demo's runtime, built from this repository's Dockerfile: no third-party image.
    assert llm["build"]["target"] == "local-model"
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(encoding="utf-8"),
                        re.M)
    assert "local-model" in stages and stages[-1] == "service"
    assert compose["services"]["shadowroute"]["build"]["target"] == "service"
    assert bind_mounts(llm)["/models"]["source"] == "./models"
    command = [_interpolate(a) for a in llm["command"]]
    assert command[0] == "serve-model"
    # A real invocation of the CLI's serve-model command (parsed, not run).
    from shadowroute.cli import serve_model

    ctx = serve_model.make_context("serve-model", command[1:])
    assert ctx.params["host"] == "0.0.0.0"
    port, alias = ctx.params["port"], ctx.params["alias"]
    cfg = load_config(ROOT / "deploy" / "shadowroute.compose.toml", env={})
    local = [m for m in cfg.shadow.models if urlsplit(m.base_url).hostname == "llm"]
    assert local, "the example config should point a cheap model at the llm service"
    assert urlsplit(local[0].base_url).port == port
    assert local[0].model == alias
    for name, svc in compose["services"].items():
        if name != "llm":
            assert "profiles" not in svc, f"{name} must start without a profile"
