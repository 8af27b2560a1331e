"""Repository functions. Each takes an open ORM session and never opens or commits one.

    with store.begin() as s:
        chat = repository.create_session(s, owner, "chat", "New chat")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from .db import StorageError
from .models import (
    Generation,
    ImageRecord,
    Message,
    OwnerSetting,
    SessionRecord,
    StoryEdit,
    StoryPassage,
    StorySnapshot,
    new_id,
    utcnow,
)

EXPORT_FORMAT = "aigc-studio.session.v1"


class NotFoundError(StorageError):
    """The row does not exist, or it belongs to someone else (the two look the same)."""


# ------------------------------------------------------------------ sessions


def create_session(s: Session, owner: str, kind: str, title: str = "", settings: dict[str, Any] | None = None) -> SessionRecord:
    row = SessionRecord(id=new_id(), owner=owner, kind=kind, title=title, settings=dict(settings or {}))
    s.add(row)
    s.flush()
    return row


def is_row_id(value: object) -> bool:
    """Row ids are 32 lowercase hex digits (uuid4().hex); anything else cannot name a row."""
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def get_session(s: Session, owner: str, session_id: str, kind: str | None = None) -> SessionRecord:
    row = s.get(SessionRecord, session_id) if is_row_id(session_id) else None
    if row is None or row.owner != owner or (kind is not None and row.kind != kind):
        shown = session_id if is_row_id(session_id) else "given"
        raise NotFoundError(f"No {kind or 'session'} with the {shown} id was found; it may have been deleted."
                            if shown == "given" else
                            f"No {kind or 'session'} with id {shown!r} was found; it may have been deleted.")
    return row


def list_sessions(s: Session, owner: str, kind: str, query: str = "", limit: int = 200) -> list[SessionRecord]:
    """Newest first; `query` matches the title or any message text (case-insensitive)."""
    stmt = select(SessionRecord).where(SessionRecord.owner == owner, SessionRecord.kind == kind)
    q = query.strip()
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        in_messages = select(Message.session_id).where(Message.content.ilike(pattern, escape="\\"))
        in_passages = select(StoryPassage.session_id).where(StoryPassage.text.ilike(pattern, escape="\\"))
        stmt = stmt.where(
            or_(SessionRecord.title.ilike(pattern, escape="\\"), SessionRecord.id.in_(in_messages),
                SessionRecord.id.in_(in_passages))
        )
    return list(s.scalars(stmt.order_by(SessionRecord.updated_at.desc()).limit(limit)))


def rename_session(s: Session, owner: str, session_id: str, title: str) -> SessionRecord:
    row = get_session(s, owner, session_id)
    row.title = title.strip()[:200]
    return row


def delete_session(s: Session, owner: str, session_id: str) -> None:
    row = get_session(s, owner, session_id)
    s.execute(delete(Message).where(Message.session_id == row.id))
    s.delete(row)


# ------------------------------------------------------------------ message tree


@dataclass(frozen=True)
class Branch:
    """Where a message sits among its siblings (alternatives): 1-based index of count."""

    index: int
    count: int


def messages_of(s: Session, session_id: str) -> list[Message]:
    return list(s.scalars(select(Message).where(Message.session_id == session_id).order_by(Message.seq)))


def add_message(
    s: Session,
    session: SessionRecord,
    parent_id: str | None,
    role: str,
    content: str,
    *,
    status: str = "ok",
    model: str | None = None,
    generation_id: str | None = None,
) -> Message:
    """Append a message under `parent_id` and make it the session's active leaf."""
    if parent_id is not None:
        parent = s.get(Message, parent_id)
        if parent is None or parent.session_id != session.id:
            raise NotFoundError("The message to reply under no longer exists in this chat.")
    seq = (s.scalar(select(func.max(Message.seq)).where(Message.session_id == session.id)) or 0) + 1
    msg = Message(
        id=new_id(),
        session_id=session.id,
        parent_id=parent_id,
        seq=seq,
        role=role,
        content=content,
        status=status,
        model=model,
        generation_id=generation_id,
    )
    s.add(msg)
    session.active_leaf_id = msg.id
    session.updated_at = utcnow()
    s.flush()
    return msg


