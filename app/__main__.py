"""``petseg-serve`` / ``python -m app``: check the settings and checkpoint, then run uvicorn."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

import uvicorn

from app.config import SettingsError, load_settings
from models.checkpoint import CheckpointError, load_checkpoint
from models.engine.selection import resolve_engine


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petseg-serve", description="Serve petseg's segmentation API with uvicorn.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="processes; each loads its own model copy (1-2 per GPU is plenty)")
    p.add_argument("--checkpoint", default=None, help="checkpoint to serve (sets PETSEG_CHECKPOINT)")
    p.add_argument("--log-level", default=None, help="uvicorn/app log level (default PETSEG_LOG_LEVEL or info)")
    return p


class PortInUseError(OSError):
    """The address is taken: said before the model loads, which uvicorn does before it binds."""


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will (SO_REUSEADDR) and let it go again. Uvicorn runs the app's start-up,
    which loads and warms the model, before it binds, so a busy port would otherwise be found only after that."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortInUseError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise PortInUseError(f"cannot bind {host}:{port}: {exc.strerror} "
                                 "(another server on that port? pick one with --port)") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint:
        os.environ["PETSEG_CHECKPOINT"] = args.checkpoint
    try:
        check_port_free(args.host, args.port)
        settings = load_settings()
        # Fail here with one line rather than inside uvicorn's start-up with a traceback.
        if settings.checkpoints is None:
            if not settings.checkpoint.is_file():
                raise CheckpointError(f"checkpoint not found: {settings.checkpoint} (set PETSEG_CHECKPOINT)")
            load_checkpoint(settings.checkpoint)
        for name, path in (settings.checkpoints or {}).items():
            try:
                load_checkpoint(path)
            except CheckpointError as exc:
                raise CheckpointError(f"model {name!r} in PETSEG_CHECKPOINTS: {exc}") from None
        resolve_engine(settings.runtime, settings.precision, settings.device)  # the pair, and its packages
    except (SettingsError, CheckpointError, PortInUseError, ValueError) as exc:
        print(f"petseg-serve: {exc}", file=sys.stderr)
        return 2
    level = (args.log_level or settings.log_level).lower()
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal; with this no-op handler restored
    # underneath it, the process then exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers, log_level=level,
                timeout_graceful_shutdown=30, access_log=False)  # app.access logs richer lines
    return 0


if __name__ == "__main__":
    sys.exit(main())
