"""Admin commands: `python launch.py users …`, `backup FILE`, `restore FILE`.

    python launch.py users add ann            # asks for a password twice; prints ann's first API key
    python launch.py users list
    python launch.py users key ann            # another API key for ann (shown once)
    python launch.py users passwd ann
    python launch.py users role ann admin     # admins load/unload/configure models (the first user is one)
    python launch.py users remove ann         # her chats, stories and images stay in the database
    python launch.py backup studio-backup.tar.gz
    python launch.py restore studio-backup.tar.gz
    python launch.py evaluate [--models a,b]  # automatic metrics of the configured generators, stored
    python launch.py prepare [--models a,b]   # one-time model work (GGUF conversion, C++ loop), as setup does

A backup is one .tar.gz: the SQLite database copied with SQLite's online backup API (safe while
the studio runs and writes), the image files and the users file. Restore checks the archive
(`PRAGMA integrity_check`) before it touches anything, and moves what it replaces aside
(`*.before-restore-TIMESTAMP`), so a restore can itself be undone. Stop the studio before a
restore.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from storage import files as private_files

BACKUP_FORMAT = "aigc-studio.backup.v1"


def _settings(args: argparse.Namespace) -> Any:
    from .settings import load_settings

    cli = {"data_dir": args.data_dir, "users_file": args.users_file, "db_url": args.db_url}
    return load_settings({k: v for k, v in cli.items() if v is not None}, args.config)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="the studio's data folder (default ./data)")
    p.add_argument("--users-file", type=Path, help="default DATA_DIR/users.json")
    p.add_argument("--db-url", help="default sqlite:///DATA_DIR/studio.db")
    p.add_argument("--config", type=Path, help="the studio's TOML/YAML config file")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("error: the two passwords differ; nothing was changed.")
    return first


def users(args: argparse.Namespace) -> int:
    from .services.accounts import Accounts

    accounts = Accounts(_settings(args).users_path)
    if args.action == "list":
        names = accounts.names()
        print("\n".join(f"{n} (admin)" if accounts.is_admin(n) else n for n in names) if names
              else f"No users in {accounts.path} (auth is off).")
    elif args.action == "add":
        key = accounts.add(args.name, _password(args))
        print(f"Added {args.name}. Their API key (shown only now): {key}")
        print("Restart the studio if it runs without accounts, so the login page turns on.")
    elif args.action == "key":
        print(f"New API key for {args.name} (shown only now): {accounts.new_key(args.name)}")
    elif args.action == "passwd":
        accounts.set_password(args.name, _password(args))
        print(f"Password of {args.name} changed; their logins and API keys are revoked "
              f"(a new key: python launch.py users key {args.name}).")
    elif args.action == "role":
        if args.role not in ("admin", "user"):
            raise SystemExit("error: users role NAME admin|user")
        accounts.set_role(args.name, args.role)
        print(f"{args.name} is now {'an admin' if args.role == 'admin' else 'a user'}.")
    elif args.action == "remove":
        accounts.remove(args.name)
        print(f"Removed {args.name}; their logins and API keys stop working now; their saved work stays in the database.")
    return 0


def _sqlite_path(settings: Any) -> Path:
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        raise SystemExit(f"error: backup/restore handle SQLite; for {url.split(':')[0]} use its own tools (e.g. pg_dump).")
    return Path(url[len("sqlite:///"):])


def backup(settings: Any, out: Path) -> dict[str, Any]:
    """Write a .tar.gz with the database (online backup), images, users file and signing identity; returns its manifest."""
    db_path = _sqlite_path(settings)
    if not db_path.is_file():
        raise SystemExit(f"error: no database at {db_path}; nothing to back up.")
    images = settings.data_dir / "images"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "studio.db"
        src, dst = sqlite3.connect(db_path), sqlite3.connect(copy)
        try:
            with dst:
                src.backup(dst)  # a consistent snapshot, even while the studio writes
            ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            src.close()
            dst.close()
        if ok != "ok":
            raise SystemExit(f"error: the database copy failed its integrity check: {ok}")
        files = sorted(p for p in images.glob("*") if p.is_file() and not p.name.endswith(".tmp")) if images.is_dir() else []
        signing_dir = settings.data_dir / "signing"
        manifest = {"format": BACKUP_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "images": len(files), "users_file": settings.users_path.is_file(),
                    "signing_identity": signing_dir.is_dir()}
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.unlink(missing_ok=True)  # a stale one, or a link planted there: never written through
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, private_files.FILE_MODE)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(Path(tmp) / "manifest.json", "manifest.json")
            tar.add(copy, "studio.db")
            for f in files:
                tar.add(f, f"images/{f.name}")
            if settings.users_path.is_file():
                tar.add(settings.users_path, "users.json")
            if signing_dir.is_dir():  # the studio's C2PA signing identity: restored images keep verifying as ours
                tar.add(signing_dir, "signing")
        os.replace(partial, out)
    return manifest


def restore(settings: Any, archive: Path) -> dict[str, Any]:
    """Put a backup back in place; what it replaces is moved aside, never deleted."""
    db_path = _sqlite_path(settings)
    if not archive.is_file():
        raise SystemExit(f"error: {archive} does not exist.")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, .. and links out of tmp
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SystemExit(f"error: {archive} is not a readable backup ({exc}); nothing was changed.") from None
        root = Path(tmp)
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("format") != BACKUP_FORMAT or not (root / "studio.db").is_file():
            raise SystemExit(f"error: {archive} is not an AIGC Studio backup; nothing was changed.")
        con = sqlite3.connect(root / "studio.db")
        try:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
        if ok != "ok":
            raise SystemExit(f"error: the database in {archive} is damaged ({ok}); nothing was changed.")
        db_path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            old = Path(str(db_path) + suffix)
            if old.exists():
                os.replace(old, old.with_name(f"{old.name}.before-restore-{stamp}"))
        shutil.copy2(root / "studio.db", db_path)
        private_files.narrow(db_path)  # older backups hold 0644 files
        images = settings.data_dir / "images"
        if images.exists():
            os.replace(images, images.with_name(f"images.before-restore-{stamp}"))
        if (root / "images").is_dir():
            shutil.copytree(root / "images", images)
        private_files.private_dir(images)
        for f in images.iterdir():
            private_files.narrow(f)
        if (root / "users.json").is_file():
            users_path = settings.users_path
            if users_path.exists():
                os.replace(users_path, users_path.with_name(f"{users_path.name}.before-restore-{stamp}"))
            shutil.copy2(root / "users.json", settings.users_path)
            private_files.narrow(settings.users_path)
        if (root / "signing").is_dir():
            signing_dir = settings.data_dir / "signing"
            if signing_dir.exists():
                os.replace(signing_dir, signing_dir.with_name(f"signing.before-restore-{stamp}"))
            shutil.copytree(root / "signing", signing_dir)
            os.chmod(signing_dir, 0o700)
            for f in signing_dir.iterdir():
                os.chmod(f, 0o600)
    return manifest


def evaluate(settings: Any, models: str | None) -> int:
    from tqdm import tqdm

    from .server import create_context
    from .services import metrics

    ctx = create_context(settings)
    try:
        bar = tqdm(total=100, desc="metrics", unit="%")

        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction)
            bar.set_postfix_str(message[:60])
            bar.refresh()

        found = metrics.run(ctx, [m.strip() for m in models.split(",")] if models else None, progress)
        bar.close()
    finally:
        ctx.store.close()
    print("| generator | metric | value | data |\n|---|---|---:|---|")
    for m in found:
        print(f"| {m.generator} | {m.metric} | {m.value:.4g} | {m.dataset} |")
    return 0


def prepare(settings: Any, models: str | None) -> int:
    """Load each language model once and unload it: the one-time work (assembling and converting its GGUF
    into the cache, building the C++ decoding loop) happens here, so the first message after setup does
    not wait for it."""
    from .server import create_context

    ctx = create_context(settings)
    try:
        names = [m.strip() for m in models.split(",")] if models else [
            d["name"] for d in ctx.registry.describe() if d["modality"] == "text" and d["plugin"] == "transformers"]
        for name in names:
            print(f"Preparing {name}…", flush=True)
            ctx.registry.load(name, lambda message: print(f"  {message}", flush=True))
            described = ctx.registry.get(name).describe()
            print(f"  ready: {described.get('precision')}, {described.get('decode_loop')}", flush=True)
            ctx.registry.unload(name)
    finally:
        ctx.store.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description="AIGC Studio admin commands")
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("users", help="add, list, remove users; make API keys")
    u.add_argument("action", choices=["add", "list", "remove", "key", "passwd", "role"])
    u.add_argument("name", nargs="?")
    u.add_argument("role", nargs="?", help="with `role`: admin or user (admins manage the shared models)")
    u.add_argument("--password-stdin", action="store_true", help="read the password from stdin (scripts)")
    _common(u)
    b = sub.add_parser("backup", help="database (online backup) + images + users into one .tar.gz")
    b.add_argument("file", type=Path)
    _common(b)
    r = sub.add_parser("restore", help="put a backup back (stop the studio first)")
    r.add_argument("file", type=Path)
    _common(r)
    e = sub.add_parser("evaluate", help="automatic metrics (perplexity, bits/char, BLEU, ROUGE-L, image accuracy/FD)")
    e.add_argument("--models", help="comma-separated model names (default: every configured model)")
    _common(e)
    p = sub.add_parser("prepare", help="do the default language models' one-time work now (GGUF conversion, "
                       "the C++ decoding loop), as ./setup.sh does")
    p.add_argument("--models", help="comma-separated model names (default: every configured language model)")
    _common(p)
    args = parser.parse_args(argv)
    from generators.base import StudioError

    from .settings import SettingsError

    try:
        if args.command == "users":
            if args.action != "list" and not args.name:
                parser.error(f"users {args.action} needs a NAME")
            return users(args)
        settings = _settings(args)
        if args.command == "evaluate":
            return evaluate(settings, args.models)
        if args.command == "prepare":
            return prepare(settings, args.models)
        if args.command == "backup":
            manifest = backup(settings, args.file)
            print(f"Backed up the database and {manifest['images']} image file(s) to {args.file}")
        else:
            manifest = restore(settings, args.file)
            print(f"Restored the backup of {manifest.get('created')} ({manifest.get('images')} image files) "
                  f"into {settings.data_dir}; the replaced files were moved aside (*.before-restore-*).")
        return 0
    except (StudioError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