def get_message(s: Session, session: SessionRecord, message_id: str) -> Message:
    msg = s.get(Message, message_id)
    if msg is None or msg.session_id != session.id:
        raise NotFoundError("That message no longer exists in this chat.")
    return msg


def set_message_content(s: Session, message_id: str, content: str, status: str | None = None) -> None:
    msg = s.get(Message, message_id)
    if msg is None:
        raise NotFoundError("That message no longer exists (was the chat deleted?).")
    msg.content = content
    if status is not None:
        msg.status = status


def active_path(s: Session, session: SessionRecord) -> list[tuple[Message, Branch]]:
    """Messages from the root to the active leaf, each with its place among its siblings."""
    msgs = messages_of(s, session.id)
    return path_with_branches(msgs, session.active_leaf_id)


def path_with_branches(msgs: Sequence[Message], leaf_id: str | None) -> list[tuple[Message, Branch]]:
    by_id = {m.id: m for m in msgs}
    siblings: dict[str | None, list[Message]] = {}
    for m in msgs:  # msgs are in seq order, so sibling lists are in creation order
        siblings.setdefault(m.parent_id, []).append(m)
    path: list[Message] = []
    node = by_id.get(leaf_id) if leaf_id else None
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    path.reverse()
    out = []
    for m in path:
        sib = siblings[m.parent_id]
        out.append((m, Branch(sib.index(m) + 1, len(sib))))
    return out


def switch_branch(s: Session, session: SessionRecord, message_id: str, step: int) -> Message:
    """Show the sibling `step` places away from `message_id`; the active leaf becomes the
    newest message under it. Returns the sibling now shown."""
    msgs = messages_of(s, session.id)
    by_id = {m.id: m for m in msgs}
    msg = by_id.get(message_id)
    if msg is None:
        raise NotFoundError("That message no longer exists in this chat.")
    sibs = [m for m in msgs if m.parent_id == msg.parent_id]
    target = sibs[(sibs.index(msg) + step) % len(sibs)]
    leaf = target
    while True:  # follow the newest child down to a leaf
        kids = [m for m in msgs if m.parent_id == leaf.id]
        if not kids:
            break
        leaf = kids[-1]
    session.active_leaf_id = leaf.id
    return target


# ------------------------------------------------------------------ stories (passages + undo log)


def add_passage(
    s: Session,
    story: SessionRecord,
    author: str,
    text: str,
    *,
    group_id: str | None = None,
    status: str = "ok",
    model: str | None = None,
) -> StoryPassage:
    """A new passage row (not yet part of the story until an edit lists it)."""
    seq = (s.scalar(select(func.max(StoryPassage.seq)).where(StoryPassage.session_id == story.id)) or 0) + 1
    pid = new_id()
    row = StoryPassage(
        id=pid, session_id=story.id, seq=seq, group_id=group_id or pid, author=author, text=text, status=status, model=model
    )
    s.add(row)
    s.flush()
    return row


def get_passage(s: Session, story: SessionRecord, passage_id: str) -> StoryPassage:
    row = s.get(StoryPassage, passage_id)
    if row is None or row.session_id != story.id:
        raise NotFoundError("That passage no longer exists in this story.")
    return row


def set_passage_text(s: Session, passage_id: str, text: str, status: str | None = None) -> None:
    row = s.get(StoryPassage, passage_id)
    if row is None:
        raise NotFoundError("That passage no longer exists (was the story deleted?).")
    row.text = text
    if status is not None:
        row.status = status


def current_edit(s: Session, story: SessionRecord) -> StoryEdit | None:
    row = s.get(StoryEdit, story.active_leaf_id) if story.active_leaf_id else None
    return row if row is not None and row.session_id == story.id else None


