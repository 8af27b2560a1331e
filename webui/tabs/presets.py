"""The preset picker inside a workspace's sampler settings: pick, save, rename, delete, make the model's
default, export and import. Picking loads the preset's values into the sliders, where single values can
still be changed; the model's default preset is loaded when the model is picked and when the page opens."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from storage.files import private_dir, write_private

from ..errors import ui_errors
from ..services import presets as svc
from ..services.context import AppContext
from . import FAST
from .downloads import download_slot, wire_export


@dataclass(frozen=True)
class PresetControls:
    preset: gr.Dropdown
    name: gr.Textbox
    save: gr.Button
    rename: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    cancel: gr.Button
    make_default: gr.Button
    export: gr.Button
    download: gr.DownloadButton
    upload: gr.UploadButton
    status: gr.Markdown


def build_layout(prefix: str, top: gr.Row) -> PresetControls:
    """Lay out the picker in `top` (a row at the head of the sampler settings, created before the sliders),
    and its management below. Called after the sliders exist, so API clients keep the sliders' order."""
    with top:
        preset = gr.Dropdown(choices=choices(svc.builtin_presets()), value="", label="Preset", scale=3, allow_custom_value=True,
                             info="loads its values into the sliders below; change any of them afterwards",
                             elem_id=f"{prefix}-preset")
        make_default = gr.Button("★ Default for this model", size="sm", scale=1, elem_id=f"{prefix}-preset-default")
    with gr.Accordion("Manage presets", open=False):
        with gr.Row():
            name = gr.Textbox(label="Name", placeholder="a name for the current settings", scale=3,
                              elem_id=f"{prefix}-preset-name")
            save = gr.Button("Save current settings", size="sm", scale=1, elem_id=f"{prefix}-preset-save")
            rename = gr.Button("Rename chosen", size="sm", scale=1)
            delete = gr.Button("Delete chosen…", size="sm", variant="stop", scale=1)
        with gr.Row(visible=False) as confirm_row:
            confirm = gr.Button("Delete the preset for good", size="sm", variant="stop")
            cancel = gr.Button("Keep it", size="sm")
        with gr.Row():
            export = gr.Button("⬇ Export my presets (.json)", size="sm")
            upload = gr.UploadButton("Import presets (.json)", file_types=[".json"], size="sm")
        download = download_slot(f"{prefix}-preset-download")
    status = gr.Markdown(elem_id=f"{prefix}-preset-status")
    return PresetControls(preset, name, save, rename, delete, confirm_row, confirm, cancel, make_default, export,
                          download, upload, status)


def export_path(content: str) -> str:
    """The export written where Gradio serves downloads from (a private folder, swept with the cache)."""
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=private_dir(get_upload_folder())))
    path = folder / "sampler-presets.json"
    write_private(path, content.encode("utf-8"))
    return str(path)


NONE = ("— none: the sliders as they are —", "")


def choices(items: list[svc.Preset]) -> list[tuple[str, str]]:
    """The picker's choices; the empty value stands for no preset (and gives API clients a default)."""
    return [NONE, *((p.label, p.name) for p in items)]


