"""The sampler settings each workspace starts from; a person can change them, and a story keeps its own.

SamplingParams' own defaults stay neutral (repetition penalty 1.0) because the HTTP API speaks the
OpenAI dialect, where nothing is penalised unless the client asks. The page's workspaces start from
settings that suit the default model: without a repetition penalty its replies loop until the token
limit. Chosen by benchmarks/bench_output_quality.py (figures in the README).
"""

from __future__ import annotations

from typing import Any

CHAT: dict[str, Any] = {"repetition_penalty": 1.1}
STORY: dict[str, Any] = {"repetition_penalty": 1.15, "max_new_tokens": 120}
