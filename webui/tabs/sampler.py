"""The sampler settings block shared by the Chat and Story tabs (bounds come from SamplingParams)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from generators.base import DRY_BREAKERS, InvalidOptionsError, SamplingParams

from .presets import PresetControls
from .presets import build_layout as build_presets

NAMES = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "seed", "stop",
         "presence_penalty", "frequency_penalty", "typical_p", "dry_multiplier", "dry_base", "dry_allowed_length",
         "dry_sequence_breakers", "xtc_threshold", "xtc_probability")
FIELDS = SamplingParams.model_fields


def _slider(name: str, label: str, minimum: float, maximum: float, step: float, value: float | None = None) -> gr.Slider:
    field = FIELDS[name]
    return gr.Slider(minimum, maximum, value=field.default if value is None else value, step=step, label=label,
                     info=field.description)  # fmt: skip


def parse_seed(value: Any) -> int | None:
    """'' or None → a random seed; otherwise a whole number (bounds are checked by SamplingParams)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise InvalidOptionsError(f"Seed must be a whole number (or empty for random), not {str(value)[:40]!r}.") from None


def parse_breakers(value: Any) -> tuple[str, ...]:
    """DRY's sequence breakers as SillyTavern writes them: a JSON array of strings, e.g. ["\\n", ":", "\\"", "*"]."""
    text = str(value or "").strip()
    if not text:
        return ()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, list) or not all(isinstance(b, str) for b in data):
        raise InvalidOptionsError('DRY sequence breakers must be a JSON list of strings, e.g. ["\\n", ":", "\\"", "*"] '
                                  f"(got {text[:40]!r}).")
    return tuple(data)


def breakers_text(breakers: Any) -> str:
    return json.dumps(list(breakers or ()))


INTEGERS = ("top_k", "max_new_tokens", "dry_allowed_length")


@dataclass(frozen=True)
class SamplerControls:
    components: tuple[Any, ...]  # in NAMES order
    by_name: dict[str, Any] = field(default_factory=dict)
    presets: PresetControls | None = None  # the preset picker, when the workspace has one

    def params(self, values: dict[Any, Any]) -> dict[str, Any]:
        """Handler input values (keyed by component) → SamplingParams fields."""
        raw = {name: values[c] for name, c in zip(NAMES, self.components, strict=True)}
        raw["stop"] = tuple(s for s in (raw["stop"] or "").splitlines() if s)
        for name in INTEGERS:
            raw[name] = int(raw[name])
        raw["seed"] = parse_seed(raw["seed"])
        raw["dry_sequence_breakers"] = parse_breakers(raw["dry_sequence_breakers"])
        return raw

    def values_of(self, params: dict[str, Any]) -> list[Any]:
        """Saved SamplingParams fields → values for the components, in order (a field a saved chat or story
        predates starts at its default)."""
        full = {name: params.get(name, FIELDS[name].default) for name in NAMES}
        full["seed"] = "" if full["seed"] is None else str(full["seed"])
        full["stop"] = "\n".join(full["stop"] or ())
        full["dry_sequence_breakers"] = breakers_text(full["dry_sequence_breakers"])
        return [full[name] for name in NAMES]


def build_sampler(defaults: dict[str, Any] | None = None, presets: str | None = None) -> SamplerControls:
    """Lay out the sampler sliders inside a closed accordion, starting from the workspace's `defaults`
    (SamplingParams field → value; the rest start at SamplingParams' own defaults); `presets`: the elem_id
    and API name prefix of a preset picker at its head (none without)."""
    defaults = defaults or {}

    def slider(name: str, label: str, minimum: float, maximum: float, step: float) -> gr.Slider:
        return _slider(name, label, minimum, maximum, step, defaults.get(name))

    with gr.Accordion("Sampler settings", open=False):
        top = gr.Row()
        with gr.Row():
            temperature = slider("temperature", "Temperature", 0.0, 2.0, 0.05)
            top_p = slider("top_p", "Top-p", 0.01, 1.0, 0.01)
            top_k = slider("top_k", "Top-k", 0, 200, 1)
            min_p = slider("min_p", "Min-p", 0.0, 1.0, 0.01)
        with gr.Row():
            repetition_penalty = slider("repetition_penalty", "Repetition penalty", 0.5, 2.0, 0.01)
            max_new = slider("max_new_tokens", "Max new tokens", 1, 2048, 1)
            seed = gr.Textbox("", label="Seed", placeholder="random", info="a whole number repeats a reply; empty = random")
            stop = gr.Textbox(label="Stop strings", placeholder="one per line", lines=2)
        with gr.Row():
            presence = slider("presence_penalty", "Presence penalty", -2.0, 2.0, 0.05)
            frequency = slider("frequency_penalty", "Frequency penalty", -2.0, 2.0, 0.05)
            typical_p = slider("typical_p", "Typical-p", 0.01, 1.0, 0.01)
        with gr.Row():
            dry_multiplier = slider("dry_multiplier", "DRY multiplier", 0.0, 5.0, 0.05)
            dry_base = slider("dry_base", "DRY base", 1.0, 4.0, 0.05)
            dry_allowed = slider("dry_allowed_length", "DRY allowed length", 1, 20, 1)
            dry_breakers = gr.Textbox(breakers_text(defaults.get("dry_sequence_breakers", DRY_BREAKERS)),
                                      label="DRY sequence breakers", info=FIELDS["dry_sequence_breakers"].description)
        with gr.Row():
            xtc_threshold = slider("xtc_threshold", "XTC threshold", 0.0, 0.5, 0.01)
            xtc_probability = slider("xtc_probability", "XTC probability", 0.0, 1.0, 0.01)
        picker = build_presets(presets, top) if presets else None
    components = (temperature, top_p, top_k, min_p, repetition_penalty, max_new, seed, stop, presence, frequency,
                  typical_p, dry_multiplier, dry_base, dry_allowed, dry_breakers, xtc_threshold, xtc_probability)
    return SamplerControls(components, dict(zip(NAMES, components, strict=True)), picker)
