"""HTTP API on the same server as the UI: OpenAI-compatible chat completions and a read API.

    GET  /v1/models
    POST /v1/chat/completions      (stream: true → server-sent events)
    POST /v1/completions           the legacy text endpoint: prompt string or list, echo, logprobs, best_of
    GET  /api/chats?q=TEXT         list chats
    GET  /api/chats/{id}           one chat: every message of every branch, and the visible one
    GET  /api/stories?q=TEXT       list stories
    GET  /api/stories/{id}         one story: its JSON export (every version, the undo history,
                                   settings, snapshots), its visible passages and its text
    POST /api/images               generate: {"model", "label", "seed", "count", "params"}
    GET  /api/images?model=&label=&page=   the gallery, newest first
    GET  /api/images/{id}          one image's record;  /api/images/{id}.png  (and .gif) its file
    DELETE /api/images/{id}
    GET|PUT /api/settings/images   {"ai_label": bool}: your default for the visible AI label
    POST /api/verify               an image's C2PA content credentials (raw body or multipart file):
                                   manifest present? signature valid? signer, claims, pixels changed?
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from generators.base import StudioError, describe_validation_error
from storage.db import StorageError
from storage.repository import NotFoundError

from . import openai_routes
from .api_images import build_image_router
from .protocol import error_body, studio_error_body
from .services import chat as chat_service
from .services import images as image_service
from .services import story as story_service
from .services.context import AppContext

log = logging.getLogger(__name__)

class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=200)
    label: int | str | None = Field(None, description="class index or name; null = random per image")
    seed: int | None = None
    count: int = 1
    params: dict[str, Any] = Field(default_factory=dict)
    ai_label: bool | None = Field(None, description="a visible 'AI-generated' mark on each image; null = your setting")


def error_response(exc: Exception) -> JSONResponse:
    """The one place API errors become OpenAI-shaped JSON (a 429 says when to come back: Retry-After)."""
    if isinstance(exc, StudioError):
        retry = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(max(1, math.ceil(retry)))} if retry is not None else None
        return JSONResponse(studio_error_body(exc), status_code=exc.http_status, headers=headers)
    if isinstance(exc, NotFoundError):
        return JSONResponse(error_body(str(exc), "not_found_error", "not_found"), status_code=404)
    if isinstance(exc, StorageError):
        return JSONResponse(error_body(str(exc), "storage_error", "storage_error"), status_code=500)
    log.exception("Unexpected API error")
    return JSONResponse(error_body("Internal error; the server log has the details.", "server_error"), status_code=500)


async def _on_studio_error(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _on_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:  # routes with typed bodies
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return JSONResponse(error_body("Invalid request — " + "; ".join(parts)), status_code=400)


# Passed to the FastAPI app when it is made (handlers added after the first request are ignored).
EXCEPTION_HANDLERS: dict[Any, Any] = {
    StudioError: _on_studio_error,
    StorageError: _on_studio_error,
    RequestValidationError: _on_validation,
}


def build_router(ctx: AppContext) -> APIRouter:
    router = APIRouter()

    def owner_of(request: Request) -> str:
        """The API key's user (auth on) or the local user; raises AuthError (401) otherwise."""
        return ctx.owner_for_api_key(request.headers.get("authorization"))

    @router.get("/v1/models")
    def list_models(request: Request) -> dict[str, Any]:
        owner = owner_of(request)
        data = [
            {"id": d["name"], "object": "model", "created": 0, "owned_by": "aigc-studio", "loaded": d["loaded"]}
            for d in ctx.registry.describe(owner=owner)
            if d["modality"] == "text"
        ]
        return {"object": "list", "data": data}

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        return await openai_routes.chat_completions(ctx, owner_of(request), request)

    @router.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        return await openai_routes.completions(ctx, owner_of(request), request)

    @router.get("/api/chats")
    def api_list_chats(request: Request, q: str = "") -> Any:
        chats = chat_service.list_chats(ctx, owner_of(request), q)
        return {"data": [{"id": c.id, "title": c.title, "updated_at": c.updated_at.isoformat()} for c in chats]}

    @router.get("/api/chats/{chat_id}")
    def api_get_chat(request: Request, chat_id: str) -> Any:
        try:
            owner = owner_of(request)
            data = chat_service.export_json(ctx, owner, chat_id)
            view = chat_service.get_chat(ctx, owner, chat_id)
        except (StudioError, StorageError) as exc:
            return error_response(exc)
        data["id"] = chat_id
        data["visible"] = [
            {"id": m.id, "role": m.role, "content": m.content, "status": m.status, "branch": [m.branch, m.branches]}
            for m in view.messages
        ]
        return data

    @router.get("/api/stories")
    def api_list_stories(request: Request, q: str = "") -> Any:
        stories = story_service.list_stories(ctx, owner_of(request), q)
        return {"data": [{"id": c.id, "title": c.title, "updated_at": c.updated_at.isoformat()} for c in stories]}

    @router.get("/api/stories/{story_id}")
    def api_get_story(request: Request, story_id: str) -> Any:
        try:
            owner = owner_of(request)
            data = story_service.export_json(ctx, owner, story_id)
            view = story_service.get_story(ctx, owner, story_id)
        except (StudioError, StorageError) as exc:
            return error_response(exc)
        data["id"] = story_id
        data["text"] = view.text
        data["visible"] = [
            {"id": p.id, "author": p.author, "text": p.text, "status": p.status, "model": p.model,
             "version": [p.version, p.versions]}
            for p in view.passages
        ]  # fmt: skip
        return data

    @router.post("/api/images")
    async def api_generate_images(request: Request) -> Any:
        owner = owner_of(request)
        try:
            body = ImageGenerationRequest.model_validate(await request.json())
        except (ValueError, UnicodeDecodeError) as exc:
            msg = describe_validation_error(exc, "field") if hasattr(exc, "errors") else "The request body is not valid JSON."
            return JSONResponse(error_body(msg), status_code=400)
        try:
            result = await run_in_threadpool(image_service.generate, ctx, owner, body.model, body.label, body.seed,
                                             body.count, body.params, "api", ai_label=body.ai_label)
        except (StudioError, StorageError) as exc:
            return error_response(exc)
        return {"data": [i.public() for i in result.images], "notice": result.notice}

    @router.get("/api/settings/images")
    def api_image_settings(request: Request) -> Any:
        return {"ai_label": image_service.label_default(ctx, owner_of(request))}

    @router.put("/api/settings/images")
    async def api_set_image_settings(request: Request) -> Any:
        owner = owner_of(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return JSONResponse(error_body("The request body is not valid JSON."), status_code=400)
        if not isinstance(body, dict) or set(body) != {"ai_label"}:
            return JSONResponse(error_body('Send {"ai_label": true} or {"ai_label": false}.'), status_code=400)
        try:
            return {"ai_label": image_service.set_label_default(ctx, owner, body["ai_label"])}
        except StudioError as exc:
            return error_response(exc)

    @router.post("/api/verify")
    async def api_verify(request: Request) -> Any:
        """An image's content credentials: the raw file as the body, or a multipart form field."""
        owner_of(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = next((v for v in form.values() if hasattr(v, "read")), None)
            if upload is None:
                return JSONResponse(error_body("Send the image as a file field of the form (e.g. curl -F file=@image.png) "
                                               "or as the raw request body."), status_code=400)
            data = await upload.read()
        else:
            data = await request.body()
        try:
            report = await run_in_threadpool(image_service.verify_image, ctx, data)
        except StudioError as exc:
            return error_response(exc)
        return report.public()

    @router.get("/api/images")
    def api_list_images(request: Request, model: str | None = None, label: str | None = None, page: str = "1") -> Any:
        try:
            result = image_service.gallery(ctx, owner_of(request), model, label, page)
        except (StudioError, StorageError) as exc:
            return error_response(exc)
        return {"data": [i.public() for i in result.images], "total": result.total, "page": result.page,
                "pages": result.pages}

    @router.get("/api/images/{name}")
    def api_get_image(request: Request, name: str) -> Any:
        image_id, _, suffix = name.partition(".")
        try:
            item = image_service.get_image(ctx, owner_of(request), image_id)
        except (StudioError, StorageError) as exc:
            return error_response(exc)
        if not suffix:
            return item.public()
        path = {"png": item.path, "gif": item.gif_path}.get(suffix)
        if path is None or not path.is_file():
            return JSONResponse(error_body(f"This image has no .{suffix} file.", "not_found_error"), status_code=404)
        return FileResponse(path, media_type=f"image/{suffix}", filename=path.name)

    @router.delete("/api/images/{image_id}")
    def api_delete_image(request: Request, image_id: str) -> Any:
        try:
            image_service.delete_image(ctx, owner_of(request), image_id)
        except (StudioError, StorageError) as exc:
            return error_response(exc)
        return {"deleted": image_id}

    router.include_router(build_image_router(ctx))  # OpenAI images and A1111 /sdapi/v1 routes
    return router
