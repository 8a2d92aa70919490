"""The simulator in a child process, for benchmarks and tests that must not
share the prober's CPU or event loop with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimulatorProcess:
    """``routewatch simulate --profiles FILE`` on a free loopback port."""

    def __init__(self, profiles: Path) -> None:
        self.port = _free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self._profiles = profiles
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - the child's stderr, read back in stop()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_s: float = 30.0) -> None:
        """Spawn it and return once /healthz answers."""
        cmd = [
            sys.executable,
            "-m",
            "routewatch.cli",
            "simulate",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--profiles",
            str(self._profiles),
        ]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {self._proc.returncode}: {self._stderr_text()}")
            try:
                with urllib.request.urlopen(f"{self.root}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"simulator not healthy after {wait_s} s: {self._stderr_text()}")

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-2000:]

    def cpu_s(self) -> float | None:
        """Its user + system CPU seconds so far (Linux /proc)."""
        if self._proc is None:
            return None
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGINT (clean shutdown), then SIGKILL if it lingers."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._stderr.close()

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
