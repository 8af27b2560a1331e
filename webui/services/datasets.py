"""Training datasets: a UTF-8 text, a JSONL of chats (OpenAI `messages`) or an image zip, each validated in
full before anything is written, then stored per owner under DATA_DIR/training/ (0600 files, 0700 folders).

Uploads are hostile until checked: size limits first (file, members, uncompressed total, compression
ratio — a zip bomb is refused from its directory, before a byte is inflated), then names (absolute paths,
`..`, links, encrypted members), then content (every image decoded, with its size checked; every text
strictly UTF-8; every chat line a `messages` list). Each refusal says what to change.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from generators.base import InvalidOptionsError
from storage import repository as repo
from storage.files import private_dir, write_private
from storage.models import Dataset, new_id

from .context import AppContext, clean_title
from .jobs import owner_folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
JUNK = {".ds_store", "thumbs.db", "desktop.ini"}  # files archivers and file managers add; skipped
CHAT_ROLES = {"system", "developer", "user", "assistant"}


@dataclass(frozen=True)
class DatasetLimits:
    max_bytes: int = 64 * 2**20  # the uploaded file
    max_unpacked_bytes: int = 256 * 2**20  # a zip's members together, as declared and as read
    max_ratio: float = 100.0  # a zip member's uncompressed / compressed size (PNG digits: ~1-3)
    max_images: int = 20_000
    min_images: int = 8
    max_image_side: int = 1024  # px; training resizes to 32 or 64
    max_classes: int = 100
    min_chars: int = 200
    max_lines: int = 100_000  # chat JSONL


@dataclass
class Checked:
    """What an upload turned out to be: its kind, a summary for people, and the files to write."""

    kind: str
    summary: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes


def _refuse(message: str) -> InvalidOptionsError:
    return InvalidOptionsError(message)


# ------------------------------------------------------------------ validation (nothing written)

def check_text(raw: bytes, limits: DatasetLimits) -> Checked:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise _refuse(f"The text is not UTF-8 (line {line}, byte {exc.start}: {raw[exc.start:exc.start + 1]!r}). "
                      "Save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.txt > out.txt) and upload it again.") from None
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise _refuse("The text contains NUL characters (\\x00): it looks like a binary file, not text.")
    if len(text.strip()) < limits.min_chars:
        raise _refuse(f"The text has {len(text.strip()):,} characters; training needs at least {limits.min_chars:,}.")
    return Checked("text", {"characters": len(text), "lines": text.count("\n") + 1},
                   {"data.txt": text.encode("utf-8")})


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise _refuse(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise _refuse(f"{where}, message {i + 1}: each message needs a role ({', '.join(sorted(CHAT_ROLES))}).")
        if not isinstance(message.get("content"), str):
            raise _refuse(f"{where}, message {i + 1}: 'content' must be a string.")
        if "\x00" in message["content"]:
            raise _refuse(f"{where}, message {i + 1}: the content contains a NUL character.")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise _refuse(f"{where}: a conversation needs at least one non-empty assistant message to learn from.")


def check_chats(raw: bytes, limits: DatasetLimits) -> Checked:
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise _refuse(f"The JSONL file is not UTF-8 (byte {exc.start}); save it as UTF-8 and upload it again.") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise _refuse("The JSONL file has no conversations (one JSON object per line: {\"messages\": [...]}).")
    if len(lines) > limits.max_lines:
        raise _refuse(f"The JSONL file has {len(lines):,} conversations; the limit is {limits.max_lines:,}.")
    clean = []
    messages_total = 0
    for n, line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _refuse(f"Line {n} is not valid JSON ({exc.msg}, column {exc.colno}).") from None
        if not isinstance(item, dict) or "messages" not in item:
            raise _refuse(f"Line {n}: expected an object with a 'messages' list (OpenAI chat format).")
        _check_messages(item["messages"], f"Line {n}")
        messages = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                    for m in item["messages"]]
        messages_total += len(messages)
        clean.append(json.dumps({"messages": messages}, ensure_ascii=False))
    if len(clean) < 2:
        raise _refuse("The JSONL file has one conversation; at least 2 are needed (one is held out to measure).")
    data = ("\n".join(clean) + "\n").encode("utf-8")
    return Checked("chat", {"conversations": len(clean), "messages": messages_total}, {"data.jsonl": data})


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's safe relative path; None for junk to skip. Refuses paths that could escape the folder."""
    name = info.filename
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(f"The archive member {name!r} has an absolute or Windows path; zip the folder with relative paths.")
    path = PurePosixPath(name)
    if any(part in ("..", "") for part in path.parts) or any(part.startswith("..") for part in path.parts):
        raise _refuse(f"The archive member {name!r} points outside its folder ('..'); such archives are refused.")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _refuse(f"The archive member {name!r} is a symbolic link; archives with links are refused.")
    if info.flag_bits & 0x1:
        raise _refuse(f"The archive member {name!r} is encrypted; upload an archive without a password.")
    if path.parts[0] == "__MACOSX" or path.name.lower() in JUNK or path.name.startswith("."):
        return None
    return path


