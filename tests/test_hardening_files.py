"""File modes and the loopback guard: what the studio writes is private, links are not followed,
a too-open users file is fixed or refused, and "loopback only" is decided on resolved addresses."""

from __future__ import annotations

import json
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from generators.base import InvalidOptionsError
from launch import exposure_problem, loopback_only
from webui.services.accounts import AccountError, Accounts


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_images_and_folders_are_private(make_ctx) -> None:
    from webui.services import chat
    from webui.services import images as image_svc

    old = os.umask(0o022)  # an ordinary umask: the modes must not depend on it
    try:
        ctx = make_ctx(images=True)
        chat.add_user_message(ctx, "ann", None, "hello", chat.reply_settings(ctx, "fake", {}))
        made = image_svc.generate(ctx, "ann", "gan-mnist32", 3, 1, 1, {}, "ui").images[0]
    finally:
        os.umask(old)
    data = ctx.settings.data_dir
    assert mode(data) == 0o700 and mode(data / "images") == 0o700
    for f in [data / "studio.db", made.path, *data.glob("studio.db-*")]:
        assert mode(f) == 0o600, f


def test_backup_archive_is_private_and_restore_narrows_old_files(make_ctx, tmp_path: Path) -> None:
    from webui.admin import backup, restore

    ctx = make_ctx()
    Accounts(ctx.settings.users_path).add("ann", "ann-password")
    (tmp_path / "out").mkdir()
    archive = tmp_path / "out" / "b.tar.gz"
    target = tmp_path / "elsewhere.txt"
    target.write_text("not yours")
    os.symlink(target, archive.with_name(archive.name + ".partial"))  # a planted link is not written through
    old = os.umask(0o022)
    try:
        backup(ctx.settings, archive)
    finally:
        os.umask(old)
    assert mode(archive) == 0o600 and target.read_text() == "not yours"
    with tarfile.open(archive) as tar:
        assert "users.json" in tar.getnames()
    # an archive made by an older studio holds 0644 files: restored, they become private
    for f in (ctx.settings.data_dir / "studio.db", ctx.settings.users_path):
        f.chmod(0o644)
    backup(ctx.settings, archive)
    ctx.store.close()
    restore(ctx.settings, archive)
    assert mode(ctx.settings.data_dir / "studio.db") == 0o600
    assert mode(ctx.settings.users_path) == 0o600 and mode(ctx.settings.data_dir / "images") == 0o700


def test_users_file_is_private_fixed_when_too_open_and_never_followed(tmp_path: Path, caplog) -> None:
    path = tmp_path / "data" / "users.json"
    accounts = Accounts(path)
    accounts.add("ann", "ann-password")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    # too open: fixed (and said so) before it is used
    path.chmod(0o644)
    fresh = Accounts(path)
    assert fresh.verify_password("ann", "ann-password")
    assert mode(path) == 0o600 and "readable by other accounts" in caplog.text
    # a link planted at the old temporary name is not followed when the file is saved
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, path.with_name("users.json.tmp"))
    fresh.add("bob", "bob-password")
    assert victim.read_text() == "precious"
    assert Accounts(path).names() == ["ann", "bob"] and mode(path) == 0o600


def test_a_users_file_the_studio_cannot_narrow_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "users.json"
    Accounts(path).add("ann", "ann-password")
    path.chmod(0o640)
    monkeypatch.setattr("storage.files.narrow", lambda p: None)  # as if another OS user owned it
    with pytest.raises(AccountError, match="chmod 600"):
        Accounts(path).verify_password("ann", "ann-password")


def test_loopback_guard_decides_on_resolved_addresses(monkeypatch) -> None:
    assert loopback_only("127.0.0.1") and loopback_only("127.0.0.2") and loopback_only("::1")
    assert loopback_only("localhost")
    assert not loopback_only("0.0.0.0") and not loopback_only("") and not loopback_only("::")
    assert not loopback_only("127.no-such-host.invalid")  # starts with "127." but resolves nowhere

    real = socket.getaddrinfo

    def fake(host: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "127.0.0.1.attacker.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.7", 0))]
        if host == "mixed.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", 0, 0, 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert not loopback_only("127.0.0.1.attacker.example") and not loopback_only("mixed.example")

    class S:
        share = False
        host = "127.0.0.1.attacker.example"

    assert "not only a loopback address" in (exposure_problem(S, auth_enabled=False) or "")
    assert exposure_problem(S, auth_enabled=True) is None
    S.host = "127.0.0.1"
    assert exposure_problem(S, auth_enabled=False) is None


# ------------------------------------------------------------------ chat import, validated like story import


def _export(messages: list, **extra) -> dict:  # type: ignore[type-arg]
    return {"format": "aigc-studio.session.v1", "kind": "chat", "title": "t", "messages": messages, **extra}


@pytest.mark.parametrize("bad, words", [
    ([{"id": "1", "role": "user", "content": "a\x00b"}], "NUL"),
    ([{"id": "1", "role": "user", "content": "x" * 3_000_000}], "limit is 50,000"),
    ([{"id": "1", "role": "user", "content": "hi", "status": "pwned"}], "status"),
    ([{"id": "1", "role": "user", "content": 42}], "must be text"),
    ([{"id": "1", "role": "user", "content": "hi", "model": {"x": 1}}], "model that is not a short text"),
    ([{"id": "1", "role": "user", "content": "ok"}, {"id": "2", "parent_id": "1", "role": "robot", "content": "x"}],
     "valid role"),
])
def test_chat_import_refuses_bad_files_and_stores_nothing(make_ctx, bad: list, words: str) -> None:  # type: ignore[type-arg]
    from storage.repository import EXPORT_FORMAT
    from webui.services import chat

    ctx = make_ctx()
    data = {**_export(bad), "format": EXPORT_FORMAT}
    with pytest.raises(Exception, match=words) as info:
        chat.import_json(ctx, "ann", json.dumps(data))
    assert "SELECT" not in str(info.value) and "INSERT" not in str(info.value) and "sqlite" not in str(info.value).lower()
    assert chat.list_chats(ctx, "ann") == []


def test_chat_import_with_odd_types_shows_no_sql(make_ctx) -> None:
    from storage.repository import EXPORT_FORMAT
    from webui.services import chat

    ctx = make_ctx()
    for data in ({"settings": [1, 2]}, {"title": ["not", "text"]}, {"active_leaf_id": {"a": 1}}):
        payload = {**_export([{"id": "1", "role": "user", "content": "hi"}]), "format": EXPORT_FORMAT, **data}
        try:
            chat.import_json(ctx, "ann", json.dumps(payload))
        except InvalidOptionsError as exc:
            assert "SELECT" not in str(exc) and "INSERT" not in str(exc) and "[SQL" not in str(exc)
    good = {**_export([{"id": "1", "role": "user", "content": "hi", "status": "streaming"}]), "format": EXPORT_FORMAT}
    view = chat.import_json(ctx, "ann", json.dumps(good))
    assert view.messages[0].status == "interrupted"
