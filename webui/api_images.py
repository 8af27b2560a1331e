"""Image routes other tools already speak, so Open WebUI, SillyTavern and OpenAI clients can use the
studio as their image backend. They call the same image service as the Image tab (owner, rate limit,
metadata, gallery rows); errors are translated by the app's handlers.

    POST /v1/images/generations   OpenAI: prompt, model, n, size "WxH", response_format b64_json | url
                                  (+ negative_prompt, steps, guidance_scale, seed, scheduler as extras)
    POST /sdapi/v1/txt2img        Stable Diffusion web UI (A1111) shapes
    POST /sdapi/v1/img2img        init_images[0] + denoising_strength; mask → inpainting
    GET  /sdapi/v1/sd-models      the prompted models, A1111-style
    GET  /sdapi/v1/samplers       the sampler names the models accept
    GET  /sdapi/v1/options        {"sd_model_checkpoint": the default prompted model}
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from generators.base import InvalidOptionsError, describe_validation_error

from .services import images as image_service
from .services import infotext
from .services.context import AppContext

SAMPLER_ALIASES = {"k_euler_a": "Euler a", "euler_a": "Euler a", "euler_ancestral": "Euler a", "k_euler": "Euler",
                   "euler": "Euler", "k_dpmpp_2m": "DPM++ 2M", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM", "lcm": "LCM"}


class OpenAIImageRequest(BaseModel):
    # OpenAI fields the studio has no use for (quality, style, user, background …) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(max_length=4000)
    model: str | None = Field(None, max_length=200)
    n: int = Field(1, ge=1, le=1024)
    size: str | None = Field(None, description="WIDTHxHEIGHT or auto")
    response_format: str = Field("b64_json", pattern="^(b64_json|url)$")
    negative_prompt: str | None = Field(None, max_length=4000)
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    ai_label: bool | None = Field(None, description="the studio's visible 'AI-generated' mark; null = your setting")


class A1111Request(BaseModel):
    """The fields of A1111's StableDiffusion{Txt2Img,Img2Img}ProcessingAPI the studio uses; others
    (restore_faces, tiling, alwayson_scripts …) are accepted and ignored, as A1111's own clients send them."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    init_images: list[str] | None = None
    mask: str | None = None
    inpainting_mask_invert: int = 0
    ai_label: bool | None = Field(None, description="the studio's visible 'AI-generated' mark; null = your setting")


