"""Accounts: the users file, argon2 passwords, API keys, the users/backup/restore commands, exposure refusal."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from launch import main as launch_main
from webui.services.accounts import AccountError, Accounts, AuthError
from webui.services.context import RateLimiter

ROOT = Path(__file__).resolve().parents[1]


def test_users_file_add_verify_keys_remove(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    accounts = Accounts(path)
    assert not accounts.enabled
    key = accounts.add("ann", "correct horse")
    assert accounts.enabled and accounts.names() == ["ann"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert "correct horse" not in raw and key not in raw and "$argon2id$" in raw
    assert accounts.verify_password("ann", "correct horse")
    assert not accounts.verify_password("ann", "wrong horse") and not accounts.verify_password("nobody", "correct horse")
    assert accounts.user_for_key(key) == "ann" and accounts.user_for_key(key + "x") is None
    assert accounts.user_for_key("") is None and accounts.user_for_key("Bearer") is None
    second = accounts.new_key("ann")
    assert {accounts.user_for_key(key), accounts.user_for_key(second)} == {"ann"}
    accounts.set_password("ann", "battery staple")
    assert accounts.verify_password("ann", "battery staple") and not accounts.verify_password("ann", "correct horse")
    accounts.remove("ann")
    assert not accounts.enabled and accounts.user_for_key(key) is None


def test_a_running_studio_sees_users_added_by_the_command(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    running = Accounts(path)
    assert not running.verify_password("bob", "hunter2hunter2")
    Accounts(path).add("bob", "hunter2hunter2")  # another process, e.g. `launch.py users add`
    assert running.verify_password("bob", "hunter2hunter2")


@pytest.mark.parametrize("name", ["", "a b", "../x", "x" * 65, "-x", "ann;drop"])
def test_bad_user_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(AccountError, match="user name"):
        Accounts(tmp_path / "u.json").add(name, "long enough")


def test_short_passwords_duplicates_and_damaged_files_are_clear_errors(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "u.json")
    with pytest.raises(AccountError, match="at least 8"):
        accounts.add("ann", "short")
    accounts.add("ann", "long enough")
    with pytest.raises(AccountError, match="already exists"):
        accounts.add("ann", "long enough")
    (tmp_path / "u.json").write_text("{not json")
    with pytest.raises(AccountError, match="damaged"):
        Accounts(tmp_path / "u.json").names()


def test_inline_auth_users(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "none.json", ["ann:pw-of-ann", "bob:pw:with:colons"])
    assert accounts.enabled and accounts.names() == ["ann", "bob"]
    assert accounts.verify_password("bob", "pw:with:colons") and not accounts.verify_password("ann", "pw-of-bob")
    with pytest.raises(AccountError, match="USER:PASSWORD"):
        Accounts(tmp_path / "none.json", ["ann"])


def test_owner_resolution(make_ctx, tmp_path: Path) -> None:
    ctx = make_ctx()
    assert ctx.owner_for(None) == "local" and ctx.owner_for_api_key(None) == "local"
    key = Accounts(ctx.settings.users_path).add("ann", "long enough")
    assert ctx.auth_enabled
    with pytest.raises(AuthError, match="Log in"):
        ctx.owner_for(None)
    for header in (None, "", "Bearer", f"Basic {key}", "Bearer aigc-wrong"):
        with pytest.raises(AuthError, match="API key"):
            ctx.owner_for_api_key(header)
    assert ctx.owner_for_api_key(f"Bearer {key}") == "ann" and ctx.owner_for("ann") == "ann"


def test_rate_limiter_window() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("ann")
    limiter.check("bob")  # per user
    with pytest.raises(Exception, match="limit is 3"):
        limiter.check("ann")
    with pytest.raises(Exception, match="limit is 3"):
        limiter.check("ann", consume=False)
    now[0] = 60.5
    limiter.check("ann")
    RateLimiter(0).check("ann")  # 0 = off


def test_users_command(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args, "--data-dir", str(data)],
                              input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120)

    added = run("users", "add", "ann", "--password-stdin", stdin="a good password\n")
    assert added.returncode == 0, added.stderr
    key = added.stdout.split("shown only now): ")[1].split()[0]
    assert Accounts(data / "users.json").user_for_key(key) == "ann"
    assert run("users", "list").stdout.split() == ["ann", "(admin)"]
    again = run("users", "add", "ann", "--password-stdin", stdin="a good password\n")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert run("users", "remove", "ann").returncode == 0
    assert "No users" in run("users", "list").stdout


@pytest.mark.parametrize("extra", [["--share"], ["--host", "0.0.0.0"]])
def test_exposing_without_accounts_is_refused(tmp_path: Path, capsys, extra: list[str]) -> None:
    assert launch_main([*extra, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no users are configured" in err and "users add" in err and "--share-without-auth" in err


def test_backup_and_restore_round_trip(make_ctx, tmp_path: Path) -> None:
    from webui.admin import backup, restore
    from webui.services import chat

    ctx = make_ctx()
    settings = ctx.settings
    view = chat.add_user_message(ctx, "local", None, "keep me", chat.reply_settings(ctx, "fake", {}))
    images = settings.data_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "abc.png").write_bytes(b"png bytes")
    Accounts(settings.users_path).add("ann", "long enough")
    archive = tmp_path / "backup.tar.gz"
    manifest = backup(settings, archive)  # while the store is open (online backup)
    assert manifest["images"] == 1 and archive.is_file()
    # things change after the backup …
    chat.delete_chat(ctx, "local", view.id)
    (images / "abc.png").unlink()
    (images / "later.png").write_bytes(b"later")
    ctx.store.close()
    restore(settings, archive)
    db = settings.data_dir / "studio.db"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT content FROM messages").fetchall() == [("keep me",)]
    finally:
        con.close()
    assert (images / "abc.png").read_bytes() == b"png bytes" and not (images / "later.png").exists()
    assert list(settings.data_dir.glob("images.before-restore-*/later.png"))  # moved aside, not lost
    assert list(settings.data_dir.glob("studio.db.before-restore-*"))
    assert "ann" in json.loads(settings.users_path.read_text())["users"]


def test_restore_refuses_a_bad_archive_and_changes_nothing(make_ctx, tmp_path: Path) -> None:
    from webui.admin import restore

    ctx = make_ctx()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    before = (ctx.settings.data_dir / "studio.db").read_bytes()
    with pytest.raises(SystemExit, match="not a readable backup"):
        restore(ctx.settings, bad)
    assert (ctx.settings.data_dir / "studio.db").read_bytes() == before
