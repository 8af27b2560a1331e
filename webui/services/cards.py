"""Character Card V1, V2 and V3: read and write them as JSON and as PNG (the card in a text chunk).

The format SillyTavern, Chub and others exchange:
- V2: `{"spec": "chara_card_v2", "spec_version": "2.0", "data": {...}}`, in a PNG as the base64 of that JSON
  in a `tEXt` chunk with the keyword `chara`;
- V3: `{"spec": "chara_card_v3", "spec_version": "3.0", "data": {...}}` (V2's fields plus assets, nickname,
  group-only greetings, dates, …), in a `ccv3` chunk; a PNG holding both is read from `ccv3`, as the V3
  spec asks;
- V1: the old flat object (`name`, `description`, `personality`, `scenario`, `first_mes`, `mes_example`).

Uploads are hostile until checked: the file's size, the PNG's structure (signature, chunk lengths, CRCs,
chunk count), its declared pixel size (a "PNG bomb" declares billions of pixels in a few kilobytes) and the
card's JSON (size, depth, the type of every field the studio reads) are all checked before anything is
decoded further; a refusal says what is wrong. The card is read from the chunk table without decoding the
image; only the avatar is decoded, after its declared size passed, and it is re-encoded (metadata dropped).
Fields the studio does not use (character book, extensions, assets, V3 additions) are kept in `extra` and
written back on export, so a round trip through the studio loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from generators.base import InvalidOptionsError

from .context import check_text

V2, V3 = "chara_card_v2", "chara_card_v3"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_FILE_BYTES = 20 * 2**20  # cards with big avatars are a few MB
MAX_JSON_BYTES = 8 * 2**20  # a card with a large character book
MAX_FIELD_CHARS = 200_000
MAX_NAME_CHARS = 200
MAX_LIST_ITEMS = 1_000
MAX_JSON_DEPTH = 40
MAX_CHUNKS = 10_000
MAX_AVATAR_SIDE = 8_192  # declared pixels wider or taller than this are refused before decoding
MAX_AVATAR_PIXELS = 40_000_000
AVATAR_BOX = (512, 768)  # stored avatars are scaled down to fit (cards are usually 400 x 600)

# the studio's field name -> the card's
TEXT_FIELDS = {
    "name": "name",
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "first_message": "first_mes",
    "example_dialogue": "mes_example",
    "system_prompt": "system_prompt",
    "post_history_instructions": "post_history_instructions",
    "creator_notes": "creator_notes",
    "creator": "creator",
    "character_version": "character_version",
}
LIST_FIELDS = {"alternate_greetings": "alternate_greetings", "tags": "tags"}
KNOWN_CARD_KEYS = set(TEXT_FIELDS.values()) | set(LIST_FIELDS.values())


@dataclass(frozen=True)
class Card:
    """A character as the studio keeps it; `extra` holds the card's other `data` fields untouched."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_message: str = ""
    alternate_greetings: tuple[str, ...] = ()
    example_dialogue: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    creator: str = ""
    character_version: str = ""
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedCard:
    card: Card
    spec: str  # chara_card_v3 | chara_card_v2 | v1
    avatar: bytes | None = None  # the PNG's image, re-encoded, when the card came as a PNG


class CardError(InvalidOptionsError):
    """A card that cannot be imported; the message says why (nothing was stored)."""


# ------------------------------------------------------------------ JSON


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping once past `limit` (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def _clean_text(value: Any, where: str, limit: int = MAX_FIELD_CHARS) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):  # named as JSON names it: the file is JSON
        raise CardError(f"The card's {where} must be text, not {_json_type(value)}.")
    check_text(value, f"card's {where}", limit, error=CardError)
    return value.replace("\r\n", "\n")


