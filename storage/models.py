"""SQLAlchemy 2.0 typed models.

Every row that belongs to a person carries `owner` (a fixed local user while auth is off),
so turning auth on needs no migration. Chat messages form a tree (each has a parent):
regenerations and edits are siblings, never overwrites. A story is a list of passages whose
order is held by its edit log: each edit stores the full ordered list of passage ids, and the
session's cursor points at the current edit, so undo/redo only move the cursor. Passages are
never rewritten once finished (a hand edit or a retry adds a new passage), so every version
stays reachable.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship

LOCAL_OWNER = "local"


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


IdPk = Annotated[str, mapped_column(String(32), primary_key=True, default=new_id)]
Owner = Annotated[str, mapped_column(String(128), index=True, default=LOCAL_OWNER)]
Created = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]
Updated = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class SessionRecord(Base):
    """A chat, a story or an image session."""

    __tablename__ = "sessions"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    kind: Mapped[str] = mapped_column(String(16))  # chat | story | image
    title: Mapped[str] = mapped_column(String(200), default="")
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # model, system prompt, sampler
    # chat: the leaf of the visible branch of the message tree; story: the current edit (undo cursor)
    active_leaf_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    messages: Mapped[list[Message]] = relationship(
        back_populates="session", cascade="all, delete-orphan", passive_deletes=True, order_by="Message.seq"
    )

    __table_args__ = (Index("ix_sessions_owner_kind_updated", "owner", "kind", "updated_at"),)


class Message(Base):
    """One message of a chat; `parent_id` makes the tree of branches."""

    __tablename__ = "messages"
    id: Mapped[IdPk]
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)  # creation order within the session
    role: Mapped[str] = mapped_column(String(16))  # system | user | assistant
    content: Mapped[str] = mapped_column(Text, default="")
    # ok | streaming | cancelled | error | interrupted
    status: Mapped[str] = mapped_column(String(16), default="ok")
    model: Mapped[str | None] = mapped_column(String(200))
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    session: Mapped[SessionRecord] = relationship(back_populates="messages")


class Generation(Base):
    """One call to a generator: what was asked, how it went, how fast."""

    __tablename__ = "generations"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id", ondelete="SET NULL"), index=True)
    generator: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16), default="ui")  # ui | api
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    # running | ok | cancelled | error | interrupted
    outcome: Mapped[str] = mapped_column(String(16), default="running", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    time_to_first_token_s: Mapped[float | None]
    tokens_per_s: Mapped[float | None]
    started_at: Mapped[Created]
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the app process that runs it: on PostgreSQL several instances share the database, and a
    # starting instance must mark only the running generations of dead instances as interrupted
    instance_id: Mapped[str | None] = mapped_column(String(32), index=True)


class StoryPassage(Base):
    """One piece of a story, written by the user or the model. Versions of the same place in
    the story (retries) share `group_id` (the id of the first version)."""

    __tablename__ = "story_passages"
    id: Mapped[IdPk]
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)  # creation order within the story
    group_id: Mapped[str] = mapped_column(String(32), index=True)
    author: Mapped[str] = mapped_column(String(16))  # user | model
    text: Mapped[str] = mapped_column(Text, default="")
    # ok | streaming | cancelled | error | interrupted
    status: Mapped[str] = mapped_column(String(16), default="ok")
    model: Mapped[str | None] = mapped_column(String(200))
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class StoryEdit(Base):
    """One step of a story's undo log: the full ordered list of its passage ids after the step."""

    __tablename__ = "story_edits"
    id: Mapped[IdPk]
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    action: Mapped[str] = mapped_column(String(32))  # create | write | continue | retry | edit | alternative | restore | import
    passage_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[Created]


class StorySnapshot(Base):
    """A named version of a story, self-contained: [{"author", "text"}, ...]."""

    __tablename__ = "story_snapshots"
    id: Mapped[IdPk]
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    passages: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[Created]


class ImageRecord(Base):
    """One saved image output: a sample, an interpolation strip (with its GIF) or a reconstruction.

    The file lives under DATA_DIR/images, named by id; `content_hash` (sha256 of the PNG bytes)
    proves a re-run made the very same file.
    """

    __tablename__ = "images"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    kind: Mapped[str] = mapped_column(String(16), default="sample")  # sample | interpolation | reconstruction
    model: Mapped[str] = mapped_column(String(200), index=True)
    plugin: Mapped[str] = mapped_column(String(64))
    weights_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[int | None]  # class index (None: a mix, e.g. an interpolation between classes)
    class_name: Mapped[str] = mapped_column(String(200), default="")
    seed: Mapped[int | None] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # everything needed to make it again
    batch_id: Mapped[str | None] = mapped_column(String(32), index=True)  # images of one request
    file: Mapped[str] = mapped_column(String(300))  # relative to DATA_DIR
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int]
    height: Mapped[int]
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    created_at: Mapped[Created]

    __table_args__ = (Index("ix_images_owner_created", "owner", "created_at"),)


class Rating(Base):
    """A person's thumbs up/down (and optional comment) on one output: a chat reply, a story
    passage or an image. One rating per user and output; rating again replaces it."""

    __tablename__ = "ratings"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    target_kind: Mapped[str] = mapped_column(String(16))  # message | passage | image
    target_id: Mapped[str] = mapped_column(String(32))
    generation_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"), index=True)
    generator: Mapped[str] = mapped_column(String(200), index=True)
    value: Mapped[int]  # +1 or -1
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    __table_args__ = (Index("ux_ratings_owner_target", "owner", "target_kind", "target_id", unique=True),)


