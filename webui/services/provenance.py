"""Content credentials: every image file the studio writes is signed with a C2PA manifest, and any
image can be verified.

The manifest says: made by AIGC Studio (name, version); action `c2pa.created` with the IPTC digital
source type *trainedAlgorithmicMedia* (an edit of an ingredient — img2img, inpainting, a
reconstruction of an upload — says `c2pa.opened` on that ingredient, then `c2pa.edited`); and the
studio's own assertion `org.aigc-studio.generation` with the model, its weights hash and the
sha256 of the parameters (the canonical JSON of the PNG's ``aigc-studio`` text chunk, so a verifier
can tell whether the readable parameters in the file are the ones that were signed).

"The same image". A signature holds a time and a fresh instance id, so two signings of the same
picture never give the same bytes. Two studio images are *the same image* when their pixels and
parameters are identical and their signed claims are identical apart from the signature, its time
and the manifest's instance ids. The first two are exactly "the PNG minus its C2PA chunk has the
same bytes" (the studio's encoding is deterministic): that sha256 is an image's `content_hash`
(`image_hash`), and `compare` checks the claims too.

`ImageSigner.sign` is the one hook every writer goes through (the image service calls it where it
encodes); `Ingredient` is how an edit hands in the image it started from.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import threading
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from generators.base import InvalidOptionsError

from . import signing

log = logging.getLogger(__name__)

STUDIO = "AIGC Studio"
ASSERTION = "org.aigc-studio.generation"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC + "trainedAlgorithmicMedia"
ALGORITHMIC = IPTC + "algorithmicMedia"  # made by a program, no trained model (a training job's loss curves)
COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"
MAX_VERIFY_BYTES = 64 * 2**20
FORMATS = {b"\x89PNG\r\n\x1a\n": "image/png", b"GIF87a": "image/gif", b"GIF89a": "image/gif", b"\xff\xd8\xff": "image/jpeg"}
MANIFEST_CHUNK = b"caBX"  # where C2PA keeps its manifest store in a PNG


def studio_version() -> str:
    try:
        return version("aigc-studio")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Ingredient:
    """An image an output was made from: `parentOf` when the output is an edit of it (img2img,
    inpainting), `inputTo` when it was only an input. `data` is the file as it came (a signed
    studio PNG keeps its own manifest inside the new one) or the pixels encoded as PNG."""

    title: str
    data: bytes
    format: str = "image/png"
    relationship: str = "parentOf"
    fallback: Ingredient | None = None  # used when c2pa cannot read `data` (a damaged or hostile upload)

    @classmethod
    def from_pixels(cls, title: str, pixels: Any, relationship: str = "parentOf") -> Ingredient:
        from PIL import Image

        array = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
        out = io.BytesIO()
        Image.fromarray(array).save(out, format="PNG")
        return cls(title, out.getvalue(), "image/png", relationship)

    @classmethod
    def of_upload(cls, title: str, source: Any, pixels: Any, relationship: str = "parentOf") -> Ingredient:
        """The file a person handed in, as it came (a signed image keeps its own manifest, so the new
        one links to it: a provenance chain), when `source` is the file's bytes or path in a format
        C2PA reads; else (a drawing, an array) `pixels`, the image as the studio used it."""
        made = cls.from_pixels(title, pixels, relationship)
        data = source
        if isinstance(source, str | Path):
            try:
                path = Path(source)
                data = path.read_bytes() if path.is_file() and path.stat().st_size <= MAX_VERIFY_BYTES else None
            except (OSError, ValueError):
                data = None
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_VERIFY_BYTES:
            return made
        fmt = sniff_format(bytes(data[:16]))
        return cls(title, bytes(data), fmt, relationship, made) if fmt else made


def params_hash(meta: dict[str, Any]) -> str:
    """sha256 of the parameters as the PNG's text chunk holds them (canonical JSON, `format` excluded)."""
    body = {k: v for k, v in meta.items() if k != "format"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def manifest_definition(meta: dict[str, Any], title: str, fmt: str, ingredients: tuple[Ingredient, ...] = ()) -> dict[str, Any]:
    """The claims of one output, from its studio parameters (the same parameters give the same claims)."""
    agent = {"name": STUDIO, "version": studio_version()}
    edit_of = [i for i in ingredients if i.relationship == "parentOf"]
    if edit_of:
        # the output holds the ingredient's own pixels (an inpainting outside its mask, a reconstruction strip)
        source = COMPOSITE if meta.get("mode") == "inpaint" or meta.get("kind") == "reconstruction" else TRAINED
        actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": [f"ingredient-{ingredients.index(edit_of[0])}"]}},
                   {"action": "c2pa.edited", "softwareAgent": agent, "digitalSourceType": source,
                    "description": f"{meta.get('mode') or meta.get('kind')} by {meta.get('generator')}"}]
    else:
        source = ALGORITHMIC if meta.get("digital_source") == "algorithmic" else TRAINED
        actions = [{"action": "c2pa.created", "softwareAgent": agent, "digitalSourceType": source,
                    "description": f"{meta.get('kind', 'image')} by {meta.get('generator')}"}]
    generation = {"model": meta.get("generator"), "plugin": meta.get("plugin"), "weights_hash": meta.get("weights_hash"),
                  "kind": meta.get("kind"), "params_hash": params_hash(meta), "params_format": meta.get("format"),
                  "visible_label": bool(meta.get("visible_label"))}
    return {"claim_generator_info": [agent], "title": title, "format": fmt,
            "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}},
                           {"label": ASSERTION, "data": generation}]}