def _clean_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise CardError(f"The card's {where} must be a list of texts, not {_json_type(value)}.")
    if len(value) > MAX_LIST_ITEMS:
        raise CardError(f"The card's {where} has {len(value):,} entries; the limit is {MAX_LIST_ITEMS:,}.")
    return tuple(_clean_text(v, f"{where}[{i}]") for i, v in enumerate(value))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def card_from_json(data: Any) -> tuple[Card, str]:
    """A checked Card from a parsed card object (V1, V2 or V3); CardError says what is wrong."""
    if not isinstance(data, dict):
        raise CardError(f"A character card is a JSON object; this is {_json_type(data)}.")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise CardError(f"The card nests deeper than {MAX_JSON_DEPTH} levels; it is not a character card.")
    spec = data.get("spec")
    if spec in (V2, V3):
        body = data.get("data")
        if not isinstance(body, dict):
            raise CardError(f"A {spec} card keeps its fields in \"data\", which must be an object "
                            f"(it is {_json_type(body)}).")
        prefix = "data."
    elif spec is None and ("name" in data and ("first_mes" in data or "description" in data)):
        body, spec, prefix = data, "v1", ""
    elif spec is None:
        raise CardError("This JSON is not a character card: it has no \"spec\" (chara_card_v2 or chara_card_v3) "
                        "and no V1 fields (name, description, first_mes).")
    else:
        raise CardError(f"Unknown card spec {str(spec)[:60]!r}; the studio reads chara_card_v2 and chara_card_v3 "
                        "(and V1 cards without a spec).")
    values: dict[str, Any] = {}
    for ours, theirs in TEXT_FIELDS.items():
        limit = MAX_NAME_CHARS if ours in ("name", "creator", "character_version") else MAX_FIELD_CHARS
        values[ours] = _clean_text(body.get(theirs), prefix + theirs, limit)
    for ours, theirs in LIST_FIELDS.items():
        values[ours] = _clean_list(body.get(theirs), prefix + theirs)
    values["name"] = values["name"].strip()
    if not values["name"]:
        raise CardError(f"The card has no name ({prefix}name is empty); every character needs one.")
    for key in ("extensions", "character_book"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise CardError(f"The card's {prefix}{key} must be an object, not {_json_type(body[key])}.")
    extra = {k: v for k, v in body.items() if k not in KNOWN_CARD_KEYS} if spec != "v1" else {}
    return Card(**values, extra=extra), spec


def card_to_json(card: Card, spec: str = V3) -> dict[str, Any]:
    """The card as a V2 or V3 object (V3 adds its required fields; V2 keeps only V2's own keys)."""
    data: dict[str, Any] = {theirs: getattr(card, ours) for ours, theirs in TEXT_FIELDS.items()}
    data.update({theirs: list(getattr(card, ours)) for ours, theirs in LIST_FIELDS.items()})
    data["extensions"] = {}
    data.update(card.extra)
    if not isinstance(data.get("extensions"), dict):
        data["extensions"] = {}
    if spec == V3:
        now = int(datetime.now(timezone.utc).timestamp())
        data.setdefault("group_only_greetings", [])
        data.setdefault("creation_date", now)
        data["modification_date"] = now
        return {"spec": V3, "spec_version": "3.0", "data": data}
    v3_only = {"assets", "nickname", "creator_notes_multilingual", "source", "group_only_greetings",
               "creation_date", "modification_date"}
    return {"spec": V2, "spec_version": "2.0", "data": {k: v for k, v in data.items() if k not in v3_only}}


def parse_json_bytes(raw: bytes) -> Any:
    if len(raw) > MAX_JSON_BYTES:
        raise CardError(f"The card's JSON is {len(raw) / 2**20:.1f} MB; the limit is {MAX_JSON_BYTES // 2**20} MB.")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise CardError("The card is not UTF-8 text.") from None
    except (ValueError, RecursionError) as exc:
        raise CardError(f"The card is not valid JSON ({str(exc)[:120]}).") from None


# ------------------------------------------------------------------ PNG


def png_chunks(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk up to IEND, with lengths and CRCs checked; nothing is decompressed."""
    if not raw.startswith(PNG_SIGNATURE):
        raise CardError("This file is not a PNG (its first bytes are not the PNG signature).")
    pos, chunks = len(PNG_SIGNATURE), []
    while True:
        if len(chunks) >= MAX_CHUNKS:
            raise CardError(f"The PNG has more than {MAX_CHUNKS:,} chunks; it is not a character card.")
        if pos + 8 > len(raw):
            raise CardError("The PNG is cut short (it ends inside a chunk header, before IEND).")
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        end = pos + 8 + length + 4
        if length > 2**31 - 1 or end > len(raw):
            raise CardError("The PNG is cut short or damaged (a chunk claims more bytes than the file has).")
        body = raw[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[end - 4:end])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise CardError(f"The PNG is damaged (the checksum of a {kind.decode('latin-1')!r} chunk is wrong).")
        chunks.append((kind, body))
        pos = end
        if kind == b"IEND":
            return chunks


def _text_chunks(chunks: list[tuple[bytes, bytes]]) -> dict[str, bytes]:
    """Keyword -> value of tEXt chunks (and zTXt, decompressed with a bound: no zip bomb)."""
    out: dict[str, bytes] = {}
    for kind, body in chunks:
        if kind not in (b"tEXt", b"zTXt"):
            continue
        keyword, sep, value = body.partition(b"\x00")
        if not sep:
            continue
        if kind == b"zTXt":
            if not value or value[0] != 0:
                continue
            inflater = zlib.decompressobj()
            try:
                value = inflater.decompress(value[1:], MAX_JSON_BYTES * 2)
            except zlib.error:
                raise CardError("A compressed text chunk of the PNG is damaged.") from None
            if inflater.unconsumed_tail:
                raise CardError(f"A compressed text chunk of the PNG holds more than {MAX_JSON_BYTES * 2 // 2**20} MB.")
        out.setdefault(keyword.decode("latin-1").lower(), value)
    return out


def _declared_size(chunks: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise CardError("The PNG is damaged (it does not start with its IHDR header).")
    return struct.unpack(">II", chunks[0][1][:8])


def _decode_payload(value: bytes, keyword: str) -> Any:
    if len(value) > MAX_JSON_BYTES * 4 // 3 + 4:
        raise CardError(f"The PNG's {keyword!r} chunk is larger than a card may be ({MAX_JSON_BYTES // 2**20} MB).")
    try:
        raw = base64.b64decode(value.strip(), validate=False)
    except (binascii.Error, ValueError):
        raise CardError(f"The PNG's {keyword!r} chunk is not base64 text.") from None
    return parse_json_bytes(raw)


def avatar_from_image(raw: bytes, chunks: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Decode an uploaded image (after its declared size passed) and re-encode it as a small PNG."""
    from PIL import Image, UnidentifiedImageError

    if len(raw) > MAX_FILE_BYTES:
        raise CardError(f"The image is {len(raw) / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB.")
    if raw.startswith(PNG_SIGNATURE):
        width, height = _declared_size(chunks if chunks is not None else png_chunks(raw))
        _check_pixels(width, height)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            _check_pixels(*im.size)  # JPEG/WebP headers too, before any pixel is decoded
            im.draft("RGB", AVATAR_BOX)  # JPEG: decode at a reduced scale
            im = im.convert("RGBA")
            im.thumbnail(AVATAR_BOX)
            out = io.BytesIO()
            im.save(out, format="PNG", optimize=True)
            return out.getvalue()
    except CardError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise CardError(f"The image cannot be read ({str(exc)[:100]}); use a PNG, JPEG or WebP file.") from None


def _check_pixels(width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width > MAX_AVATAR_SIDE or height > MAX_AVATAR_SIDE \
            or width * height > MAX_AVATAR_PIXELS:
        raise CardError(f"The image declares {width:,} × {height:,} pixels; the limit is {MAX_AVATAR_SIDE:,} per side "
                        f"and {MAX_AVATAR_PIXELS // 1_000_000} megapixels (a picture this large is refused "
                        "before it is decoded).")


def parse_card_file(raw: bytes, filename: str = "") -> ParsedCard:
    """A card from an uploaded file: JSON, or a PNG with a `ccv3` or `chara` chunk (ccv3 wins)."""
    if not isinstance(raw, (bytes, bytearray)):
        raise CardError("No file was received.")
    raw = bytes(raw)
    if len(raw) > MAX_FILE_BYTES:
        raise CardError(f"The file is {len(raw) / 2**20:.1f} MB; a card may be at most {MAX_FILE_BYTES // 2**20} MB.")
    if not raw.strip():
        raise CardError("The file is empty.")
    if raw.startswith(PNG_SIGNATURE):
        chunks = png_chunks(raw)
        _check_pixels(*_declared_size(chunks))
        texts = _text_chunks(chunks)
        for keyword in ("ccv3", "chara"):
            if keyword in texts:
                card, spec = card_from_json(_decode_payload(texts[keyword], keyword))
                return ParsedCard(card, spec, avatar_from_image(raw, chunks))
        raise CardError("This PNG holds no character card (no 'ccv3' or 'chara' text chunk). "
                        "Export the card as PNG from SillyTavern or Chub, or import its JSON.")
    if filename.lower().endswith((".png", ".webp", ".jpg", ".jpeg")):
        raise CardError("This file is not a PNG card; import a card PNG or its JSON.")
    card, spec = card_from_json(parse_json_bytes(raw))
    return ParsedCard(card, spec)


def _text_chunk(keyword: str, value: bytes) -> bytes:
    body = keyword.encode("latin-1") + b"\x00" + value
    return struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)


def placeholder_avatar(name: str) -> bytes:
    """A plain 400 x 600 picture for a card PNG of a character without an avatar."""
    from PIL import Image, ImageDraw

    hue = zlib.crc32(name.encode("utf-8")) % 360
    im = Image.new("RGB", (400, 600), f"hsl({hue}, 35%, 45%)")
    draw = ImageDraw.Draw(im)
    letter = (name.strip()[:1] or "?").upper()
    draw.text((200, 300), letter, fill="white", anchor="mm", font_size=220)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def card_png(card: Card, avatar: bytes | None) -> bytes:
    """The avatar (or a placeholder) with the card in `chara` (V2) and `ccv3` (V3) chunks, as SillyTavern
    writes them; any earlier card chunks of the picture are dropped."""
    image = avatar or placeholder_avatar(card.name)
    chunks = png_chunks(image)
    out = bytearray(PNG_SIGNATURE)
    for kind, body in chunks:
        if kind == b"IEND":
            for keyword, spec in (("chara", V2), ("ccv3", V3)):
                payload = json.dumps(card_to_json(card, spec), ensure_ascii=False).encode("utf-8")
                out += _text_chunk(keyword, base64.b64encode(payload))
        if kind in (b"tEXt", b"zTXt", b"iTXt") and body.split(b"\x00", 1)[0].lower() in (b"chara", b"ccv3"):
            continue
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return bytes(out)
