"""Running the real `shadowroute` command as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from shadowroute.service import service_file

CLI = [sys.executable, "-m", "shadowroute.cli"]


def cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class ServiceProcess:
    def __init__(self, config: Path, db: Path, log: Path, env: dict[str, str] | None = None,
                 cli_args: tuple[str, ...] = ()) -> None:
        self.db = db
        self.log = log
        service_file(db).unlink(missing_ok=True)
        self._out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([*CLI, "--log-level", "INFO", *cli_args, "run", "--config",
                                      str(config)],
                                     stdout=self._out, stderr=self._out,
                                     env={**os.environ, **(env or {})})
        self.url = self._wait_url()

    def _wait_url(self, timeout: float = 30) -> str:
        try:
            return self._read_url(timeout)
        except BaseException:
            self.proc.kill()
            self.proc.wait(10)
            self._out.close()
            raise

    def _read_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        f = service_file(self.db)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                return str(orjson.loads(f.read_bytes())["url"])
            except (OSError, orjson.JSONDecodeError, KeyError):
                time.sleep(0.05)
        raise RuntimeError("service did not announce its URL")

    def status(self) -> dict[str, Any]:
        return httpx.get(self.url + "/v1/status", timeout=5).json()  # type: ignore[no-any-return]

    def sql(self, query: str) -> list[list[Any]]:
        r = httpx.post(self.url + "/v1/sql", json={"sql": query}, timeout=30)
        r.raise_for_status()
        return r.json()["rows"]  # type: ignore[no-any-return]

    def wait(self, cond: Any, timeout: float = 120, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waiting for {what}: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a service behind a failed test
            self.proc.wait(10)
            raise
        finally:
            self._out.close()
