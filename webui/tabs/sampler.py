"""The sampler settings block shared by the Chat and Story tabs (bounds come from SamplingParams)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from generators.base import InvalidOptionsError, SamplingParams

NAMES = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "seed", "stop")
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


@dataclass(frozen=True)
class SamplerControls:
    components: tuple[Any, ...]  # in NAMES order

    def params(self, values: dict[Any, Any]) -> dict[str, Any]:
        """Handler input values (keyed by component) → SamplingParams fields."""
        raw = {name: values[c] for name, c in zip(NAMES, self.components, strict=True)}
        raw["stop"] = tuple(s for s in (raw["stop"] or "").splitlines() if s)
        raw["top_k"], raw["max_new_tokens"] = int(raw["top_k"]), int(raw["max_new_tokens"])
        raw["seed"] = parse_seed(raw["seed"])
        return raw

    def values_of(self, params: dict[str, Any]) -> list[Any]:
        """Saved SamplingParams fields → values for the components, in order."""
        values = [params[n] for n in NAMES[:-1]]
        values[NAMES.index("seed")] = "" if params.get("seed") is None else str(params["seed"])
        return [*values, "\n".join(params.get("stop") or ())]


def build_sampler(defaults: dict[str, Any] | None = None) -> SamplerControls:
    """Lay out the sampler sliders inside a closed accordion, starting from the workspace's `defaults`
    (SamplingParams field → value; the rest start at SamplingParams' own defaults)."""
    defaults = defaults or {}
    with gr.Accordion("Sampler settings", open=False):
        with gr.Row():
            temperature = _slider("temperature", "Temperature", 0.0, 2.0, 0.05)
            top_p = _slider("top_p", "Top-p", 0.01, 1.0, 0.01)
            top_k = _slider("top_k", "Top-k", 0, 200, 1)
            min_p = _slider("min_p", "Min-p", 0.0, 1.0, 0.01)
        with gr.Row():
            repetition_penalty = _slider("repetition_penalty", "Repetition penalty", 0.5, 2.0, 0.01,
                                         defaults.get("repetition_penalty"))
            max_new = _slider("max_new_tokens", "Max new tokens", 1, 2048, 1, defaults.get("max_new_tokens"))
            seed = gr.Textbox("", label="Seed", placeholder="random", info="a whole number repeats a reply; empty = random")
            stop = gr.Textbox(label="Stop strings", placeholder="one per line", lines=2)
    return SamplerControls((temperature, top_p, top_k, min_p, repetition_penalty, max_new, seed, stop))