def story_passages(s: Session, story: SessionRecord) -> list[StoryPassage]:
    """The passages of the story as it stands now (at the undo cursor), in order."""
    edit = current_edit(s, story)
    if edit is None or not edit.passage_ids:
        return []
    rows = {p.id: p for p in s.scalars(select(StoryPassage).where(StoryPassage.id.in_(edit.passage_ids)))}
    return [rows[i] for i in edit.passage_ids if i in rows]


def record_edit(s: Session, story: SessionRecord, action: str, passage_ids: Sequence[str]) -> StoryEdit:
    """Make `passage_ids` the story's new state. Edits after the cursor (the redo steps) are
    dropped, as in every editor; the passages they listed stay as alternatives."""
    cur = current_edit(s, story)
    seq = cur.seq if cur is not None else 0
    s.execute(delete(StoryEdit).where(StoryEdit.session_id == story.id, StoryEdit.seq > seq))
    edit = StoryEdit(id=new_id(), session_id=story.id, seq=seq + 1, action=action, passage_ids=list(passage_ids))
    s.add(edit)
    story.active_leaf_id = edit.id
    story.updated_at = utcnow()
    s.flush()
    return edit


def drop_last_edit(s: Session, story: SessionRecord, edit_id: str) -> None:
    """Forget `edit_id` if it is the current edit (a continuation that produced nothing)."""
    cur = current_edit(s, story)
    if cur is None or cur.id != edit_id:
        return
    prev = s.scalar(
        select(StoryEdit).where(StoryEdit.session_id == story.id, StoryEdit.seq < cur.seq).order_by(StoryEdit.seq.desc())
    )
    story.active_leaf_id = prev.id if prev is not None else None
    s.delete(cur)


def step_edit(s: Session, story: SessionRecord, step: int) -> StoryEdit | None:
    """Move the undo cursor one edit back (-1) or forward (+1); None when there is nowhere to go."""
    cur = current_edit(s, story)
    if cur is None:
        return None
    where = StoryEdit.seq < cur.seq if step < 0 else StoryEdit.seq > cur.seq
    order = StoryEdit.seq.desc() if step < 0 else StoryEdit.seq
    target = s.scalar(select(StoryEdit).where(StoryEdit.session_id == story.id, where).order_by(order).limit(1))
    if target is not None:
        story.active_leaf_id = target.id
        story.updated_at = utcnow()
    return target


def undo_redo_available(s: Session, story: SessionRecord) -> tuple[bool, bool]:
    cur = current_edit(s, story)
    if cur is None:
        return False, False
    seqs = s.execute(
        select(func.min(StoryEdit.seq), func.max(StoryEdit.seq)).where(StoryEdit.session_id == story.id)
    ).one()
    return cur.seq > seqs[0], cur.seq < seqs[1]


def neighbour_edits(s: Session, story: SessionRecord) -> tuple[StoryEdit | None, StoryEdit | None]:
    """(the edit Undo would take back, the edit Redo would bring back): None where there is none."""
    cur = current_edit(s, story)
    if cur is None:
        return None, None
    has_before = s.scalar(select(func.count()).where(StoryEdit.session_id == story.id, StoryEdit.seq < cur.seq))
    after = s.scalar(
        select(StoryEdit).where(StoryEdit.session_id == story.id, StoryEdit.seq > cur.seq).order_by(StoryEdit.seq).limit(1)
    )
    return (cur if has_before else None), after


def passage_group(s: Session, story: SessionRecord, group_id: str) -> list[StoryPassage]:
    """Every version of one place in the story, oldest first."""
    stmt = select(StoryPassage).where(StoryPassage.session_id == story.id, StoryPassage.group_id == group_id)
    return list(s.scalars(stmt.order_by(StoryPassage.seq)))


