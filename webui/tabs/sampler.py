"""The sampler settings block shared by the Chat and Story tabs (bounds come from SamplingParams)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from generators.base import SamplingParams

NAMES = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "seed", "stop")
FIELDS = SamplingParams.model_fields


def _slider(name: str, label: str, minimum: float, maximum: float, step: float, value: float | None = None) -> gr.Slider:
    field = FIELDS[name]
    return gr.Slider(minimum, maximum, value=field.default if value is None else value, step=step, label=label,
                     info=field.description)  # fmt: skip


@dataclass(frozen=True)
class SamplerControls:
    components: tuple[Any, ...]  # in NAMES order

    def params(self, values: dict[Any, Any]) -> dict[str, Any]:
        """Handler input values (keyed by component) → SamplingParams fields."""
        raw = {name: values[c] for name, c in zip(NAMES, self.components, strict=True)}
        raw["stop"] = tuple(s for s in (raw["stop"] or "").splitlines() if s)
        raw["top_k"], raw["max_new_tokens"] = int(raw["top_k"]), int(raw["max_new_tokens"])
        raw["seed"] = None if raw["seed"] is None else int(raw["seed"])
        return raw

    def values_of(self, params: dict[str, Any]) -> list[Any]:
        """Saved SamplingParams fields → values for the components, in order."""
        return [*(params[n] for n in NAMES[:-1]), "\n".join(params.get("stop") or ())]


def build_sampler(max_new_tokens: int | None = None) -> SamplerControls:
    """Lay out the sampler sliders inside a closed accordion."""
    with gr.Accordion("Sampler settings", open=False):
        with gr.Row():
            temperature = _slider("temperature", "Temperature", 0.0, 2.0, 0.05)
            top_p = _slider("top_p", "Top-p", 0.01, 1.0, 0.01)
            top_k = _slider("top_k", "Top-k", 0, 200, 1)
            min_p = _slider("min_p", "Min-p", 0.0, 1.0, 0.01)
        with gr.Row():
            repetition_penalty = _slider("repetition_penalty", "Repetition penalty", 0.5, 2.0, 0.01)
            max_new = _slider("max_new_tokens", "Max new tokens", 1, 2048, 1, max_new_tokens)
            seed = gr.Number(None, label="Seed", precision=0, info="empty = random", minimum=0)
            stop = gr.Textbox(label="Stop strings", placeholder="one per line", lines=2)
    return SamplerControls((temperature, top_p, top_k, min_p, repetition_penalty, max_new, seed, stop))
