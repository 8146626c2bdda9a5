"""What the serving benchmarks share: ``promptrec serve`` as a child process, and machine facts."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_S = 180.0  # a busy 2-core machine needs a while to import torch and load the model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``promptrec serve`` in a subprocess; its output goes to a log file (a pipe nobody reads
    would fill up and block the server)."""

    def __init__(
        self, model: Path, database: Path | str, api_key: str, log_path: Path, threads: int, extra: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        # port: a restart behind a load balancer comes back on the address the balancer knows.
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # The key goes in the environment, not argv, so it does not show in `ps`.
        env = {**os.environ, "PROMPTREC_API_KEY": api_key}
        cmd = [sys.executable, "-m", "promptrec.cli", "serve", str(model), "--port", str(self.port),
               "--database", str(database), "--threads", str(threads), *extra]
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before /ready:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet: uvicorn binds the port only after the model is loaded
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, wait: bool = True) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if wait:
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (a graceful uvicorn shutdown), SIGKILL if that takes too long."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def cpu_probe_seconds(loops: int = 3_000_000) -> float:
    """Seconds one core takes for a fixed loop of Python arithmetic: how fast the machine is right
    now. On a shared virtual machine the same work takes up to twice as long from one period to
    the next, and every latency with it; a run's probe says which period it ran in."""
    started = time.perf_counter()
    total = 0
    for i in range(loops):
        total += i * i
    return round(time.perf_counter() - started, 3)


def machine_info(packages: Sequence[str]) -> dict[str, Any]:
    """CPU model and count, load average now, platform, and the versions of ``packages``."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_probe_seconds_at_start": cpu_probe_seconds(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }
