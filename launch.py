#!/usr/bin/env python
"""AIGC Studio: chat, story and image generation in the browser, self-hosted.

    python launch.py                     # http://127.0.0.1:7860 with the default models
    python launch.py --port 8000 --data-dir ~/studio --quantization 8bit
    python launch.py --config studio.toml
    python launch.py users add NAME      # accounts (see `python launch.py users --help`)
    python launch.py backup FILE.tar.gz  # database + images; `restore FILE.tar.gz` puts them back

Every flag can also be set as an AIGC_* environment variable (AIGC_PORT=8000) or in the
config file (TOML or YAML, same names, plus a `models` list). Flags win over the
environment, which wins over the file.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from generators.text.engine.quantizers import QUANTIZATION_CHOICES, STUDIO_QUANTIZATION, quantization_help

log = logging.getLogger("aigc_studio")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="AIGC Studio: a self-hosted studio for chat, story writing and image synthesis.",
        epilog="Environment variables: AIGC_HOST, AIGC_PORT, AIGC_DATA_DIR, AIGC_DB_URL, AIGC_MODEL, "
        "AIGC_QUANTIZATION, AIGC_DEVICE, AIGC_SHARE, AIGC_MODELS (JSON list).",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--data-dir", type=Path, help="folder for the database, model cache and outputs (default ./data)")
    p.add_argument("--model-cache-dir", type=Path, help="where converted models are cached (default DATA_DIR/models)")
    p.add_argument("--db-url", help="SQLAlchemy database URL (default sqlite:///DATA_DIR/studio.db)")
    p.add_argument("--config", type=Path, help="TOML or YAML file with these settings and a `models` list")
    p.add_argument("--model", help="default model: a configured name, a Hugging Face id, a folder or a .gguf file")
    p.add_argument("--quantization", choices=QUANTIZATION_CHOICES,
                   help=f"language model weights (default {STUDIO_QUANTIZATION}): {quantization_help()}".replace("%", "%%"))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where language models run (default auto)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="language models' compute type (default auto: float32 on a CPU, bfloat16 on CUDA; with int4, "
                        "bfloat16 between the 4-bit kernels). bfloat16 on a CPU with AMX serves many users fastest")
    p.add_argument("--share", action="store_true", default=None, help="also open a public Gradio link")
    p.add_argument(
        "--share-without-auth",
        action="store_true",
        help="allow --share although no users are configured (anyone with the link can use the studio)",
    )
    p.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                   help="a user who may log in (repeatable; kept in memory). Permanent users: `launch.py users add`")
    p.add_argument("--users-file", type=Path, help="users with hashed passwords and API keys (default DATA_DIR/users.json)")
    p.add_argument("--concurrency", type=int, help="simultaneous generations per model (default: each model's own; "
                   "a language model decodes up to 16 requests together)")
    p.add_argument("--queue-size", type=int, help="requests that may wait before new ones get 'busy, try again' (default 64)")
    p.add_argument("--requests-per-minute", type=int, help="generation requests per user per minute (0 = no limit; "
                   "default: 60 with accounts, none while auth is off)")
    p.add_argument("--memory-budget-gb", type=float, help="unload least recently used models beyond this much memory")
    p.add_argument("--train-jobs", type=int, help="training jobs running at once; the rest wait in a queue (default 1)")
    p.add_argument("--train-threads", type=int, help="torch threads of each training job's process (default 1)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING … (default INFO)")
    return p.parse_args(argv)


def loopback_only(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address (127.0.0.0/8, ::1).

    Decided on the resolved addresses, never on the text: `127.example.net` may point anywhere, and
    an empty host or 0.0.0.0 listens on every interface."""
    if not host or not host.strip():
        return False
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError: unresolvable is not "loopback"
        return False
    addresses = {info[4][0].split("%", 1)[0] for info in infos}
    try:
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    except ValueError:
        return False


def exposure_problem(settings: "Any", auth_enabled: bool) -> str | None:
    """Why starting would expose the studio to others without accounts, or None."""
    if auth_enabled:
        return None
    if settings.share:
        return "--share opens a public link that anyone can use"
    if not loopback_only(settings.host):
        return f"--host {settings.host} lets other machines reach the studio (it is not only a loopback address)"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("users", "backup", "restore", "evaluate", "prepare"):
        from webui.admin import main as admin_main

        return admin_main(argv)
    args = parse_args(argv)
    os.umask(0o077)  # whatever else the studio or its libraries write (caches, temp files) is private too
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Heavy imports after argument parsing, so --help is instant.
    from webui.settings import SettingsError, load_settings

    cli = {k: v for k, v in vars(args).items() if k not in ("config", "share_without_auth")}
    try:
        settings = load_settings(cli, args.config)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from webui.services.accounts import AccountError, Accounts

    try:
        auth_enabled = Accounts(settings.users_path, list(settings.auth)).enabled
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = exposure_problem(settings, auth_enabled)
    if problem and not args.share_without_auth:
        print(
            f"error: {problem}, and no users are configured: everyone could read every chat, story and image.\n"
            "Add a user first:  python launch.py users add NAME   (or --auth NAME:PASSWORD for this run)\n"
            "or pass --share-without-auth if that is really what you want.",
            file=sys.stderr,
        )
        return 2
    if problem:
        log.warning("NO AUTH: %s, and anyone who reaches it can use this studio and see everything in it.", problem)

    from generators.base import InvalidOptionsError
    from storage.db import StorageError
    from webui.server import create_context, launch

    try:
        ctx = create_context(settings)
    except (StorageError, InvalidOptionsError) as exc:  # a broken database, or a signing certificate that cannot sign
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        demo = launch(ctx, quiet=True)
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    print(f"AIGC Studio is ready: {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"Public link: {demo.share_url}", flush=True)
    elif settings.share:
        print("The public link could not be created (no connection to the share server); serving locally only.", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("Shutting down…", flush=True)
    demo.close()
    ctx.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
