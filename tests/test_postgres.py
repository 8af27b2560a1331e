"""PostgreSQL: the same migrations and services as SQLite, on a real server started here; several app
instances on one database see each other's work, and a starting instance never interrupts a live one."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from sqlalchemy import select, text

from storage import Store
from storage import repository as repo
from storage.models import Generation
from tests.postgres import PostgresServer

SAMPLER = (0.0, 0.95, 50, 0.0, 1.0, 16, "", "")


def alembic_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from storage.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.fixture(scope="module")
def pg():  # type: ignore[no-untyped-def]
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg) -> str:  # type: ignore[no-untyped-def]
    return pg.create_database("t" + uuid.uuid4().hex[:12])


def test_migrations_and_services_on_postgres(make_ctx, pg_url: str) -> None:
    from webui.services import chat, story
    from webui.services.story_values import story_settings

    ctx = make_ctx({"quick": {"words": 4}}, db_url=pg_url)
    assert ctx.store.engine.dialect.name == "postgresql" and ctx.store.shared
    with ctx.store.begin() as s:
        assert s.execute(text("SELECT version_num FROM alembic_version")).scalar() == alembic_head()
    settings = chat.reply_settings(ctx, "quick", {"temperature": 0})
    view = chat.add_user_message(ctx, "ann", None, "Grüße, 世界 — 100% _literal_ \\ text", settings)
    for _ in chat.stream_reply(ctx, "ann", view.id, settings):
        pass
    view = chat.get_chat(ctx, "ann", view.id)
    assert [m.role for m in view.messages] == ["user", "assistant"] and view.messages[1].status == "ok"
    assert [c.id for c in chat.list_chats(ctx, "ann", "100% _lit")] == [view.id]  # LIKE wildcards escaped
    assert chat.list_chats(ctx, "ann", "0%_") == [] and chat.list_chats(ctx, "bob") == []
    exported = chat.export_json(ctx, "ann", view.id)
    assert chat.import_json(ctx, "ann", exported).messages[0].content.startswith("Grüße")
    made = story.create_story(ctx, "ann", "On Postgres", story_settings(ctx, "quick", {}), "Once upon a time")
    story.write(ctx, "ann", made.id, " there was a database.")
    assert story.get_story(ctx, "ann", made.id).text.endswith("database.")


def test_a_starting_instance_interrupts_only_dead_instances(pg_url: str, tmp_path: Path) -> None:
    alive = Store(pg_url, tmp_path / "a")
    dying = Store(pg_url, tmp_path / "b")
    with alive.begin() as s:
        live_row = repo.start_generation(s, "ann", "m", {}, instance_id=alive.instance_id).id
    with dying.begin() as s:
        dead_row = repo.start_generation(s, "bob", "m", {}, instance_id=dying.instance_id).id
    dying.close()  # its connection (and advisory lock) is gone, as when a process is killed
    newcomer = Store(pg_url, tmp_path / "c")
    assert newcomer.recover_interrupted() == 1
    with newcomer.begin() as s:
        outcomes = dict(s.execute(select(Generation.id, Generation.outcome)).all())
    assert outcomes == {live_row: "running", dead_row: "interrupted"}
    for store in (alive, newcomer):
        store.close()


@pytest.mark.e2e
def test_two_app_instances_on_one_database(running_app, pg_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    extra = ["--db-url", pg_url, "--model", str(tiny_model_dir), "--requests-per-minute", "0"]
    a = running_app(tmp_path / "a", extra)
    b = running_app(tmp_path / "b", extra)
    model = tiny_model_dir.name
    errors: list[str] = []

    def chat_on(url: str, who: str, turns: int) -> None:
        try:
            client = Client(url, verbose=False)
            for i in range(turns):
                client.predict(model, "", f"{who} turn {i}", *SAMPLER, api_name="/send")
                client.predict(model, "", *SAMPLER, api_name="/reply")
        except Exception as exc:  # noqa: BLE001 - checked below
            errors.append(f"{who}: {exc}")

    threads = [threading.Thread(target=chat_on, args=(app.url, f"user-{n}-on-{name}", 3))
               for n in range(2) for name, app in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # each instance lists every chat, including those made through the other one
    for app in (a, b):
        chats = httpx.get(f"{app.url}/api/chats").json()["data"]
        assert len(chats) == 4
        for c in chats:
            full = httpx.get(f"{app.url}/api/chats/{c['id']}").json()
            roles = [(m["role"], m["status"]) for m in full["messages"]]
            assert roles == [("user", "ok"), ("assistant", "ok")] * 3, roles
