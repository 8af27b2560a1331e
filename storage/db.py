"""The Store: engine, sessionmaker and migrations for one database URL.

SQLite (the default) runs in WAL mode with foreign keys on and a busy timeout, set on
every connection. PostgreSQL (`postgresql+psycopg://…`) uses the same migrations, and
several app instances may share one database: migrations run under an advisory lock, and
each instance holds an advisory lock named after its instance id for as long as it lives,
so a starting instance marks as interrupted only the generations of instances that died.
Schema changes go through Alembic; `Store(...)` upgrades to head at start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .files import create_private_file, private_dir
from .models import Generation, Message, StoryPassage, new_id

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 7_263_524_901  # pg advisory lock key held while migrating


def instance_lock_key(instance_id: str) -> int:
    """A signed 64-bit advisory-lock key from an instance id (32 hex digits)."""
    value = int(instance_id[:16], 16)
    return value - 2**64 if value >= 2**63 else value


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
        path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
        if path and path != ":memory:" and not path.startswith("file:"):
            private_dir(Path(path).parent)
            create_private_file(path)  # 0600; SQLite gives its -wal and -shm files the same mode
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade_to_head(engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # two instances starting at once must not both migrate
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """Database access for the app; create one per process and pass it down."""

    def __init__(self, url: str, data_dir: str | Path) -> None:
        self.url = url
        self.data_dir = Path(data_dir)
        private_dir(self.data_dir)
        self.instance_id = new_id()
        self._liveness: Any = None
        try:
            self.engine = make_engine(url)
            upgrade_to_head(self.engine)
            if self.shared:
                # held for the life of this process; the server drops it when the process dies
                self._liveness = self.engine.connect()
                self._liveness.execute(text("SELECT pg_advisory_lock(:k)"), {"k": instance_lock_key(self.instance_id)})
                self._liveness.commit()
        except Exception as exc:
            raise StorageError(f"Could not open or migrate the database at {url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def shared(self) -> bool:
        """Whether other app instances may use this database at the same time (PostgreSQL)."""
        return self.engine.dialect.name == "postgresql"

    def _instance_alive(self, s: Session, instance_id: str | None) -> bool:
        if not self.shared or not instance_id or instance_id == self.instance_id:
            return instance_id == self.instance_id
        key = instance_lock_key(instance_id)
        got = s.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar()
        return not got  # someone holds it: that instance is alive

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """One transaction: commits on success, rolls back on error, always closes."""
        with self._sessions.begin() as session:
            yield session

    def recover_interrupted(self) -> int:
        """Mark generations left `running` by a crash as `interrupted` (their text is kept)."""
        with self.begin() as s:
            running = s.execute(select(Generation.id, Generation.instance_id).where(Generation.outcome == "running")).all()
            alive: dict[str | None, bool] = {}
            for _, instance in running:
                if instance not in alive:
                    alive[instance] = self._instance_alive(s, instance)
            ids = [gid for gid, instance in running if not alive[instance]]
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
        if self._liveness is not None:
            self._liveness.close()
            self._liveness = None
        self.engine.dispose()