def check_image_zip(raw: bytes, limits: DatasetLimits) -> Checked:
    from PIL import Image, UnidentifiedImageError

    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise _refuse("The file is not a zip archive (or it is damaged).") from None
    infos = [i for i in archive.infolist() if not i.is_dir()]
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_unpacked_bytes:
        raise _refuse(f"The archive unpacks to {declared / 2**20:,.0f} MB; the limit is "
                      f"{limits.max_unpacked_bytes / 2**20:,.0f} MB.")
    if len(infos) > limits.max_images + 100:
        raise _refuse(f"The archive has {len(infos):,} files; the limit is {limits.max_images:,} images.")
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    for info in infos:
        path = _member_path(info)
        if path is None:
            continue
        if info.file_size > 64 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise _refuse(f"The archive member {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):,.0f}"
                          f" times (a zip bomb?); the limit is {limits.max_ratio:.0f}x.")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise _refuse(f"The archive member {info.filename!r} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                          "the archive must hold only images, in one folder per class or all at the top.")
        members.append((info, path))
    if not members:
        raise _refuse("The archive holds no images.")
    # one wrapping folder (zip of "digits/" holding "digits/0/…") is unwrapped
    tops = {p.parts[0] for _, p in members}
    if len(tops) == 1 and all(len(p.parts) > 1 for _, p in members):
        members = [(i, PurePosixPath(*p.parts[1:])) for i, p in members]
    depths = {len(p.parts) for _, p in members}
    if depths == {1}:
        layout = "flat"
    elif depths == {2}:
        layout = "classes"
    else:
        raise _refuse("Put the images either all at the top of the archive (one class) or in one folder per class "
                      "(class/image.png), not both and not deeper.")
    if len(members) < limits.min_images:
        raise _refuse(f"The archive has {len(members)} images; training needs at least {limits.min_images}.")
    if len(members) > limits.max_images:
        raise _refuse(f"The archive has {len(members):,} images; the limit is {limits.max_images:,}.")
    files: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    read_total = 0
    for index, (info, path) in enumerate(members):
        try:
            with archive.open(info) as f:
                data = f.read(info.file_size + 1)  # never more than declared (+1 shows a lie; the CRC check runs too)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise _refuse(f"The archive member {info.filename!r} cannot be read ({exc}); the archive is damaged "
                          "or uses an unsupported compression.") from None
        read_total += len(data)
        if len(data) != info.file_size or read_total > limits.max_unpacked_bytes:
            raise _refuse(f"The archive member {info.filename!r} is not the size its directory says; the archive is refused.")
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if max(width, height) > limits.max_image_side:
                    raise _refuse(f"{info.filename!r} is {width}x{height} px; images may be at most "
                                  f"{limits.max_image_side} px a side (training uses 32 or 64 px).")
                image.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
            raise _refuse(f"{info.filename!r} is not a readable image ({type(exc).__name__}).") from None
        label = path.parts[0] if layout == "classes" else "images"
        counts[label] = counts.get(label, 0) + 1
        target = PurePosixPath("images", *([label] if layout == "classes" else []), f"{index:06d}{path.suffix.lower()}")
        files[str(target)] = data
    if len(counts) > limits.max_classes:
        raise _refuse(f"The archive has {len(counts)} class folders; the limit is {limits.max_classes}.")
    summary = {"images": len(files), "classes": len(counts) if layout == "classes" else 0,
               "class_names": sorted(counts) if layout == "classes" else [], "layout": layout}
    return Checked("images", summary, files)