def group_sizes(s: Session, story: SessionRecord, group_ids: Sequence[str]) -> dict[str, list[str]]:
    """group id → ids of its versions in creation order (for the ◀ n of m ▶ labels)."""
    rows = s.execute(
        select(StoryPassage.group_id, StoryPassage.id)
        .where(StoryPassage.session_id == story.id, StoryPassage.group_id.in_(list(set(group_ids))))
        .order_by(StoryPassage.seq)
    )
    out: dict[str, list[str]] = {}
    for gid, pid in rows:
        out.setdefault(gid, []).append(pid)
    return out


def all_passages(s: Session, story: SessionRecord) -> list[StoryPassage]:
    """Every passage of the story ever written (every version), in creation order."""
    return list(s.scalars(select(StoryPassage).where(StoryPassage.session_id == story.id).order_by(StoryPassage.seq)))


def edits_of(s: Session, story: SessionRecord) -> list[StoryEdit]:
    """The whole undo log, oldest first (the cursor is `story.active_leaf_id`)."""
    return list(s.scalars(select(StoryEdit).where(StoryEdit.session_id == story.id).order_by(StoryEdit.seq)))


def add_snapshot(
    s: Session, story: SessionRecord, name: str, passages: list[dict[str, Any]], created_at: datetime | None = None
) -> StorySnapshot:
    row = StorySnapshot(
        id=new_id(), session_id=story.id, name=name.strip()[:200], passages=passages, created_at=created_at or utcnow()
    )
    s.add(row)
    s.flush()
    return row


def rename_snapshot(s: Session, story: SessionRecord, snapshot_id: str, name: str) -> StorySnapshot:
    row = get_snapshot(s, story, snapshot_id)
    row.name = name.strip()[:200]
    return row


def delete_snapshot(s: Session, story: SessionRecord, snapshot_id: str) -> None:
    s.delete(get_snapshot(s, story, snapshot_id))


def snapshots_of(s: Session, story: SessionRecord) -> list[StorySnapshot]:
    stmt = select(StorySnapshot).where(StorySnapshot.session_id == story.id)
    return list(s.scalars(stmt.order_by(StorySnapshot.created_at.desc(), StorySnapshot.name)))


def get_snapshot(s: Session, story: SessionRecord, snapshot_id: str) -> StorySnapshot:
    row = s.get(StorySnapshot, snapshot_id) if snapshot_id else None
    if row is None or row.session_id != story.id:
        raise NotFoundError("That snapshot no longer exists in this story.")
    return row


# ------------------------------------------------------------------ generations


def start_generation(
    s: Session,
    owner: str,
    generator: str,
    params: dict[str, Any],
    *,
    session_id: str | None = None,
    source: str = "ui",
    seed: int | None = None,
    instance_id: str | None = None,
) -> Generation:
    row = Generation(
        id=new_id(), owner=owner, generator=generator, params=params, session_id=session_id, source=source, seed=seed,
        instance_id=instance_id,
    )
    s.add(row)
    s.flush()
    return row


def finish_generation(s: Session, generation_id: str, outcome: str, **fields: Any) -> Generation:
    row = s.get(Generation, generation_id)
    if row is None:
        raise NotFoundError(f"Generation {generation_id!r} not found.")
    row.outcome = outcome
    row.finished_at = utcnow()
    for key, value in fields.items():
        setattr(row, key, value)
    return row


def generations_of(s: Session, owner: str, session_id: str | None = None, limit: int = 100) -> list[Generation]:
    stmt = select(Generation).where(Generation.owner == owner)
    if session_id is not None:
        stmt = stmt.where(Generation.session_id == session_id)
    return list(s.scalars(stmt.order_by(Generation.started_at.desc()).limit(limit)))


# ------------------------------------------------------------------ export / import


def export_session(s: Session, session: SessionRecord) -> dict[str, Any]:
    """The whole session as plain JSON-able data: every branch, not only the visible one."""
    return {
        "format": EXPORT_FORMAT,
        "kind": session.kind,
        "title": session.title,
        "settings": session.settings,
        "created_at": session.created_at.isoformat(),
        "active_leaf_id": session.active_leaf_id,
        "messages": [
            {
                "id": m.id,
                "parent_id": m.parent_id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "model": m.model,
                "created_at": m.created_at.isoformat(),
            }
            for m in messages_of(s, session.id)
        ],
    }