def _validated(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidOptionsError(describe_validation_error(exc, "field")) from None


def _b64_image(value: str, field: str) -> bytes:
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOptionsError(f"{field}: not base64-encoded image data.") from None


def _size(text: str | None) -> tuple[int | None, int | None]:
    if not text or text == "auto":
        return None, None
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise InvalidOptionsError(f"size: expected WIDTHxHEIGHT such as 512x512 (or auto); got {text!r}.")
    return int(width), int(height)


def build_image_router(ctx: AppContext) -> APIRouter:
    router = APIRouter()

    def owner_of(request: Request) -> str:
        return ctx.owner_for_api_key(request.headers.get("authorization"))

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError):
            raise InvalidOptionsError("The request body is not valid JSON.") from None

    def pick_model(name: str | None, owner: str) -> str:
        models = image_service.paint_models(ctx, owner)
        if name:
            name = name.split(" [", 1)[0]  # A1111 titles are "name [hash]"
            if name in ctx.registry.names("image", owner=owner):  # the shared models and the caller's own
                return name
        if name and name not in ("dall-e-2", "dall-e-3", "gpt-image-1"):  # OpenAI clients' defaults mean "yours"
            raise InvalidOptionsError(f"model: {name!r} is not an image model here; pick one of: "
                                      f"{', '.join(models) or 'none configured'}.")
        if not models:
            raise InvalidOptionsError("No model that makes images from a prompt is configured (add a diffusers model).")
        return models[0]

    def settings_of(model: str, **values: Any) -> dict[str, Any]:
        gen = ctx.registry.get(model)
        defaults = gen.defaults() if hasattr(gen, "defaults") else {}
        return {**defaults, **{k: v for k, v in values.items() if v is not None}}

    def sampler(name: str | None) -> str | None:
        return SAMPLER_ALIASES.get(name.lower(), name) if name else None

    @router.post("/v1/images/generations")
    async def openai_images(request: Request) -> Any:
        owner = owner_of(request)
        body = _validated(OpenAIImageRequest, await body_of(request))
        model = pick_model(body.model, owner)
        width, height = _size(body.size)
        params = settings_of(model, prompt=body.prompt, negative_prompt=body.negative_prompt, width=width,
                             height=height, steps=body.steps, guidance=body.guidance_scale, scheduler=sampler(body.scheduler))
        result = await run_in_threadpool(image_service.paint, ctx, owner, model, params, body.seed, body.n,
                                         source="api", ai_label=body.ai_label)
        base = str(request.base_url).rstrip("/")
        data = []
        for item in result.images:
            if body.response_format == "url":
                data.append({"url": f"{base}/api/images/{item.id}.png", "revised_prompt": body.prompt})
            else:
                data.append({"b64_json": base64.b64encode(item.path.read_bytes()).decode(), "revised_prompt": body.prompt})
        return {"created": int(time.time()), "data": data}

    async def a1111(request: Request, img2img: bool) -> Any:
        owner = owner_of(request)
        body = _validated(A1111Request, await body_of(request))
        model = pick_model(body.override_settings.get("sd_model_checkpoint"), owner)
        init = mask = None
        if img2img:
            if not body.init_images:
                raise InvalidOptionsError("init_images: img2img needs one base64 image.")
            init = _b64_image(body.init_images[0], "init_images")
            if body.mask:
                mask = _b64_image(body.mask, "mask")
                if body.inpainting_mask_invert:
                    mask = _inverted(mask)
        params = settings_of(model, prompt=body.prompt, negative_prompt=body.negative_prompt, width=body.width,
                             height=body.height, steps=body.steps, guidance=body.cfg_scale,
                             scheduler=sampler(body.sampler_name or body.sampler_index),
                             strength=body.denoising_strength if img2img else None)
        seed = None if body.seed < 0 else body.seed
        result = await run_in_threadpool(image_service.paint, ctx, owner, model, params, seed,
                                         body.batch_size * body.n_iter, init, mask, "api", ai_label=body.ai_label)
        metas = [item.params for item in result.images]
        first = metas[0]["params"]
        texts = [_infotext_of(item.path) for item in result.images]
        info = {"prompt": first["prompt"], "all_prompts": [first["prompt"]] * len(metas),
                "negative_prompt": first["negative_prompt"], "seed": result.images[0].seed,
                "all_seeds": [i.seed for i in result.images], "width": first["width"], "height": first["height"],
                "sampler_name": first["scheduler"], "cfg_scale": first["guidance"], "steps": first["steps"],
                "batch_size": body.batch_size, "sd_model_name": model, "sd_model_hash": _hash_of(ctx, model)[:10],
                "denoising_strength": first["strength"] if img2img else None, "infotexts": texts,
                "studio_ids": [i.id for i in result.images]}
        images = [base64.b64encode(item.path.read_bytes()).decode() for item in result.images]
        return {"images": images, "parameters": body.model_dump(exclude={"init_images", "mask"}), "info": json.dumps(info)}

    @router.post("/sdapi/v1/txt2img")
    async def sd_txt2img(request: Request) -> Any:
        return await a1111(request, img2img=False)

    @router.post("/sdapi/v1/img2img")
    async def sd_img2img(request: Request) -> Any:
        return await a1111(request, img2img=True)

    @router.get("/sdapi/v1/sd-models")
    def sd_models(request: Request) -> Any:
        owner = owner_of(request)
        out = []
        for name in image_service.paint_models(ctx, owner):
            described = ctx.registry.get(name).describe()
            short = _hash_of(ctx, name)[:10]
            out.append({"title": f"{name} [{short}]" if short else name, "model_name": name, "hash": short or None,
                        "sha256": None, "filename": described.get("options", {}).get("source", ""), "config": None})
        return out

    @router.get("/sdapi/v1/samplers")
    def sd_samplers(request: Request) -> Any:
        owner = owner_of(request)
        names: list[str] = []
        for name in image_service.paint_models(ctx, owner):
            names += [s for s in ctx.registry.get(name).schedulers() if s not in names]
        aliases = {n: [a for a, target in SAMPLER_ALIASES.items() if target == n] for n in names}
        return [{"name": n, "aliases": aliases[n], "options": {}} for n in names]

    @router.get("/sdapi/v1/options")
    def sd_options(request: Request) -> Any:
        models = image_service.paint_models(ctx, owner_of(request))
        return {"sd_model_checkpoint": models[0] if models else None}

    return router


def _hash_of(ctx: AppContext, model: str) -> str:
    """The model's weights hash once it is loaded (hashing a multi-GB file is the load's job), else ''."""
    gen = ctx.registry.get(model)
    return str(getattr(gen, "weights_hash", "")) if gen.loaded else ""


def _infotext_of(path: Any) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return str(image.text.get(infotext.PNG_KEY, ""))


def _inverted(data: bytes) -> bytes:
    import io

    from PIL import ImageOps

    from generators.image.preprocess import open_image

    out = io.BytesIO()
    ImageOps.invert(open_image(data).convert("L")).save(out, "PNG")
    return out.getvalue()
