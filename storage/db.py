"""The Store: engine, sessionmaker and migrations for one database URL.

SQLite (the default) runs in WAL mode with foreign keys on and a busy timeout, set on
every connection. Any SQLAlchemy URL works (PostgreSQL uses the same migrations).
Schema changes go through Alembic; `Store(...)` upgrades to head at start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from .models import Generation, Message, StoryPassage

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000


class StorageError(Exception):
    """A storage problem whose message is meant for a person."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade_to_head(engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """Database access for the app; create one per process and pass it down."""

    def __init__(self, url: str, data_dir: str | Path) -> None:
        self.url = url
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = make_engine(url)
            upgrade_to_head(self.engine)
        except Exception as exc:
            raise StorageError(f"Could not open or migrate the database at {url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def begin(self) -> Iterator[OrmSession]:
        """One transaction: commits on success, rolls back on error, always closes."""
        with self._sessions.begin() as session:
            yield session

    def recover_interrupted(self) -> int:
        """Mark generations left `running` by a crash as `interrupted` (their text is kept)."""
        with self.begin() as s:
            ids = list(s.scalars(select(Generation.id).where(Generation.outcome == "running")))
            if ids:
                s.execute(update(Generation).where(Generation.id.in_(ids)).values(outcome="interrupted"))
                s.execute(
                    update(Message)
                    .where(Message.generation_id.in_(ids), Message.status == "streaming")
                    .values(status="interrupted")
                )
                s.execute(
                    update(StoryPassage)
                    .where(StoryPassage.generation_id.in_(ids), StoryPassage.status == "streaming")
                    .values(status="interrupted")
                )
            # A crash between creating a passage and starting its generation leaves it unattached.
            s.execute(
                update(StoryPassage)
                .where(StoryPassage.generation_id.is_(None), StoryPassage.status == "streaming")
                .values(status="interrupted")
            )
        if ids:
            log.warning("Marked %d generation(s) cut off by the last shutdown as interrupted", len(ids))
        return len(ids)

    def close(self) -> None:
        self.engine.dispose()