def import_session(s: Session, owner: str, data: dict[str, Any], kind: str | None = None) -> SessionRecord:
    """Recreate an exported session under new ids (importing twice gives two copies)."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise StorageError(f"This is not an AIGC Studio export (expected \"format\": \"{EXPORT_FORMAT}\").")
    if kind is not None and data.get("kind") != kind:
        raise StorageError(f"This export holds a {data.get('kind')!r} session, not a {kind!r} one.")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise StorageError("The export has no list of messages.")
    session = create_session(s, owner, str(data["kind"]), str(data.get("title", ""))[:200], data.get("settings") or {})
    new_ids: dict[str, str] = {}
    for raw in messages:
        if not isinstance(raw, dict) or raw.get("role") not in ("system", "user", "assistant"):
            raise StorageError("A message in the export has no valid role (system, user or assistant).")
        parent = raw.get("parent_id")
        if parent is not None and parent not in new_ids:
            raise StorageError("A message in the export refers to a parent that comes after it or is missing.")
        msg = add_message(
            s,
            session,
            new_ids.get(parent) if parent else None,
            raw["role"],
            str(raw.get("content", "")),
            status=str(raw.get("status", "ok")),
            model=raw.get("model"),
        )
        new_ids[str(raw.get("id"))] = msg.id
    leaf = data.get("active_leaf_id")
    session.active_leaf_id = new_ids.get(leaf) if leaf else (msg.id if messages else None)
    return session


# ------------------------------------------------------------------ images


def add_image(s: Session, owner: str, **fields: Any) -> ImageRecord:
    image = ImageRecord(owner=owner, **fields)
    s.add(image)
    s.flush()
    return image


def get_image(s: Session, owner: str, image_id: str) -> ImageRecord:
    image = s.get(ImageRecord, image_id) if is_row_id(image_id) else None
    if image is None or image.owner != owner:
        raise NotFoundError("That image does not exist (it may have been deleted).")
    return image


def _image_filter(owner: str, model: str | None, label: int | None) -> list[Any]:
    where = [ImageRecord.owner == owner]
    if model:
        where.append(ImageRecord.model == model)
    if label is not None:
        where.append(ImageRecord.label == label)
    return where


def list_images(s: Session, owner: str, model: str | None = None, label: int | None = None,
                offset: int = 0, limit: int = 24) -> tuple[list[ImageRecord], int]:
    """One page of an owner's images, newest first, and the total that match."""
    where = _image_filter(owner, model, label)
    total = s.scalar(select(func.count()).select_from(ImageRecord).where(*where)) or 0
    rows = s.scalars(
        select(ImageRecord).where(*where).order_by(ImageRecord.created_at.desc(), ImageRecord.id.desc())
        .offset(offset).limit(limit)
    )
    return list(rows), total


def image_models(s: Session, owner: str) -> list[str]:
    return list(s.scalars(select(ImageRecord.model).where(ImageRecord.owner == owner).distinct().order_by(ImageRecord.model)))


def delete_image(s: Session, owner: str, image_id: str) -> ImageRecord:
    image = get_image(s, owner, image_id)
    s.delete(image)
    s.flush()
    return image


# ------------------------------------------------------------------ owner settings


def get_owner_setting(s: Session, owner: str, key: str, default: Any = None) -> Any:
    row = s.get(OwnerSetting, (owner, key))
    return default if row is None else row.value


def set_owner_setting(s: Session, owner: str, key: str, value: Any) -> None:
    row = s.get(OwnerSetting, (owner, key))
    if row is None:
        s.add(OwnerSetting(owner=owner, key=key, value=value))
    else:
        row.value = value
