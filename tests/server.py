"""Run the real service in a subprocess on a free loopback port, for tests that need HTTP end to end."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float,
                     output: Callable[[], str]) -> None:
    """Poll ``/ready`` until it answers 200; raise with the server's ``output()`` if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {output()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready within {timeout_s:g}s: {output()[-2000:]}")
        time.sleep(0.2)


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
