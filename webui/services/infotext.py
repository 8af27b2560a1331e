"""The Stable Diffusion web UI's `parameters` text ("infotext"): written for every prompted image so
A1111, Civitai and other readers show how it was made, and read back from their PNGs.

The shape (A1111 `modules/processing.py:create_infotext`, read by `infotext_utils.parse_generation_parameters`):

    a photo of a cat <lora:style:0.8>
    Negative prompt: blurry
    Steps: 25, Sampler: DPM++ 2M, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 1a2b3c4d5e, Model: sd15

The last line is `key: value` pairs separated by commas; a value holding a comma, colon or quote is
JSON-quoted. LoRAs are `<lora:NAME:WEIGHT>` tags in the prompt (as A1111 writes them) plus
`Lora hashes`.
"""

from __future__ import annotations

import json
import re
from typing import Any

PNG_KEY = "parameters"  # the PNG text chunk A1111 writes and reads
NEGATIVE = "Negative prompt:"
PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
LORA_RE = re.compile(r"<lora:([^:>]+)(?::([-+]?[0-9]*\.?[0-9]+))?>")
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


def _quote(value: Any) -> str:
    text = str(value)
    if not any(c in text for c in ',:"\n'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value
    return value


def _number(value: float) -> str:
    return f"{value:g}"


def write(meta: dict[str, Any]) -> str:
    """The infotext of one prompted image from the studio's metadata."""
    params = meta.get("params") or {}
    loras = params.get("loras") or []
    prompt = str(params.get("prompt", ""))
    tags = " ".join(f"<lora:{lo['name']}:{_number(float(lo.get('weight', 1.0)))}>" for lo in loras)
    lines = [" ".join(x for x in (prompt, tags) if x)]
    if params.get("negative_prompt"):
        lines.append(f"{NEGATIVE} {params['negative_prompt']}")
    fields: list[tuple[str, Any]] = [
        ("Steps", params.get("steps")), ("Sampler", params.get("scheduler")),
        ("CFG scale", _number(float(params.get("guidance", 0)))), ("Seed", meta.get("seed")),
        ("Size", f"{params.get('width')}x{params.get('height')}"),
        ("Model hash", str(meta.get("weights_hash", ""))[:10]), ("Model", meta.get("generator")),
    ]
    if meta.get("mode") in ("image-to-image", "inpaint"):
        fields.append(("Denoising strength", _number(float(params.get("strength", 0)))))
    details = meta.get("details") or {}
    hashes = [f"{lo['name']}: {lo['hash']}" for lo in details.get("loras", []) if lo.get("hash")]
    if hashes:
        fields.append(("Lora hashes", ", ".join(hashes)))
    fields.append(("Version", "AIGC Studio"))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields if v is not None and v != ""))
    return "\n".join(lines)


def read(text: str) -> dict[str, Any]:
    """Parse an infotext into {"prompt", "negative_prompt", "fields": {key: value}, "loras": [...]}."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    fields: dict[str, str] = {}
    if len(PARAM_RE.findall(last)) >= 3:
        fields = {k.strip(): _unquote(v.strip()) for k, v in PARAM_RE.findall(last)}
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE):].lstrip()
        (negative if in_negative else prompt).append(line)
    prompt_text = "\n".join(prompt).strip()
    loras = [{"name": name, "weight": float(weight) if weight else 1.0} for name, weight in LORA_RE.findall(prompt_text)]
    clean = re.sub(r"\s+", " ", LORA_RE.sub("", prompt_text)).strip() if loras else prompt_text
    return {"prompt": clean, "negative_prompt": "\n".join(negative).strip(), "fields": fields, "loras": loras}


def to_meta(text: str) -> dict[str, Any]:
    """A studio-shaped metadata dict from an A1111 infotext (format `a1111`), so the PNG info view
    shows it and a configured model of the same name can make it again."""
    parsed = read(text)
    f = parsed["fields"]
    params: dict[str, Any] = {"prompt": parsed["prompt"], "negative_prompt": parsed["negative_prompt"]}
    for key, name, kind in (("Steps", "steps", int), ("CFG scale", "guidance", float), ("Sampler", "scheduler", str),
                            ("Denoising strength", "strength", float)):
        if key in f:
            try:
                params[name] = kind(f[key])
            except ValueError:
                pass
    match = SIZE_RE.match(f.get("Size", ""))
    if match:
        params["width"], params["height"] = int(match.group(1)), int(match.group(2))
    if parsed["loras"]:
        params["loras"] = parsed["loras"]
    seed = f.get("Seed")
    return {"format": "a1111", "kind": "paint", "mode": "image-to-image" if "Denoising strength" in f else "text-to-image",
            "generator": f.get("Model"), "weights_hash": f.get("Model hash", ""), "params": params,
            "seed": int(seed) if seed and seed.lstrip("-").isdigit() else None, "fields": f}