class ImageSigner:
    """Signs image bytes with the studio's identity; one per app (held by AppContext), thread-safe.

    The identity is loaded (or made, on first start) on first use, or by `identity` at start-up."""

    def __init__(self, data_dir: Path, cert: Path | None = None, key: Path | None = None, alg: str = "es256",
                 enabled: bool = True) -> None:
        self.data_dir, self._cert, self._key, self._alg, self.enabled = Path(data_dir), cert, key, alg, enabled
        self._lock = threading.Lock()
        self._identity: signing.SigningIdentity | None = None
        self._signer: Any = None
        self._contexts: dict[str, Any] = {}

    @property
    def identity(self) -> signing.SigningIdentity:
        with self._lock:
            if self._identity is None:
                self._identity = signing.load_or_create(self.data_dir, self._cert, self._key, self._alg)
            return self._identity

    def check(self) -> None:
        """Fail now, with a message, when the identity cannot sign (instead of at the first image)."""
        if self.enabled:
            self._native_signer()

    def _native_signer(self) -> Any:
        import c2pa

        identity = self.identity
        with self._lock:
            if self._signer is None:
                try:
                    info = c2pa.C2paSignerInfo(identity.alg.encode(), identity.chain_pem, identity.key_pem, None)
                    self._signer = c2pa.Signer.from_info(info)
                except c2pa.C2paError as exc:
                    raise InvalidOptionsError(f"The signing certificate cannot sign C2PA manifests ({exc}). A CA-issued "
                                              "leaf with digitalSignature and emailProtection usage is needed.") from None
            return self._signer

    def _context(self, purpose: str) -> Any:
        import c2pa

        with self._lock:
            if purpose not in self._contexts:
                # no thumbnail: the image is its own preview; no verification of every signing (it halves the
                # cost; the tests read every kind of output back with the c2pa reader instead)
                config: dict[str, Any] = {"builder": {"thumbnail": {"enabled": False}},
                                          "verify": {"verify_after_sign": False}}
                if purpose == "verify":
                    config = {"trust": {"user_anchors": self._identity.anchor_pem.decode()},  # type: ignore[union-attr]
                              "verify": {"verify_trust": True}}
                self._contexts[purpose] = c2pa.Context(settings=c2pa.Settings.from_dict(config))
            return self._contexts[purpose]

    def sign(self, data: bytes, fmt: str, meta: dict[str, Any], title: str,
             ingredients: tuple[Ingredient, ...] = ()) -> bytes:
        """`data` with a C2PA manifest of `meta`'s claims embedded (unchanged when signing is off)."""
        if not self.enabled:
            return data
        import c2pa

        signer, context = self._native_signer(), self._context("sign")
        builder = c2pa.Builder.from_json(manifest_definition(meta, title, fmt, ingredients), context)
        for n, ingredient in enumerate(ingredients):
            self._add_ingredient(builder, n, ingredient)
        out = io.BytesIO()
        with self._lock:  # one native signing at a time: a few milliseconds each
            builder.sign(signer, fmt, io.BytesIO(data), out)
        return out.getvalue()

    @staticmethod
    def _add_ingredient(builder: Any, n: int, ingredient: Ingredient) -> None:
        import c2pa

        entry = {"title": ingredient.title, "relationship": ingredient.relationship, "label": f"ingredient-{n}"}
        try:
            builder.add_ingredient(entry, ingredient.format, io.BytesIO(ingredient.data))
        except c2pa.C2paError as exc:
            if ingredient.fallback is None:
                raise
            log.info("Ingredient %r kept as its pixels: c2pa cannot read the file (%s)", ingredient.title, exc)
            builder.add_ingredient(entry, ingredient.fallback.format, io.BytesIO(ingredient.fallback.data))

    def verify(self, data: bytes) -> Verification:
        return verify(data, self._context_for_verify(), self.identity)

    def _context_for_verify(self) -> Any:
        self.identity  # noqa: B018 — the trust anchor comes from it
        return self._context("verify")