def wire(ctx: AppContext, ui: PresetControls, sliders: tuple[Any, ...], values_of: Callable[[dict[str, Any]], list[Any]],
         params_of: Callable[[dict[Any, Any]], dict[str, Any]], model: gr.Dropdown, prefix: str) -> Callable[..., Any]:
    """Wire the picker to the `sliders` (filled from a preset by `values_of`, read by `params_of`).
    Returns the handler that lists the person's presets and loads the model's default (for page load)."""

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    def listed(request: gr.Request, value: str | None) -> gr.Dropdown:
        return gr.Dropdown(choices=choices(svc.list_presets(ctx, owner(request))), value=value or "")

    def loaded(preset: svc.Preset) -> dict[Any, Any]:
        return dict(zip(sliders, values_of(preset.params), strict=True))

    @ui_errors
    def choose(name: str | None, request: gr.Request) -> dict[Any, Any]:
        if not name:
            return {ui.status: ""}
        preset = svc.get_preset(ctx, owner(request), name)
        return {**loaded(preset), ui.status: f"Loaded the preset **{preset.name}**."}

    @ui_errors
    def model_default(name: str | None, current: str | None, request: gr.Request) -> dict[Any, Any]:
        """List the person's presets; when the model has a default preset, load it."""
        default = svc.default_preset(ctx, owner(request), name) if name else None
        if not default:
            return {ui.preset: listed(request, current)}
        preset = svc.get_preset(ctx, owner(request), default)
        return {ui.preset: listed(request, preset.name), **loaded(preset),
                ui.status: f"Loaded **{preset.name}**, the default preset of {name}."}

    @ui_errors
    def save(values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        preset = svc.save_preset(ctx, owner(request), values[ui.name], params_of(values))
        return {ui.preset: listed(request, preset.name), ui.status: f"Saved the preset **{preset.name}**."}

    @ui_errors
    def rename(current: str | None, new_name: str, request: gr.Request) -> dict[Any, Any]:
        preset = svc.rename_preset(ctx, owner(request), current, new_name)
        return {ui.preset: listed(request, preset.name), ui.status: f"Renamed to **{preset.name}**."}

    @ui_errors
    def ask_delete(current: str | None) -> dict[Any, Any]:
        if not current or svc.BUILTIN.get(current):
            raise gr.Error("Pick one of your own presets first: built-in presets cannot be deleted.")
        return {ui.confirm_row: gr.Row(visible=True), ui.status: f"Delete the preset **{current}**?"}

    @ui_errors
    def delete(current: str | None, request: gr.Request) -> dict[Any, Any]:
        svc.delete_preset(ctx, owner(request), current)
        return {ui.preset: listed(request, ""), ui.confirm_row: gr.Row(visible=False),
                ui.status: f"Deleted the preset **{current}**."}

    @ui_errors
    def make_default(name: str | None, current: str | None, request: gr.Request) -> str:
        if not name:
            raise gr.Error("Pick a model first.")
        stored = svc.set_default_preset(ctx, owner(request), name, current or None)
        return f"**{stored}** is now the default preset of {name}." if stored else \
            f"{name} has no default preset now."

    @ui_errors
    def export(request: gr.Request) -> str:
        data = svc.export_presets(ctx, owner(request))
        if not data["presets"]:
            raise gr.Error("You have no presets of your own yet: save one first.")
        return export_path(json.dumps(data, ensure_ascii=False, indent=2))

    @ui_errors
    def import_file(file: Any, current: str | None, request: gr.Request) -> dict[Any, Any]:
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            raise gr.Error("No file was received.")
        result = svc.import_presets(ctx, owner(request), Path(path).read_bytes(), Path(path).stem[:60])
        note = f" (no equivalent here, ignored: {', '.join(result.ignored[:12])})" if result.ignored else ""
        chosen = result.names[0] if len(result.names) == 1 else current
        return {ui.preset: listed(request, chosen),
                ui.status: "Imported: " + ", ".join(f"**{n}**" for n in result.names) + note}

    slider_outputs = [*sliders, ui.status]
    ui.preset.input(choose, ui.preset, slider_outputs, **FAST, api_name=f"{prefix}_choose_preset")
    model.input(model_default, [model, ui.preset], [ui.preset, *slider_outputs], **FAST,
                api_visibility="private")
    ui.save.click(save, {ui.name, *sliders}, [ui.preset, ui.status], **FAST, api_name=f"{prefix}_save_preset")
    ui.rename.click(rename, [ui.preset, ui.name], [ui.preset, ui.status], **FAST, api_name=f"{prefix}_rename_preset")
    ui.delete.click(ask_delete, ui.preset, [ui.confirm_row, ui.status], **FAST, api_visibility="private")
    ui.cancel.click(lambda: gr.Row(visible=False), None, ui.confirm_row, **FAST, api_visibility="private")
    ui.confirm.click(delete, ui.preset, [ui.preset, ui.confirm_row, ui.status], **FAST,
                     api_name=f"{prefix}_delete_preset")
    ui.make_default.click(make_default, [model, ui.preset], ui.status, **FAST, api_name=f"{prefix}_default_preset")
    wire_export(ui.export, export, None, ui.download, **FAST, api_name=f"{prefix}_export_presets")
    ui.upload.upload(import_file, [ui.upload, ui.preset], [ui.preset, ui.status], **FAST,
                     api_name=f"{prefix}_import_presets")

    def on_load(demo: gr.Blocks) -> None:
        demo.load(model_default, [model, ui.preset], [ui.preset, *slider_outputs], **FAST, api_visibility="private")

    return on_load