class ArenaBattle(Base):
    """One blind comparison: a prompt answered by two text generators, shown as A and B without
    their names, and the person's vote (a | b | tie | both_bad). Names are shown after the vote."""

    __tablename__ = "arena_battles"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    prompt: Mapped[str] = mapped_column(Text)
    model_a: Mapped[str] = mapped_column(String(200))
    model_b: Mapped[str] = mapped_column(String(200))
    generation_a_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    generation_b_id: Mapped[str | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    text_a: Mapped[str] = mapped_column(Text, default="")
    text_b: Mapped[str] = mapped_column(Text, default="")
    vote: Mapped[str | None] = mapped_column(String(16), index=True)
    created_at: Mapped[Created]
    voted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OwnerSetting(Base):
    """One preference of one owner (e.g. `ai_label`: mark new images with a visible label)."""

    __tablename__ = "owner_settings"
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[Updated]


class MetricResult(Base):
    """One automatic metric of one generator, with when and with what it was measured."""

    __tablename__ = "metric_results"
    id: Mapped[IdPk]
    run_id: Mapped[str] = mapped_column(String(32), index=True)  # metrics measured together
    generator: Mapped[str] = mapped_column(String(200), index=True)
    metric: Mapped[str] = mapped_column(String(64))  # perplexity | bits_per_char | bleu | rouge_l | class_accuracy | frechet
    value: Mapped[float]
    dataset: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)  # versions, weights, sizes
    created_at: Mapped[Created]


class Character(Base):
    """A character to chat with (the fields of a Character Card V2/V3). `card_extra` keeps what the
    studio does not use (character book, extensions, assets, V3 additions) so an export gives it back."""

    __tablename__ = "characters"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    personality: Mapped[str] = mapped_column(Text, default="")
    scenario: Mapped[str] = mapped_column(Text, default="")
    first_message: Mapped[str] = mapped_column(Text, default="")
    alternate_greetings: Mapped[list[str]] = mapped_column(JSON, default=list)
    example_dialogue: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    post_history_instructions: Mapped[str] = mapped_column(Text, default="")
    creator_notes: Mapped[str] = mapped_column(Text, default="")
    creator: Mapped[str] = mapped_column(String(200), default="")
    character_version: Mapped[str] = mapped_column(String(200), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    card_extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # a small PNG (re-encoded on upload, metadata stripped); deferred so lists do not read it
    avatar: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    __table_args__ = (Index("ix_characters_owner_name", "owner", "name"),)


class Persona(Base):
    """Who the user plays in character chats: fills {{user}}; its description joins the context."""

    __tablename__ = "personas"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class SavedPrompt(Base):
    """A prompt of the prompt library; `{{name}}` marks a variable asked for when it is inserted."""

    __tablename__ = "saved_prompts"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]


class SamplerPreset(Base):
    """A person's named set of sampler settings (every SamplingParams field). Built-in presets are not rows."""

    __tablename__ = "sampler_presets"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    name: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    __table_args__ = (Index("ux_sampler_presets_owner_name", "owner", "name", unique=True),)


class ModelPreset(Base):
    """The preset a person's Chat, Story and Arena start from when a model is picked (by preset name:
    a built-in or their own)."""

    __tablename__ = "model_presets"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    model: Mapped[str] = mapped_column(String(200))
    preset: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[Updated]

    __table_args__ = (Index("ux_model_presets_owner_model", "owner", "model", unique=True),)


class InstructTemplate(Base):
    """A person's own instruct template: a Jinja chat template, checked in a sandbox before it is saved."""

    __tablename__ = "instruct_templates"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    name: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[Created]
    updated_at: Mapped[Updated]

    __table_args__ = (Index("ux_instruct_templates_owner_name", "owner", "name", unique=True),)


class Dataset(Base):
    """An uploaded training set, validated before it was written: its files live under
    DATA_DIR/training/<owner folder>/datasets/<id>/ (0600 files in 0700 folders)."""

    __tablename__ = "datasets"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # text | chat | images
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)  # characters, conversations, images, classes…
    path: Mapped[str] = mapped_column(String(300))  # relative to DATA_DIR
    created_at: Mapped[Created]


class Job(Base):
    """A training or fine-tuning job: queued → running → done | failed | cancelled | interrupted.

    `metrics` holds the curve points as they come ([{"step", "epoch", "loss", …}]), `artifacts` what the
    job made (the model folder, sample grids, the figures at the end), `log` the last lines it wrote."""

    __tablename__ = "jobs"
    id: Mapped[IdPk]
    owner: Mapped[Owner]
    kind: Mapped[str] = mapped_column(String(16))  # lora | gan | vae | diffusion | lstm
    name: Mapped[str] = mapped_column(String(200))  # the model it makes, as its owner will see it
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    dataset: Mapped[str] = mapped_column(String(200), default="")  # the dataset's name when the job was made
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(default=0.0)  # 0..1
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    artifacts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    log: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    instance_id: Mapped[str | None] = mapped_column(String(32), index=True)  # the app process running it
    created_at: Mapped[Created]
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_jobs_owner_created", "owner", "created_at"),)