# ------------------------------------------------------------------ what an image is


def sniff_format(data: bytes) -> str | None:
    return next((fmt for magic, fmt in FORMATS.items() if data.startswith(magic)), None) or (
        "image/webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        chunks.append((data[pos + 4:pos + 8], data[pos:pos + 12 + length]))
        pos += 12 + length
    return chunks


def has_manifest(data: bytes) -> bool:
    """Whether a PNG carries a C2PA manifest chunk (read from the chunk list: no decoding, no validation)."""
    return sniff_format(data[:16]) == "image/png" and any(kind == MANIFEST_CHUNK for kind, _ in _png_chunks(data))


def png_complete(data: bytes) -> bool:
    """Whether a PNG ends with its IEND chunk (a file still being written does not)."""
    return sniff_format(data[:16]) == "image/png" and data[-8:-4] == b"IEND"


def strip_manifest(data: bytes) -> bytes:
    """A PNG without its C2PA manifest chunk: for a studio PNG, the bytes its encoder wrote before signing."""
    if sniff_format(data) != "image/png":
        return data
    return data[:8] + b"".join(raw for kind, raw in _png_chunks(data) if kind != MANIFEST_CHUNK)


def image_hash(data: bytes) -> str:
    """The identity of an image's pixels and parameters: sha256 of the file without its signature."""
    return hashlib.sha256(strip_manifest(data)).hexdigest()


def stable_claims(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest's claims without what changes on every signing (instance ids, label, signature, time)."""
    generator = [{k: v for k, v in g.items() if k in ("name", "version")} for g in manifest.get("claim_generator_info") or []]
    ingredients = [{k: i.get(k) for k in ("title", "format", "relationship")} for i in manifest.get("ingredients") or []]

    def clean(value: Any) -> Any:  # ingredient links carry hashes of per-signing boxes
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in ("ingredients", "instanceId", "url", "hash")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {"claim_generator": generator, "title": manifest.get("title"), "ingredients": ingredients,
            "assertions": [{"label": a.get("label"), "data": clean(a.get("data"))} for a in manifest.get("assertions") or []]}


@dataclass(frozen=True)
class Sameness:
    """How a re-run compares with its original (see the module docstring for "the same image")."""

    same_pixels: bool
    same_parameters: bool
    same_claims: bool | None  # None: one of the two carries no manifest

    @property
    def same_image(self) -> bool:
        return self.same_pixels and self.same_parameters and self.same_claims is not False

    def sentence(self) -> str:
        if self.same_image and self.same_claims:
            return ("the same image as the original: identical pixels, parameters and signed claims "
                    "(only the signature and its time differ)")
        if self.same_image:
            return "the same pixels and parameters as the original (one of the two carries no content credentials)"
        if self.same_pixels:
            what = "parameters" if not self.same_parameters else "signed claims"
            return f"the same pixels as the original, but different {what}"
        return "a different image from the original: its pixels differ"


def _pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    return image.mode, image.size, image.tobytes()


def _text_chunks(data: bytes) -> dict[str, str]:
    from PIL import Image

    return dict(getattr(Image.open(io.BytesIO(data)), "text", {}) or {})


def _claims(data: bytes) -> dict[str, Any] | None:
    import c2pa

    reader = c2pa.Reader.try_create(sniff_format(data) or "image/png", io.BytesIO(data))
    if reader is None:
        return None
    with reader:
        return stable_claims(reader.get_active_manifest() or {})


def compare(original: bytes, made: bytes) -> Sameness:
    claims = _claims(original), _claims(made)
    return Sameness(_pixels(original) == _pixels(made), _text_chunks(original) == _text_chunks(made),
                    None if None in claims else claims[0] == claims[1])


# ------------------------------------------------------------------ verify


@dataclass
class Verification:
    """What a person asks of a file: is it signed, by whom, is it intact, what does it claim."""

    has_manifest: bool
    status: str  # "none" | "trusted" (this studio's key, intact) | "valid" (someone else's key, intact) | "invalid"
    summary: str
    format: str | None = None
    signature_valid: bool | None = None
    pixels_changed: bool | None = None
    signed_by_this_studio: bool = False  # this studio's key, and the file is intact
    key_of_this_studio: bool = False  # the signing certificate is this studio's (intact or not)
    signer: dict[str, Any] = field(default_factory=dict)
    claim_generator: str = ""
    digital_source_type: str = ""
    actions: list[str] = field(default_factory=list)
    ingredients: list[dict[str, Any]] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)  # the studio's own assertion, when present
    params_in_file: dict[str, Any] | None = None  # the PNG's aigc-studio text chunk
    params_match: bool | None = None  # that chunk hashes to the signed params_hash
    image_hash: str = ""
    problems: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return asdict(self)


PIXEL_CODES = ("assertion.dataHash.mismatch", "assertion.boxesHash.mismatch", "assertion.bmffHash.mismatch",
               "assertion.collectionHash.mismatch")
TRUST_CODES = ("signingCredential.untrusted",)


def _text_params(data: bytes) -> dict[str, Any] | None:
    if sniff_format(data) != "image/png":
        return None
    from PIL import Image

    from .png import META_KEY

    try:
        raw = Image.open(io.BytesIO(data)).info.get(META_KEY)  # the text chunks before the pixels: no decoding
        parsed = json.loads(raw) if raw else None
    except (OSError, ValueError, SyntaxError):
        return None
    return parsed if isinstance(parsed, dict) else None


def verify(data: bytes, context: Any, identity: signing.SigningIdentity | None = None) -> Verification:
    """Read and validate the C2PA manifest of `data` (a file without one is reported, not refused)."""
    import c2pa

    if not isinstance(data, bytes | bytearray) or not data:
        raise InvalidOptionsError("Drop in an image file (PNG, JPEG, GIF or WebP) to verify.")
    if len(data) > MAX_VERIFY_BYTES:
        raise InvalidOptionsError(f"The file is {len(data) / 2**20:.0f} MiB; files up to {MAX_VERIFY_BYTES // 2**20} MiB "
                                  "can be verified.")
    fmt = sniff_format(bytes(data[:16]))
    if fmt is None:
        raise InvalidOptionsError("This is not a PNG, JPEG, GIF or WebP image; only images can be verified.")
    data = bytes(data)
    params = _text_params(data)
    result = Verification(False, "none", "", format=fmt, params_in_file=params, image_hash=image_hash(data))
    try:
        reader = c2pa.Reader.try_create(fmt, io.BytesIO(data), None, context)
    except c2pa.C2paError as exc:
        result.has_manifest, result.status, result.signature_valid = True, "invalid", False
        result.problems = [f"The manifest cannot be read: {exc}"]
        result.summary = "This file carries content credentials that are damaged: they cannot be read."
        return result
    if reader is None:
        result.summary = ("No content credentials: this file carries no C2PA manifest, so nothing says who made it or "
                          "how." + (" It does hold AIGC Studio parameters as text, which anyone can edit."
                                    if params else ""))
        return result
    with reader:
        manifest = reader.get_active_manifest() or {}
        state = reader.get_validation_state() or ""
        failures = (reader.get_validation_results() or {}).get("activeManifest", {}).get("failure", [])
    codes = [f.get("code", "") for f in failures]
    result.has_manifest = True
    result.pixels_changed = any(c in PIXEL_CODES for c in codes)
    result.signature_valid = not [c for c in codes if c not in PIXEL_CODES + TRUST_CODES]
    result.problems = [f"{f.get('code')}: {f.get('explanation')}" for f in failures if f.get("code") not in TRUST_CODES]
    info = manifest.get("signature_info") or {}
    result.signer = {"common_name": info.get("common_name", ""), "issuer": info.get("issuer", ""),
                     "algorithm": str(info.get("alg", "")), "time": info.get("time"),
                     "serial_number": info.get("cert_serial_number", "")}
    generator = (manifest.get("claim_generator_info") or [{}])[0]
    result.claim_generator = " ".join(str(generator.get(k, "")) for k in ("name", "version")).strip()
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions", []):
                result.actions.append(action.get("action", ""))
                result.digital_source_type = action.get("digitalSourceType") or result.digital_source_type
        elif assertion.get("label") == ASSERTION:
            result.generation = dict(assertion.get("data") or {})
    result.ingredients = [{"title": i.get("title"), "relationship": i.get("relationship"),
                           "signed": bool(i.get("active_manifest"))} for i in manifest.get("ingredients") or []]
    if result.generation and params is not None:
        result.params_match = params_hash(params) == result.generation.get("params_hash")
    result.key_of_this_studio = identity is not None and bool(identity.serial) and (
        str(info.get("cert_serial_number", "")) == identity.serial and info.get("common_name") == identity.subject)
    result.signed_by_this_studio = state == "Trusted" and identity is not None and not result.pixels_changed
    intact = result.signature_valid and not result.pixels_changed
    result.status = ("trusted" if state == "Trusted" else "valid") if intact else "invalid"
    who = f"{result.signer['common_name'] or 'an unnamed signer'}" + (
        f", issued by {result.signer['issuer']}" if result.signer["issuer"] else "")
    if result.pixels_changed:
        result.summary = f"Changed after signing: the manifest signed by {who}, no longer matches this file's pixels."
    elif not result.signature_valid:
        result.summary = (f"Invalid content credentials: the manifest claims that {who}, signed it, but the signature "
                          "does not hold.")
    elif result.status == "trusted":
        result.summary = f"Signed with this studio's key ({who}); the file is unchanged since signing."
    else:
        result.summary = (f"Validly signed by {who}, with a key this studio does not know; the file is unchanged "
                          "since signing.")
    if result.digital_source_type.endswith(("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")):
        result.summary += " It declares itself AI-generated"
        result.summary += f" by {result.generation['model']}." if result.generation.get("model") else "."
    if result.params_match is False:
        result.problems.append("The aigc-studio parameters text in this file is not the one that was signed "
                               "(edited after signing).")
    return result
