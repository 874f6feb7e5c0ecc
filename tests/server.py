"""Run the real service in a subprocess on a free loopback port, for tests that need HTTP end to end."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import free_port, wait_until_ready

__all__ = ["REPO", "free_port", "running_server", "wait_until_ready"]

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def running_server(checkpoint: Path, *, timeout_s: float = 120, **env: str) -> Iterator[str]:
    """Start ``python -m app`` and yield its base URL once /ready answers 200; stop it afterwards."""
    port = free_port()
    environment = {**os.environ, "PETSEG_CHECKPOINT": str(checkpoint), "PETSEG_DEVICE": "cpu", **env}
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)], cwd=REPO,
                            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        # stderr is read only once the process has exited: reading a live pipe would block.
        wait_until_ready(proc, url, timeout_s,
                         lambda: proc.stderr.read().decode() if proc.poll() is not None else "")  # type: ignore[union-attr]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
