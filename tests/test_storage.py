"""Storage on a temporary SQLite database, migrated to head the way the app does it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from storage import Store
from storage import repository as repo
from storage.db import MIGRATIONS, StorageError


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'studio.db'}", tmp_path)
    yield s
    s.close()


def test_migrations_reach_head_and_sqlite_is_configured(store: Store) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with store.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == head
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
    assert {"sessions", "messages", "generations"} <= set(inspect(store.engine).get_table_names())


def test_reopening_keeps_data_and_does_not_remigrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    first = Store(url, tmp_path)
    with first.begin() as s:
        chat = repo.create_session(s, "local", "chat", "kept")
    first.close()
    second = Store(url, tmp_path)
    with second.begin() as s:
        assert repo.get_session(s, "local", chat.id).title == "kept"
    second.close()


def test_unusable_database_url_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    with pytest.raises(StorageError, match="Could not open"):
        Store(f"sqlite:///{tmp_path / 'not-a-dir' / 'db.sqlite'}", tmp_path)


def test_message_tree_branches_and_switching(store: Store) -> None:
    with store.begin() as s:
        chat = repo.create_session(s, "local", "chat", "t")
        u1 = repo.add_message(s, chat, None, "user", "hi")
        a1 = repo.add_message(s, chat, u1.id, "assistant", "first")
        a2 = repo.add_message(s, chat, u1.id, "assistant", "second")  # a regeneration: sibling of a1
        path = repo.active_path(s, chat)
        assert [m.content for m, _ in path] == ["hi", "second"]
        assert (path[1][1].index, path[1][1].count) == (2, 2)
        shown = repo.switch_branch(s, chat, a2.id, -1)
        assert shown.id == a1.id
        assert [m.content for m, _ in repo.active_path(s, chat)] == ["hi", "first"]
        u2 = repo.add_message(s, chat, a1.id, "user", "more")
        repo.switch_branch(s, chat, a1.id, +1)  # to a2, which has no children
        repo.switch_branch(s, chat, a2.id, +1)  # back to a1: follows down to its newest leaf
        assert chat.active_leaf_id == u2.id


def test_owner_isolation(store: Store) -> None:
    with store.begin() as s:
        chat = repo.create_session(s, "alice", "chat", "secret")
    with store.begin() as s:
        with pytest.raises(repo.NotFoundError):
            repo.get_session(s, "bob", chat.id)
        assert repo.list_sessions(s, "bob", "chat") == []
        with pytest.raises(repo.NotFoundError):
            repo.delete_session(s, "bob", chat.id)
        assert repo.get_session(s, "alice", chat.id)


def test_search_matches_titles_and_message_text_literally(store: Store) -> None:
    with store.begin() as s:
        a = repo.create_session(s, "local", "chat", "Cooking ideas")
        b = repo.create_session(s, "local", "chat", "Other")
        repo.add_message(s, b, None, "user", "what is 100% rye bread?")
    with store.begin() as s:
        assert [c.id for c in repo.list_sessions(s, "local", "chat", "cooking")] == [a.id]
        assert [c.id for c in repo.list_sessions(s, "local", "chat", "100%")] == [b.id]
        assert repo.list_sessions(s, "local", "chat", "_") == []  # wildcards are literal
        assert [c.id for c in repo.list_sessions(s, "local", "chat", "%")] == [b.id]


def test_delete_cascades_but_keeps_generation_records(store: Store) -> None:
    with store.begin() as s:
        chat = repo.create_session(s, "local", "chat", "x")
        gen = repo.start_generation(s, "local", "m", {"temperature": 0}, session_id=chat.id)
        repo.add_message(s, chat, None, "user", "hi")
    with store.begin() as s:
        repo.delete_session(s, "local", chat.id)
    with store.begin() as s:
        assert repo.messages_of(s, chat.id) == []
        assert repo.generations_of(s, "local")[0].id == gen.id


def test_export_import_round_trip_keeps_every_branch(store: Store) -> None:
    with store.begin() as s:
        chat = repo.create_session(s, "local", "chat", "Trip", {"model": "m"})
        u = repo.add_message(s, chat, None, "user", "hi")
        repo.add_message(s, chat, u.id, "assistant", "one")
        repo.add_message(s, chat, u.id, "assistant", "two", status="cancelled")
        data = repo.export_session(s, chat)
    with store.begin() as s:
        copy = repo.import_session(s, "local", data, kind="chat")
        again = repo.export_session(s, copy)
    strip = lambda d: [(m["role"], m["content"], m["status"]) for m in d["messages"]]  # noqa: E731
    assert strip(again) == strip(data) and again["title"] == "Trip" and again["settings"] == {"model": "m"}
    with store.begin() as s:
        assert [m.content for m, _ in repo.active_path(s, repo.get_session(s, "local", copy.id))] == ["hi", "two"]


@pytest.mark.parametrize(
    "bad",
    [{}, {"format": "other"}, {"format": repo.EXPORT_FORMAT, "kind": "chat", "messages": [{"role": "robot"}]},
     {"format": repo.EXPORT_FORMAT, "kind": "chat", "messages": [{"id": "1", "parent_id": "9", "role": "user"}]}],
)
def test_import_rejects_malformed_exports(store: Store, bad: dict) -> None:
    with pytest.raises(StorageError):
        with store.begin() as s:
            repo.import_session(s, "local", bad, kind="chat")
    with store.begin() as s:
        assert repo.list_sessions(s, "local", "chat") == []  # nothing half-imported


def test_recover_interrupted_marks_running_generations(store: Store) -> None:
    with store.begin() as s:
        chat = repo.create_session(s, "local", "chat", "x")
        gen = repo.start_generation(s, "local", "m", {}, session_id=chat.id)
        u = repo.add_message(s, chat, None, "user", "hi")
        reply = repo.add_message(s, chat, u.id, "assistant", "partial tex", status="streaming", generation_id=gen.id)
    assert store.recover_interrupted() == 1
    with store.begin() as s:
        msgs = {m.id: m for m in repo.messages_of(s, chat.id)}
        assert msgs[reply.id].status == "interrupted" and msgs[reply.id].content == "partial tex"
        assert repo.generations_of(s, "local")[0].outcome == "interrupted"
    assert store.recover_interrupted() == 0