def check_upload(filename: str, raw: bytes, limits: DatasetLimits) -> Checked:
    """Which kind the upload is (by its name), then that kind's checks."""
    if len(raw) > limits.max_bytes:
        raise _refuse(f"The file is {len(raw) / 2**20:,.1f} MB; datasets may be at most {limits.max_bytes / 2**20:,.0f} MB.")
    if not raw:
        raise _refuse("The file is empty.")
    suffix = Path(filename or "").suffix.lower()
    if suffix == ".zip":
        return check_image_zip(raw, limits)
    if suffix in (".jsonl", ".ndjson"):
        return check_chats(raw, limits)
    if suffix in (".txt", ".md", ".text", ""):
        return check_text(raw, limits)
    raise _refuse(f"Unknown dataset type {suffix!r}: upload a .txt (UTF-8 text), a .jsonl (chats in OpenAI 'messages' "
                  "format) or a .zip of images (one folder per class, or all at the top).")


# ------------------------------------------------------------------ stored datasets

def limits_of(ctx: AppContext) -> DatasetLimits:
    return DatasetLimits(max_bytes=int(min(ctx.config.max_upload_mb, ctx.config.max_dataset_mb) * 2**20))


def add_dataset(ctx: AppContext, owner: str, filename: str, raw: bytes, name: str = "") -> Dataset:
    """Validate an upload in full, then write its files and its row (all or nothing)."""
    checked = check_upload(filename, raw, limits_of(ctx))
    name = clean_title(name or Path(filename or "dataset").stem, "dataset name") or "dataset"
    dataset_id = new_id()
    root = private_dir(private_dir(owner_folder(ctx.store.data_dir, owner)) / "datasets")
    partial = root / f".{dataset_id}.partial"
    final = root / dataset_id
    try:
        private_dir(partial)
        for relative, data in checked.files.items():
            target = partial / relative
            private_dir(target.parent)
            write_private(target, data)
        os.replace(partial, final)
        with ctx.store.begin() as s:
            row = Dataset(id=dataset_id, owner=owner, name=name, kind=checked.kind, size_bytes=len(raw),
                          summary=checked.summary, path=str(final.relative_to(ctx.store.data_dir)))
            s.add(row)
            s.flush()
        return row
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        raise


def list_datasets(ctx: AppContext, owner: str) -> list[Dataset]:
    from sqlalchemy import select

    with ctx.store.begin() as s:
        return list(s.scalars(select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc())))


def get_dataset(ctx: AppContext, owner: str, dataset_id: str) -> Dataset:
    with ctx.store.begin() as s:
        row = s.get(Dataset, dataset_id) if repo.is_row_id(dataset_id) else None
        if row is None or row.owner != owner:
            raise repo.NotFoundError("No such dataset; it may have been deleted.")
        return row


def dataset_folder(ctx: AppContext, row: Dataset) -> Path:
    return ctx.store.data_dir / row.path


def delete_dataset(ctx: AppContext, owner: str, dataset_id: str) -> None:
    row = get_dataset(ctx, owner, dataset_id)
    with ctx.store.begin() as s:
        s.delete(s.get(Dataset, row.id))
    shutil.rmtree(dataset_folder(ctx, row), ignore_errors=True)


def describe(row: Dataset) -> str:
    s = row.summary
    if row.kind == "text":
        what = f"text, {s.get('characters', 0):,} characters"
    elif row.kind == "chat":
        what = f"chats, {s.get('conversations', 0):,} conversations"
    else:
        what = f"images, {s.get('images', 0):,}" + (f" in {s['classes']} classes" if s.get("classes") else " (one class)")
    return f"{row.name} ({what})"
