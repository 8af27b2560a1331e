"""The Verify view: drop in an image, see its content credentials (C2PA) — signed? by whom? intact?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import images as svc
from ..services.context import AppContext
from ..services.provenance import Verification
from . import FAST

TRAINING_KINDS = {"training-samples": "samples drawn during a training job (the model was still learning)",
                  "training-curves": "the loss curves of a training job (a chart, not a model's output)"}
BADGES = {"trusted": "Signed by this studio", "valid": "Validly signed, not by this studio",
          "invalid": "Not authentic", "none": "No content credentials"}


def _yes_no(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return "—" if value is None else yes if value else no


def report_markdown(report: Verification) -> str:
    """The verification as a person reads it: the verdict first, then each question answered."""
    lines = [f"### {BADGES[report.status]}", report.summary, ""]
    if not report.has_manifest:
        return "\n".join(lines)
    gen = report.generation
    signer = report.signer
    rows = [
        ("Manifest present", "yes"),
        ("Signature valid", _yes_no(report.signature_valid)),
        ("Pixels changed after signing", _yes_no(report.pixels_changed, "**yes**", "no")),
        ("Signed by", f"{signer.get('common_name') or '?'} (issuer {signer.get('issuer') or '?'}, "
                      f"{str(signer.get('algorithm') or '?').upper()})" + (f", {signer['time']}" if signer.get("time") else "")),
        ("This studio's key", "yes" if report.signed_by_this_studio else
         "yes, but the file was changed after signing" if report.key_of_this_studio else "no"),
        ("Made with", report.claim_generator or "?"),
        ("Actions", ", ".join(report.actions) or "—"),
        ("Digital source type", report.digital_source_type.rsplit("/", 1)[-1] or "—"),
    ]
    if gen:
        weights = f", weights {gen['weights_hash']}" if gen.get("weights_hash") else ""
        rows.append(("Claimed model", f"{gen.get('model')} ({gen.get('plugin')}{weights})"))
        if gen.get("kind") in TRAINING_KINDS:
            rows.append(("What it shows", TRAINING_KINDS[gen["kind"]]))
        rows += [("Claimed parameters hash", f"`{str(gen.get('params_hash', ''))[:16]}…`"),
                 ("Parameters text matches the signed hash", _yes_no(report.params_match)),
                 ("Visible “AI-generated” label", _yes_no(gen.get("visible_label")))]
    if report.ingredients:
        rows.append(("Made from", "; ".join(
            f"{i['title']} ({i['relationship']}, " + ("with its own content credentials)" if i["signed"] else
                                                     "no content credentials)") for i in report.ingredients)))
    lines += ["| Question | Answer |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if report.problems:
        lines += ["", "**Problems found:**", *(f"- {p}" for p in report.problems)]
    return "\n".join(lines)


def identity_markdown(ctx: AppContext) -> str:
    who = svc.signing_identity(ctx)
    if who is None:
        return "Image signing is off on this studio (`sign_images = false`)."
    return (f"This studio signs as **{who['subject']}** ({who['alg'].upper()}, {who['source']} certificate, valid to "
            f"{who['not_after']}); certificate sha256 `{who['fingerprint'][:16]}…`.")


def build(ctx: AppContext) -> tuple[Any, Any]:
    """Lays out the view; returns (the owner's label setting loader, its checkbox) for the tab's select."""
    gr.Markdown("Drop in an image to read its **content credentials** (C2PA): whether it carries a signed manifest, "
                "who signed it, which model and parameters it claims, and whether its pixels changed after signing. "
                "Every image this studio writes is signed.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image (PNG, JPEG, GIF or WebP)", file_types=[".png", ".jpg", ".jpeg", ".gif", ".webp"],
                             type="filepath", elem_id="verify-upload")
            gr.Markdown(lambda: identity_markdown(ctx), elem_id="verify-identity")  # read on each page load
            default_label = gr.Checkbox(label="Mark my new images with a visible “AI-generated” label by default",
                                        elem_id="verify-ai-label",
                                        info="Off by default. The Image tab can turn it on or off per request.")
            saved = gr.Markdown(elem_id="verify-ai-label-saved")
        with gr.Column(scale=2):
            verdict = gr.Markdown(elem_id="verify-report")
            details = gr.JSON(label="Full report", open=False, elem_id="verify-json")

    @ui_errors
    def do_verify(path: str | None) -> tuple[Any, ...]:
        if not path:
            return "", None
        report = svc.verify_image(ctx, Path(path).read_bytes())
        return report_markdown(report), report.public()

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def load_label(request: gr.Request) -> bool:
        return svc.label_default(ctx, owner(request))

    @ui_errors
    def save_label(on: bool, request: gr.Request) -> str:
        svc.set_label_default(ctx, owner(request), bool(on))
        return "Saved: new images get the label." if on else "Saved: new images carry no visible label."

    upload.change(do_verify, upload, [verdict, details], **FAST, api_name="verify_image")
    default_label.input(save_label, default_label, saved, **FAST, api_name="set_ai_label_default")
    return load_label, default_label
